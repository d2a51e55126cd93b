"""Where along the scan does the phase change? An online Bayesian change-point estimate.

Frames arrive one at a time with a pressure (any scan variable, in any order) and a phase
probability vector from a classifier. For the boundary between phases k and k+1 a frame's
evidence is e = P(phase > k); the model says the higher phases hold with probability
π(P) = σ((P - θ) / s): a transition at θ with a coexistence/uncertainty scale s. The
evidence is a noisy reading of π (noise τ), with a small rate ε of frames the classifier gets
wrong whatever their pressure, so each frame adds to the log-likelihood on a grid of θ

    log L(θ, s, τ) = log[(1 - ε) N(e; π, τ²) + ε]

(the ε term keeps one bad frame from moving the estimate far). s is marginalised over a
geometric family of widths, τ over `taus`, the prior over θ is flat. With a classifier whose
probability follows the phase fraction through the coexistence region, θ is where both
phases are 50 %.
An update costs O(grid) per boundary; extending the grid when a new pressure lies beyond it
costs O(frames) per new grid point, so a whole scan is O(frames x grid).

The estimate of a boundary is the posterior mean of θ with its standard deviation and 95 %
interval. It is *settled* when the standard deviation is at most `settle_sigma` (default one
pressure step), the posterior puts >= 99 % of θ inside the observed pressure range, and at
least `settle_frames` frames on each side of the estimate agree with it. The standard
deviation is the statistical uncertainty given the classifier's probabilities; a classifier
that is miscalibrated in the coexistence region shifts θ beyond it (`evaluate` measures the
real error: for the end-to-end model about 3-5 times sigma).

More than two phases: one estimate per boundary between consecutive phases (phases ordered
by pressure, as the classifier's phase list). Flagged frames (NaN probabilities: bad input)
are recorded and skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BoundaryEstimate:
    """The current estimate of one transition (between phases `lower` and `upper`)."""

    boundary: int
    lower: str
    upper: str
    pressure: float  # posterior mean of θ (NaN until a frame has arrived)
    sigma: float  # posterior standard deviation
    interval: tuple[float, float]  # 95 % credible interval
    map_pressure: float  # most probable θ
    observed: float  # posterior probability that θ lies inside the observed pressure range
    settled: bool
    n_frames: int

    def to_dict(self) -> dict:
        return {"boundary": self.boundary, "lower": self.lower, "upper": self.upper, "pressure": self.pressure,
                "sigma": self.sigma, "interval": list(self.interval), "map_pressure": self.map_pressure,
                "observed": self.observed, "settled": self.settled, "n_frames": self.n_frames}


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


class _Boundary:
    """Posterior over (θ, s) of one boundary on a growing θ grid."""

    def __init__(self, resolution: float, widths: np.ndarray, taus: np.ndarray, error_rate: float, margin: float):
        self.resolution = resolution
        self.widths, self.taus = np.meshgrid(widths, taus, indexing="ij")  # every (s, τ) pair
        self.widths, self.taus = self.widths.ravel(), self.taus.ravel()
        self.error_rate = error_rate
        self.margin = margin
        self.theta = np.zeros(0)
        self.loglik = np.zeros((0, len(widths)))
        self.pressures: list[float] = []
        self.evidence: list[float] = []

    def _frame_loglik(self, theta: np.ndarray, pressure: float, evidence: float) -> np.ndarray:
        return self._loglik(np.asarray([pressure])[None, :, None], np.asarray([evidence])[None, :, None],
                            theta[:, None, None])[:, 0, :]

    def _loglik(self, p: np.ndarray, e: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """log[(1 - ε) N(e; σ((p - θ)/s), τ²) + ε], broadcast over (θ, frames, (s, τ) pairs)."""
        pi = np.exp(_log_sigmoid((p - theta) / self.widths[None, None, :]))
        tau = self.taus[None, None, :]
        gauss = -0.5 * ((e - pi) / tau) ** 2 - np.log(tau * math.sqrt(2.0 * math.pi))
        return np.logaddexp(math.log1p(-self.error_rate) + gauss, math.log(self.error_rate))

    def _cells_loglik(self, theta: np.ndarray) -> np.ndarray:
        if not self.pressures:
            return np.zeros((len(theta), len(self.widths)))
        p = np.asarray(self.pressures)[None, :, None]
        e = np.asarray(self.evidence)[None, :, None]
        return self._loglik(p, e, theta[:, None, None]).sum(1)

    def _extend(self, lo: float, hi: float):
        step = self.resolution
        if self.theta.size == 0:
            start = math.floor(lo / step) * step
            n = int(math.ceil((hi - start) / step)) + 1
            self.theta = start + step * np.arange(n)
            self.loglik = self._cells_loglik(self.theta)
            return
        if lo < self.theta[0]:
            n = int(math.ceil((self.theta[0] - lo) / step))
            new = self.theta[0] - step * np.arange(n, 0, -1)
            self.theta = np.concatenate([new, self.theta])
            self.loglik = np.concatenate([self._cells_loglik(new), self.loglik])
        if hi > self.theta[-1]:
            n = int(math.ceil((hi - self.theta[-1]) / step))
            new = self.theta[-1] + step * np.arange(1, n + 1)
            self.theta = np.concatenate([self.theta, new])
            self.loglik = np.concatenate([self.loglik, self._cells_loglik(new)])

    def update(self, pressure: float, evidence: float):
        self._extend(pressure - self.margin, pressure + self.margin)
        self.loglik += self._frame_loglik(self.theta, pressure, evidence)
        self.pressures.append(pressure)
        self.evidence.append(evidence)

    def posterior(self) -> np.ndarray:
        """Posterior over the θ grid (s marginalised, flat priors)."""
        if self.theta.size == 0:
            return np.zeros(0)
        log_theta = np.logaddexp.reduce(self.loglik, axis=1)
        w = np.exp(log_theta - log_theta.max())
        return w / w.sum()


class OnlineChangePoint:
    """Online estimate of the transition pressure(s) from per-frame phase probabilities.

    phase_names: the classifier's phases in order of pressure (K phases -> K-1 boundaries).
    resolution: θ grid step (GPa); default a tenth of the first pressure step seen.
    widths: transition scales s to marginalise over (GPa); default 0.25-16 pressure steps.
    taus: noise levels τ of the classifier's probability to marginalise over.
    error_rate: ε of the likelihood. settle_sigma: default one pressure step (median |ΔP|).
    margin: how far beyond the observed pressures the grid reaches (default 10 pressure steps):
    where the posterior puts θ while no frame of the next phase has been seen.
    """

    def __init__(self, phase_names: Sequence[str] = ("low", "high"), resolution: float | None = None,
                 widths: Sequence[float] | None = None, taus: Sequence[float] = (0.05, 0.1, 0.2, 0.35),
                 error_rate: float = 0.05, settle_sigma: float | None = None, settle_frames: int = 3,
                 margin: float | None = None):
        self.phase_names = tuple(str(p) for p in phase_names)
        if len(self.phase_names) < 2:
            raise ValueError("a change point needs at least two phases")
        if not 0.0 <= error_rate < 1.0:
            raise ValueError(f"error_rate must lie in [0, 1), got {error_rate}")
        self.resolution = resolution
        self.widths = None if widths is None else np.asarray(widths, dtype=float)
        self.taus = np.asarray(taus, dtype=float)
        self.error_rate = float(error_rate)
        self.settle_sigma = settle_sigma
        self.settle_frames = int(settle_frames)
        self.margin = margin
        self._boundaries: list[_Boundary] | None = None
        self._pending: list[tuple[float, np.ndarray]] = []  # frames before the pressure step is known
        self.pressures: list[float] = []
        self.flagged: list[int] = []
        self.n_seen = 0

    @property
    def n_boundaries(self) -> int:
        return len(self.phase_names) - 1

    @property
    def pressure_step(self) -> float | None:
        p = np.asarray(self.pressures)
        steps = np.abs(np.diff(p))
        steps = steps[steps > 0]
        return float(np.median(steps)) if steps.size else None

    def _start(self, step: float):
        resolution = self.resolution or step / 10.0
        widths = self.widths if self.widths is not None else step * np.array([0.25, 0.5, 1, 2, 4, 8, 16])
        margin = self.margin if self.margin is not None else 10.0 * step
        self._boundaries = [_Boundary(resolution, widths, self.taus, self.error_rate, margin)
                            for _ in range(self.n_boundaries)]

    def update(self, probabilities, pressure: float) -> list[BoundaryEstimate]:
        """Add one frame (phase probabilities, pressure); returns the estimate of every boundary.
        A frame whose probabilities or pressure are not finite is flagged and skipped."""
        index = self.n_seen
        self.n_seen += 1
        q = np.asarray(probabilities, dtype=float).ravel()
        if q.size != len(self.phase_names) or not np.all(np.isfinite(q)) or not math.isfinite(float(pressure)):
            self.flagged.append(index)
            return self.estimates()
        q = np.clip(q, 0.0, None)
        q = q / q.sum() if q.sum() > 0 else np.full(q.size, 1.0 / q.size)
        pressure = float(pressure)
        self.pressures.append(pressure)
        if self._boundaries is None:
            self._pending.append((pressure, q))
            step = self.pressure_step
            if step is None:
                return self.estimates()
            self._start(step)
            pending, self._pending = self._pending, []
            for p, qq in pending:
                self._add(p, qq)
            return self.estimates()
        self._add(pressure, q)
        return self.estimates()

    def _add(self, pressure: float, q: np.ndarray):
        above = np.cumsum(q[::-1])[::-1]  # above[k] = P(phase >= k)
        for k, boundary in enumerate(self._boundaries):
            boundary.update(pressure, float(np.clip(above[k + 1], 0.0, 1.0)))

    def run(self, probabilities, pressures) -> list[list[BoundaryEstimate]]:
        """Feed a whole sequence in arrival order; the estimates after every frame."""
        return [self.update(q, p) for q, p in zip(np.asarray(probabilities, dtype=float), pressures)]

    def estimates(self) -> list[BoundaryEstimate]:
        out = []
        for k in range(self.n_boundaries):
            lower, upper = self.phase_names[k], self.phase_names[k + 1]
            if self._boundaries is None or self._boundaries[k].theta.size == 0:
                nan = float("nan")
                out.append(BoundaryEstimate(k, lower, upper, nan, nan, (nan, nan), nan, 0.0, False,
                                            len(self.pressures)))
                continue
            out.append(self._estimate(k, lower, upper))
        return out

    def _estimate(self, k: int, lower: str, upper: str) -> BoundaryEstimate:
        b = self._boundaries[k]
        post = b.posterior()
        theta = b.theta
        mean = float(post @ theta)
        sigma = float(math.sqrt(max(post @ (theta - mean) ** 2, 0.0)))
        cdf = np.cumsum(post)
        last = len(theta) - 1
        interval = (float(theta[min(np.searchsorted(cdf, 0.025), last)]),
                    float(theta[min(np.searchsorted(cdf, 0.975), last)]))
        p = np.asarray(b.pressures)
        e = np.asarray(b.evidence)
        inside = (theta >= p.min()) & (theta <= p.max())
        observed = float(post[inside].sum())
        settle_sigma = self.settle_sigma if self.settle_sigma is not None else (self.pressure_step or 0.0)
        below_agree = int(np.sum((p < mean - sigma) & (e < 0.5)))
        above_agree = int(np.sum((p > mean + sigma) & (e > 0.5)))
        settled = (sigma <= settle_sigma and observed >= 0.99
                   and min(below_agree, above_agree) >= self.settle_frames)
        return BoundaryEstimate(k, lower, upper, mean, sigma, interval, float(theta[int(np.argmax(post))]), observed,
                                bool(settled), len(p))

    def phase_probability(self, pressure: float) -> np.ndarray:
        """Posterior predictive P(phase | pressure) from the change points (not from one frame)."""
        probs_above = []
        for b in self._boundaries or []:
            post = b.posterior()
            log_theta = b.loglik - np.logaddexp.reduce(b.loglik, axis=1, keepdims=True)  # p(s | θ)
            ps = np.exp(log_theta)
            pi = np.exp(_log_sigmoid((pressure - b.theta[:, None]) / b.widths[None, :]))
            probs_above.append(float(post @ (ps * pi).sum(1)))
        if not probs_above:
            return np.full(len(self.phase_names), 1.0 / len(self.phase_names))
        above = np.minimum.accumulate(np.array([1.0, *probs_above, 0.0]))
        return above[:-1] - above[1:]


# -- frames in, records out ------------------------------------------------------------------------


@dataclass
class FrameRecord:
    """What the scan learns from one frame: the classifier's phase probabilities, the flag of a
    frame that could not be used, and the transition estimates after it."""

    index: int
    pressure: float
    probabilities: list[float] | None
    phase: str | None
    flag: str | None
    note: str | None
    boundaries: list[BoundaryEstimate] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"index": self.index, "pressure": self.pressure, "probabilities": self.probabilities,
                "phase": self.phase, "flag": self.flag, "note": self.note,
                "boundaries": [b.to_dict() for b in self.boundaries]}


class TransitionTracker:
    """A trained phase classifier + the online change point: one `update(frame, pressure)` per frame.

    two_theta / wavelength: the detector's nominal axis, for frames given as bare arrays
    (frames of another length are resampled as if they spanned the same range; see
    `models.prepare_frames`). `Diffractogram` frames carry their own axis.
    """

    def __init__(self, model, two_theta=None, wavelength: float | None = None, **changepoint_options):
        self.model = model
        self.two_theta = None if two_theta is None else np.asarray(two_theta, dtype=float)
        self.wavelength = wavelength
        self.changepoint = OnlineChangePoint(model.phase_names, **changepoint_options)
        self.records: list[FrameRecord] = []

    def _prepare_kwargs(self) -> dict:
        return {"two_theta": self.two_theta, "wavelength": self.wavelength} if self.two_theta is not None else {}

    def update(self, frame, pressure: float) -> FrameRecord:
        prepared = self.model.prepare([frame], **self._prepare_kwargs())
        probs = self.model.predict_proba(prepared)[0]
        return self._record(probs, pressure, prepared.flags[0], prepared.notes[0])

    def run(self, frames, pressures) -> list[FrameRecord]:
        """All frames at once (the classifier is batched; the change point still sees them in order)."""
        prepared = self.model.prepare(frames, **self._prepare_kwargs())
        probs = self.model.predict_proba(prepared)
        return [self._record(q, p, f, n) for q, p, f, n in zip(probs, pressures, prepared.flags, prepared.notes)]

    def _record(self, probs: np.ndarray, pressure: float, flag: str | None, note: str | None) -> FrameRecord:
        usable = flag is None and np.all(np.isfinite(probs))
        if not math.isfinite(float(pressure)):
            flag, usable = flag or "pressure", False
        boundaries = self.changepoint.update(probs if usable else np.full(len(probs), np.nan), pressure)
        record = FrameRecord(
            index=len(self.records),
            pressure=float(pressure),
            probabilities=[float(v) for v in probs] if usable else None,
            phase=self.model.phase_names[int(np.argmax(probs))] if usable else None,
            flag=flag if flag else (None if usable else "nan"),
            note=note,
            boundaries=boundaries,
        )
        self.records.append(record)
        return record

    @property
    def estimates(self) -> list[BoundaryEstimate]:
        return self.changepoint.estimates()

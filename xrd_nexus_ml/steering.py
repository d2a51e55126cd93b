"""Steer a pressure ramp to a phase transition: where to measure next, and when to stop.

The science of adaptive steering, with no Bluesky in it (the plans in `bluesky_callbacks.plans`
and the evaluation in `evaluation.steering` both drive this one policy). A `SteeringPolicy` looks at
what the scan has learned so far, a `SteeringHistory` (every frame's pressure and its
classifier probability of the phase above the boundary, plus the online change point's
transition estimate: posterior mean, standard deviation, 95 % credible interval), and returns
the next pressure to measure or None when it is done:

1. Coarse: compress by `coarse_step` while the frame at the highest pressure is the low phase.
2. Refine: bisect the gap between measured pressures that holds most posterior mass. If, after
   the first bisection frame, fewer than `n_confirm` frames are the high phase, confirm with a
   frame above the top one (a single misclassified frame then costs a step, not the result:
   if the confirming frame reads low, the coarse ramp resumes from there).
3. Stop when the transition is *known to the precision*: the half-width of the change point's
   95 % credible interval is at most `precision` GPa, the posterior lies inside the measured
   range, and at least `n_confirm` frames of each phase flank the estimate.

Physical assumption, stated honestly. Refining *inside* the bracket means stepping pressure
back down (decompression). That is exact for the simulator (no hysteresis) and reasonable for
displacive transitions reported as sharp and reversible (Fe(1-x)O's cubic -> rhombohedral
distortion, Shu et al. 1998), but a real diamond-anvil cell often shows hysteresis: on
decompression the high phase persists below the compression transition, so frames taken on the
way down bias the estimate low (towards the decompression boundary), and the cell's stress
state changes. Hence three modes:

- "bracketing" (default; honest best on the simulated ramps): coarse ramp, then bisection of the
  gap between measured pressures that holds most posterior mass. Steps back; assumes no
  hysteresis (or a pressure cycle the user accepts).
- "monotonic": compression only. Coarse steps while the top frame is confidently the low phase
  (P(high) < `rise_threshold`), `fine_step` steps once P(high) starts to rise. It reaches the
  precision only when the coexistence region is wider than the coarse step, or the classifier
  sees a precursor; after a sharp transition is overshot it stops and says so
  ("unreachable_without_decompression"), since no compression-only frame can narrow the bracket.
- "uniform": the baseline, a fixed `coarse_step` ramp with the same stopping rule.

The "change point predicts the transition within the next coarse step" trigger for monotonic
mode is deliberately absent: before the first high-phase frame the posterior over the
transition pressure is flat beyond the last frame (no precursor in the data), so it would
fire on the prior, not on evidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from xrd_nexus_ml.errors import XrdNexusMlError

Mode = Literal["bracketing", "monotonic", "uniform"]
MODES: tuple[str, ...] = ("bracketing", "monotonic", "uniform")


class SteeringError(XrdNexusMlError, ValueError):
    """A steering policy or its input is not usable as given (bad range, step, precision, history)."""


@dataclass(frozen=True)
class Estimate:
    """The change point's current transition estimate (GPa): what the policy needs of it."""

    pressure: float  # posterior mean
    sigma: float  # posterior standard deviation
    interval: tuple[float, float]  # 95 % credible interval
    observed: float = 1.0  # posterior mass inside the measured pressure range

    @property
    def half_width(self) -> float:
        """Half the 95 % credible interval: the precision the transition is known to."""
        return 0.5 * (self.interval[1] - self.interval[0])

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.pressure, self.sigma, *self.interval))

    @classmethod
    def from_boundary(cls, boundary: Any) -> Estimate:
        """From a `transitions.BoundaryEstimate` (or anything with pressure, sigma, interval, observed)."""
        return cls(float(boundary.pressure), float(boundary.sigma),
                   (float(boundary.interval[0]), float(boundary.interval[1])),
                   float(getattr(boundary, "observed", 1.0)))

    def to_dict(self) -> dict:
        return {"pressure": self.pressure, "sigma": self.sigma, "interval": list(self.interval),
                "half_width": self.half_width, "observed": self.observed}


@dataclass(frozen=True)
class Observation:
    """One measured frame: its pressure (GPa) and the classifier's P(phase above the boundary);
    NaN for a frame the classifier flagged (it counts against max_frames but carries no vote)."""

    pressure: float
    probability: float


@dataclass(frozen=True)
class SteeringHistory:
    """What the scan knows so far, in measurement order, and the current transition estimate."""

    observations: tuple[Observation, ...] = ()
    estimate: Estimate | None = None

    @property
    def pressures(self) -> list[float]:
        return [o.pressure for o in self.observations]

    def __len__(self) -> int:
        return len(self.observations)

    @classmethod
    def from_records(cls, records: Sequence[Any], boundary: int = 0,
                     estimates: Sequence[Any] | None = None) -> SteeringHistory:
        """From `TransitionTracker.records` (FrameRecord: pressure, probabilities, boundaries).

        P(above boundary k) is the sum of the probabilities of phases k+1 and higher; the
        estimate is `estimates[boundary]` or, by default, that of the last record."""
        obs = []
        for r in records:
            probs = r.probabilities
            p_up = float(np.sum(probs[boundary + 1:])) if probs is not None else float("nan")
            obs.append(Observation(float(r.pressure), p_up))
        if estimates is None:
            estimates = records[-1].boundaries if records else None
        estimate = None
        if estimates:
            if boundary >= len(estimates):
                raise SteeringError(f"boundary {boundary} requested, the tracker has {len(estimates)} boundaries")
            candidate = Estimate.from_boundary(estimates[boundary])
            estimate = candidate if candidate.finite else None
        return cls(tuple(obs), estimate)


@dataclass(frozen=True)
class Decision:
    """One answer of the policy: where to go (None: stop) and why; for logs, documents, plots."""

    pressure: float | None
    reason: str
    n_frames: int
    estimate: Estimate | None = None

    def to_dict(self) -> dict:
        return {"pressure": self.pressure, "reason": self.reason, "n_frames": self.n_frames,
                "estimate": None if self.estimate is None else self.estimate.to_dict()}


#: Reasons a policy stops; "precision_reached" is the only success.
STOP_REASONS = ("precision_reached", "max_frames", "range_exhausted", "resolution_limit",
                "unreachable_without_decompression")


@dataclass(frozen=True)
class SteeringPolicy:
    """Where to measure next on a pressure ramp, to locate one transition to `precision` GPa.

    start, stop: the pressure range the cell may visit (GPa; start < stop, compression).
    precision: target half-width of the 95 % credible interval of the transition pressure.
    coarse_step: the step while no transition is seen (and the uniform mode's only step).
    Default 6 GPa: frames go as (distance to the transition) / step + log2(step / precision),
    so larger steps save frames (measured, 12 ramps, precision 0.5: 12.1 / 10.8 / 10.5 / 9.6
    frames at 4 / 5 / 6 / 8 GPa) but step back further (more decompression travel and
    beamtime; frames far above the transition); 6 GPa is about an eighth of a 5-55 GPa range.
    mode: "bracketing" (default), "monotonic" or "uniform"; see the module docstring.
    max_frames: hard budget; the policy stops there whatever it knows.
    n_confirm: frames of each phase the estimate must be flanked by (guards against one
    misclassified frame). fine_step: monotonic mode's step once P(high) rises (default
    `precision`). confirm_step: step above the first high frame (default coarse_step / 2).
    rise_threshold: P(high) above which monotonic mode slows down (and below 1 - it, counts as
    confidently high). min_spacing: closest two frames may be put (default precision / 4).
    boundary: which boundary of the classifier's phase list (0: between phases 0 and 1).
    transition_widths / resolution: the change point's width family and grid step (GPa); see
    `changepoint_options`.
    """

    start: float = 5.0
    stop: float = 55.0
    precision: float = 0.5
    coarse_step: float = 6.0
    mode: Mode = "bracketing"
    max_frames: int = 60
    n_confirm: int = 2
    fine_step: float | None = None
    confirm_step: float | None = None
    rise_threshold: float = 0.1
    min_spacing: float | None = None
    boundary: int = 0
    transition_widths: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
    resolution: float | None = None

    def __post_init__(self):
        def finite(name: str) -> float:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SteeringError(f"SteeringPolicy.{name} must be a finite number of GPa, got {value!r}")
            return float(value)

        start, stop = finite("start"), finite("stop")
        if not stop > start:
            raise SteeringError(f"SteeringPolicy needs start < stop (a compression), got start={start}, stop={stop}")
        for name in ("precision", "coarse_step"):
            if finite(name) <= 0:
                raise SteeringError(f"SteeringPolicy.{name} must be > 0 GPa, got {getattr(self, name)}")
        for name in ("fine_step", "confirm_step", "min_spacing", "resolution"):
            if getattr(self, name) is not None and finite(name) <= 0:
                raise SteeringError(f"SteeringPolicy.{name} must be > 0 GPa or None, got {getattr(self, name)}")
        if self.mode not in MODES:
            raise SteeringError(f"SteeringPolicy.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.max_frames, int) or self.max_frames < 2:
            raise SteeringError(f"SteeringPolicy.max_frames must be an integer >= 2, got {self.max_frames!r}")
        if not isinstance(self.n_confirm, int) or self.n_confirm < 1:
            raise SteeringError(f"SteeringPolicy.n_confirm must be an integer >= 1, got {self.n_confirm!r}")
        if not 0.0 < self.rise_threshold < 0.5:
            raise SteeringError(f"SteeringPolicy.rise_threshold must lie in (0, 0.5), got {self.rise_threshold}")
        if not isinstance(self.boundary, int) or self.boundary < 0:
            raise SteeringError(f"SteeringPolicy.boundary must be an integer >= 0, got {self.boundary!r}")
        widths = tuple(float(w) for w in self.transition_widths)
        if not widths or any(not (math.isfinite(w) and w > 0) for w in widths):
            raise SteeringError(f"SteeringPolicy.transition_widths must be positive GPa, got {self.transition_widths}")
        object.__setattr__(self, "transition_widths", widths)

    # -- derived settings ------------------------------------------------------------------------

    @property
    def allows_decompression(self) -> bool:
        return self.mode == "bracketing"

    @property
    def fine(self) -> float:
        return self.fine_step if self.fine_step is not None else self.precision

    @property
    def confirm(self) -> float:
        return self.confirm_step if self.confirm_step is not None else 0.5 * self.coarse_step

    @property
    def spacing(self) -> float:
        return self.min_spacing if self.min_spacing is not None else 0.25 * self.precision

    def changepoint_options(self) -> dict:
        """Options for `OnlineChangePoint` / `TransitionTracker` that suit a steered ramp.

        Its defaults scale with the median pressure step, which a steered ramp changes as it
        refines; here the θ grid is fixed to precision / 20, the transition widths are physical
        (GPa) and the grid reaches two coarse steps beyond the measured pressures."""
        return {"resolution": self.resolution or self.precision / 20.0,
                "widths": list(self.transition_widths),
                "margin": 2.0 * self.coarse_step,
                "settle_sigma": self.precision / 2.0}

    def to_dict(self) -> dict:
        """The configuration (JSON-ready), e.g. for a run's start document."""
        d = asdict(self)
        d["transition_widths"] = list(self.transition_widths)
        return d

    @classmethod
    def uniform(cls, precision: float, start: float = 5.0, stop: float = 55.0, step: float | None = None,
                **kwargs) -> SteeringPolicy:
        """The baseline: a uniform ramp of `step` (default 2 x precision, the coarsest grid whose
        bracket can reach the precision), stopping by the same rule as the adaptive policy."""
        step = 2.0 * precision if step is None else step
        max_frames = kwargs.pop("max_frames", int(math.ceil((stop - start) / step)) + 1)
        return cls(start=start, stop=stop, precision=precision, coarse_step=step, mode="uniform",
                   max_frames=max_frames, **kwargs)

    # -- the decision ----------------------------------------------------------------------------

    def next_pressure(self, history: SteeringHistory) -> float | None:
        """The next pressure to measure (GPa), or None when done (see `decide` for why)."""
        return self.decide(history).pressure

    def precision_reached(self, history: SteeringHistory) -> bool:
        """The stopping rule: 95 % half-width <= precision, posterior inside the measured range
        (>= 99 %), at least n_confirm frames of each phase on their side of the estimate."""
        est = history.estimate
        if est is None or not est.finite or est.half_width > self.precision or est.observed < 0.99:
            return False
        p, q = _arrays(history)
        low = np.sum((p < est.pressure) & (q < 0.5))
        high = np.sum((p > est.pressure) & (q >= 0.5))
        return bool(min(low, high) >= self.n_confirm)

    def decide(self, history: SteeringHistory) -> Decision:
        """The next pressure and the reason for it; pure: same history, same decision."""
        if not isinstance(history, SteeringHistory):
            raise SteeringError(f"decide() expects a SteeringHistory, got {type(history).__name__}")
        n = len(history)
        est = history.estimate
        if n == 0:
            return Decision(self.start, "start", n, est)
        if self.precision_reached(history):
            return Decision(None, "precision_reached", n, est)
        if n >= self.max_frames:
            return Decision(None, "max_frames", n, est)
        p, q = _arrays(history)
        usable = np.isfinite(q)
        if not usable.any():  # every frame flagged so far: keep ramping, nothing to steer on
            return self._up(float(p.max()), self.coarse_step, "coarse: no usable frame yet", n, est)
        order = np.argsort(p[usable], kind="stable")
        pu, qu = p[usable][order], q[usable][order]
        top_p = float(pu[-1])
        top_run = _top_run_high(pu, qu)  # frames at the top of the ramp that are the high phase

        if self.mode == "uniform":
            return self._up(float(p.max()), self.coarse_step, "uniform step", n, est)
        if self.mode == "monotonic":
            return self._monotonic(float(p.max()), pu, qu, top_run, n, est)

        # bracketing
        if top_run == 0:
            return self._up(top_p, self.coarse_step, "coarse: top frame is the low phase", n, est)
        n_high = int(np.sum(qu >= 0.5))
        just_detected = float(p[-1]) == top_p and top_run == 1  # the last frame was the first high one at the top
        target = self._bisect(pu, est)
        if n_high < self.n_confirm and (not just_detected or target is None):
            # one bisection frame may land in the high phase for free; if it did not, confirm above
            return self._up(top_p, self.confirm, f"confirm: {n_high} of {self.n_confirm} high frames", n, est)
        if target is None:
            return Decision(None, "resolution_limit", n, est)
        return Decision(target, "refine: bisect the gap with most posterior mass", n, est)

    # -- helpers ---------------------------------------------------------------------------------

    def _up(self, top: float, step: float, reason: str, n: int, est: Estimate | None) -> Decision:
        """One step up from `top`, clipped to `stop`; None at the end of the range."""
        if top >= self.stop - 1e-9:
            return Decision(None, "range_exhausted", n, est)
        return Decision(min(top + step, self.stop), reason, n, est)

    def _monotonic(self, top: float, pu: np.ndarray, qu: np.ndarray, top_run: int, n: int,
                   est: Estimate | None) -> Decision:
        last_q = float(qu[np.argmax(pu)])  # the frame at the highest pressure
        confident_high = int(np.sum(qu[-top_run:] >= 1.0 - self.rise_threshold)) if top_run else 0
        if confident_high >= self.n_confirm:
            # the high phase is established above the bracket: more compression cannot narrow it
            return Decision(None, "unreachable_without_decompression", n, est)
        if last_q >= self.rise_threshold or top_run:
            return self._up(top, self.fine, f"fine: P(high) = {last_q:.2f} >= {self.rise_threshold}", n, est)
        return self._up(top, self.coarse_step, f"coarse: P(high) = {last_q:.2f} < {self.rise_threshold}", n, est)

    def _bisect(self, pu: np.ndarray, est: Estimate | None) -> float | None:
        """Midpoint of the gap between measured pressures holding most posterior mass (a normal
        approximation of the posterior); gaps narrower than 2 x min_spacing are not split."""
        grid = np.unique(np.round(pu, 9))
        if grid.size < 2:
            return None
        lo, hi = grid[:-1], grid[1:]
        if est is not None and est.finite and est.sigma > 0:
            mass = _normal_cdf((hi - est.pressure) / est.sigma) - _normal_cdf((lo - est.pressure) / est.sigma)
        else:  # no estimate yet: the widest gap
            mass = hi - lo
        mass = np.where(hi - lo >= 2.0 * self.spacing, mass, -np.inf)
        if not np.isfinite(mass).any():
            return None
        k = int(np.argmax(mass))
        return float(0.5 * (lo[k] + hi[k]))


def _arrays(history: SteeringHistory) -> tuple[np.ndarray, np.ndarray]:
    p = np.array([o.pressure for o in history.observations], dtype=float)
    q = np.array([o.probability for o in history.observations], dtype=float)
    return p, q


def _top_run_high(pu: np.ndarray, qu: np.ndarray) -> int:
    """How many frames, from the highest pressure down, are classified high (P >= 0.5)."""
    run = 0
    for value in qu[::-1]:
        if value < 0.5:
            break
        run += 1
    return run


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return np.array([0.5 * math.erfc(-float(v) / math.sqrt(2.0)) for v in np.ravel(z)]).reshape(np.shape(z))


# -- driving a policy without Bluesky --------------------------------------------------------------


@dataclass
class SteeringResult:
    """A steered scan: every decision with its reason, the frames and the final estimate."""

    policy: dict
    decisions: list[Decision] = field(default_factory=list)
    history: SteeringHistory = field(default_factory=SteeringHistory)

    @property
    def n_frames(self) -> int:
        return len(self.history)

    @property
    def pressures(self) -> list[float]:
        return self.history.pressures

    @property
    def estimate(self) -> Estimate | None:
        return self.history.estimate

    @property
    def stop_reason(self) -> str | None:
        return self.decisions[-1].reason if self.decisions and self.decisions[-1].pressure is None else None

    @property
    def precision_reached(self) -> bool:
        return self.stop_reason == "precision_reached"

    @property
    def n_moves(self) -> int:
        """Pressure changes: a move before every frame whose pressure differs from the previous one."""
        p = self.pressures
        return sum(1 for a, b in zip([math.nan, *p[:-1]], p) if not a == b)

    @property
    def travel(self) -> float:
        """Total |ΔP| (GPa) from the first frame on, decompression included."""
        p = np.asarray(self.pressures, dtype=float)
        return float(np.abs(np.diff(p)).sum()) if p.size > 1 else 0.0

    @property
    def decompressions(self) -> int:
        p = np.asarray(self.pressures, dtype=float)
        return int(np.sum(np.diff(p) < 0)) if p.size > 1 else 0

    def to_dict(self) -> dict:
        return {"policy": self.policy, "n_frames": self.n_frames, "pressures": self.pressures,
                "probabilities": [o.probability for o in self.history.observations],
                "decisions": [d.to_dict() for d in self.decisions], "stop_reason": self.stop_reason,
                "estimate": None if self.estimate is None else self.estimate.to_dict(),
                "n_moves": self.n_moves, "travel_gpa": self.travel, "decompressions": self.decompressions}


def steer(policy: SteeringPolicy, tracker: Any, measure: Callable[[float], Any]) -> SteeringResult:
    """Run `policy` to the end with a `TransitionTracker` and a `measure(pressure) -> frame`.

    The loop a plan runs, minus Bluesky: decide, measure, classify + change point, repeat. The
    tracker should be built with `policy.changepoint_options()`."""
    result = SteeringResult(policy=policy.to_dict())
    history = SteeringHistory()
    while True:
        decision = policy.decide(history)
        result.decisions.append(decision)
        if decision.pressure is None:
            break
        tracker.update(measure(decision.pressure), decision.pressure)
        history = SteeringHistory.from_records(tracker.records, policy.boundary)
        result.history = history
    return result

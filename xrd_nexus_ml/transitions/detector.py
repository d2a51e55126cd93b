"""A training-free phase-transition detector: the assemblage's reflections, tracked along the scan.

No CIF and no training: the first frames of a scan define the *assemblage* (the set of
reflections of whatever phases the sample holds); every later frame is compared with it. Why
reflections and not whole profiles: under compression or heating every peak moves, broadens and
changes height, and a profile distance (the cosine of NMF-style phase mapping, Maffettone et al.;
CAMEO, Kusne et al. 2020) reads that drift as a change. A set of reflections survives it:

- On a log-q axis an isotropic change of the cell is a translation. Each frame is first aligned
  to the assemblage's anchor frame by cross-correlation (searched around the shift the scan's
  trend predicts), then every tracked reflection is looked for in a small window around its
  predicted place and its position, height and width are updated: anisotropic strain, gradual
  broadening and texture are followed, one frame at a time.
- A change is what compression cannot do: intensity where the assemblage has no reflection
  (`new`: new peaks, a split larger than the window), reflections that are gone (`vanished`,
  height below `presence` of what it was), some reflections widening far more than the others
  (`split`: a splitting within the window; a global broadening widens all of them alike), or
  the whole pattern jumping off its shift trend (`jump`: an isostructural volume collapse).
  The frame's change score is the largest of the first three (each a fraction of intensity).
- A frame over `threshold` starts a candidate change; `confirm` such frames in a row make it a
  transition (a lone bad frame does not), and the detector enters the coexistence of the old and
  the new assemblage: reflections that appear are added to the new set, and the new assemblage
  is fixed once nothing new has appeared for `confirm` frames and the old set's own reflections
  are gone or stopped fading. Up to `MAX_ASSEMBLAGES` assemblages per scan (3 transitions).

Per frame the detector gives a probability vector over the assemblages: one-hot inside one,
during a coexistence the fraction f of the transformation (how much of the old set's own
reflections has gone, relative to their height before), for a candidate frame at least 0.5.
These feed the project's online Bayesian change point (`OnlineChangePoint`, the same one the
trained models use), so the transition value, its uncertainty, `history()` for the steering and
the records are the same as with a trained model. When a transition is confirmed the change
point is rebuilt from the stored evidence with the final fractions (once per transition).

Frames out of control order (a steered scan bisecting a bracket) do not move the tracking: they
are scored against the assemblage(s) on either side of their control value and only add
evidence. A scan that turns back (decompression) is split into legs by `detect_series`.
Tuned (threshold, confirm, the systematic term) on the materials of
`evaluation.transition_materials.TUNING_MATERIALS` only; the held-out scores are in docs/transition-detector.md.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy.fft import next_fast_len
from scipy.ndimage import gaussian_filter1d, grey_opening, uniform_filter1d
from scipy.signal import find_peaks

from xrd_nexus_ml.errors import XrdNexusMlError
from xrd_nexus_ml.pattern import Diffractogram, QGrid, two_theta_to_q
from xrd_nexus_ml.preprocess.frames import prepare_frames
from xrd_nexus_ml.transitions.changepoint import BoundaryEstimate, FrameRecord, OnlineChangePoint

#: Distinct assemblages one scan can hold (so at most MAX_ASSEMBLAGES - 1 transitions).
MAX_ASSEMBLAGES = 4
ASSEMBLAGE_NAMES = tuple(f"assemblage {k + 1}" for k in range(MAX_ASSEMBLAGES))
KIND = "assemblage_tracking"
#: Share of a coexistence's observed extent taken as the systematic error of its 50 % point.
MIXTURE_FRACTION = 0.25
#: Accepted frames back that a reflection's width is compared with (the split criterion).
WIDTH_LAG = 6


class DetectorError(XrdNexusMlError, ValueError):
    """The detector cannot run as asked (bad settings, no usable frame)."""


@dataclass(frozen=True)
class DetectorSettings:
    """What counts as a change. Defaults tuned on the tuning materials (module docstring)."""

    threshold: float = 0.12  # a change score (fraction of intensity) at or above this is a candidate
    confirm: int = 2  # candidate frames in a row that make a transition
    noise_sigmas: float = 5.0  # signal: the smoothed frame above this many noise σ
    presence: float = 0.3  # a reflection is gone below this share of its expected height
    window_widths: float = 0.8  # half-width of a reflection's search window, in peak FWHMs
    split_ratio: float = 1.10  # a reflection widened (since the anchor) this much more than the least widened ones
    jump_widths: float = 1.0  # a shift off the trend by this many FWHMs is a volume jump
    max_shift: float = 0.08  # largest |Δ ln q| searched between a frame and its anchor (8 % in d)
    min_peak_sigmas: float = 8.0  # reflections of the assemblage: peaks above this many noise σ
    max_peaks: int = 64  # strongest reflections tracked
    systematic_steps: float = 0.52  # systematic σ, in control steps: `calibrate_detector()` on the tuning materials
    max_stored: int = 4096  # frames kept for the rebuild at a transition (older ones as evidence only)

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise DetectorError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.confirm < 1:
            raise DetectorError(f"confirm must be at least 1 frame, got {self.confirm}")
        if not 0.0 < self.presence < 1.0:
            raise DetectorError(f"presence must lie in (0, 1), got {self.presence}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DetectorFrame:
    """What the detector says about one frame."""

    index: int
    control: float
    assemblage: int  # index of the assemblage it belongs to (-1: flagged)
    status: str  # "same", "changed" (candidate or coexistence), "outlier" (set aside), "flagged"
    score: float  # the change score: max(new, vanished, split)
    new: float
    vanished: float
    split: float
    jump: float  # |shift - trend| in FWHMs
    fraction: float  # fraction transformed towards the next assemblage (0 inside one)
    probabilities: tuple[float, ...]
    flag: str | None = None

    def to_dict(self) -> dict:
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in asdict(self).items()}


@dataclass
class _Reflections:
    """The tracked reflections of one assemblage (positions in log-q points, on the frame)."""

    position: np.ndarray
    height: np.ndarray
    width: np.ndarray  # FWHM in points
    shift: float  # the anchor shift at which `position` was last updated
    control: float

    def copy(self) -> _Reflections:
        return _Reflections(self.position.copy(), self.height.copy(), self.width.copy(), self.shift, self.control)


@dataclass
class _Assemblage:
    anchor: np.ndarray  # smoothed log-q frame the shifts refer to
    anchor_fft: np.ndarray
    reflections: _Reflections
    first: _Reflections  # as at the anchor (for frames out of order)
    trend: list[tuple[float, float]] = field(default_factory=list)  # (control, shift) of accepted frames
    own: np.ndarray | None = None  # bool per reflection: not shared with the previous assemblage
    reference_height: np.ndarray | None = None  # heights of its own reflections before the change
    lo: float = math.inf
    hi: float = -math.inf
    settled_split: np.ndarray | None = None  # bool per reflection: already split when it began
    anchor_sigma: float = 1e-3  # noise σ of the anchor frame
    widths: list = field(default_factory=list)  # the reflections' widths at the last few accepted frames
    reference_total: float = 1.0  # total signal of the frames whose heights `reference_height` holds


class _Axis:
    """The detector's log-q axis, set from the first usable frame (a transition scan keeps its
    detector; frames of another range are masked where they do not reach)."""

    def __init__(self, q_min: float, q_max: float, n_points: int):
        self.grid = QGrid(q_min, q_max, n_points)
        q = self.grid.values
        log_q = np.linspace(math.log(q_min), math.log(q_max), n_points)
        t = np.exp(log_q)
        left = np.clip(np.searchsorted(q, t, side="right") - 1, 0, n_points - 2)
        self.left = left
        self.weight = np.clip((t - q[left]) / (q[left + 1] - q[left]), 0.0, 1.0)
        self.du = float(log_q[1] - log_q[0])
        self.n = n_points

    def to_log(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = x[:, self.left]
        y = a + (x[:, self.left + 1] - a) * self.weight
        m = mask[:, self.left] & mask[:, self.left + 1]
        return np.where(m, y, 0.0), m


def _frame_axis(frame, two_theta, wavelength) -> np.ndarray | None:
    """q of a frame (Å⁻¹), or None when it has no usable axis."""
    if isinstance(frame, Diffractogram):
        try:
            return frame.q
        except Exception:  # noqa: BLE001 - a pattern without a wavelength has no q axis
            return None
    if two_theta is None or wavelength is None:
        return None
    return two_theta_to_q(np.asarray(two_theta, dtype=float), float(wavelength))


def _fwhm_points(y: np.ndarray) -> float:
    """Typical peak FWHM (points) of a frame: median width of its strongest peaks."""
    peaks, props = find_peaks(y, height=0.05 * float(y.max()), width=1.0, rel_height=0.5)
    if peaks.size == 0:
        return 4.0
    order = np.argsort(-props["peak_heights"])[:12]
    return float(np.clip(np.median(props["widths"][order]), 2.0, y.size / 20))


class AssemblageDetector:
    """Online training-free change detector along a control variable (pressure, temperature, ...).

    `update_many(frames, controls)` takes a batch in arrival order (arrays on `two_theta` at
    `wavelength`, or `Diffractogram`s) and returns one `DetectorFrame` each; `estimates()` the
    transition estimates (`BoundaryEstimate`, in the control's unit) of the assemblages seen so
    far; `probabilities` are over `ASSEMBLAGE_NAMES`.
    """

    phase_names = ASSEMBLAGE_NAMES
    kind = KIND

    def __init__(self, two_theta=None, wavelength: float | None = None, settings: DetectorSettings | None = None,
                 changepoint_options: dict | None = None, n_points: int | None = None):
        self.settings = settings or DetectorSettings()
        self.two_theta = None if two_theta is None else np.asarray(two_theta, dtype=float)
        self.wavelength = wavelength
        self.n_points = n_points
        self.changepoint_options = dict(changepoint_options or {})
        self._axis: _Axis | None = None
        self._fwhm = 4.0
        self.assemblages: list[_Assemblage] = []
        self._pending: list[int] = []  # stored indices of candidate frames (forward, in a row)
        self._coexisting = False  # between a confirmed change and a fixed new assemblage
        self._quiet = 0  # frames of the coexistence with no reflection added
        self._split_transition = False  # the current change is a distortion (split lines only)
        self._last_total = 1.0  # total signal of the last frame taken as the same assemblage
        self._stored: dict[int, tuple[np.ndarray, float]] = {}  # index -> (smoothed frame, noise)
        # every frame's control and probabilities, compact (a 10^6-frame scan keeps ~40 MB)
        self._evidence_control = np.zeros(1024)
        self._evidence_p = np.zeros((1024, MAX_ASSEMBLAGES), np.float32)
        self._n_evidence = 0
        self._fed = 0  # evidence entries the change point has seen
        self._mixed: dict[int, tuple[float, float]] = {}  # boundary -> control span of mixed frames
        self.frames: deque[DetectorFrame] = deque(maxlen=self.settings.max_stored)  # the recent ones
        self.n_frames = 0
        self._controls: list[float] = []  # the distinct finite control values, sorted
        self._top: float = -math.inf  # largest control of a forward frame so far
        self._changepoint = self._new_changepoint(1)

    # -- public -------------------------------------------------------------------------------

    def update(self, frame, control: float) -> DetectorFrame:
        return self.update_many([frame], [control])[0]

    def update_many(self, frames, controls, two_theta=None, wavelength: float | None = None) -> list[DetectorFrame]:
        """A batch in arrival order; two_theta / wavelength: the detector axis of bare arrays (kept)."""
        if two_theta is not None:
            self.two_theta = np.asarray(two_theta, dtype=float)
            self.wavelength = wavelength
        controls = [float(c) for c in np.asarray(controls, dtype=float).ravel()]
        if len(controls) != len(frames):
            raise DetectorError(f"{len(frames)} frames but {len(controls)} control values")
        if not len(frames):
            return []
        ys, ms, flags = self._prepare(frames)
        out = []
        for i, control in enumerate(controls):
            noise = float(self._noise[i]) if ys is not None else math.nan
            record = self._one(ys[i] if ys is not None else None, ms[i] if ms is not None else None, flags[i], control,
                               noise)
            self._add_evidence(control, record.probabilities)
            out.append(record)
        self._feed()
        return out

    def estimates(self) -> list[BoundaryEstimate]:
        """The change point's estimates: the first boundary always (before any change its posterior
        lies beyond the frames, which is what a steering policy reads), then one per further
        assemblage seen."""
        if not self.n_frames:
            return []
        return [self._systematic(b) for b in self._changepoint.estimates()[: max(1, len(self.assemblages) - 1)]]

    def transitions(self) -> list[BoundaryEstimate]:
        """The confirmed transitions only (between assemblages actually seen)."""
        n = len(self.assemblages) - 1
        return [self._systematic(b) for b in self._changepoint.estimates()[:n]] if n > 0 else []

    def _systematic(self, b: BoundaryEstimate) -> BoundaryEstimate:
        """The estimate with the detector's systematic error added in quadrature: `systematic_steps`
        times the gap between the frames that bracket it (a ramp's step; after a steered scan's
        bisection, its last bracket), unless the change point was given its own."""
        if "systematic_sigma" in self.changepoint_options or not math.isfinite(b.pressure):
            return b
        controls = self._controls
        j = bisect.bisect_right(controls, b.pressure)
        if 0 < j < len(controls):
            gap = controls[j] - controls[j - 1]
        else:
            gap = float(np.median(np.diff(controls))) if len(controls) > 1 else 0.0
        # a coexistence seen over a span of the control: its 50 % point is known to a quarter of it
        # at best (the two phases' scattering powers differ: the mixture's intensity fraction is not
        # its volume fraction), however finely the frames bracket it
        lo, hi = self._mixed.get(b.boundary, (0.0, 0.0))
        sys = max(self.settings.systematic_steps * gap, MIXTURE_FRACTION * (hi - lo))
        total = math.hypot(b.sigma, sys)
        lo, hi = b.interval
        interval = (b.pressure - math.hypot(b.pressure - lo, 1.96 * sys),
                    b.pressure + math.hypot(hi - b.pressure, 1.96 * sys))
        return replace(b, sigma=total, interval=interval)

    @property
    def n_assemblages(self) -> int:
        return len(self.assemblages)

    def describe(self) -> dict:
        return {"kind": KIND, "settings": self.settings.to_dict(), "fwhm_points": self._fwhm,
                "log_q_step": self._axis.du if self._axis else None}

    # -- preparation ----------------------------------------------------------------------------

    def _prepare(self, frames):
        frames = list(frames)
        if self._axis is None:
            for f in frames:
                q = _frame_axis(f, self.two_theta, self.wavelength)
                y = np.asarray(f.intensity if isinstance(f, Diffractogram) else f, dtype=float).ravel()
                if q is None or q.size < 16 or y.size != q.size or not np.all(np.isfinite(y)) or np.ptp(y) == 0:
                    continue
                n = self.n_points or int(np.clip(q.size, 1024, 8192))
                self._axis = _Axis(float(q[0]), float(q[-1]), n)
                break
            if self._axis is None:
                n = len(frames)
                return None, None, ["unreadable" if self.two_theta is None else "nan"] * n
        kwargs = {"two_theta": self.two_theta, "wavelength": self.wavelength} if self.two_theta is not None else {}
        prepared = prepare_frames(frames, self._axis.grid, snip_width_q=None, **kwargs)
        raw, m = self._axis.to_log(prepared.x.astype(float), prepared.mask)
        for i in np.flatnonzero(m.any(1) & ~m.all(1)):  # unmeasured ends: the edge value (SNIP needs no step)
            idx = np.flatnonzero(m[i])
            raw[i, : idx[0]], raw[i, idx[-1] + 1:] = raw[i, idx[0]], raw[i, idx[-1]]
        flags = list(prepared.flags)
        if not self.assemblages and any(f is None for f in flags):
            first = next(i for i, f in enumerate(flags) if f is None)
            self._fwhm = _fwhm_points(raw[first] - grey_opening(raw[first], size=int(len(raw[first]) // 20) + 1))
        # smoothed at half the peak width; the background is a morphological opening over six
        # peak widths, smoothed (SNIP cuts under the concave humps of a diamond-anvil cell's
        # background); the residual offset is removed, the noise σ is the MAD of what is left
        ys = gaussian_filter1d(raw, self._sigma_smooth, axis=1, mode="nearest")
        size = int(6 * self._fwhm) | 1
        background = uniform_filter1d(grey_opening(ys, size=(1, size)), size, axis=1, mode="nearest")
        y = ys - background
        if m.all():  # one detector, every point measured: all rows at once
            centre = np.median(y, axis=1, keepdims=True)
            y -= centre
            noise = 1.4826 * np.median(np.abs(y), axis=1)
        else:
            noise = np.empty(len(y))
            for i in range(len(y)):
                values = y[i][m[i]] if m[i].any() else y[i]
                centre = float(np.median(values))
                y[i] -= centre
                noise[i] = 1.4826 * float(np.median(np.abs(values - centre)))
        y = np.where(m, np.clip(y, 0.0, None), 0.0)
        top = np.maximum(y.max(axis=1), 1e-12)
        y /= top[:, None]
        self._noise = np.maximum(noise / top, 1e-4)
        return y, m, flags

    @property
    def _sigma_smooth(self) -> float:
        return max(0.5, 0.5 * self._fwhm / 2.355)

    # -- one frame -------------------------------------------------------------------------------

    def _one(self, y, m, flag, control: float, noise: float) -> DetectorFrame:
        index = self.n_frames
        self.n_frames += 1
        if math.isfinite(control):
            j = bisect.bisect_left(self._controls, control)
            if j == len(self._controls) or self._controls[j] != control:
                self._controls.insert(j, control)
        if flag is not None or y is None or not math.isfinite(control):
            record = DetectorFrame(index, control, -1, "flagged", *([math.nan] * 6),
                                   probabilities=(math.nan,) * MAX_ASSEMBLAGES,
                                   flag=flag or ("control" if not math.isfinite(control) else "nan"))
            self.frames.append(record)
            return record
        sigma = noise  # noise σ of the smoothed, background-free frame (max 1)
        if not self.assemblages:
            self._start_assemblage(y, m, sigma, control, previous=None)
            self._top = control
            return self._record(index, control, 0, "same", (0.0, 0.0, 0.0, 0.0), 0.0)
        forward = (control >= self._top
                   or not self._coexisting and not self._pending and control >= self.assemblages[-1].hi)
        if not forward:
            return self._side(index, y, m, sigma, control)
        self._top = max(self._top, control)
        current = self.assemblages[-1]
        scores, found = self._score(current, y, m, sigma, control)
        new, vanished, split, jump = scores
        score = max(new, vanished, split)
        s = self.settings
        changed = score >= s.threshold or jump >= s.jump_widths
        k = len(self.assemblages) - 1
        if self._coexisting:
            return self._coexistence(index, y, m, sigma, control, scores, found)
        if not changed:
            if self._pending:  # the candidates before were lone bad frames
                self._pending = []
            self._track(current, found, control)
            self._last_total = self._total(y, sigma)
            return self._record(index, control, k, "same", scores, 0.0)
        self._store(index, y, sigma)
        self._pending.append(index)
        if len(self._pending) >= s.confirm and len(self.assemblages) < MAX_ASSEMBLAGES:
            split_seen = split >= s.threshold and max(new, vanished) < s.threshold
            self._confirm(y, m, sigma, control, split_seen or (self.frames[-1].split >= s.threshold
                                                               and max(self.frames[-1].new,
                                                                       self.frames[-1].vanished) < s.threshold))
            fraction = self._fraction(self.assemblages[-2], y, m, sigma, control)
            return self._record(index, control, k + 1, "changed", scores, max(fraction, 0.5))
        # a candidate: at least even odds, more as the old assemblage's own lines are gone
        lost = 0.0 if split >= s.threshold else self._fraction(current, y, m, sigma, control)
        fraction = float(np.clip(max(lost, 0.5 + 0.5 * max(score - s.threshold, 0.0) / s.threshold), 0.5, 1.0))
        return self._record(index, control, k, "changed", scores, fraction, towards=k + 1)

    def _record(self, index, control, k, status, scores, fraction, towards: int | None = None) -> DetectorFrame:
        p = np.zeros(MAX_ASSEMBLAGES)
        if towards is not None and towards < MAX_ASSEMBLAGES:
            p[k], p[towards] = 1.0 - fraction, fraction
        elif status == "changed" and k > 0 and self._coexisting:
            p[k - 1], p[k] = 1.0 - fraction, fraction
        else:
            p[min(k, MAX_ASSEMBLAGES - 1)] = 1.0
        new, vanished, split, jump = scores
        record = DetectorFrame(index, control, k, status, float(max(new, vanished, split)), float(new),
                               float(vanished), float(split), float(jump), float(fraction),
                               tuple(float(v) for v in p))
        self.frames.append(record)
        return record

    # -- reflections -----------------------------------------------------------------------------

    def _find(self, y: np.ndarray, m: np.ndarray, sigma: float) -> _Reflections:
        s = self.settings
        peaks, props = find_peaks(np.where(m, y, 0.0), height=s.min_peak_sigmas * sigma,
                                  prominence=0.5 * s.min_peak_sigmas * sigma, width=0.5, rel_height=0.5)
        order = np.argsort(-props["peak_heights"])[: s.max_peaks]
        order = np.sort(order)
        return _Reflections(peaks[order].astype(float), props["peak_heights"][order].astype(float),
                            np.maximum(props["widths"][order], 1.0), 0.0, math.nan)

    def _start_assemblage(self, y, m, sigma, control, previous: _Assemblage | None) -> _Assemblage:
        reflections = self._find(y, m, sigma)
        reflections.control = control
        if reflections.position.size:  # widths measured as every later frame's will be
            _, _, width, _ = self._locate(reflections, 0.0, y, sigma)
            reflections.width = np.maximum(width, 1.0)
        anchor_fft = np.fft.rfft(y, next_fast_len(2 * y.size, real=True))  # a length pocketfft does fast
        a = _Assemblage(anchor=y, anchor_fft=anchor_fft, reflections=reflections, first=reflections.copy(),
                        trend=[(control, 0.0)], lo=control, hi=control, anchor_sigma=sigma)
        if previous is not None:
            own = np.ones(reflections.position.size, bool)
            pos = previous.reflections.position
            if pos.size:  # shared: within a window of a reflection of the previous one, moved to this frame
                pos = pos + (self._shift(previous, y, control) - previous.reflections.shift)
                d = np.abs(reflections.position[:, None] - pos[None, :]).min(1)
                own = d > self.settings.window_widths * self._fwhm
            a.own = own
        self.assemblages.append(a)
        return a

    def _shift(self, a: _Assemblage, y: np.ndarray, control: float) -> float:
        """The log-q shift (points) of frame y against the assemblage's anchor, near its trend."""
        n = y.size
        size = next_fast_len(2 * n, real=True)
        corr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(a.anchor_fft), size)  # corr[l] = Σ y[i+l] anchor[i]
        predicted = self._predicted_shift(a, control)
        limit = int(self.settings.max_shift / self._axis.du)
        reach = max(3.0 * self._fwhm, 0.5 * abs(predicted - a.trend[-1][1]) + 2.0 * self._fwhm)
        if len(a.trend) < 2:  # no trend yet: the whole range searched
            reach = float(limit)
        lo = int(max(-limit, math.floor(predicted - reach)))
        hi = int(min(limit, math.ceil(predicted + reach)))
        if hi < lo:
            lo, hi = -limit, limit
        lags = np.arange(lo, hi + 1)
        values = corr[lags % size]
        j = int(np.argmax(values))
        if 0 < j < len(values) - 1:  # parabolic refinement
            den = values[j - 1] - 2 * values[j] + values[j + 1]
            off = 0.5 * (values[j - 1] - values[j + 1]) / den if den < 0 else 0.0
            return float(lags[j] + np.clip(off, -0.5, 0.5))
        return float(lags[j])

    @staticmethod
    def _predicted_shift(a: _Assemblage, control: float) -> float:
        if len(a.trend) < 2:
            return a.trend[-1][1]
        recent = a.trend[-8:]
        c = [t[0] for t in recent]
        s = [t[1] for t in recent]
        c_mean, s_mean = sum(c) / len(c), sum(s) / len(s)
        var = sum((x - c_mean) ** 2 for x in c)
        if var == 0:
            return float(s[-1])
        slope = sum((x - c_mean) * (y - s_mean) for x, y in zip(c, s)) / var  # least squares, closed form
        nearest = min(range(len(c)), key=lambda i: abs(c[i] - control))
        return float(s[nearest] + slope * (control - c[nearest]))

    def _locate(self, refl: _Reflections, shift: float, y: np.ndarray, sigma: float):
        """Each reflection looked for near its predicted place: (position, height, width, in range)."""
        n = y.size
        half = max(2, int(round(self.settings.window_widths * self._fwhm)))
        offsets = np.arange(-half, half + 1)
        center = refl.position + (shift - refl.shift)
        idx = np.rint(center).astype(int)[:, None] + offsets[None, :]
        inside = (idx[:, 0] >= 0) & (idx[:, -1] < n)
        window = y[np.clip(idx, 0, n - 1)]
        j = np.argmax(window, axis=1)
        height = window[np.arange(len(j)), j]
        position = idx[np.arange(len(j)), j].astype(float)
        # width: the integral breadth (area / height) over ±1.5 FWHM around the maximum, which is
        # not quantised by the grid the way a half-height width of a few points is; a split line
        # keeps its area and loses height, so its breadth grows
        reach = max(2, int(round(1.5 * self._fwhm)))
        around = np.clip(np.rint(position).astype(int)[:, None] + np.arange(-reach, reach + 1)[None, :], 0, n - 1)
        area = y[around].sum(1)
        width = area / np.maximum(height, 1e-12) / 1.0645  # a Gaussian's FWHM from its integral breadth
        return position, height, width, inside

    def _score(self, a: _Assemblage, y: np.ndarray, m: np.ndarray, sigma: float, control: float):
        """(new, vanished, split, jump) of frame y against assemblage a, and what was found."""
        s = self.settings
        shift = self._shift(a, y, control)
        refl = a.reflections
        position, height, width, inside = self._locate(refl, shift, y, sigma)
        n = y.size
        # the region both the frame and the anchor (shifted) cover, less a margin at the edges
        edge = int(abs(shift)) + int(3 * self._fwhm) + 1
        valid = m.copy()
        valid[:edge] = False
        valid[max(0, n - edge):] = False
        # reflections present: at least `presence` of their expected height (robust global scale)
        strong = inside & (refl.height > 0)
        if strong.any():
            ratios = height[strong] / refl.height[strong]
            scale = float(np.median(ratios[np.argsort(-refl.height[strong])[:8]]))
            scale = max(scale, 1e-6)
        else:
            scale = 1.0
        expected = refl.height * scale
        present = height >= np.maximum(s.presence * expected, 2.0 * sigma)
        in_valid = inside & valid[np.clip(np.rint(position).astype(int), 0, n - 1)]
        weight = expected * in_valid
        if a.own is not None and a.own.size == weight.size:  # lines it shares with the assemblage before
            weight = weight * a.own  # fade out as that one goes: the transition already counted
        vanished = float(weight[~present].sum() / weight.sum()) if weight.sum() > 0 else 0.0
        # new: signal outside every reflection's extent
        support = np.zeros(n + 1)
        # a reflection's extent: its width plus its tails (Lorentzian-like tails of a strong peak
        # stay above the noise further out: the reach grows as the square root of height / noise)
        tails = 0.5 * np.maximum(width, refl.width) * np.sqrt(
            np.maximum(1.0, 0.5 * expected / (s.noise_sigmas * sigma)))
        half = np.maximum(np.maximum(width, refl.width), tails) + s.window_widths * self._fwhm
        if a.settled_split is not None and a.settled_split.size == half.size:
            half = np.where(a.settled_split, 2.0 * half, half)  # a growing split spreads its components
        centre = np.where(present, position, refl.position + (shift - refl.shift))
        lo = np.clip(np.floor(centre - half).astype(int), 0, n)
        hi = np.clip(np.ceil(centre + half).astype(int) + 1, 0, n)
        np.add.at(support, lo, 1.0)
        np.add.at(support, hi, -1.0)
        covered = np.cumsum(support[:n]) > 0
        signal = valid & (y > s.noise_sigmas * sigma)
        total = float(y[signal].sum())
        new = float(y[signal & ~covered].sum() / total) if total > 0 else 0.0
        # split: strong reflections widened much more than the median one
        good = present & in_valid & (height > 6.0 * s.noise_sigmas * sigma)  # widths need strong lines
        split = 0.0
        if good.sum() >= 2:
            # against the widths a few accepted frames back: a slow broadening is followed, a split
            # (sudden on the scale of a few frames) is not
            base = a.widths[0] if a.widths and a.widths[0].size == refl.width.size else refl.width
            ratio = width[good] / np.maximum(base[good], 1.0)
            # against the least widened reflections: a broadening of every line is not a split,
            # a split widens some lines (those whose d-spacings the distortion separates) only
            relative = ratio / max(float(np.quantile(ratio, 0.2)), 1e-6)
            hw = expected[good]
            widened = relative >= s.split_ratio
            if a.settled_split is not None and a.settled_split.size == good.size:
                widened &= ~a.settled_split[good]  # the split this assemblage was born from, growing
            split = float(hw[widened].sum() / hw.sum())
            if split < 2.0 * s.threshold:  # one line widening alone is noise or a texture effect
                split = 0.0
        # jump: the shift off the trend of the accepted frames
        jump = 0.0
        if len(a.trend) >= 3:
            jump = abs(shift - self._predicted_shift(a, control)) / self._fwhm
        found = (shift, position, height, width, present, scale)
        return (new, vanished, split, jump), found

    def _track(self, a: _Assemblage, found, control: float):
        shift, position, height, width, present, scale = found
        r = a.reflections
        moved = r.position + (shift - r.shift)
        r.position = np.where(present, position, moved)
        r.height = np.where(present, 0.7 * r.height + 0.3 * height / scale, r.height)
        r.width = np.where(present, 0.7 * r.width + 0.3 * np.maximum(width, 1.0), r.width)
        r.shift, r.control = shift, control
        a.trend.append((control, shift))
        a.widths.append(np.maximum(width, 1.0) if a.widths and a.widths[-1].size == width.size else r.width.copy())
        if len(a.widths) > WIDTH_LAG:
            del a.widths[0]
        if len(a.trend) > 64:
            del a.trend[:-32]
        a.lo, a.hi = min(a.lo, control), max(a.hi, control)

    # -- transitions -----------------------------------------------------------------------------

    def _store(self, index: int, y: np.ndarray, sigma: float):
        self._stored[index] = (y.astype(np.float32), sigma)
        if len(self._stored) > self.settings.max_stored:
            del self._stored[min(self._stored)]

    def _confirm(self, y, m, sigma, control, split: bool):
        """`confirm` candidates in a row: a transition. The new assemblage starts from this frame."""
        previous = self.assemblages[-1]
        previous.reference_height = previous.reflections.height.copy()
        previous.reference_total = self._last_total
        current = self._start_assemblage(y, m, sigma, control, previous)
        # reflections of the new assemblage that are wider than its narrowest ones by the split
        # ratio were born split: their further widening is the distortion growing, not a change
        w = current.reflections.width
        if w.size >= 2:
            current.settled_split = w / max(float(np.quantile(w, 0.2)), 1e-6) >= 0.9 * self.settings.split_ratio
            if split:
                current.settled_split[:] = True
        # a distortion (lines split, none new or gone) has no coexistence to follow: its onset is
        # the transition, the frames after it are transformed
        self._split_transition = split
        self._coexisting = True
        self._restart_changepoint()  # the systematic term now that the scan's spacing is known
        self._quiet = 0
        self._pending = []

    def _total(self, y: np.ndarray, sigma: float) -> float:
        """A frame's total signal: what its heights are read against in a coexistence (the powder's
        total scattering changes little in a transition, a frame's strongest line may)."""
        return max(float(y[y > self.settings.noise_sigmas * sigma].sum()), 1e-12)

    def _fraction(self, old: _Assemblage, y, m, sigma, control, exclude: np.ndarray | None = None) -> float:
        """How far the change from `old` has gone: the share of its own reflections' height lost,
        each frame's heights taken against its total signal."""
        refl = old.reflections
        if refl.position.size == 0:
            return 1.0
        shift = self._shift(old, y, control)
        position, height, width, inside = self._locate(refl, shift, y, sigma)
        own = old.own if old.own is not None else np.ones(refl.position.size, bool)
        # reflections of `old` not shared with the new assemblage
        new = self.assemblages[-1] if self.assemblages[-1] is not old else None
        if exclude is not None:  # lines of the new assemblage in this frame (when it is known pure)
            grown = exclude
        elif new is not None and new.own is not None and new.own.size == new.reflections.position.size:
            grown = new.reflections.position[new.own]  # the new one's own lines (not those it inherited)
        else:
            grown = new.reflections.position if new is not None else np.zeros(0)
        if grown.size:  # an old line within its own width of a new one is not told apart from it
            d = np.abs(position[:, None] - grown[None, :]).min(1)
            own = own & (d > self.settings.window_widths * self._fwhm + np.maximum(width, refl.width))
        ref = old.reference_height if old.reference_height is not None else refl.height
        keep = own & inside & (ref > 0)
        if not keep.any():
            return 1.0
        # scale: total signal, so that a drop of the beam is not read as a transformation
        ref_total = old.reference_total if old.reference_height is not None else self._last_total
        ratio = (height[keep] / self._total(y, sigma)) / (ref[keep] / max(ref_total, 1e-12))
        remaining = np.clip(ratio, 0.0, 1.0)
        w = ref[keep]
        return float(np.clip(1.0 - (w * remaining).sum() / w.sum(), 0.0, 1.0))

    def _coexistence(self, index, y, m, sigma, control, scores, found) -> DetectorFrame:
        """A frame after a confirmed change, until the new assemblage is fixed."""
        s = self.settings
        old, current = self.assemblages[-2], self.assemblages[-1]
        k = len(self.assemblages) - 1
        new, _, _, _ = scores
        shift, position, height, width, present, scale = found
        self._track(current, found, control)
        if new >= 0.5 * s.threshold:  # reflections appearing: they belong to the new assemblage
            extra = self._find(y, m, sigma)
            if extra.position.size:
                d = np.abs(extra.position[:, None] - current.reflections.position[None, :]).min(1) \
                    if current.reflections.position.size else np.full(extra.position.size, np.inf)
                add = d > s.window_widths * self._fwhm + 1.0
                r = current.reflections
                r.position = np.concatenate([r.position, extra.position[add]])
                r.height = np.concatenate([r.height, extra.height[add] / max(scale, 1e-6)])
                r.width = np.concatenate([r.width, extra.width[add]])
                order = np.argsort(r.position)
                r.position, r.height, r.width = r.position[order], r.height[order], r.width[order]
                current.first = _Reflections(r.position.copy(), r.height.copy(), r.width.copy(), r.shift, r.control)
                current.widths = []
                current.own = np.concatenate([current.own, np.ones(int(add.sum()), bool)])[order]
                self._quiet = 0 if add.any() else self._quiet + 1
        else:
            self._quiet += 1
        fraction = 1.0 if self._split_transition else self._fraction(old, y, m, sigma, control)
        self._store(index, y, sigma)
        # the new assemblage is fixed when the old one's own reflections are gone, or when the
        # mixture has stopped changing for a while (a sample that stays two-phase)
        span = 3 * s.confirm + 1
        history = [f.fraction for f in list(self.frames)[-span:] if f.status == "changed"]
        steady = len(history) >= span and float(np.ptp([*history, fraction])) < 0.1
        if self._quiet >= s.confirm and (fraction >= 0.9 or steady or self._quiet > 3 * s.confirm):
            self._coexisting = False
            # the new assemblage as it is now: reflections of the old one that faded are not its own
            born_split = current.settled_split is not None and bool(current.settled_split.any())
            lo = current.lo
            self.assemblages.pop()
            fixed = self._start_assemblage(y, m, sigma, control, old)
            fixed.lo = lo
            if born_split:  # a distortion goes on growing: its lines' widening is not a new change
                fixed.settled_split = np.ones(fixed.reflections.position.size, bool)
            self._rebuild(y, sigma, control)
            return self._record(index, control, k, "same", scores, 0.0)
        return self._record(index, control, k, "changed", scores, fraction)

    def _side(self, index, y, m, sigma, control) -> DetectorFrame:
        """A frame inside the scanned range (out of control order): evidence only, no tracking."""
        k = max((i for i, a in enumerate(self.assemblages) if a.lo <= control), default=0)
        a = self.assemblages[k]
        scores, found = self._score_side(a, y, m, sigma, control)
        score = max(scores[:3])
        if k + 1 < len(self.assemblages):  # between two assemblages: how far it has transformed
            nxt = self.assemblages[k + 1]
            if control <= a.hi:
                return self._record(index, control, k, "same", scores, 0.0)
            fraction = self._fraction_between(a, nxt, y, m, sigma, control)
            return self._record(index, control, k, "changed" if fraction >= 0.5 else "same", scores, fraction,
                                towards=k + 1)
        if score >= self.settings.threshold:
            fraction = min(1.0, 0.5 + 0.5 * (score - self.settings.threshold) / self.settings.threshold)
            return self._record(index, control, k, "changed", scores, fraction, towards=k + 1)
        return self._record(index, control, k, "same", scores, 0.0)

    def _score_side(self, a: _Assemblage, y, m, sigma, control):
        """Scores against the assemblage as tracked at the nearest control (its first or last state),
        on a copy of its reflections and trend: a side frame never changes what is tracked."""
        nearest = a.first if abs(control - a.first.control) < abs(control - a.reflections.control) else a.reflections
        view = replace(a, reflections=nearest.copy(), trend=list(a.trend))
        scores, found = self._score(view, y, m, sigma, control)
        return (scores[0], scores[1], scores[2], 0.0), found

    def _mixture_fraction(self, old: _Assemblage, new: _Assemblage, y, sigma, control, reference, pure_total) -> float:
        """Fraction transformed from `old` to `new` of one frame: f = I_new / (I_new + I_old), I_old
        the share of the old assemblage's own lines still there (against their height before the
        change), I_new that of the new one's own lines (`reference`: their heights in a pure frame
        of total signal `pure_total`). Both are read in the same frame, so its normalisation
        cancels; f = 0.5 where both phases are as strong as each alone would be: the 50 % point up
        to the two phases' scattering powers (the systematic term covers that)."""
        shift = self._shift(new, y, control)
        position, height, _, _ = self._locate(new.reflections, shift, y, sigma)
        remaining = 1.0 - self._fraction(old, y, y > 0, sigma, control, exclude=position)
        if self._split_transition or reference is None or reference.sum() <= 0:
            return 1.0 if self._split_transition else 1.0 - remaining
        ratio = (height / self._total(y, sigma)) / (np.maximum(reference, 1e-12) / pure_total)
        grown = float((reference * np.clip(ratio, 0.0, 1.0)).sum() / reference.sum())
        return grown / max(grown + remaining, 1e-12)

    def _reference(self, new: _Assemblage, pure_y, pure_sigma, pure_control):
        """Heights of the new assemblage's own lines in a pure frame of it, and that frame's total."""
        own = new.own if new.own is not None else np.ones(new.reflections.position.size, bool)
        if not own.any():
            return None, 1.0
        shift = self._shift(new, pure_y, pure_control)
        _, height, _, _ = self._locate(new.reflections, shift, pure_y, pure_sigma)
        return np.where(own, height, 0.0), self._total(pure_y, pure_sigma)

    def _fraction_between(self, old: _Assemblage, new: _Assemblage, y, m, sigma, control) -> float:
        """A frame between two assemblages (out of control order): its fraction transformed, the
        new assemblage's anchor standing for its pure frame."""
        reference, pure_total = self._reference(new, new.anchor, new.anchor_sigma, new.trend[0][0])
        return self._mixture_fraction(old, new, y, sigma, control, reference, pure_total)

    def _rebuild(self, pure_y: np.ndarray, pure_sigma: float, pure_control: float):
        """The change point again from every frame's evidence, the coexistence frames re-scored
        with both assemblages (`_mixture_fraction`, `pure_y` the first frame of the new one alone;
        once per transition)."""
        old, new = self.assemblages[-2], self.assemblages[-1]
        k = len(self.assemblages) - 1
        reference, pure_total = self._reference(new, pure_y, pure_sigma, pure_control)
        refit = {}
        for f in self.frames:
            if f.status == "changed" and f.assemblage in (k - 1, k) and f.index in self._stored:
                y, sigma = self._stored[f.index]
                frac = self._mixture_fraction(old, new, y.astype(float), sigma, f.control, reference, pure_total)
                p = np.zeros(MAX_ASSEMBLAGES)
                p[k - 1], p[k] = 1.0 - frac, frac
                refit[f.index] = p
        for i, p in refit.items():
            self._evidence_p[i] = p
        self._mixed = {}
        for i in range(self._n_evidence):  # the mixtures as re-scored (once per transition)
            self._note_mixed(float(self._evidence_control[i]), self._evidence_p[i].astype(float))
        self._stored.clear()
        self._restart_changepoint()

    def _restart_changepoint(self):
        """A new change point fed every frame's evidence (its systematic term from the frames so far)."""
        self._changepoint = self._new_changepoint(len(self.assemblages))
        n = self._n_evidence
        if n:
            self._changepoint.update_many(self._columns(self._evidence_p[:n]), self._evidence_control[:n])
        self._fed = n

    def _add_evidence(self, control: float, probabilities) -> None:
        if self._n_evidence == len(self._evidence_control):  # grow by doubling
            self._evidence_control = np.concatenate([self._evidence_control, np.zeros_like(self._evidence_control)])
            self._evidence_p = np.concatenate([self._evidence_p, np.zeros_like(self._evidence_p)])
        self._evidence_control[self._n_evidence] = control
        self._evidence_p[self._n_evidence] = probabilities
        self._n_evidence += 1
        self._note_mixed(control, np.asarray(probabilities, dtype=float))

    def _note_mixed(self, control: float, p: np.ndarray) -> None:
        """Where frames read as a mixture (P(above a boundary) between 0.15 and 0.85): the extent of a
        coexistence, which bounds how well its 50 % point is known."""
        if not (math.isfinite(control) and np.all(np.isfinite(p))):
            return
        above = np.cumsum(p[::-1])[::-1][1:]  # P(phase > k) for each boundary k
        for k in np.flatnonzero((above > 0.15) & (above < 0.85)):
            lo, hi = self._mixed.get(int(k), (control, control))
            self._mixed[int(k)] = (min(lo, control), max(hi, control))

    def _columns(self, probabilities: np.ndarray) -> np.ndarray:
        """Evidence over the change point's phases: the assemblages seen and one more (later ones,
        which no frame can hold yet, folded into it), so no boundary is computed before it can exist."""
        p = np.asarray(probabilities, dtype=float)
        k = len(self._changepoint.phase_names)
        if k < p.shape[1]:
            p = np.concatenate([p[:, : k - 1], p[:, k - 1:].sum(1, keepdims=True)], axis=1)
        return p

    def _new_changepoint(self, n_assemblages: int) -> OnlineChangePoint:
        # the systematic term is added by `_systematic`, from the frames that bracket the estimate
        options = dict(self.changepoint_options)
        return OnlineChangePoint(ASSEMBLAGE_NAMES[: min(max(n_assemblages, 1) + 1, MAX_ASSEMBLAGES)], **options)

    def _feed(self):
        """The evidence the change point has not seen yet, in one batch."""
        start, self._fed = self._fed, self._n_evidence
        if self._n_evidence > start:
            self._changepoint.update_many(self._columns(self._evidence_p[start: self._n_evidence]),
                                          self._evidence_control[start: self._n_evidence])


class DetectorTracker:
    """The detector behind `TransitionTracker`'s interface (`update(frame, pressure)`, `records`,
    `estimates`), so `steering.steer` and the steering evaluation drive it unchanged."""

    phase_names = ASSEMBLAGE_NAMES

    def __init__(self, two_theta=None, wavelength: float | None = None, settings: DetectorSettings | None = None,
                 **changepoint_options):
        self.detector = AssemblageDetector(two_theta, wavelength, settings, changepoint_options)
        self.records: list[FrameRecord] = []

    def update(self, frame, pressure: float) -> FrameRecord:
        result = self.detector.update(frame, pressure)
        usable = result.flag is None
        record = FrameRecord(index=len(self.records), pressure=float(pressure),
                             probabilities=[float(v) for v in result.probabilities] if usable else None,
                             phase=ASSEMBLAGE_NAMES[result.assemblage] if usable else None, flag=result.flag,
                             note=None, boundaries=self.detector.estimates())
        self.records.append(record)
        return record

    def run(self, frames, pressures) -> list[FrameRecord]:
        return [self.update(f, p) for f, p in zip(frames, pressures)]

    @property
    def estimates(self) -> list[BoundaryEstimate]:
        return self.detector.estimates()


# -- a measured series, in legs ------------------------------------------------------------------


@dataclass
class Transition:
    """One transition found along a series: where (control value ± sigma) and between which assemblages."""

    value: float
    sigma: float
    interval: tuple[float, float]
    from_: str
    to: str
    direction: str  # "increasing" or "decreasing" control (compression / decompression)
    settled: bool

    def to_dict(self) -> dict:
        return {"value": self.value, "sigma": self.sigma, "interval": list(self.interval), "from": self.from_,
                "to": self.to, "direction": self.direction, "settled": self.settled}


def scan_legs(controls: Sequence[float], min_frames: int = 3, min_span: float = 0.25) -> list[np.ndarray]:
    """Indices of the monotonic legs of a series: a turn back that lasts at least `min_frames`
    frames and covers at least `min_span` of the series' control range starts a new leg
    (decompression after compression). Shorter turns stay in their leg: a steered scan
    bisecting a bracket, a wiggle of the pressure controller."""
    c = np.asarray(controls, dtype=float)
    n = c.size
    finite = c[np.isfinite(c)]
    if n < 2 * min_frames or finite.size < 2:
        return [np.arange(n)]
    total = float(np.ptp(finite)) or 1.0
    # runs of one direction: (start, stop) index pairs where the control keeps rising or falling
    runs, start, direction = [], 0, 0.0
    for i in range(1, n):
        d = np.sign(c[i] - c[i - 1]) if np.isfinite(c[i]) and np.isfinite(c[i - 1]) else 0.0
        if d == 0 or d == direction:
            continue
        if direction != 0:
            runs.append((start, i - 1, direction))
            start = i - 1
        direction = d
    runs.append((start, n - 1, direction))
    legs, leg_start, leg_direction = [], 0, runs[0][2]
    for lo, hi, d in runs[1:]:
        span = abs(float(np.nanmax(c[lo: hi + 1]) - np.nanmin(c[lo: hi + 1])))
        if d != leg_direction and hi - lo >= min_frames and span >= min_span * total:
            legs.append(np.arange(leg_start, lo + 1))
            leg_start, leg_direction = lo, d
    legs.append(np.arange(leg_start, n))
    return legs


def _same_assemblage(first, second, two_theta, wavelength, settings) -> bool:
    """Whether two frames (of any control values) hold the same reflections."""
    probe = AssemblageDetector(two_theta, wavelength, settings)
    records = probe.update_many([first, second], [0.0, 1.0])
    return records[1].status == "same"


def detect_series(frames, controls, two_theta=None, wavelength=None, settings: DetectorSettings | None = None,
                  ) -> tuple[list[DetectorFrame], list[Transition]]:
    """The training-free detector over a whole series, leg by leg (see `scan_legs`).

    Returns per-frame records (in the given order) and the transitions with their direction.
    `assemblage` counts across legs: a leg starts in the previous leg's last assemblage, and an
    assemblage a leg reaches is matched against those seen before (a back-transformation on
    decompression returns to "assemblage 1", it is not a new one)."""
    controls = np.asarray(controls, dtype=float)
    records: list[DetectorFrame | None] = [None] * len(frames)
    transitions: list[Transition] = []
    known: list[int] = []  # a representative frame index per global assemblage
    for leg in scan_legs(controls):
        direction = "increasing" if controls[leg[-1]] >= controls[leg[0]] else "decreasing"
        sign = 1.0 if direction == "increasing" else -1.0  # the detector reads a leg forwards
        detector = AssemblageDetector(two_theta, wavelength, settings)
        out = detector.update_many([frames[i] for i in leg], sign * controls[leg])
        ids: dict[int, int] = {}
        for i, r in zip(leg, out):
            k = r.assemblage
            if k >= 0 and k not in ids:
                if k == 0 and known:  # a leg starts where the previous one ended
                    last = _last_id(records)
                    ids[k] = last if last is not None else 0
                else:
                    match = next((g for g in reversed(range(len(known)))
                                  if _same_assemblage(frames[known[g]], frames[i], two_theta, wavelength, settings)),
                                 None) if known else None
                    if match is None:
                        known.append(int(i))
                        match = len(known) - 1
                    ids[k] = match
            if k >= 0:
                r.assemblage = ids[k]
            r.control = float(controls[i])
            records[i] = r
        for b in detector.transitions():
            if not math.isfinite(b.pressure):
                continue
            lo, hi = sorted((sign * b.interval[0], sign * b.interval[1]))
            transitions.append(Transition(sign * float(b.pressure), float(b.sigma), (lo, hi),
                                          f"assemblage {ids.get(b.boundary, b.boundary) + 1}",
                                          f"assemblage {ids.get(b.boundary + 1, b.boundary + 1) + 1}", direction,
                                          bool(b.settled)))
    return [r for r in records if r is not None], transitions


def _last_id(records) -> int | None:
    """The assemblage of the last classified frame so far (where the previous leg ended)."""
    done = [r for r in records if r is not None and r.assemblage >= 0]
    return done[-1].assemblage if done else None

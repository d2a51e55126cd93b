"""Frames onto a transition model's input: the q grid, mask, background removal, flags.

Input (`prepare_frames`): every frame goes onto the model's q grid (default `CANONICAL_GRID`)
with its mask, whatever its length, 2θ range or wavelength; its smooth background is removed
(SNIP) and it is normalised to max 1. Frames holding NaN/inf or no intensity, or not
overlapping the model grid, are flagged and get no prediction (NaN probabilities) instead of
raising: one bad frame must not stop a scan.

Kept apart from the classifiers (`models`) because every consumer of frames needs it on its own:
the inference engine, the library gate and phase identification prepare frames with the same
recipe (the same SNIP width) whichever model, if any, looks at them next.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from xrd_nexus_ml.errors import PatternError
from xrd_nexus_ml.pattern import CANONICAL_GRID, Diffractogram, QGrid
from xrd_nexus_ml.preprocess.background import snip_background

#: SNIP background window (Å⁻¹) of every model that reads background-free frames.
SNIP_WIDTH_Q = 0.12


@dataclass
class PreparedFrames:
    """Model input: x (n, G) float32 in [0, 1] on the model grid, mask (n, G) of measured points,
    flags[i] None for a usable frame or why it was set aside ("nan": non-finite values, "zero":
    no intensity, "flat": constant, "out_of_range": no overlap with the model grid,
    "unreadable"), notes[i] what was done to it (e.g. resampled from another length)."""

    x: np.ndarray
    mask: np.ndarray
    flags: list[str | None]
    notes: list[str | None] = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        return np.array([f is None for f in self.flags], dtype=bool)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _frame_flag(y: np.ndarray) -> str | None:
    if y.size == 0:
        return "zero"
    if not np.all(np.isfinite(y)):
        return "nan"
    if not np.any(y != 0):
        return "zero"
    if float(np.ptp(y)) == 0.0:
        return "flat"
    return None


def _one_frame(frame, two_theta, wavelength, grid: QGrid, snip_width_q: float | None):
    """(x, mask, flag, note) of one frame on the model grid."""
    note = None
    if isinstance(frame, Diffractogram):
        pattern = frame
    else:
        y = np.asarray(frame, dtype=float).ravel()
        flag = _frame_flag(y)
        if flag:
            return None, None, flag, None
        if y.size == grid.n_points and two_theta is None:
            pattern = Diffractogram(x=grid.values, intensity=y, axis="q")
        else:
            if two_theta is None or wavelength is None:
                raise PatternError(
                    f"a frame of {y.size} points needs its 2θ axis and wavelength (two_theta=, wavelength=) "
                    f"unless it is already on the model grid ({grid.n_points} points)")
            axis = np.asarray(two_theta, dtype=float)
            if y.size != axis.size:  # wrong length: assume it spans the detector's nominal range
                note = f"resampled from {y.size} points (expected {axis.size}) over 2θ {axis[0]:g}-{axis[-1]:g}"
                axis = np.linspace(axis[0], axis[-1], y.size) if y.size > 1 else axis[:1]
                if y.size < 2:
                    return None, None, "zero", note
            pattern = Diffractogram(x=axis, intensity=y, axis="two_theta", wavelength=wavelength)
    flag = _frame_flag(pattern.intensity)
    if flag:
        return None, None, flag, note
    q = pattern.q
    if q[-1] < grid.q_min or q[0] > grid.q_max:
        return None, None, "out_of_range", note
    resampled = pattern.resample(grid, axis="q")
    mask = resampled.mask
    if mask.sum() < 8:
        return None, None, "out_of_range", note
    y = np.where(mask, resampled.intensity, 0.0)
    if snip_width_q is not None:
        width = max(1, int(round(snip_width_q / grid.step)))
        background = np.zeros_like(y)
        background[mask] = snip_background(y[mask], width)
        y = y - background
    y = np.where(mask, np.clip(y, 0.0, None), 0.0)
    top = y.max()
    if not top > 0:
        return None, None, "zero", note
    return (y / top).astype(np.float32), mask, None, note


def prepare_frames(frames, grid: QGrid = CANONICAL_GRID, two_theta=None, wavelength: float | None = None,
                   snip_width_q: float | None = SNIP_WIDTH_Q, batched: bool = True) -> PreparedFrames:
    """Frames onto the model grid, background removed and max-normalised; bad frames flagged.

    snip_width_q: the SNIP window (Å⁻¹); None keeps the background (clipped at 0 and
    max-normalised only: the space-group network was trained on patterns with backgrounds).

    frames: a `Ramp`, a `PreparedFrames` (returned as is), a (n, G) array, or a sequence of
    1-D arrays and/or `Diffractogram`s. Arrays are on the detector's `two_theta` axis
    (degrees, with `wavelength` in Å); one of another length is assumed to span the same 2θ
    range and is resampled (noted, not flagged); arrays of the model grid's length with no
    axis given are taken as already on the model grid.

    batched (default): frames that share one axis (the arrays on `two_theta`, those of one
    other length, `Diffractogram`s with equal axes and nothing masked) go through together:
    the source q, the interpolation indices and weights onto the grid are computed once per
    axis and kept (`_axis_plan`, a small LRU cache), resampling is a gather, flags and SNIP
    run on all rows at once. Same results as frame by frame (batched=False), to rounding.
    """
    if isinstance(frames, PreparedFrames):
        return frames
    if hasattr(frames, "two_theta") and hasattr(frames, "intensity") and hasattr(frames, "pressures"):
        two_theta, wavelength, frames = frames.two_theta, frames.wavelength, frames.intensity
    if isinstance(frames, Diffractogram):
        frames = [frames]
    if isinstance(frames, np.ndarray) and frames.ndim == 1:
        frames = [frames]
    n = len(frames)
    x = np.zeros((n, grid.n_points), np.float32)
    mask = np.zeros((n, grid.n_points), bool)
    flags: list[str | None] = [None] * n
    notes: list[str | None] = [None] * n
    done = np.zeros(n, bool)
    if batched:
        for group in _batch_groups(frames, two_theta, wavelength, grid):
            done[group.index] = _prepare_group(group, grid, snip_width_q, x, mask, flags, notes)
    for i in np.flatnonzero(~done):
        try:
            xi, mi, flag, note = _one_frame(frames[i], two_theta, wavelength, grid, snip_width_q)
        except PatternError as err:  # a frame the pattern type rejects (bad axis, ...) is set aside
            xi, mi, flag, note = None, None, "unreadable", str(err)
        flags[i], notes[i] = flag, note
        if xi is not None:
            x[i], mask[i] = xi, mi
    return PreparedFrames(x=x, mask=mask, flags=flags, notes=notes)


# -- the batched path: the frames of one axis at once -------------------------------------------


@dataclass(eq=False)
class _Group:
    """Frames (rows of `rows`, at positions `index` of the batch) measured on one axis."""

    kind: str  # "two_theta" or "q"
    axis: np.ndarray
    wavelength: float | None
    note: str | None
    index: list[int]
    rows: list[np.ndarray] | np.ndarray


@dataclass(frozen=True, eq=False)
class _AxisPlan:
    """Frames on one axis -> the model grid: what `_one_frame` works out per frame, once.

    Grid points [lo, hi) lie inside the axis's q range (the mask of every frame on it); grid
    point lo + i is interpolated between source points left[i] and left[i] + 1 with weight[i]
    on the right one. flag: "out_of_range" for every frame on this axis, else None."""

    axis: np.ndarray
    flag: str | None
    lo: int
    hi: int
    left: np.ndarray
    weight: np.ndarray
    width: int  # SNIP window in grid points; 0: the background is kept


_PLANS: OrderedDict = OrderedDict()
_PLANS_LOCK = threading.Lock()
#: Axes whose plans are kept (least recently used dropped first).
PLAN_CACHE_SIZE = 16


def _axis_plan(kind: str, axis: np.ndarray, wavelength, grid: QGrid, snip_width_q: float | None) -> _AxisPlan | None:
    """The plan of an axis, from the cache or built; None for an axis a `Diffractogram` rejects
    (its frames then go frame by frame, which flags them as before)."""
    key = (kind, axis.size, hash(axis.tobytes()), wavelength, grid, snip_width_q)
    with _PLANS_LOCK:
        plan = _PLANS.get(key)
        if plan is not None and np.array_equal(plan.axis, axis):
            _PLANS.move_to_end(key)
            return plan
    try:
        pattern = Diffractogram(x=axis, intensity=np.zeros(axis.size), axis=kind, wavelength=wavelength)
        q = pattern.q
    except PatternError:
        return None
    width = 0 if snip_width_q is None else max(1, int(round(snip_width_q / grid.step)))
    target = grid.values
    inside = np.flatnonzero((target >= q[0]) & (target <= q[-1]))
    if q[-1] < grid.q_min or q[0] > grid.q_max or inside.size < 8:
        plan = _AxisPlan(axis.copy(), "out_of_range", 0, 0, np.zeros(0, int), np.zeros(0), width)
    else:
        lo, hi = int(inside[0]), int(inside[-1]) + 1
        t = target[lo:hi]
        left = np.clip(np.searchsorted(q, t, side="right") - 1, 0, q.size - 2)
        weight = (t - q[left]) / (q[left + 1] - q[left])  # what np.interp uses, as a fraction
        plan = _AxisPlan(axis.copy(), None, lo, hi, left, weight, width)
    with _PLANS_LOCK:
        _PLANS[key] = plan
        _PLANS.move_to_end(key)
        while len(_PLANS) > PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return plan


def _batch_groups(frames, two_theta, wavelength, grid: QGrid) -> list[_Group]:
    """The frames the batched path takes, grouped by axis (the rest go frame by frame)."""
    base = None
    if two_theta is not None and wavelength is not None:
        try:
            base = np.asarray(two_theta, dtype=float)
        except (TypeError, ValueError):
            base = None
        if base is not None and (base.ndim != 1 or base.size < 2):
            base = None
    if isinstance(frames, np.ndarray) and frames.ndim == 2 and frames.dtype != object:
        m = frames.shape[1]
        index = list(range(frames.shape[0]))
        if two_theta is None and m == grid.n_points:
            return [_Group("q", grid.values, None, None, index, frames)]
        if base is not None and m == base.size:
            return [_Group("two_theta", base, wavelength, None, index, frames)]
    groups: dict[tuple, _Group] = {}
    for i, frame in enumerate(frames):
        if isinstance(frame, Diffractogram):
            if not frame.mask.all() or (frame.axis == "two_theta" and frame.wavelength is None):
                continue
            x = frame.x
            key = ("pattern", frame.axis, frame.wavelength, x.size, float(x[0]), float(x[-1]), float(x[x.size // 2]))
            group = groups.get(key)
            if group is not None and group.axis is not x and not np.array_equal(group.axis, x):
                key = (*key, i)  # same ends, another axis: a group of its own
                group = None
            if group is None:
                group = groups[key] = _Group(frame.axis, x, frame.wavelength, None, [], [])
            group.index.append(i)
            group.rows.append(frame.intensity)
            continue
        if isinstance(frame, np.ndarray) and frame.dtype == object:
            continue
        try:
            y = np.asarray(frame, dtype=float).ravel()
        except (TypeError, ValueError):
            continue
        if two_theta is None:
            if y.size != grid.n_points:
                continue
            key = ("grid",)

            def make():
                return _Group("q", grid.values, None, None, [], [])
        elif base is None or y.size < 2:
            continue
        elif y.size == base.size:
            key = ("axis",)

            def make():
                return _Group("two_theta", base, wavelength, None, [], [])
        else:  # wrong length: assumed to span the detector's nominal range (as `_one_frame`)
            note = (f"resampled from {y.size} points (expected {base.size}) over 2θ "
                    f"{base[0]:g}-{base[-1]:g}")
            key = ("resampled", y.size)

            def make(size=y.size, note=note):
                return _Group("two_theta", np.linspace(base[0], base[-1], size), wavelength, note, [], [])
        group = groups.get(key)
        if group is None:
            group = groups[key] = make()
        group.index.append(i)
        group.rows.append(y)
    return list(groups.values())


def _prepare_group(group: _Group, grid: QGrid, snip_width_q: float | None, x: np.ndarray, mask: np.ndarray,
                   flags: list, notes: list) -> bool:
    """Fill rows `group.index` of x, mask, flags, notes; False if the axis needs the per-frame path."""
    plan = _axis_plan(group.kind, group.axis, group.wavelength, grid, snip_width_q)
    if plan is None:
        return False
    index = np.asarray(group.index)
    y = np.asarray(group.rows, dtype=float)  # (n, m)
    n = len(index)
    flag = np.full(n, None, dtype=object)
    finite = np.isfinite(y).all(1)
    flag[~finite] = "nan"
    ok = np.flatnonzero(finite)
    yo = y[ok]
    flag[ok[~(yo != 0).any(1)]] = "zero"
    ok = np.flatnonzero(flag == None)  # noqa: E711 (elementwise on an object array)
    yo = y[ok]
    flag[ok[yo.max(1) == yo.min(1)]] = "flat"
    # frames set aside on their values alone carry no note (as `_one_frame`); the rest carry the group's
    for i, f in zip(group.index, flag):
        flags[i], notes[i] = f, (None if f is not None else group.note)
    ok = np.flatnonzero(flag == None)  # noqa: E711
    if not len(ok):
        return True
    if plan.flag is not None:
        for j in ok:
            flags[index[j]] = plan.flag
        return True
    y = y[ok]
    a = np.take(y, plan.left, axis=1)
    resampled = np.take(y, plan.left + 1, axis=1)
    resampled -= a
    resampled *= plan.weight
    resampled += a  # = np.interp(grid, q, row) on [lo, hi)
    corrected = resampled - snip_background(resampled, plan.width) if plan.width else resampled
    np.clip(corrected, 0.0, None, out=corrected)
    top = corrected.max(1)
    good = top > 0
    for j in ok[~good]:
        flags[index[j]] = "zero"
    rows = index[ok[good]]
    lo, hi = plan.lo, plan.hi
    x[rows, lo:hi] = (corrected[good] / top[good, None]).astype(np.float32)
    mask[rows, lo:hi] = True
    return True

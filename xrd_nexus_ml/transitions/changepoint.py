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
The θ grid (a tenth of a pressure step by default) is bounded: beyond `max_cells` cells it is
coarsened (every other θ kept, exact for those, the resolution doubled), so an update costs
O(max_cells) per boundary however long the run. The likelihood of a frame is evaluated only
where σ is not saturated (|P - θ| <= 38 s, elsewhere it is one constant per τ), its terms are
multiplied and their log taken once per batch; a batch (`update_many`) goes through at once
and the estimates are computed once per batch and kept until the next frame. Cells added when
the pressure range grows get the earlier frames from stored sums (far frames) and an exact
evaluation of the near ones.

The estimate of a boundary is the posterior mean of θ with its standard deviation and 95 %
interval. It is *settled* when the standard deviation is at most `settle_sigma` (default one
pressure step), the posterior puts >= 99 % of θ inside the observed pressure range, and at
least `settle_frames` frames on each side of the estimate agree with it. The posterior's
standard deviation is the statistical uncertainty given the classifier's probabilities; a
classifier that is miscalibrated in the coexistence region shifts θ beyond it, so the reported
sigma adds in quadrature the model's systematic error measured on calibration ramps at training
time (`calibration`); `sigma_statistical` keeps the posterior's part.

More than two phases: one estimate per boundary between consecutive phases (phases ordered
by pressure, as the classifier's phase list). Flagged frames (NaN probabilities: bad input)
are recorded and skipped.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


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
    sigma_statistical: float = float("nan")  # the posterior's part of sigma (without the systematic term)

    def to_dict(self) -> dict:
        return {"boundary": self.boundary, "lower": self.lower, "upper": self.upper, "pressure": self.pressure,
                "sigma": self.sigma, "sigma_statistical": self.sigma_statistical, "interval": list(self.interval),
                "map_pressure": self.map_pressure, "observed": self.observed, "settled": self.settled,
                "n_frames": self.n_frames}


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


#: |P - θ| / s beyond which σ((P - θ)/s) counts as exactly 0 or 1 (σ(-38) ≈ 3e-17; σ(38) rounds to 1).
SATURATION = 38.0
#: Default bound on a boundary's θ grid, in cells (see `OnlineChangePoint`, max_cells).
MAX_CELLS = 1500
#: Frames evaluated together (their (frames, cells) arrays stay in the caches).
_CHUNK = 64
#: Values per array when several widths are evaluated on every cell at once.
_BAND_VALUES = 1 << 16
#: exp through torch (SIMD, ~2x NumPy's float64 exp here; the same values to an ulp) when True.
USE_TORCH_EXP = True


def _in_place(x: np.ndarray, torch_op, numpy_op) -> np.ndarray:
    """Apply an elementwise op to float64 `x` in place (torch for large contiguous arrays: faster
    here than NumPy's); returns x."""
    if USE_TORCH_EXP and x.size >= 2048 and x.flags.c_contiguous:
        t = torch.from_numpy(x)
        torch_op(t, out=t)
    else:
        numpy_op(x, out=x)
    return x


def _exp(x: np.ndarray) -> np.ndarray:
    """exp(x) in place; returns x."""
    return _in_place(x, torch.exp, np.exp)


def _log(x: np.ndarray) -> np.ndarray:
    """log(x) in place (x positive); returns x."""
    return _in_place(x, torch.log, np.log)


class _Buffer:
    """An append-only float array: amortised O(1) appends, `.values` the filled part."""

    def __init__(self, width: int | None = None):
        self._data = np.empty((256,) if width is None else (256, width))
        self.n = 0

    def extend(self, values: np.ndarray):
        values = np.asarray(values, dtype=float)
        need = self.n + len(values)
        if need > len(self._data):
            grown = np.empty((max(need, 2 * len(self._data)), *self._data.shape[1:]))
            grown[: self.n] = self._data[: self.n]
            self._data = grown
        self._data[self.n: need] = values
        self.n = need

    @property
    def values(self) -> np.ndarray:
        return self._data[: self.n]


class _RunningMedian:
    """Median of a growing set of numbers (two heaps); the same value as `np.median`."""

    def __init__(self):
        self._low: list[float] = []  # max-heap (negated) of the lower half
        self._high: list[float] = []  # min-heap of the upper half

    def __len__(self) -> int:
        return len(self._low) + len(self._high)

    def add(self, value: float):
        if self._low and value > -self._low[0]:
            heapq.heappush(self._high, value)
        else:
            heapq.heappush(self._low, -value)
        if len(self._low) > len(self._high) + 1:
            heapq.heappush(self._high, -heapq.heappop(self._low))
        elif len(self._high) > len(self._low):
            heapq.heappush(self._low, -heapq.heappop(self._high))

    def median(self) -> float | None:
        if not self._low:
            return None
        if len(self._low) > len(self._high):
            return float(-self._low[0])
        return float((-self._low[0] + self._high[0]) / 2.0)


class _Accumulator:
    """Log-likelihood of a block of B θ cells for every (s, τ) pair, with what is still pending.

    Terms of a frame inside its window (the cells where σ is not saturated) are multiplied into
    `prod` (summed, with error rate 0) and their log added at `flush`, one log per cell instead
    of one per frame and cell. The products are of u / A_τ = G + ε / A_τ; `count` (a difference
    array) says how many frames each cell took, for the n·log A_τ added at `flush`. A frame's
    saturated cells all get one constant per τ (g1 below the window, where π = 1; g0 above it,
    π = 0), also kept as difference arrays."""

    def __init__(self, n_widths: int, n_taus: int, n_cells: int, log_mode: bool, log_amp: np.ndarray,
                 loglik: np.ndarray | None = None):
        self.log_mode = log_mode
        self.log_amp = log_amp
        self.loglik = np.zeros((n_widths, n_taus, n_cells)) if loglik is None else loglik
        self.prod = np.zeros((n_widths, n_taus, n_cells)) if log_mode else np.ones((n_widths, n_taus, n_cells))
        self.count = np.zeros((n_widths, n_cells + 1))
        self.low = np.zeros((n_widths, n_taus, n_cells + 1))  # g1 of a frame at its window start
        self.high = np.zeros((n_widths, n_taus, n_cells + 1))  # g0 of a frame at its window end
        self.touched = [[n_cells, 0] for _ in range(n_widths)]
        self.saturated = False
        self.pending = 0

    @property
    def n_cells(self) -> int:
        return self.loglik.shape[2]

    def band(self, w: int, lo: int, hi: int, folded: np.ndarray, n: int):
        """n frames evaluated on cells [lo, hi): folded (T, hi - lo) the product (sum) of their terms."""
        block = self.prod[w, :, lo:hi]
        if self.log_mode:
            block += folded
        else:
            block *= folded
            self.count[w, lo] += n
            self.count[w, hi] -= n
        self.touch(w, lo, hi)

    def touch(self, w: int, start: int, stop: int):
        t = self.touched[w]
        t[0], t[1] = min(t[0], start), max(t[1], stop)

    def flush(self):
        touched = [(lo, hi) for lo, hi in self.touched if hi > lo]
        if touched:  # one pass over the union of the touched ranges (elsewhere prod is 1 and count 0)
            lo, hi = min(t[0] for t in touched), max(t[1] for t in touched)
            block = self.prod[:, :, lo:hi]
            if self.log_mode:
                self.loglik[:, :, lo:hi] += block
                block[...] = 0.0
            else:
                self.loglik[:, :, lo:hi] += _log(block.copy())
                block[...] = 1.0
                counts = np.cumsum(self.count[:, :hi], axis=1)[:, lo:]  # (W, hi - lo) frames per cell
                self.loglik[:, :, lo:hi] += counts[:, None, :] * self.log_amp[None, :, None]
                self.count[...] = 0.0
            self.touched = [[self.n_cells, 0] for _ in self.touched]
        if self.saturated:
            c = self.n_cells
            self.loglik += np.cumsum(self.low[..., ::-1], axis=-1)[..., ::-1][..., 1:]  # windows starting above
            self.loglik += np.cumsum(self.high, axis=-1)[..., :c]  # windows ending at or below
            self.low[...] = 0.0
            self.high[...] = 0.0
            self.saturated = False
        self.pending = 0


class _Boundary:
    """Posterior over (θ, s, τ) of one boundary on a θ grid that grows with the observed pressures.

    The grid is the lattice θ_k = k · resolution, k0 <= k <= k1, covering every frame's pressure
    ± margin (grown in whole steps from its ends, as the grid always has been). When that would
    take more than `max_cells` cells the grid is coarsened: every other θ is kept (the
    log-likelihood is evaluated at the grid points, so the kept ones are exact) and the
    resolution doubles, as often as needed. Cells added at an edge get the frames seen so far:
    those far from the new cells (σ saturated) as one sum, only the near ones evaluated."""

    def __init__(self, resolution: float, widths: np.ndarray, taus: np.ndarray, error_rate: float, margin: float,
                 max_cells: int | None = MAX_CELLS, settle_frames: int = 3):
        self.resolution = float(resolution)
        self.width_values = np.asarray(widths, dtype=float)
        self.tau_values = np.asarray(taus, dtype=float)
        pairs = np.meshgrid(self.width_values, self.tau_values, indexing="ij")  # every (s, τ) pair
        self.widths, self.taus = pairs[0].ravel(), pairs[1].ravel()
        self.error_rate = float(error_rate)
        self.margin = float(margin)
        self.max_cells = sys.maxsize if max_cells is None else max(int(max_cells), 2)
        self.settle_frames = int(settle_frames)
        tau = self.tau_values
        self._a = 0.5 / tau**2  # N(e; π, τ²) ∝ exp(-a (e - π)²)
        self._amp = (1.0 - self.error_rate) / (tau * math.sqrt(2.0 * math.pi))
        self._log_mode = self.error_rate == 0.0
        self._log_amp = np.log(self._amp)
        self._floor = self.error_rate / self._amp
        self._chain = self._exp_chain(self._a)
        if self._log_mode:
            self._flush_every = 1 << 30
        else:  # products of u / A in [ε / A, 1 + ε / A] stay inside the float range for this many frames
            worst = max(-math.log(float(self._floor.min())), math.log1p(float(self._floor.max())), 1e-3)
            self._flush_every = int(max(1, min(256, 600.0 // worst)))
        self.k0 = 0
        self._t_first = self._t_last = math.nan  # the grid's end θ as the growth computed them
        self._acc: _Accumulator | None = None
        self._tables: dict = {}  # exp(j r / s) per width (and per group of widths), for this resolution
        self._scratch: dict[str, np.ndarray] = {}
        self._p = _Buffer()
        self._e = _Buffer()
        self._g0 = _Buffer(len(tau))
        self._g1 = _Buffer(len(tau))
        self.p_min, self.p_max = math.inf, -math.inf
        self._low_first = np.zeros(0)  # the settle_frames lowest pressures of frames with e < 0.5
        self._high_last = np.zeros(0)  # the settle_frames highest pressures of frames with e > 0.5
        self._post: np.ndarray | None = None

    # -- the likelihood terms ----------------------------------------------------------------
    @staticmethod
    def _exp_chain(a: np.ndarray) -> list[tuple[int, int | None, int]]:
        """How to get exp(-a_t d) for every τ: (t, None, 0) by exp, or (t, j, m) as exp(-a_j d)
        squared m times when a_t = 2^m a_j (the default τ 0.05, 0.1, 0.2 are such a chain)."""
        chain, done = [], []
        for t in np.argsort(a):
            source = None
            for j in done:
                ratio = a[t] / a[j]
                m = int(round(math.log2(ratio))) if ratio > 1 else 0
                if 1 <= m <= 6 and abs(ratio - 2.0**m) <= 2e-15 * ratio and (source is None or m < source[1]):
                    source = (j, m)
            chain.append((int(t), *(source or (None, 0))))
            done.append(int(t))
        return chain

    def _terms(self, d: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Per-frame terms (T, *d.shape) into `out` from d = (e - π)²: u / A_τ = exp(-a d) + ε / A_τ
        (with ε = 0: log u)."""
        if self._log_mode:
            for t in range(len(self._a)):
                np.multiply(d, -self._a[t], out=out[t])
            out += self._log_amp.reshape((-1,) + (1,) * d.ndim)
            return out
        for t, source, m in self._chain:
            g = out[t]
            if source is None:
                np.multiply(d, -self._a[t], out=g)
                _exp(g)
            else:
                np.square(out[source], out=g)  # still exp(-a d): `source` is finished below
                for _ in range(m - 1):
                    np.square(g, out=g)
        out += self._floor.reshape((-1,) + (1,) * d.ndim)  # after every G is known (chains read their source's)
        return out

    def _buffer(self, name: str, shape: tuple[int, ...], dtype=float) -> np.ndarray:
        """A scratch array of `shape`, reused between calls (no fresh pages per chunk)."""
        size = math.prod(shape)
        buf = self._scratch.get(name)
        if buf is None or buf.size < size:
            buf = self._scratch[name] = np.empty(max(size, 1), dtype=dtype)
        return buf[:size].reshape(shape)

    def _saturated(self, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(g0, g1) (n, T): a frame's log-likelihood term where π = 0 and where π = 1."""
        out = []
        for pi in (0.0, 1.0):
            d = ((e - pi) ** 2)[:, None]
            if self._log_mode:
                out.append(self._log_amp[None, :] - self._a[None, :] * d)
            else:
                out.append(np.log(self._amp[None, :] * np.exp(-self._a[None, :] * d) + self.error_rate))
        return out[0], out[1]

    def _window_length(self, w: int) -> int:
        """Cells a frame's window spans for width w: every θ with |P - θ| <= SATURATION·s, and spare."""
        return int(math.ceil(2.0 * SATURATION * self.width_values[w] / self.resolution)) + 4

    def _table(self, w: int, length: int) -> np.ndarray | None:
        """exp(j · resolution / s_w), j < length: σ along a window from one exp per frame; None
        where the window spans too many e-folds for that to stay inside the float range."""
        step = self.resolution / float(self.width_values[w])
        if SATURATION + length * step > 600.0:
            return None
        table = self._tables.get(w)
        if table is None or len(table) < length:  # kept for this resolution
            table = self._tables[w] = np.exp(np.arange(length) * step)
        return table

    def _kernel(self, acc: _Accumulator, first: int, p: np.ndarray, e: np.ndarray, g0: np.ndarray,
                g1: np.ndarray, widths: Sequence[int]):
        """Add frames (p, e) to `acc` (cells: the lattice points first, first + 1, ...) for `widths`.

        A frame's window for width s: the cells with |P - θ| <= SATURATION·s (and a little more).
        Frames are taken in bands: frames whose windows start within one window length of each
        other are evaluated together on the union of their windows (exact there too), so the
        work is a few large array operations rather than a scatter per frame."""
        n_cells = acc.n_cells
        n = len(p)
        full = [w for w in widths if 2 * self._window_length(w) >= n_cells]  # every cell: one band
        if full:
            self._full_bands(acc, full, first, p, e)
        for w in widths:
            if w in full:
                continue
            s = float(self.width_values[w])
            length = self._window_length(w)
            # from a cell below P - SATURATION·s: every unsaturated cell is inside
            start = np.floor((p - SATURATION * s) / self.resolution).astype(np.intp)
            start -= first + 1
            np.maximum(start, 0, out=start)
            np.minimum(start, n_cells - length, out=start)
            order = np.argsort(start, kind="stable")
            ordered = start[order].tolist()
            a = 0
            for b in range(1, n + 1):
                if b == n or ordered[b] - ordered[a] > length:
                    rows = order[a:b]
                    self._band(acc, w, first, ordered[a], ordered[b - 1] + length, p[rows], e[rows], g0[rows],
                               g1[rows])
                    a = b

    def _full_bands(self, acc: _Accumulator, widths: list[int], first: int, p: np.ndarray, e: np.ndarray):
        """Frames evaluated on every cell for several widths at once (arrays (widths, frames, cells))."""
        n_cells = acc.n_cells
        r = self.resolution
        s = self.width_values[widths]
        steps = r / s
        table = None
        if SATURATION + n_cells * float(steps.max()) <= 600.0:  # exp(j r / s): σ from one exp per frame and width
            key = tuple(widths)
            table = self._tables.get(key)
            if table is None or table.shape[1] < n_cells:  # kept for this resolution, grown as the grid grows
                size = max(n_cells, 2 * (0 if table is None else table.shape[1]))
                size = min(size, int((600.0 - SATURATION) / float(steps.max())))
                table = self._tables[key] = np.exp(np.arange(size)[None, :] * steps[:, None])
            table = table[:, :n_cells]
        sub = max(1, _BAND_VALUES // (len(widths) * n_cells))
        for i in range(0, len(p), sub):
            pp, ee = p[i: i + sub], e[i: i + sub]
            z = self._buffer("z", (len(widths), len(pp), n_cells))
            if table is not None:  # exp((θ_j - P)/s) = exp((θ_0 - P)/s) · exp(j r / s)
                base = _exp((first * r - pp)[None, :] / s[:, None])
                np.multiply(base[:, :, None], table[:, None, :], out=z)
            else:
                z[...] = ((first + np.arange(n_cells)) * r)[None, None, :]
                z -= pp[None, :, None]
                z /= s[:, None, None]
                _exp(z)
            z += 1.0
            np.reciprocal(z, out=z)  # σ((P - θ)/s)
            np.subtract(ee[None, :, None], z, out=z)
            np.square(z, out=z)
            terms = self._terms(z, self._buffer("terms", (len(self.tau_values), *z.shape)))
            if acc.log_mode:
                folded = terms.sum(2) if len(pp) > 1 else terms[:, :, 0]
            else:
                folded = terms.prod(2) if len(pp) > 1 else terms[:, :, 0]
            for j, w in enumerate(widths):
                acc.band(w, 0, n_cells, folded[:, j], len(pp))

    def _band(self, acc: _Accumulator, w: int, first: int, lo: int, hi: int, p: np.ndarray, e: np.ndarray,
              g0: np.ndarray, g1: np.ndarray):
        """Frames (p, e) evaluated exactly on cells [lo, hi) for width w; saturated outside (below:
        π = 1, term g1; above: π = 0, term g0)."""
        n, size = len(p), hi - lo
        s = float(self.width_values[w])
        r = self.resolution
        z = self._buffer("z", (n, size))
        table = self._table(w, size)
        if table is not None:  # exp((θ_j - P)/s) = exp((θ_lo - P)/s) · exp(j r / s)
            np.multiply(_exp(((first + lo) * r - p) / s)[:, None], table[None, :size], out=z)
        else:
            z[...] = (first + lo + np.arange(size))[None, :] * r
            z -= p[:, None]
            z /= s
            _exp(z)
        z += 1.0
        np.reciprocal(z, out=z)  # σ((P - θ)/s)
        np.subtract(e[:, None], z, out=z)
        np.square(z, out=z)
        terms = self._terms(z, self._buffer("terms", (len(self.tau_values), n, size)))
        if acc.log_mode:
            acc.band(w, lo, hi, terms.sum(1) if n > 1 else terms[:, 0], n)
        else:
            acc.band(w, lo, hi, terms.prod(1) if n > 1 else terms[:, 0], n)
        if lo > 0:
            acc.low[w, :, lo] += g1.sum(0)  # cells below the band: π = 1
            acc.saturated = True
        if hi < acc.n_cells:
            acc.high[w, :, hi] += g0.sum(0)  # cells above it: π = 0
            acc.saturated = True

    def _add_to(self, acc: _Accumulator, first: int, p, e, g0, g1, widths: Sequence[int] | None = None):
        """Frames into `acc` in chunks (cache-sized), flushing often enough that the products stay finite."""
        widths = range(len(self.width_values)) if widths is None else widths
        chunk = max(_CHUNK, _BAND_VALUES // max(acc.n_cells * len(widths), 1))  # few cells: more frames at once
        i = 0
        while i < len(p):
            take = min(len(p) - i, self._flush_every - acc.pending, chunk)
            with np.errstate(over="ignore", under="ignore"):  # σ of far cells: exactly 0 or 1
                self._kernel(acc, first, p[i: i + take], e[i: i + take], g0[i: i + take], g1[i: i + take], widths)
            acc.pending += take
            i += take
            if acc.pending >= self._flush_every:
                acc.flush()

    # -- the grid ------------------------------------------------------------------------------
    @property
    def n_cells(self) -> int:
        return 0 if self._acc is None else self._acc.n_cells

    @property
    def theta(self) -> np.ndarray:
        return (self.k0 + np.arange(self.n_cells)) * self.resolution

    @property
    def loglik(self) -> np.ndarray:
        """(cells, pairs) log-likelihood, pairs in the order of `widths` / `taus`."""
        if self._acc is None:
            return np.zeros((0, len(self.widths)))
        self._acc.flush()
        ll = self._acc.loglik
        return ll.reshape(-1, ll.shape[2]).T

    @property
    def n_frames(self) -> int:
        return self._p.n

    @property
    def pressures(self) -> np.ndarray:
        return self._p.values

    @property
    def evidence(self) -> np.ndarray:
        return self._e.values

    def _history(self, first: int, n_cells: int) -> np.ndarray:
        """(W, T, n_cells) log-likelihood of the lattice cells first.. from every frame so far.

        For each width, frames farther than SATURATION·s from every new cell add a constant (g0
        below, g1 above: one sum over them); only the near ones are evaluated (widths that have
        the same near frames together). One pass over all frames, the rest over the near ones."""
        W, T = len(self.width_values), len(self.tau_values)
        acc = _Accumulator(W, T, n_cells, self._log_mode, self._log_amp)
        if not self._p.n:
            return acc.loglik
        p, e = self._p.values, self._e.values
        g0, g1 = self._g0.values, self._g1.values
        r = self.resolution
        lo, hi = first * r, (first + n_cells - 1) * r
        reach = SATURATION * float(self.width_values.max()) + r
        below, above = p < lo - reach, p > hi + reach  # far for every width: σ = 0 / σ = 1 at every new cell
        acc.loglik += (below @ g0 + above @ g1)[None, :, None]
        near = np.flatnonzero(~(below | above))
        if not len(near):
            return acc.loglik
        p, e, g0, g1 = p[near], e[near], g0[near], g1[near]
        if len(near) * n_cells * W <= _BAND_VALUES:  # little work: every width on every near frame, in one go
            self._add_to(acc, first, p, e, g0, g1)
            acc.flush()
            return acc.loglik
        groups: dict[tuple[int, int], tuple[list[int], np.ndarray, np.ndarray]] = {}
        for w in range(W):  # the far sets shrink as s grows, so equal counts are equal sets
            reach = SATURATION * float(self.width_values[w]) + r
            below, above = p < lo - reach, p > hi + reach
            key = (int(below.sum()), int(above.sum()))
            if key not in groups:
                groups[key] = ([], below, above)
            groups[key][0].append(w)
        for widths, below, above in groups.values():
            acc.loglik[widths] += (below @ g0 + above @ g1)[None, :, None]
            rows = np.flatnonzero(~(below | above))
            if len(rows):
                acc.pending = 0  # products of these widths only: count their frames
                self._add_to(acc, first, p[rows], e[rows], g0[rows], g1[rows], widths)
        acc.flush()
        return acc.loglik

    def _extents(self, p: np.ndarray) -> tuple[int, int, float, float, float, int]:
        """The grid after frames p, frame by frame as the per-frame update grows it: lattice
        indices (first, last), their θ as the growth computes them (the grid reaches a new
        pressure ± margin in whole steps from its current ends), the resolution and the
        coarsening factor. Scalars only: the log-likelihood is reshaped once, by `_reshape`."""
        r, margin, cap = self.resolution, self.margin, self.max_cells
        first, last, t_first, t_last = self.k0, self.k0 + self.n_cells - 1, self._t_first, self._t_last
        lo_all, hi_all = self.p_min - margin, self.p_max + margin
        factor = 1
        empty = self._acc is None
        for value in p.tolist():
            lo, hi = value - margin, value + margin
            lo_all, hi_all = min(lo_all, lo), max(hi_all, hi)
            if empty:
                first = math.floor(lo / r)
                t_first = first * r
                n = math.ceil((hi - t_first) / r) + 1
                last, t_last = first + n - 1, t_first + r * (n - 1)
                empty = False
            else:
                if lo < t_first:
                    n = math.ceil((t_first - lo) / r)
                    first, t_first = first - n, t_first - r * n
                if hi > t_last:
                    n = math.ceil((hi - t_last) / r)
                    last, t_last = last + n, t_last + r * n
            while last - first + 1 > cap:  # coarsen: every other θ (even lattice index), then cover again
                first, last = -(-first // 2), last // 2
                r, factor = 2.0 * r, 2 * factor
                t_first, t_last = first * r, last * r
                if lo_all < t_first:
                    n = math.ceil((t_first - lo_all) / r)
                    first, t_first = first - n, t_first - r * n
                if hi_all > t_last:
                    n = math.ceil((hi_all - t_last) / r)
                    last, t_last = last + n, t_last + r * n
        return first, last, t_first, t_last, r, factor

    def _reshape(self, first: int, last: int, resolution: float, factor: int):
        """The log-likelihood onto the grid first..last at `resolution` (`factor` x the current):
        kept cells are subsampled (exact), new ones get the frames seen so far (`_history`)."""
        W, T = len(self.width_values), len(self.tau_values)
        if self._acc is None:
            self.resolution = resolution
            self._tables = {}
            self.k0 = first
            self._acc = _Accumulator(W, T, last - first + 1, self._log_mode, self._log_amp,
                                     self._history(first, last - first + 1))
            return
        old_first, old_last = self.k0, self.k0 + self.n_cells - 1
        if factor == 1 and first == old_first and last == old_last:
            return
        self._acc.flush()
        ll = self._acc.loglik
        if factor > 1:  # the cells on the coarser lattice: exact, nothing recomputed
            keep_first = -(-old_first // factor) * factor
            ll = ll[:, :, keep_first - old_first:: factor]
            old_first = keep_first // factor
            old_last = old_first + ll.shape[2] - 1
            self.resolution = resolution
            self._tables = {}
        if ll.shape[2] == 0:
            old_first, old_last = first, first - 1
        keep = ll[:, :, max(first - old_first, 0): ll.shape[2] - max(old_last - last, 0)]
        old_first, old_last = max(old_first, first), min(old_last, last)
        parts = []
        if first < old_first:
            parts.append(self._history(first, old_first - first))
        parts.append(keep)
        if last > old_last:
            parts.append(self._history(old_last + 1, last - old_last))
        self.k0 = first
        loglik = np.concatenate(parts, axis=2) if len(parts) > 1 else np.ascontiguousarray(keep)
        self._acc = _Accumulator(W, T, loglik.shape[2], self._log_mode, self._log_amp, loglik)

    # -- frames ---------------------------------------------------------------------------------
    def add(self, pressures: np.ndarray, evidence: np.ndarray):
        """Frames (pressures, evidence) in arrival order; the result does not depend on how they
        are batched (to rounding)."""
        p = np.asarray(pressures, dtype=float)
        e = np.asarray(evidence, dtype=float)
        if not len(p):
            return
        self._post = None
        g0, g1 = self._saturated(e)
        first, last, t_first, t_last, resolution, factor = self._extents(p)
        self._reshape(first, last, resolution, factor)
        self._t_first, self._t_last = t_first, t_last
        self.p_min, self.p_max = min(self.p_min, float(p.min())), max(self.p_max, float(p.max()))
        self._add_to(self._acc, self.k0, p, e, g0, g1)
        self._p.extend(p)
        self._e.extend(e)
        self._g0.extend(g0)
        self._g1.extend(g1)
        k = self.settle_frames
        if k > 0:
            self._low_first = np.sort(np.concatenate([self._low_first, p[e < 0.5]]))[:k]
            self._high_last = np.sort(np.concatenate([self._high_last, p[e > 0.5]]))[-k:]

    def update(self, pressure: float, evidence: float):
        self.add(np.array([pressure]), np.array([evidence]))

    def agreeing(self, below: float, above: float) -> tuple[bool, bool]:
        """Whether at least settle_frames frames below `below` have e < 0.5 and above `above` e > 0.5."""
        k = self.settle_frames
        if k <= 0:
            return True, True
        return (len(self._low_first) >= k and self._low_first[k - 1] < below,
                len(self._high_last) >= k and self._high_last[-k] > above)

    def posterior(self) -> np.ndarray:
        """Posterior over the θ grid (s, τ marginalised, flat priors); kept until the next frame."""
        if self._acc is None:
            return np.zeros(0)
        if self._post is None:
            ll = self.loglik.T  # (pairs, cells)
            top = ll.max(0)
            log_theta = top + np.log(_exp(ll - top[None, :]).sum(0))
            w = np.exp(log_theta - log_theta.max())
            self._post = w / w.sum()
        return self._post


class OnlineChangePoint:
    """Online estimate of the transition pressure(s) from per-frame phase probabilities.

    phase_names: the classifier's phases in order of pressure (K phases -> K-1 boundaries).
    resolution: θ grid step (GPa); default a tenth of the first pressure step seen.
    widths: transition scales s to marginalise over (GPa); default 0.25-16 pressure steps.
    taus: noise levels τ of the classifier's probability to marginalise over.
    error_rate: ε of the likelihood. settle_sigma: default one pressure step (median |ΔP|).
    margin: how far beyond the observed pressures the grid reaches (default 10 pressure steps):
    where the posterior puts θ while no frame of the next phase has been seen.
    max_cells: bound on each boundary's θ grid (None: unbounded, as before). When the observed
    range ± margin would need more cells, the grid is coarsened: every other θ is kept (exact
    for the kept points) and the resolution doubles, as often as needed, so an update costs
    O(max_cells) however long the run. The estimate is then resolved to the coarser cell:
    with the defaults (a tenth of a step, margin 10 steps) a ramp over a range R is coarsened
    once it has more than about (max_cells - 200) / 10 frames (~130 for 1500), and ends with
    cells of about R / max_cells to 2 R / max_cells (0.03-0.07 GPa for 50 GPa). Below the
    bound nothing changes.

    systematic_bias, systematic_sigma (GPa): the classifier's own offset of the crossing point
    from the true transition and its spread, measured on calibration ramps
    (`calibration.changepoint_calibration`); the bias is subtracted from the estimate, the
    spread added in quadrature to the posterior's standard deviation in `sigma` and to the
    half-widths of `interval`. Settling looks at the statistical part only (more frames cannot
    shrink the systematic one).

    `update` adds one frame, `update_many` a batch (the same result to rounding, the estimates
    computed once); `estimates()` is kept until the next frame.
    """

    def __init__(self, phase_names: Sequence[str] = ("low", "high"), resolution: float | None = None,
                 widths: Sequence[float] | None = None, taus: Sequence[float] = (0.05, 0.1, 0.2, 0.35),
                 error_rate: float = 0.05, settle_sigma: float | None = None, settle_frames: int = 3,
                 margin: float | None = None, max_cells: int | None = MAX_CELLS, systematic_sigma: float = 0.0,
                 systematic_bias: float = 0.0):
        self.phase_names = tuple(str(p) for p in phase_names)
        if not (math.isfinite(systematic_sigma) and systematic_sigma >= 0.0):
            raise ValueError(f"systematic_sigma must be a finite number >= 0 (GPa), got {systematic_sigma}")
        if not math.isfinite(systematic_bias):
            raise ValueError(f"systematic_bias must be a finite number (GPa), got {systematic_bias}")
        self.systematic_sigma = float(systematic_sigma)
        self.systematic_bias = float(systematic_bias)
        if len(self.phase_names) < 2:
            raise ValueError("a change point needs at least two phases")
        if not 0.0 <= error_rate < 1.0:
            raise ValueError(f"error_rate must lie in [0, 1), got {error_rate}")
        if max_cells is not None and int(max_cells) < 2:
            raise ValueError(f"max_cells must be at least 2, got {max_cells}")
        self.resolution = resolution
        self.widths = None if widths is None else np.asarray(widths, dtype=float)
        self.taus = np.asarray(taus, dtype=float)
        self.error_rate = float(error_rate)
        self.settle_sigma = settle_sigma
        self.settle_frames = int(settle_frames)
        self.margin = margin
        self.max_cells = None if max_cells is None else int(max_cells)
        self._boundaries: list[_Boundary] | None = None
        self._pending: list[tuple[float, np.ndarray]] = []  # frames before the pressure step is known
        self.pressures: list[float] = []
        self._steps = _RunningMedian()  # of |ΔP| > 0 between consecutive usable frames
        self._estimates: list[BoundaryEstimate] | None = None
        self.flagged: list[int] = []
        self.n_seen = 0

    @property
    def n_boundaries(self) -> int:
        return len(self.phase_names) - 1

    @property
    def pressure_step(self) -> float | None:
        """Median |ΔP| > 0 between consecutive usable frames (None before two pressures differ)."""
        return self._steps.median()

    def _start(self, step: float):
        resolution = self.resolution or step / 10.0
        widths = self.widths if self.widths is not None else step * np.array([0.25, 0.5, 1, 2, 4, 8, 16])
        margin = self.margin if self.margin is not None else 10.0 * step
        self._boundaries = [_Boundary(resolution, widths, self.taus, self.error_rate, margin, self.max_cells,
                                      self.settle_frames) for _ in range(self.n_boundaries)]

    def update(self, probabilities, pressure: float) -> list[BoundaryEstimate]:
        """Add one frame (phase probabilities, pressure); returns the estimate of every boundary.
        A frame whose probabilities or pressure are not finite is flagged and skipped."""
        index = self.n_seen
        self.n_seen += 1
        q = np.asarray(probabilities, dtype=float).ravel()
        if q.size != len(self.phase_names) or not np.all(np.isfinite(q)) or not math.isfinite(float(pressure)):
            self.flagged.append(index)
            return self.estimates()
        self._add_frames(np.array([float(pressure)]), q[None, :])
        return self.estimates()

    def update_many(self, probabilities, pressures) -> list[BoundaryEstimate]:
        """Add a batch of frames in order: probabilities (n, K), pressures (n,). The same state as
        n calls of `update` (to rounding); returns the estimates after the last frame, computed
        once. Rows with non-finite probabilities or pressure are flagged and skipped."""
        p = np.asarray(pressures, dtype=float).ravel()
        q = np.asarray(probabilities, dtype=float)
        q = q.reshape(len(p), -1) if q.size or len(p) else np.zeros((0, len(self.phase_names)))
        index = self.n_seen + np.arange(len(p))
        self.n_seen += len(p)
        if q.shape[1] != len(self.phase_names):
            usable = np.zeros(len(p), bool)
        else:
            usable = np.isfinite(q).all(1) & np.isfinite(p)
        self.flagged.extend(int(i) for i in index[~usable])
        if usable.any():
            self._add_frames(p[usable], q[usable])
        return self.estimates()

    def _add_frames(self, p: np.ndarray, q: np.ndarray):
        """Usable frames (finite pressures p (n,), probabilities q (n, K)) in arrival order."""
        q = np.clip(q, 0.0, None)
        total = q.sum(1, keepdims=True)
        q = np.where(total > 0, q / np.where(total > 0, total, 1.0), 1.0 / q.shape[1])
        self._estimates = None
        start = None
        previous = self.pressures[-1] if self.pressures else None
        for i, value in enumerate(p.tolist()):
            if previous is not None and abs(value - previous) > 0:
                self._steps.add(abs(value - previous))
                if start is None and self._boundaries is None:
                    start = i
            previous = value
        self.pressures.extend(p.tolist())
        if self._boundaries is None:
            if start is None:
                self._pending.extend(zip(p.tolist(), q))
                return
            # the first pressure step is known at frame `start`: it is the only step so far
            step = abs(p[start] - (p[start - 1] if start > 0 else self._pending[-1][0]))
            self._start(step)
            if self._pending:
                p = np.concatenate([[pp for pp, _ in self._pending], p])
                q = np.concatenate([np.stack([qq for _, qq in self._pending]), q])
                self._pending = []
        above = np.cumsum(q[:, ::-1], axis=1)[:, ::-1]  # above[:, k] = P(phase >= k)
        for k, boundary in enumerate(self._boundaries):
            boundary.add(p, np.clip(above[:, k + 1], 0.0, 1.0))

    def run(self, probabilities, pressures) -> list[list[BoundaryEstimate]]:
        """Feed a whole sequence in arrival order; the estimates after every frame."""
        return [self.update(q, p) for q, p in zip(np.asarray(probabilities, dtype=float), pressures)]

    def estimates(self) -> list[BoundaryEstimate]:
        if self._estimates is None:
            out = []
            for k in range(self.n_boundaries):
                lower, upper = self.phase_names[k], self.phase_names[k + 1]
                if self._boundaries is None or self._boundaries[k].n_cells == 0:
                    nan = float("nan")
                    out.append(BoundaryEstimate(k, lower, upper, nan, nan, (nan, nan), nan, 0.0, False,
                                                len(self.pressures)))
                    continue
                out.append(self._estimate(k, lower, upper))
            self._estimates = out
        return list(self._estimates)

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
        inside = (theta >= b.p_min) & (theta <= b.p_max)
        observed = float(post[inside].sum())
        settle_sigma = self.settle_sigma if self.settle_sigma is not None else (self.pressure_step or 0.0)
        below_agree, above_agree = b.agreeing(mean - sigma, mean + sigma)
        settled = sigma <= settle_sigma and observed >= 0.99 and below_agree and above_agree
        sys95, bias = 1.96 * self.systematic_sigma, self.systematic_bias
        total = math.hypot(sigma, self.systematic_sigma)
        interval = (mean - bias - math.hypot(mean - interval[0], sys95),
                    mean - bias + math.hypot(interval[1] - mean, sys95))
        return BoundaryEstimate(k, lower, upper, mean - bias, total, interval,
                                float(theta[int(np.argmax(post))]) - bias, observed, bool(settled), b.n_frames, sigma)

    def phase_probability(self, pressure: float) -> np.ndarray:
        """Posterior predictive P(phase | pressure) from the change points (not from one frame)."""
        probs_above = []
        for b in self._boundaries or []:
            post = b.posterior()
            loglik = b.loglik
            log_theta = loglik - np.logaddexp.reduce(loglik, axis=1, keepdims=True)  # p(s | θ)
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


def systematic_options(model) -> dict:
    """`OnlineChangePoint` options of a model's calibrated crossing-point error (none if not measured)."""
    calibration = getattr(model, "changepoint", None) or {}
    return {"systematic_sigma": float(calibration.get("systematic_sigma_gpa", 0.0)),
            "systematic_bias": float(calibration.get("bias_gpa", 0.0))}


class TransitionTracker:
    """A trained phase classifier + the online change point: one `update(frame, pressure)` per frame.

    two_theta / wavelength: the detector's nominal axis, for frames given as bare arrays
    (frames of another length are resampled as if they spanned the same range; see
    `frames.prepare_frames`). `Diffractogram` frames carry their own axis.
    """

    def __init__(self, model, two_theta=None, wavelength: float | None = None, **changepoint_options):
        self.model = model
        self.two_theta = None if two_theta is None else np.asarray(two_theta, dtype=float)
        self.wavelength = wavelength
        changepoint_options = {**systematic_options(model), **changepoint_options}
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

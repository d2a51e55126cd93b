"""Compression alignment: rescale each frame in q onto a reference pattern before a model sees it.

Compression alignment (both neural models): under pressure every peak moves to higher q, so a
network that looks at fixed bins would learn the pressure, not the phase (and would place the
transition wherever the training patterns changed phase). Each frame is first rescaled in q
by the factor that best matches a reference pattern (`CompressionAlignment`, a
cross-correlation on a log-q axis); what is left is the phase's own signature (here: split
111/220/311/222 lines of the rhombohedral phase, unsplit 200).
"""

from __future__ import annotations

import math

import numpy as np

from xrd_nexus_ml.pattern import QGrid


def _fast_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (a length pocketfft transforms fast)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


class CompressionAlignment:
    """Undo the isotropic compression of a frame: find c with x(c q) ≈ reference(q), resample.

    Under pressure every peak moves to higher q by the same factor a0/a (for a cubic cell exactly,
    for a weakly distorted one on average), so without this a per-bin network sees peaks drift
    through its bin and learns the pressure instead of the phase. The factor is the maximum of
    the cross-correlation with a reference pattern on a log-q axis (where scaling is a shift),
    refined to a fraction of a grid step, searched over `scale_range` (kept below 2/√3 = 1.155,
    the 111 -> 200 ratio of rock salt, so no peak is matched onto its neighbour).

    Vectorised over frames: the log-q resampling is a fixed gather (indices and weights computed
    once), the correlation is taken only over the lags searched and the measured part of the
    frames (an FFT of a few thousand points instead of 2 x grid), the reference's transform is
    kept until the reference changes, and `apply` gathers every frame's rescaled points at once
    (the same values as `np.interp`, left/right 0, a point measured where the interpolated mask
    exceeds 0.999).
    """

    def __init__(self, grid: QGrid, reference: np.ndarray | None = None, scale_range=(0.95, 1.12)):
        self.grid = grid
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        q = grid.values
        self._q = q
        self._log_q = np.linspace(math.log(q[0]), math.log(q[-1]), grid.n_points)
        self._du = self._log_q[1] - self._log_q[0]
        # the log-q grid as a gather from the q grid (np.interp's ends: the first / last value)
        t = np.exp(self._log_q)
        left = np.clip(np.searchsorted(q, t, side="right") - 1, 0, q.size - 2)
        self._log_left = left
        self._log_weight = np.clip((t - q[left]) / (q[left + 1] - q[left]), 0.0, 1.0)
        self._lags = np.arange(int(math.floor(math.log(self.scale_range[0]) / self._du)),
                               int(math.ceil(math.log(self.scale_range[1]) / self._du)) + 1)
        self.reference = reference

    @property
    def reference(self) -> np.ndarray | None:
        return self._reference

    @reference.setter
    def reference(self, value):
        self._reference = None if value is None else np.asarray(value, dtype=np.float32)
        self._reference_log = None if value is None else self._to_log(self._reference)[0]
        self._reference_fft: dict[tuple[int, int, int], np.ndarray] = {}

    def _to_log(self, x: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """(n, hi - lo) float64: the frames on points [lo, hi) of the log-q grid."""
        x = np.atleast_2d(x)
        left, weight = self._log_left[lo:hi], self._log_weight[lo:hi]
        a = np.take(x, left, axis=1).astype(float)
        out = np.take(x, left + 1, axis=1).astype(float)
        out -= a
        out *= weight
        out += a
        return out

    def _support(self, x: np.ndarray) -> tuple[int, int]:
        """Points [lo, hi) of the log-q grid outside which every frame's log-q values are 0."""
        nonzero = np.flatnonzero(np.any(x != 0, axis=0))
        if not nonzero.size:
            return 0, 0
        lo = int(np.searchsorted(self._log_left + 1, nonzero[0], side="left"))
        hi = int(np.searchsorted(self._log_left, nonzero[-1], side="right"))
        return lo, max(lo, hi)

    def scales(self, x: np.ndarray) -> np.ndarray:
        """(n,) factor c per frame (frame peak at c·q_ref)."""
        x = np.atleast_2d(x)
        if self.reference is None:
            return np.ones(len(x))
        lags = self._lags
        n_lags = len(lags)
        lo, hi = self._support(x)
        if hi <= lo:  # nothing measured: every lag correlates to 0, as on the full grid
            window = np.zeros((len(x), n_lags))
        else:
            # corr[lag] = Σ_j x[j] r[j - lag] over the frames' support j in [lo, hi): a correlation
            # of the frames with the reference segment r[lo - lag_max : hi - lag_min]
            size = hi - lo
            n_fft = _fast_length(size + n_lags - 1)
            key = (lo, hi, n_fft)
            ref = self._reference_fft.get(key)
            if ref is None:
                g = self.grid.n_points
                start = lo - int(lags[-1])
                seg = np.zeros(size + n_lags - 1)
                a, b = max(start, 0), min(start + seg.size, g)
                if b > a:
                    seg[a - start: b - start] = self._reference_log[a:b]
                ref = np.fft.rfft(seg, n_fft)
                if len(self._reference_fft) > 8:
                    self._reference_fft.clear()
                self._reference_fft[key] = ref
            frames = np.fft.rfft(self._to_log(x, lo, hi), n_fft, axis=1)
            np.conjugate(frames, out=frames)
            frames *= ref[None, :]
            corr = np.fft.irfft(frames, n_fft, axis=1)  # corr[:, u] = Σ_s x[lo + s] seg[s + u]
            window = corr[:, n_lags - 1:: -1]  # lag = lags[-1] - u, in the order of `lags`
        best = window.argmax(1)
        inner = (best > 0) & (best < n_lags - 1)
        rows = np.arange(len(x))
        b = np.clip(best, 1, n_lags - 2)
        y0, y1, y2 = window[rows, b - 1], window[rows, b], window[rows, b + 1]
        denom = y0 - 2 * y1 + y2
        frac = np.where(inner & (denom < 0), 0.5 * (y0 - y2) / np.where(denom < 0, denom, -1.0), 0.0)
        return np.exp((lags[best] + frac) * self._du)

    def apply(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Aligned (x, mask) and the factors; points that come from outside the frame get mask False."""
        c = self.scales(x)
        out = np.zeros_like(x)
        out_mask = np.zeros_like(mask)
        measured = np.flatnonzero(mask.any(0))
        if not len(x) or not measured.size:
            return out, out_mask, c
        q = self._q
        g = q.size
        step = (q[-1] - q[0]) / (g - 1)
        # output points whose source c·q can fall next to a measured point of some frame
        first = q[max(int(measured[0]) - 1, 0)] / float(c.max())
        last = q[min(int(measured[-1]) + 1, g - 1)] / float(c.min())
        lo = max(int(math.floor((first - q[0]) / step)) - 1, 0)
        hi = min(int(math.ceil((last - q[0]) / step)) + 2, g)
        if hi <= lo:
            return out, out_mask, c
        source = c[:, None] * q[None, lo:hi]  # what np.interp(q * c[i], q, row) evaluates
        inside = (source >= q[0]) & (source <= q[-1])
        f = source - q[0]
        f /= step
        np.clip(f, 0.0, g - 1.0, out=f)
        left = np.minimum(f.astype(np.intp), g - 2)
        weight = f - left
        np.clip(weight, 0.0, 1.0, out=weight)
        flat = left + (np.arange(len(x)) * g)[:, None]
        values = np.take(x, flat).astype(float)
        upper = np.take(x, flat + 1).astype(float)
        upper -= values
        upper *= weight
        values += upper
        m0 = np.take(mask, flat).astype(float)
        m1 = np.take(mask, flat + 1).astype(float)
        m1 -= m0
        m1 *= weight
        m1 += m0
        keep = (m1 > 0.999) & inside
        out[:, lo:hi] = np.where(keep, values, 0.0)
        out_mask[:, lo:hi] = keep
        return out, out_mask, c

    def fit(self, x: np.ndarray, mask: np.ndarray) -> CompressionAlignment:
        """Reference: the first pattern, then the mean of all patterns aligned to it (one refinement)."""
        self.reference = x[0].astype(np.float32)
        aligned, aligned_mask, _ = self.apply(x, mask)
        counts = aligned_mask.sum(0)
        self.reference = np.where(counts > 0, aligned.sum(0) / np.maximum(counts, 1), 0.0).astype(np.float32)
        return self

"""Preprocessing of measured patterns before they are compared or classified.

Background: SNIP (statistics-sensitive non-linear iterative peak clipping; Ryan et al. 1988,
Morháč et al. 1997). On log-log-square-root compressed intensities, each pass replaces a
point by the mean of its neighbours k points away when that is lower, for k = 1..width; what
remains is the smooth background under the peaks. It needs only the widest peak width in
points, and no peak positions.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from xrd_nexus_ml.errors import PatternError
from xrd_nexus_ml.pattern import Diffractogram


def snip_background(intensity: np.ndarray, width: int, dtype=float) -> np.ndarray:
    """Background by SNIP with clipping windows 1..`width` points, along the last axis.

    A 1-D signal, or an (n, m) stack of n signals of m points each (every row on its own, the
    same result as one call per row, computed for all rows at once). dtype: of a stack's
    arithmetic; float32 (what training streams use) halves the memory traffic and moves the
    background by ~1e-6 of itself."""
    if width < 1:
        raise PatternError(f"SNIP width must be at least 1 point, got {width}")
    y = np.asarray(intensity)
    y = np.clip(np.asarray(y, dtype=float if y.ndim == 1 else dtype), 0.0, None)
    if y.ndim != 1:
        return _snip_rows(y, width, dtype)
    v = np.log(np.log(np.sqrt(y + 1.0) + 1.0) + 1.0)  # LLS: compresses peaks relative to background
    n = v.size
    for k in range(1, min(width, (n - 1) // 2) + 1):
        mean = 0.5 * (v[: n - 2 * k] + v[2 * k :])
        v[k : n - k] = np.minimum(v[k : n - k], mean)
    return (np.exp(np.exp(v) - 1.0) - 1.0) ** 2 - 1.0


#: Values per block of the stacked SNIP (rows x points): few NumPy calls, block still near the caches.
_SNIP_BLOCK_VALUES = 131072


def _snip_rows(y: np.ndarray, width: int, dtype=float) -> np.ndarray:
    """`snip_background` of every row of `y` (clipped, ndim >= 2) along its last axis, in `dtype`.

    The same operations as the 1-D loop, element by element, so each row's result is identical to
    the 1-D one. Rows go in blocks laid out point-major ((m, rows): each shifted slice is one
    contiguous run), so one NumPy call serves every row of a block."""
    shape = y.shape
    m = shape[-1]
    rows = y.reshape(-1, m)
    n = rows.shape[0]
    out = np.empty((n, m), dtype=dtype)
    if n == 0 or m == 0:
        return out.reshape(shape)
    n_blocks = -(-n * m // _SNIP_BLOCK_VALUES)
    size = -(-n // n_blocks)
    kmax = min(width, (m - 1) // 2)
    half = np.asarray(0.5, dtype=dtype)
    for start in range(0, n, size):
        stop = min(start + size, n)
        v = np.add(rows[start:stop].T, 1.0, out=np.empty((m, stop - start), dtype=dtype))  # (m, b); LLS as in 1-D
        np.sqrt(v, out=v)
        v += 1.0
        np.log(v, out=v)
        v += 1.0
        np.log(v, out=v)
        scratch = np.empty_like(v)
        for k in range(1, kmax + 1):
            mean = scratch[: m - 2 * k]
            np.add(v[: m - 2 * k], v[2 * k:], out=mean)
            mean *= half
            np.minimum(v[k: m - k], mean, out=v[k: m - k])
        np.exp(v, out=v)
        v -= 1.0
        np.exp(v, out=v)
        v -= 1.0
        np.square(v, out=v)
        v -= 1.0
        out[start:stop] = v.T
    return out.reshape(shape)


def subtract_background(pattern: Diffractogram, width_deg: float = 1.5) -> Diffractogram:
    """The pattern minus its SNIP background; `width_deg` is wider than any peak (2θ units or Å^-1)."""
    step = float(np.median(np.diff(pattern.x)))
    width = max(1, int(round(width_deg / step)))
    measured = pattern.mask
    background = np.zeros_like(pattern.intensity)
    background[measured] = snip_background(pattern.intensity[measured], width)
    corrected = np.where(measured, np.clip(pattern.intensity - background, 0.0, None), 0.0)
    metadata = dict(pattern.metadata, background="snip", background_width=width_deg)
    return replace(pattern, intensity=corrected, metadata=metadata)


def model_input(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(n, 2, G) float32 network input: √ of the max-normalised pattern (zero outside the mask),
    and the mask. Every network here reads patterns this way; the square root lifts weak peaks."""
    mask = np.asarray(mask, dtype=bool)
    x = np.where(mask, np.clip(np.asarray(x, dtype=np.float32), 0.0, None), 0.0)
    top = x.max(axis=1, keepdims=True)
    x = np.sqrt(x / np.where(top > 0, top, 1.0))
    return np.stack([x, mask.astype(np.float32)], axis=1).astype(np.float32)

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


def snip_background(intensity: np.ndarray, width: int) -> np.ndarray:
    """Background of a 1-D signal by SNIP with clipping windows 1..`width` points."""
    if width < 1:
        raise PatternError(f"SNIP width must be at least 1 point, got {width}")
    y = np.clip(np.asarray(intensity, dtype=float), 0.0, None)
    v = np.log(np.log(np.sqrt(y + 1.0) + 1.0) + 1.0)  # LLS: compresses peaks relative to background
    n = v.size
    for k in range(1, min(width, (n - 1) // 2) + 1):
        mean = 0.5 * (v[: n - 2 * k] + v[2 * k :])
        v[k : n - k] = np.minimum(v[k : n - k], mean)
    return (np.exp(np.exp(v) - 1.0) - 1.0) ** 2 - 1.0


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

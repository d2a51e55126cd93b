"""Patterns that are not crystal diffractograms: flat, noise only, amorphous humps, smooth background.

A classifier trained only on crystals names a space group for anything. Outlier exposure
(Hendrycks et al., ICLR 2019) shows it such patterns during training with a uniform target,
so their softmax comes out flat; calibration then sets the confidence below which a pattern
is reported as not crystalline. The kinds mimic what a beamline sees when the beam misses the
sample, the sample is a glass or a liquid, or only the container scatters.
"""

from __future__ import annotations

import numpy as np

from xrd_nexus_ml.pattern import QGrid

KINDS = ("flat", "noise", "amorphous", "background")


def non_crystal_patterns(n: int, grid: QGrid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(intensity (n, G) float32 with max 1 over the mask, mask (n, G) bool), kinds drawn uniformly."""
    q = np.asarray(grid.values, dtype=np.float64)
    out = np.zeros((n, q.size))
    kinds = rng.integers(0, len(KINDS), size=n)
    for i, kind in enumerate(kinds):
        name = KINDS[kind]
        if name == "flat":
            level = np.full(q.size, 1.0)
        elif name == "noise":
            level = np.abs(rng.normal(0.0, 1.0, q.size)) if rng.random() < 0.5 else rng.random(q.size)
        elif name == "amorphous":  # one to three broad halos over a decaying background (a glass, a liquid)
            level = rng.uniform(0.0, 0.5) * np.exp(-q / rng.uniform(0.5, 4.0))
            for _ in range(rng.integers(1, 4)):
                centre, width = rng.uniform(0.8, 4.5), rng.uniform(0.15, 0.8)
                level = level + rng.uniform(0.2, 1.0) * np.exp(-0.5 * ((q - centre) / width) ** 2)
        else:  # smooth background of a container or air scatter: a low-order positive polynomial
            t = (q - q[0]) / (q[-1] - q[0])
            level = np.polyval(rng.uniform(-1.0, 1.0, 4), t)
            level = level - level.min() + rng.uniform(0.05, 1.0)
        counts = 10.0 ** rng.uniform(2.0, 5.0)  # Poisson noise at 1e2-1e5 counts at the maximum
        out[i] = rng.poisson(np.clip(level / level.max(), 0.0, None) * counts) / counts
    mask = np.ones((n, q.size), dtype=bool)
    for i in range(n):  # measured windows as in the training augmentation (RangeMask)
        if rng.random() < 0.8:
            lo, hi = rng.uniform(0.3, 1.0), rng.uniform(4.5, 8.0)
            mask[i] = (q >= lo) & (q <= hi)
    out = np.where(mask, out, 0.0)
    top = out.max(axis=1, keepdims=True)
    return (out / np.where(top > 0, top, 1.0)).astype(np.float32), mask

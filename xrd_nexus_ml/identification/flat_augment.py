"""The augmentations of `physics.augment`, applied to flat stick lists and to NumPy patterns.

`physics.augment` works on padded (B, M) peak lists: a batch costs B × (the longest list), and
libraries hold a few references of thousands of peaks among hundreds of short ones; its second
phase doubles the width again. Here a batch's peaks are one flat list (row, q, intensity, hkl), so
each peak transform costs the number of real peaks, and pattern transforms run on float32 NumPy
arrays in place (torch allocates a fresh buffer per operation, which costs more than the
arithmetic on a (256, 4096) batch).

The transform objects stay the recipe: each function here reads its transform's fields and draws
the same quantities from the same distributions, per pattern (probability) and per peak, as the
transform's own `_apply`; the draws come from a NumPy generator. A transform without a function
here runs as itself on the padded tensors (`apply_peaks`, `apply_pattern`), so any pipeline works.
Poisson noise is exact below `POISSON_EXACT_BELOW` counts and a skew-corrected normal above (see
`poisson_noise`). Bulk normal numbers come from torch's generator (twice NumPy's speed), seeded
from the NumPy generator, so a stream is still reproducible from one seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from xrd_nexus_ml.physics import PeakList
from xrd_nexus_ml.physics.augment import (
    Background,
    CrystalliteSize,
    GaussianNoise,
    ImpurityPhase,
    IntensityScaling,
    LatticeStrain,
    Normalise,
    PeakLoss,
    PeakShift,
    PoissonNoise,
    PreferredOrientation,
    RangeMask,
    Transform,
)
from xrd_nexus_ml.physics.profiles import RenderSettings
from xrd_nexus_ml.physics.simulator import SimulatedBatch

#: Counts below which Poisson noise is drawn exactly (above: Gaussian of variance = mean).
POISSON_EXACT_BELOW = 10.0


@dataclass
class FlatPeaks:
    """The sticks of a batch as one list: pattern index, q (Å^-1), integrated intensity, hkl (000: none)."""

    row: np.ndarray  # (P,) int64
    q: np.ndarray  # (P,) float64
    intensity: np.ndarray  # (P,) float64
    hkl: np.ndarray  # (P, 3) int64
    reciprocal_lattice: np.ndarray  # (B, 3, 3) rows a*, b*, c*
    n_rows: int

    def row_max(self) -> np.ndarray:
        """(B,) strongest intensity of each pattern (0 for a pattern without peaks)."""
        out = np.zeros(self.n_rows)
        np.maximum.at(out, self.row, self.intensity)
        return out

    def padded(self) -> PeakList:
        """The same sticks as a padded `PeakList` (for transforms without a flat version)."""
        counts = np.bincount(self.row, minlength=self.n_rows)
        order = np.argsort(self.row, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        column = np.arange(len(order)) - np.repeat(starts, counts)
        width = max(1, int(counts.max()) if len(counts) else 1)
        q, inten = np.zeros((self.n_rows, width)), np.zeros((self.n_rows, width))
        hkl = np.zeros((self.n_rows, width, 3), dtype=np.int64)
        rows = self.row[order]
        q[rows, column], inten[rows, column], hkl[rows, column] = self.q[order], self.intensity[order], self.hkl[order]
        return PeakList(q=torch.from_numpy(q), intensity=torch.from_numpy(inten), hkl=torch.from_numpy(hkl),
                        reciprocal_lattice=torch.from_numpy(self.reciprocal_lattice))

    @classmethod
    def from_padded(cls, peaks: PeakList) -> FlatPeaks:
        inten = peaks.intensity.detach().cpu().double().numpy()
        row, col = np.nonzero(inten > 0)
        return cls(row=row, q=peaks.q.detach().cpu().double().numpy()[row, col], intensity=inten[row, col],
                   hkl=peaks.hkl.detach().cpu().numpy()[row, col],
                   reciprocal_lattice=peaks.reciprocal_lattice.detach().cpu().double().numpy(), n_rows=len(peaks))


@dataclass
class FlatState:
    """What the peak and pattern stages of one batch work on."""

    peaks: FlatPeaks
    settings: RenderSettings
    intensity: np.ndarray | None = None  # (B, G) float32 once rendered
    mask: np.ndarray | None = None  # (B, G) bool
    memo: dict = field(default_factory=dict)  # what transforms keep between draws (flat impurity pools)


def _active(rng: np.random.Generator, t: Transform, n: int) -> np.ndarray:
    return rng.random(n) < t.probability


def _normal(rng: np.random.Generator, shape) -> np.ndarray:
    """float32 standard normal numbers, drawn by torch from a seed taken from `rng`."""
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return torch.randn(shape, generator=generator).numpy()


def _log_uniform(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return np.full(n, float(lo)) if lo == hi else np.exp(rng.uniform(math.log(lo), math.log(hi), n))


# -- peak stage ---------------------------------------------------------------------------------


def _cartesian(hkl: np.ndarray, recip: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(P, 3) scattering vectors / 2π, hkl · (a*, b*, c*) of each peak's pattern."""
    r = recip[rows]
    return hkl[:, :1] * r[:, 0] + hkl[:, 1:2] * r[:, 1] + hkl[:, 2:] * r[:, 2]


def preferred_orientation(t: PreferredOrientation, s: FlatState, rng: np.random.Generator) -> None:
    """March-Dollase factor (r² cos²α + sin²α / r)^(-3/2) of each peak's representative hkl."""
    p = s.peaks
    n = p.n_rows
    active = _active(rng, t, n)
    r = rng.uniform(*t.r_range, n)
    if t.directions is not None:
        direction = np.asarray(t.directions)[rng.integers(len(t.directions), size=n)]
    else:
        idx = rng.integers(26, size=n)
        idx = idx + (idx >= 13)
        direction = np.stack([idx // 9 - 1, (idx // 3) % 3 - 1, idx % 3 - 1], axis=1)
    on = active[p.row]
    recip = p.reciprocal_lattice
    g = _cartesian(p.hkl[on], recip, p.row[on])
    g_pref = np.einsum("bi,bij->bj", direction.astype(float), recip)[p.row[on]]
    norm = np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(g_pref, axis=1), 1e-12)
    cos2 = np.clip(np.abs((g * g_pref).sum(1)) / norm, 0.0, 1.0) ** 2
    rr = r[p.row[on]]
    p.intensity[on] *= (rr**2 * cos2 + (1.0 - cos2) / rr) ** -1.5


def lattice_strain(t: LatticeStrain, s: FlatState, rng: np.random.Generator) -> None:
    """d -> d (1 + ε): one ε per pattern, or one per cell edge (equal edges share theirs)."""
    p = s.peaks
    n = p.n_rows
    active = _active(rng, t, n)
    on = active[p.row]
    if t.mode == "isotropic":
        eps = rng.uniform(*t.strain_range, n)
        p.q[on] /= 1.0 + eps[p.row[on]]
        return
    eps = rng.uniform(*t.strain_range, (n, 3))
    recip = p.reciprocal_lattice
    lengths = np.linalg.norm(np.swapaxes(np.linalg.inv(recip), -1, -2), axis=-1)
    tie = lambda i, j: np.abs(lengths[:, i] - lengths[:, j]) <= 1e-4 * lengths[:, i]  # noqa: E731
    e_a = eps[:, 0]
    e_b = np.where(tie(0, 1), e_a, eps[:, 1])
    e_c = np.where(tie(0, 2), e_a, np.where(tie(1, 2), e_b, eps[:, 2]))
    eps = np.stack([e_a, e_b, e_c], axis=1)
    strained = recip / (1.0 + eps[:, :, None])
    rows = p.row[on]
    hkl = p.hkl[on]
    before = np.linalg.norm(_cartesian(hkl, recip, rows), axis=1)
    after = np.linalg.norm(_cartesian(hkl, strained, rows), axis=1)
    ratio = np.where(before > 0, after / np.maximum(before, 1e-30), 1.0 / (1.0 + eps.mean(1)[rows]))
    p.q[on] *= ratio
    p.reciprocal_lattice = np.where(active[:, None, None], strained, recip)


def peak_loss(t: PeakLoss, s: FlatState, rng: np.random.Generator) -> None:
    """Each peak dropped with the pattern's probability; the strongest kept if asked."""
    p = s.peaks
    active = _active(rng, t, p.n_rows)
    prob = rng.uniform(*t.drop_probability, p.n_rows)
    dropped = (rng.random(len(p.q)) < prob[p.row]) & active[p.row] & (p.intensity > 0)
    if t.keep_strongest:
        dropped &= p.intensity < p.row_max()[p.row]
    p.intensity[dropped] = 0.0


def intensity_scaling(t: IntensityScaling, s: FlatState, rng: np.random.Generator) -> None:
    """A random factor per peak: uniform 1 ± spread, or exp(spread · N(0, 1))."""
    p = s.peaks
    active = _active(rng, t, p.n_rows)
    if t.distribution == "uniform":
        factor = 1.0 + t.spread * (2.0 * rng.random(len(p.q)) - 1.0)
    else:
        factor = np.exp(t.spread * rng.standard_normal(len(p.q)))
    on = active[p.row]
    p.intensity[on] *= factor[on]


class _FlatPool:
    """An impurity pool as one flat list (pool entry of each stick), kept beside its transform."""

    def __init__(self, pool: PeakList):
        inten = pool.intensity.detach().cpu().double().numpy()
        entry, col = np.nonzero(inten > 0)
        self.q = pool.q.detach().cpu().double().numpy()[entry, col]
        self.intensity = inten[entry, col]
        self.counts = np.bincount(entry, minlength=len(pool))
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.size = len(pool)


def _flat_pool(t: ImpurityPhase, memo: dict) -> _FlatPool:
    """The transform's pool as a flat list, made once per owner of `memo` (a stream)."""
    key = ("impurity pool", id(t.pool))
    if key not in memo or memo[key][0] is not t.pool:
        memo[key] = (t.pool, _FlatPool(t.pool))
    return memo[key][1]


def impurity_phase(t: ImpurityPhase, s: FlatState, rng: np.random.Generator) -> None:
    """Adds one pool entry per pattern, its strongest stick at `fraction` of the pattern's strongest;
    the added sticks carry hkl 000."""
    p = s.peaks
    n = p.n_rows
    active = _active(rng, t, n)
    pool = _flat_pool(t, s.memo)
    pick = rng.integers(pool.size, size=n)
    fraction = rng.uniform(*t.fraction, n)
    weight = np.where(active, fraction * p.row_max(), 0.0)
    rows = np.flatnonzero(weight > 0)
    counts = pool.counts[pick[rows]]
    stick = np.repeat(pool.starts[pick[rows]] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    stick += np.arange(len(stick))
    new_row = np.repeat(rows, counts)
    p.row = np.concatenate([p.row, new_row])
    p.q = np.concatenate([p.q, pool.q[stick]])
    p.intensity = np.concatenate([p.intensity, pool.intensity[stick] * weight[new_row]])
    p.hkl = np.concatenate([p.hkl, np.zeros((len(stick), 3), dtype=p.hkl.dtype)])


def peak_shift(t: PeakShift, s: FlatState, rng: np.random.Generator) -> None:
    """Zero offset and sample displacement in 2θ at the pattern's wavelength, back to q."""
    p, lam = s.peaks, s.settings.wavelength
    n = p.n_rows
    active = _active(rng, t, n)
    zero = rng.uniform(*t.zero_offset_deg, n)
    displacement = rng.uniform(*t.displacement_mm, n)
    on = active[p.row] & (p.intensity > 0)
    rows = p.row[on]
    theta = np.arcsin(np.clip(p.q[on] * lam / (4.0 * math.pi), 0.0, 1.0))
    tilt = 2.0 * displacement[rows] / t.goniometer_radius_mm
    two_theta = np.clip(2.0 * theta + np.deg2rad(zero[rows]) - tilt * np.cos(theta), 1e-6, math.pi - 1e-6)
    p.q[on] = 4.0 * math.pi * np.sin(two_theta / 2.0) / lam


def crystallite_size(t: CrystalliteSize, s: FlatState, rng: np.random.Generator) -> None:
    """A Scherrer size per pattern (nm, log-uniform) for the renderer; others keep the profile's."""
    n = s.peaks.n_rows
    active = _active(rng, t, n)
    size = _log_uniform(rng, n, *t.size_nm)
    current = s.settings.profile.crystallite_size_nm
    if current is None:
        base = np.full(n, math.inf)
    else:
        base = np.broadcast_to(np.asarray(current.cpu() if hasattr(current, "cpu") else current, dtype=float), (n,))
    if current is None and not active.any():
        return
    size = np.where(active, size, base)
    s.settings = replace(s.settings, profile=s.settings.profile.replace(crystallite_size_nm=torch.from_numpy(size)))


# -- pattern stage ------------------------------------------------------------------------------


def _masked_max(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, y, -np.inf).max(1).clip(0.0, None) if not mask.all() else y.max(1)


def _unit_range(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) per row that map it onto [0, 1] as `physics.augment._unit_range` does."""
    lo, hi = y.min(1), y.max(1)
    return lo, 1.0 / np.maximum(hi - lo, 1e-12)


def _random_features(omega: np.ndarray, phase: np.ndarray, weight: np.ndarray, g_points: int) -> np.ndarray:
    """Σ_f w_f cos(ω_f u + φ_f) at u = linspace(0, 1, G), (B, G): by cos(a + b) = cos a cos b − sin a sin b
    over coarse (a) and fine (b) parts of u, a batched matrix product instead of B·F·G cosines."""
    fine = int(math.ceil(math.sqrt(g_points)))
    coarse = -(-g_points // fine)
    du = 1.0 / max(g_points - 1, 1)
    omega, phase = omega.astype(np.float32), phase.astype(np.float32)
    a = omega[:, :, None] * (np.arange(coarse, dtype=np.float32) * np.float32(fine * du))  # (B, F, C)
    a += phase[:, :, None]
    b = omega[:, :, None] * (np.arange(fine, dtype=np.float32) * np.float32(du))  # (B, F, D)
    weight = weight.astype(np.float32)[:, :, None]
    left = np.concatenate([weight * np.cos(a), -weight * np.sin(a)], axis=1)  # (B, 2F, C)
    right = np.concatenate([np.cos(b), np.sin(b)], axis=1)  # (B, 2F, D)
    out = torch.bmm(torch.from_numpy(left.transpose(0, 2, 1)), torch.from_numpy(right))  # (B, C, D)
    return out.numpy().reshape(len(omega), -1)[:, :g_points]


def background(t: Background, s: FlatState, rng: np.random.Generator) -> None:
    """Chebyshev polynomial on a pedestal + random-Fourier-feature Gaussian process + amorphous hump,
    each rescaled to [0, 1] and sized relative to the pattern maximum."""
    y, mask = s.intensity, s.mask
    n, g_points = y.shape
    active = _active(rng, t, n)
    top = _masked_max(y, mask)
    u = np.linspace(0.0, 1.0, g_points)
    x = 2.0 * u - 1.0
    basis = [np.ones_like(x), x]
    for _ in range(2, t.polynomial_order + 1):
        basis.append(2.0 * x * basis[-1] - basis[-2])
    basis = np.stack(basis[: t.polynomial_order + 1]).astype(np.float32)
    coeffs = rng.uniform(-1.0, 1.0, (n, t.polynomial_order + 1))
    pedestal = rng.random(n)
    poly_scale = rng.uniform(*t.polynomial_scale, n)
    length = rng.uniform(*t.gp_length, n)
    omega = rng.standard_normal((n, t.gp_features)) / length[:, None]
    phase = rng.uniform(0.0, 2.0 * math.pi, (n, t.gp_features))
    weight = rng.standard_normal((n, t.gp_features))
    gp_scale = rng.uniform(*t.gp_scale, n)
    hump_scale = rng.uniform(*t.hump_scale, n)
    hump_q = rng.uniform(*t.hump_q, n)
    hump_fwhm = rng.uniform(*t.hump_fwhm, n)
    rows = np.flatnonzero(active)
    if not len(rows):
        return
    amp = top[rows]
    poly = torch.mm(torch.from_numpy(coeffs[rows].astype(np.float32)), torch.from_numpy(basis)).numpy()
    lo, inv = _unit_range(poly)
    # poly_scale (pedestal + (1 - pedestal) unit(poly)), folded into one scale and offset per row
    scale = amp * poly_scale[rows] * (1.0 - pedestal[rows]) * inv
    offset = amp * poly_scale[rows] * pedestal[rows] - scale * lo
    bg = poly
    bg *= scale[:, None].astype(np.float32)
    gp = _random_features(omega[rows], phase[rows], weight[rows], g_points)
    lo, inv = _unit_range(gp)
    gscale = amp * gp_scale[rows] * inv
    offset = offset - gscale * lo
    gp *= gscale[:, None].astype(np.float32)
    bg += gp
    bg += offset[:, None].astype(np.float32)
    q = s.settings.grid.start + s.settings.grid.step * np.arange(g_points, dtype=np.float32)
    sigma = hump_fwhm[rows] / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    hump = (q[None, :] - hump_q[rows, None].astype(np.float32)) * (1.0 / sigma[:, None]).astype(np.float32)
    np.square(hump, out=hump)
    hump *= np.float32(-0.5)
    np.exp(hump, out=hump)
    hump *= (amp * hump_scale[rows])[:, None].astype(np.float32)
    bg += hump
    bg *= mask[rows]
    y[rows] += bg


def _put(s: FlatState, rows: np.ndarray, values: np.ndarray) -> None:
    """Rows `rows` of the pattern get `values` on their measured points."""
    if len(rows) == len(s.intensity) and s.mask.all():
        s.intensity = values
    else:
        s.intensity[rows] = np.where(s.mask[rows], values, s.intensity[rows])


def poisson_noise(t: PoissonNoise, s: FlatState, rng: np.random.Generator) -> None:
    """Counting statistics at a maximum of N counts (log-uniform), on the measured points: exact below
    `POISSON_EXACT_BELOW` counts, above it a normal with the Poisson's mean, variance and skewness
    (Cornish-Fisher: λ + √λ z + (z² − 1)/6), rounded to whole counts (total variation from the
    Poisson < 0.003 at λ = 10, less above)."""
    y, mask = s.intensity, s.mask
    n = y.shape[0]
    active = _active(rng, t, n)
    counts = _log_uniform(rng, n, *t.max_counts)
    top = _masked_max(y, mask)
    scale = (counts / np.maximum(top, 1e-30)).astype(np.float32)
    rows = np.flatnonzero(active)
    if not len(rows):
        return
    lam = y[rows] * scale[rows, None]
    np.clip(lam, 0.0, None, out=lam)
    z = _normal(rng, lam.shape)
    noisy = np.square(z)
    noisy -= np.float32(1.0)
    noisy *= np.float32(1.0 / 6.0)
    z *= np.sqrt(lam)
    noisy += z
    noisy += lam
    np.rint(noisy, out=noisy)
    np.clip(noisy, 0.0, None, out=noisy)
    low = lam < POISSON_EXACT_BELOW
    noisy[low] = rng.poisson(lam[low])
    noisy /= scale[rows, None]
    _put(s, rows, noisy)


def gaussian_noise(t: GaussianNoise, s: FlatState, rng: np.random.Generator) -> None:
    """Additive noise of σ × the pattern maximum on the measured points; clipped at 0 if asked."""
    y, mask = s.intensity, s.mask
    n = y.shape[0]
    active = _active(rng, t, n)
    sigma = rng.uniform(*t.sigma, n)
    rows = np.flatnonzero(active)
    if not len(rows):
        return
    amp = (sigma * _masked_max(y, mask))[rows].astype(np.float32)
    noisy = _normal(rng, (len(rows), y.shape[1]))
    noisy *= amp[:, None]
    noisy += y[rows]
    if t.clip_negative:
        np.clip(noisy, 0.0, None, out=noisy)
    _put(s, rows, noisy)


def range_mask(t: RangeMask, s: FlatState, rng: np.random.Generator) -> None:
    """A random measured q window (and gap): the mask is cleared and the intensity zeroed outside."""
    y = s.intensity
    n, g_points = y.shape
    active = _active(rng, t, n)
    lo = rng.uniform(*t.q_min, n)
    hi = rng.uniform(*t.q_max, n)
    has_gap = rng.random(n) < t.gap_probability
    width = rng.uniform(*t.gap_width, n)
    gap_start = lo + rng.random(n) * np.clip(hi - lo - width, 0.0, None)
    grid = s.settings.grid
    index = np.arange(g_points)
    first = np.where(active, np.ceil((lo - grid.start) / grid.step - 1e-9), 0)  # q >= lo
    last = np.where(active, np.floor((hi - grid.start) / grid.step + 1e-9), g_points - 1)
    measured = (index >= first[:, None]) & (index <= last[:, None])
    gap = active & has_gap
    if gap.any():
        g_first = np.ceil((gap_start - grid.start) / grid.step - 1e-9)
        g_last = np.floor((gap_start + width - grid.start) / grid.step + 1e-9)
        in_gap = (index >= g_first[:, None]) & (index <= g_last[:, None]) & gap[:, None]
        measured &= ~in_gap
    s.mask &= measured
    y *= s.mask


def normalise(t: Normalise, s: FlatState, rng: np.random.Generator) -> None:
    """Maximum over the measured points -> 1; unmeasured points 0."""
    y, mask = s.intensity, s.mask
    active = _active(rng, t, y.shape[0])
    top = _masked_max(y, mask)
    factor = np.where(active, 1.0 / np.where(top > 0, top, 1.0), 1.0).astype(np.float32)
    y *= factor[:, None]
    y[active[:, None] & ~mask] = 0.0


#: The flat version of each transform.
FLAT: dict[type, Callable[[Transform, FlatState, np.random.Generator], None]] = {
    PreferredOrientation: preferred_orientation,
    LatticeStrain: lattice_strain,
    PeakLoss: peak_loss,
    IntensityScaling: intensity_scaling,
    ImpurityPhase: impurity_phase,
    PeakShift: peak_shift,
    CrystalliteSize: crystallite_size,
    Background: background,
    PoissonNoise: poisson_noise,
    GaussianNoise: gaussian_noise,
    RangeMask: range_mask,
    Normalise: normalise,
}


def apply_flat(t: Transform, s: FlatState, rng: np.random.Generator, generator: torch.Generator) -> None:
    """Apply one transform to the flat state: its flat version, else the transform itself on tensors."""
    fn = FLAT.get(type(t))
    if fn is not None:
        fn(t, s, rng)
        return
    if t.stage in ("reflections", "peaks"):
        padded = s.peaks.padded()
        state = SimulatedBatch(crystals=None, settings=s.settings, reflections=padded, peaks=padded)
        state = t(state, generator)
        result = state.reflections if t.stage == "reflections" else state.peaks
        s.peaks = FlatPeaks.from_padded(result)
        s.settings = state.settings
        return
    state = SimulatedBatch(crystals=None, settings=s.settings, intensity=torch.from_numpy(s.intensity),
                           mask=torch.from_numpy(s.mask))
    state = t(state, generator)
    s.intensity = state.intensity.numpy().astype(np.float32)
    s.mask = state.mask.numpy().astype(bool)

"""Rendering of flat stick lists on the q grid by FFT: the cost of a batch does not depend on peak widths.

`physics.profiles.render` draws each peak on a window of grid points whose width is set by the
widest peak of the batch, so one nanocrystalline pattern makes every peak of the batch expensive.
Here every row's sticks are spread onto the grid (linear interpolation, area kept) and convolved
with that row's profile in Fourier space, where the profile is analytic: a batch costs a few
real FFTs of (rows, grid) whatever the widths and the number of peaks.

On a q grid the Scherrer width is the same everywhere (Δq = 2πK/L) and the instrument's width
varies slowly (Caglioti in 2θ, times cosθ), so a row's FWHM w(q) spans a small range. Each row
gets a geometric ladder of anchor widths over that range (adjacent anchors at most
`ANCHOR_RATIO` apart); each stick is split between the two anchors that bracket its own width,
with the weights that give its profile the right variance (a two-Gaussian mixture of widths 1.5
apart has cosine >= 0.998 with the single Gaussian). One FFT per anchor, one inverse FFT per row.

The spreading onto the grid adds the variance of a unit triangle (1/6 point²): the Gaussian part
of every kernel is narrowed by as much, so a peak has the variance it asks for (peaks narrower
than ~1 grid point keep a little extra). Kernel spectra include their first aliases, so the
sampled profile is what the FFT convolves with. Kα2 lines sit at q × λ2/λ1 on the Kα1 axis.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from xrd_nexus_ml.errors import PatternError
from xrd_nexus_ml.physics.profiles import RenderSettings

#: Widest ratio of adjacent anchor widths of a row.
ANCHOR_RATIO = 1.5
#: Rows whose width varies by less than this (log ratio) get one anchor at their mean width.
_ONE_ANCHOR_SPAN = math.log(1.02)
#: Grid points added on either side, so peaks just outside the grid leave their tails on it and
#: the circular convolution's wrap-around falls outside the grid.
PAD = 256
_TENT_VARIANCE = 1.0 / 6.0  # point², what linear spreading onto the grid adds
_SIGMA_PER_FWHM = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _row_values(value, n_rows: int, default: float) -> np.ndarray:
    """A per-row float array from a profile field (None, float or (B,) tensor/array)."""
    if value is None:
        return np.full(n_rows, default)
    arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=float)
    return np.broadcast_to(arr.reshape(-1) if arr.ndim else arr, (n_rows,)).astype(float)


def fwhm_squared(q: np.ndarray, settings: RenderSettings, scherrer_q: np.ndarray) -> np.ndarray:
    """FWHM² in Å^-2 at q (any shape) for rows whose Scherrer width in q is `scherrer_q` (broadcast):
    the instrument's Caglioti width in 2θ converted to q, in quadrature with the size width."""
    lam = settings.wavelength
    theta = np.arcsin(np.clip(q * lam / (4.0 * math.pi), 0.0, 1.0 - 1e-7))
    inst2 = np.zeros_like(theta)
    if settings.profile.caglioti_uvw is not None:
        u, v, w = settings.profile.caglioti_uvw
        tan = np.tan(theta)
        fwhm_2t = np.deg2rad(np.sqrt(np.clip(u * tan**2 + v * tan + w, 1e-10, None)))
        inst2 = ((2.0 * math.pi / lam) * np.cos(theta) * fwhm_2t) ** 2
    return np.maximum(inst2 + scherrer_q**2, 1e-14)


def _instrument_fwhm2(q: np.ndarray, settings: RenderSettings, n_table: int = 4096) -> np.ndarray:
    """The instrument's FWHM² (Å^-2) at q, interpolated in a uniform table (it is smooth in q)."""
    q_top = 0.999 * 4.0 * math.pi / settings.wavelength
    table = fwhm_squared(np.linspace(0.0, q_top, n_table), settings, np.zeros(1)) - 1e-14
    x = np.clip(q * ((n_table - 1) / q_top), 0.0, n_table - 1.000001)
    i = x.astype(np.int64)
    frac = x - i
    return table[i] * (1.0 - frac) + table[i + 1] * frac


def _gaussian_spectrum(sigma2: np.ndarray, f: np.ndarray) -> np.ndarray:
    """DFT of a sampled unit-area Gaussian of variance sigma2 (points², (N, 1)) at f (cycles/point,
    float32), with its first aliases where they matter (σ below 2 points; above, they are < 1e-34)."""
    a = (-2.0 * math.pi**2 * sigma2).astype(np.float32)
    out = np.exp(a * np.square(f))
    narrow = sigma2[:, 0] < 4.0
    if narrow.any():
        an = a[narrow]
        out[narrow] += np.exp(an * np.square(1.0 - f)) + np.exp(an * np.square(1.0 + f))
    return out


def _lorentzian_spectrum(fwhm: np.ndarray, f: np.ndarray) -> np.ndarray:
    """DFT of a sampled unit-area Lorentzian of FWHM `fwhm` points: the sum over all aliases of
    exp(-π w |f + m|), in closed form (two geometric series)."""
    a = (math.pi * fwhm).astype(np.float32)
    return np.exp(-a * f) + (np.exp(a * (f - 1.0)) + np.exp(-a * (f + 1.0))) / (1.0 - np.exp(-a))


def render_flat(row: np.ndarray, q: np.ndarray, intensity: np.ndarray, n_rows: int,
                settings: RenderSettings) -> np.ndarray:
    """(n_rows, G) float32 patterns of sticks (row, q Å^-1, integrated intensity) on the settings' q grid,
    with the profile of `settings` (shape, η, Caglioti, crystallite size per row, Kα2)."""
    grid, profile = settings.grid, settings.profile
    if grid.axis != "q":
        raise PatternError("the FFT renderer draws on a q grid; use physics.profiles.render for a 2θ grid")
    row = np.asarray(row, dtype=np.int64)
    q = np.asarray(q, dtype=float)
    intensity = np.asarray(intensity, dtype=float)
    if profile.kalpha2_ratio:
        ratio = profile.kalpha2_wavelength / settings.wavelength
        row, q = np.concatenate([row, row]), np.concatenate([q, q * ratio])
        intensity = np.concatenate([intensity, intensity * profile.kalpha2_ratio])
    step, n = grid.step, grid.n_points
    size_a = 10.0 * _row_values(profile.crystallite_size_nm, n_rows, math.inf)
    scherrer = np.where(np.isfinite(size_a), 2.0 * math.pi * profile.scherrer_k / size_a, 0.0)  # Δq, Å^-1
    # each row's width range over the grid, up to the largest q the wavelength reaches (w² is
    # monotonic in q for Caglioti widths); sticks beyond take the nearest anchor: only tails reach the grid
    knots = np.linspace(grid.start, min(grid.stop, 0.999 * 4.0 * math.pi / settings.wavelength), 33)
    w_knots = np.sqrt(fwhm_squared(knots[None, :], settings, scherrer[:, None])) / step  # (B, 33) points
    w_lo, w_hi = w_knots.min(1), w_knots.max(1)
    # anchors per row: as few as keep adjacent ones within ANCHOR_RATIO (one where the width is constant)
    span = np.log(w_hi / w_lo)
    per_row = np.where(span < _ONE_ANCHOR_SPAN, 1, np.ceil(span / math.log(ANCHOR_RATIO) - 1e-9).astype(np.int64) + 1)
    per_row = np.maximum(per_row, 1)
    n_anchor = int(per_row.max()) if n_rows else 1
    ratio = np.exp(span / np.maximum(per_row - 1, 1))
    anchors = w_lo[:, None] * ratio[:, None] ** np.arange(n_anchor)  # (B, K) FWHM in points
    # one histogram (slot) per (anchor, row) in use, anchor-major: anchor k's rows are one block
    slot = np.full((n_anchor, n_rows), -1, dtype=np.int64)
    in_use = np.arange(n_anchor)[:, None] < per_row[None, :]
    slot[in_use] = np.arange(int(in_use.sum()))
    # sticks: position in padded points, own width, and their split between two anchors
    position = (q - grid.start) / step + PAD
    width_p = np.sqrt(_instrument_fwhm2(q, settings) + scherrer[row] ** 2) / step
    n_pad = n + 2 * PAD
    keep = (intensity > 0) & (position >= 0) & (position < n_pad - 1)
    row, position, width_p, intensity = row[keep], position[keep], width_p[keep], intensity[keep]
    k_row = per_row[row]
    j = np.floor(np.log(np.clip(width_p / w_lo[row], 1.0, None)) / np.log(ratio[row]) + 1e-9).astype(np.int64)
    j = np.clip(j, 0, np.maximum(k_row - 2, 0))
    lo, hi = anchors[row, j], anchors[row, np.minimum(j + 1, k_row - 1)]
    t = np.where(k_row > 1, np.clip((width_p**2 - lo**2) / np.maximum(hi**2 - lo**2, 1e-12), 0.0, 1.0), 0.0)
    i0 = np.floor(position).astype(np.int64)
    frac = position - i0
    lower = slot[j, row] * n_pad + i0
    upper = slot[np.minimum(j + 1, k_row - 1), row] * n_pad + i0
    w_lower, w_upper = (1 - t) * intensity, t * intensity
    index = np.concatenate([lower, lower + 1, upper, upper + 1])
    weight = np.concatenate([w_lower * (1 - frac), w_lower * frac, w_upper * (1 - frac), w_upper * frac])
    n_slots = int(in_use.sum())
    hist = np.bincount(index, weight, minlength=n_slots * n_pad).reshape(n_slots, n_pad)
    spectra = scipy.fft.rfft(hist.astype(np.float32), axis=-1)
    f = (np.arange(spectra.shape[-1]) / n_pad).astype(np.float32)  # cycles per point
    eta = _row_values(profile.eta, n_rows, 0.5)
    start = 0
    for k in range(n_anchor):
        rows = np.flatnonzero(in_use[k])  # every row has anchor 0
        block = spectra[start:start + len(rows)]
        block *= _kernel_spectra(anchors[rows, k, None], f, profile.shape, eta[rows, None])
        if k == 0:
            total = block
        else:
            total[rows] += block
        start += len(rows)
    out = scipy.fft.irfft(total, n=n_pad, axis=-1)[:, PAD:PAD + n]
    out *= np.float32(1.0 / step)  # sampled profiles are per Å^-1
    return np.ascontiguousarray(out, dtype=np.float32)


def _kernel_spectra(fwhm: np.ndarray, f: np.ndarray, shape: str, eta: np.ndarray) -> np.ndarray:
    """Spectra (N, F) of the unit-area profiles of FWHM `fwhm` (N, 1) points."""
    if shape == "lorentzian":
        return _lorentzian_spectrum(fwhm, f)
    sigma2 = np.maximum((fwhm * _SIGMA_PER_FWHM) ** 2 - _TENT_VARIANCE, 1e-3)
    gauss = _gaussian_spectrum(sigma2, f)
    if shape == "gaussian":
        return gauss
    return eta * _lorentzian_spectrum(fwhm, f) + (1.0 - eta) * gauss

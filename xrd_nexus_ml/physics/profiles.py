"""Peak profiles and rendering of stick patterns onto a uniform grid (2θ or q).

Widths come from the Caglioti relation FWHM² = U tan²θ + V tanθ + W (degrees² of 2θ, the
instrument) and/or the Scherrer equation FWHM = Kλ / (L cosθ) (crystallite size L); both add
in quadrature. Shapes are area-normalised Gaussian, Lorentzian or pseudo-Voigt, so a rendered
peak keeps the integrated intensity of its stick. Each peak is drawn only on a window of grid
points around it (scatter-add), so the cost is B × M × window, not B × M × grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from xrd_nexus_ml.errors import PatternError
from xrd_nexus_ml.pattern import CANONICAL_GRID, QGrid, resolve_wavelength
from xrd_nexus_ml.physics.peaks import PeakList

Shape = Literal["gaussian", "lorentzian", "pseudo_voigt"]


@dataclass(frozen=True)
class PeakProfile:
    """How sticks become peaks. Per-pattern tensors may replace the scalars (augmentation does)."""

    shape: Shape = "gaussian"
    eta: float | torch.Tensor = 0.5  # Lorentzian fraction of the pseudo-Voigt
    caglioti_uvw: tuple[float, float, float] | None = (0.0, 0.0, 0.01)  # degrees² of 2θ
    crystallite_size_nm: float | torch.Tensor | None = None  # Scherrer size; None: instrument only
    scherrer_k: float = 0.9
    kalpha2_ratio: float = 0.0  # I(Kα2)/I(Kα1); 0.5 for a Cu tube without monochromator
    kalpha2_wavelength: float | None = None  # Å; Kα2 peaks appear at q × λ2/λ
    window_fwhm: float | None = None  # each peak is drawn over ± window_fwhm × FWHM; None: by shape

    def __post_init__(self):
        if self.shape not in ("gaussian", "lorentzian", "pseudo_voigt"):
            raise PatternError(f"peak shape must be gaussian, lorentzian or pseudo_voigt, got {self.shape!r}")
        if self.kalpha2_ratio and not self.kalpha2_wavelength:
            raise PatternError("kalpha2_ratio > 0 needs kalpha2_wavelength")

    def replace(self, **changes) -> PeakProfile:
        return replace(self, **changes)

    @property
    def window(self) -> float:
        """Half-window in FWHM: a Gaussian is < 1e-7 of its height at 2.5 FWHM; Lorentzian tails
        are long, so 10 FWHM (which still leaves ~3 % of a pure Lorentzian's area outside)."""
        if self.window_fwhm is not None:
            return self.window_fwhm
        return 2.5 if self.shape == "gaussian" else 10.0

    def fwhm_two_theta_rad(self, theta: torch.Tensor, wavelength: float) -> torch.Tensor:
        """FWHM in radians of 2θ for Bragg angles θ (B, M), instrument and size in quadrature."""
        fwhm2 = torch.zeros_like(theta)
        if self.caglioti_uvw is not None:
            u, v, w = self.caglioti_uvw
            tan = torch.tan(theta)
            fwhm2 = fwhm2 + torch.deg2rad(torch.sqrt((u * tan**2 + v * tan + w).clamp_min(1e-10))) ** 2
        if self.crystallite_size_nm is not None:
            size_a = torch.as_tensor(self.crystallite_size_nm, dtype=theta.dtype, device=theta.device) * 10.0
            if size_a.ndim == 1:
                size_a = size_a.unsqueeze(1)
            fwhm2 = fwhm2 + (self.scherrer_k * wavelength / (size_a * torch.cos(theta))) ** 2
        return torch.sqrt(fwhm2.clamp_min(1e-14))


@dataclass(frozen=True)
class RenderGrid:
    """A uniform grid in 2θ (degrees) or q (Å^-1): x = start + step · i."""

    axis: Literal["two_theta", "q"]
    start: float
    step: float
    n_points: int

    @classmethod
    def from_qgrid(cls, grid: QGrid = CANONICAL_GRID) -> RenderGrid:
        return cls("q", grid.q_min, grid.step, grid.n_points)

    @classmethod
    def two_theta(cls, start: float, stop: float, step: float) -> RenderGrid:
        n = int(round((stop - start) / step)) + 1
        return cls("two_theta", start, step, n)

    @property
    def values(self) -> torch.Tensor:
        return self.start + self.step * torch.arange(self.n_points, dtype=torch.float64)

    @property
    def stop(self) -> float:
        return self.start + self.step * (self.n_points - 1)


@dataclass(frozen=True)
class RenderSettings:
    """Wavelength, grid and profile of a rendering."""

    wavelength: float
    grid: RenderGrid = field(default_factory=RenderGrid.from_qgrid)
    profile: PeakProfile = field(default_factory=PeakProfile)

    def __post_init__(self):
        object.__setattr__(self, "wavelength", resolve_wavelength(self.wavelength))

    @property
    def q_max(self) -> float:
        """Largest peak position that can still leave a tail on the grid."""
        if self.grid.axis == "q":
            return self.grid.stop * 1.02 + 0.05
        theta = math.radians(min(self.grid.stop + 2.0, 179.9) / 2)
        return 4 * math.pi * math.sin(theta) / self.wavelength

    @property
    def q_min(self) -> float:
        if self.grid.axis == "q":
            return max(0.0, self.grid.start * 0.98 - 0.05)
        theta = math.radians(max(self.grid.start - 2.0, 0.0) / 2)
        return 4 * math.pi * math.sin(theta) / self.wavelength


def _profile_values(offset: torch.Tensor, fwhm: torch.Tensor, shape: Shape, eta) -> torch.Tensor:
    """Area-normalised profile at `offset` from the centre (same units as `fwhm`, broadcastable).

    `eta` is a float or a tensor broadcastable against `offset` (one value per peak).
    """
    if shape in ("gaussian", "pseudo_voigt"):
        inv_sigma = (2.0 * math.sqrt(2.0 * math.log(2.0))) / fwhm
        gauss = torch.exp(-0.5 * (offset * inv_sigma) ** 2) * (inv_sigma / math.sqrt(2.0 * math.pi))
        if shape == "gaussian":
            return gauss
    gamma = fwhm / 2.0
    lorentz = (gamma / math.pi) / (offset**2 + gamma**2)
    if shape == "lorentzian":
        return lorentz
    return eta * lorentz + (1.0 - eta) * gauss


def peak_positions_and_widths(peaks: PeakList, settings: RenderSettings):
    """Centres and FWHM of each peak in the grid's units (degrees 2θ or Å^-1), (B, M) each."""
    lam = settings.wavelength
    sin_theta = (peaks.q * lam / (4.0 * math.pi)).clamp(0.0, 1.0 - 1e-7)
    theta = torch.asin(sin_theta)
    fwhm_2t = settings.profile.fwhm_two_theta_rad(theta, lam)  # radians of 2θ
    if settings.grid.axis == "two_theta":
        return torch.rad2deg(2.0 * theta), torch.rad2deg(fwhm_2t)
    # dq = (2π/λ) cosθ d(2θ)
    return peaks.q, (2.0 * math.pi / lam) * torch.cos(theta) * fwhm_2t


def render(peaks: PeakList, settings: RenderSettings) -> torch.Tensor:
    """Broadened patterns (B, n_points) on the grid; Kα2 doublets added when the profile asks.

    Only live peaks are drawn: they are gathered from the padded (B, M) lists into one flat
    list, so a batch costs (number of peaks) x window, whatever the padding.
    """
    profile = settings.profile
    if profile.kalpha2_ratio:
        ratio = profile.kalpha2_wavelength / settings.wavelength
        doublet = peaks.replace(q=peaks.q * ratio, intensity=peaks.intensity * profile.kalpha2_ratio)
        peaks = peaks.concatenate(doublet)
    centre, fwhm = peak_positions_and_widths(peaks, settings)
    grid = settings.grid
    n, n_rows = grid.n_points, peaks.q.shape[0]
    position = (centre - grid.start) / grid.step  # in grid steps; NaN where λ cannot reach
    eta = torch.as_tensor(profile.eta, dtype=position.dtype, device=position.device)
    eta = eta.view(-1, 1).expand_as(position) if eta.ndim == 1 else eta.expand_as(position)
    out = torch.zeros(n_rows, n, dtype=position.dtype, device=position.device)
    if not (peaks.intensity > 0).any():
        return out
    half = int(math.ceil(profile.window * float(fwhm[peaks.intensity > 0].max()) / grid.step))
    half = max(1, min(half, n))
    # a peak is drawn if its window touches the grid
    live = (peaks.intensity > 0) & (position >= -half) & (position <= n - 1 + half)
    row, col = live.nonzero(as_tuple=True)
    position, fwhm, eta = position[row, col], fwhm[row, col], eta[row, col]
    nearest = torch.round(position)
    offsets = torch.arange(-half, half + 1, device=position.device, dtype=position.dtype)  # (W,)
    distance = (offsets - (position - nearest).unsqueeze(-1)) * grid.step  # (P, W), grid units
    values = _profile_values(distance, fwhm.unsqueeze(-1), profile.shape, eta.unsqueeze(-1))
    values = values * peaks.intensity[row, col].unsqueeze(-1)
    # padded buffer per row so that windows hanging over either end need no masking
    width = n + 4 * half + 2
    index = (row * width + nearest.long() + 2 * half + 1).unsqueeze(-1) + offsets.long()
    buffer = torch.zeros(n_rows * width, dtype=values.dtype, device=values.device)
    buffer.index_add_(0, index.flatten(), values.flatten())
    return buffer.view(n_rows, width)[:, 2 * half + 1 : 2 * half + 1 + n]

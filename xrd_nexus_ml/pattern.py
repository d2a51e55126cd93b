"""The canonical powder pattern: intensities on an axis (2θ with a wavelength, or q), and a mask.

Every reader, detector and simulator produces a `Diffractogram`; every model consumes one
resampled onto `CANONICAL_GRID` (q in Å^-1) together with the mask of the q range that was
actually measured. That way one model serves any beam energy and any 2θ range.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from xrd_nexus_ml.errors import PatternError, WavelengthError

Axis = Literal["two_theta", "q"]

#: X-ray wavelengths in Å of common anodes (Kα1, Kα2 and the weighted Kα mean used by pymatgen).
WAVELENGTHS: dict[str, float] = {
    "CuKa": 1.54184,
    "CuKa1": 1.54056,
    "CuKa2": 1.54439,
    "MoKa": 0.71073,
    "MoKa1": 0.70930,
    "MoKa2": 0.71359,
    "CoKa": 1.79026,
    "CoKa1": 1.78896,
    "CoKa2": 1.79285,
    "AgKa": 0.560885,
    "AgKa1": 0.559421,
    "AgKa2": 0.563813,
    "FeKa": 1.93735,
    "CrKa": 2.29100,
}

#: hc in keV·Å, to convert photon energy to wavelength.
HC_KEV_ANGSTROM = 12.398419843320026


def energy_to_wavelength(energy_kev: float, source: str | None = None) -> float:
    """Photon energy in keV -> wavelength in Å."""
    if not (isinstance(energy_kev, numbers.Real) and math.isfinite(energy_kev) and energy_kev > 0):
        raise WavelengthError(f"beam energy must be a positive number of keV, got {energy_kev!r}", source)
    return HC_KEV_ANGSTROM / float(energy_kev)


#: The wavelengths (Å) a diffraction pattern can have been measured with: hard X-rays and
#: synchrotron beams (0.01 Å is 1.2 MeV) to soft X-rays and cold neutrons (20 Å). Outside this
#: range a number is a typing or unit mistake (nm for Å, eV for keV, 1e6 for 1e-6), never a beam.
WAVELENGTH_RANGE = (0.01, 20.0)


def resolve_wavelength(wavelength: float | str | None, source: str | None = None) -> float | None:
    """Accept a wavelength in Å or an anode name such as 'CuKa'; check it is a finite number of Å
    within `WAVELENGTH_RANGE` (X-rays and neutrons), else `WavelengthError` naming value and range."""
    if wavelength is None:
        return None
    given = wavelength.strip() if isinstance(wavelength, str) else wavelength
    if isinstance(wavelength, str):
        if wavelength in WAVELENGTHS:
            return WAVELENGTHS[wavelength]
        try:
            wavelength = float(wavelength)
        except ValueError:
            known = ", ".join(sorted(WAVELENGTHS))
            raise WavelengthError(
                f"wavelength {wavelength!r} is neither a number of Å nor one of {known}", source
            ) from None
    value = float(wavelength)
    low, high = WAVELENGTH_RANGE
    if not math.isfinite(value) or value <= 0:
        raise WavelengthError(f"wavelength must be a positive number of Å ({low:g} to {high:g} Å for X-rays and "
                              f"neutrons), got {given!r}", source)
    if not low <= value <= high:
        raise WavelengthError(f"wavelength {given} Å is outside {low:g} to {high:g} Å, the range of X-ray and "
                              "neutron diffraction (a wavelength in nm, or an energy, given as Å?)", source)
    return value


def two_theta_to_q(two_theta_deg: np.ndarray, wavelength: float) -> np.ndarray:
    """2θ in degrees -> momentum transfer q = 4π sin(θ)/λ in Å^-1."""
    return 4.0 * np.pi * np.sin(np.radians(np.asarray(two_theta_deg, dtype=float)) / 2.0) / wavelength


def q_to_two_theta(q: np.ndarray, wavelength: float) -> np.ndarray:
    """q in Å^-1 -> 2θ in degrees; NaN where the wavelength cannot reach that q."""
    s = np.asarray(q, dtype=float) * wavelength / (4.0 * np.pi)
    with np.errstate(invalid="ignore"):
        out = 2.0 * np.degrees(np.arcsin(np.where(np.abs(s) <= 1.0, s, np.nan)))
    return out


@dataclass(frozen=True)
class QGrid:
    """A uniform grid of momentum transfer q in Å^-1 (both ends included)."""

    q_min: float
    q_max: float
    n_points: int

    @property
    def values(self) -> np.ndarray:
        return np.linspace(self.q_min, self.q_max, self.n_points)

    @property
    def step(self) -> float:
        return (self.q_max - self.q_min) / (self.n_points - 1)

    def to_dict(self) -> dict:
        return {"q_min": self.q_min, "q_max": self.q_max, "n_points": self.n_points, "unit": "1/angstrom"}


#: The grid every model sees. 0.3-8.0 Å^-1 holds Cu Kα 5-90° 2θ (q 0.36-5.77) and a 25.6 keV
#: beam at 2-35° 2θ (q 0.45-7.80); 4096 points give a step of 0.0019 Å^-1, finer than a third
#: of the narrowest laboratory peak (FWHM ≈ 0.05° 2θ ≈ 0.0035 Å^-1 at Cu Kα, low angle).
CANONICAL_GRID = QGrid(q_min=0.3, q_max=8.0, n_points=4096)


def _finite_1d(values, name: str, source: str | None) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise PatternError(f"{name} must be one-dimensional, got shape {arr.shape}", source)
    if arr.size == 0:
        raise PatternError(f"{name} is empty", source)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise PatternError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s), the first at index {first}", source
        )
    return arr


@dataclass(frozen=True, eq=False)
class Diffractogram:
    """Intensities on a 2θ (degrees, needs a wavelength) or q (Å^-1) axis, with a measured-range mask.

    `mask[i]` is True where `intensity[i]` was measured; False marks points outside the
    measured range (after resampling) or excluded by the user (beam stop, detector gap).
    """

    x: np.ndarray
    intensity: np.ndarray
    axis: Axis = "two_theta"
    wavelength: float | None = None
    mask: np.ndarray | None = None
    source: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.axis not in ("two_theta", "q"):
            raise PatternError(f"axis must be 'two_theta' or 'q', got {self.axis!r}", self.source)
        x = _finite_1d(self.x, "the 2θ axis" if self.axis == "two_theta" else "the q axis", self.source)
        y = _finite_1d(self.intensity, "intensity", self.source)
        if x.shape != y.shape:
            raise PatternError(f"axis has {x.size} points but intensity has {y.size}", self.source)
        if x.size < 2:
            raise PatternError(f"a pattern needs at least 2 points, got {x.size}", self.source)
        steps = np.diff(x)
        if not (np.all(steps > 0)):
            first = int(np.flatnonzero(steps <= 0)[0])
            raise PatternError(
                f"axis is not strictly increasing: point {first + 1} ({x[first + 1]:g}) "
                f"follows {x[first]:g}",
                self.source,
            )
        if self.axis == "two_theta" and (x[0] <= 0 or x[-1] >= 180):
            raise PatternError(
                f"2θ must lie inside (0, 180) degrees, got {x[0]:g} to {x[-1]:g}", self.source
            )
        if self.axis == "q" and x[0] < 0:
            raise PatternError(f"q must not be negative, got {x[0]:g}", self.source)
        wavelength = resolve_wavelength(self.wavelength, self.source)
        mask = np.ones(x.shape, bool) if self.mask is None else np.asarray(self.mask, dtype=bool)
        if mask.shape != x.shape:
            raise PatternError(f"mask has shape {mask.shape}, expected {x.shape}", self.source)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "intensity", y)
        object.__setattr__(self, "wavelength", wavelength)
        object.__setattr__(self, "mask", mask)

    # -- axis conversion ---------------------------------------------------------------
    def _need_wavelength(self, wavelength: float | str | None) -> float:
        value = resolve_wavelength(wavelength, self.source) if wavelength is not None else self.wavelength
        if value is None:
            raise WavelengthError(
                "a wavelength is needed to convert between 2θ and q; pass wavelength= "
                "(Å or an anode name such as 'CuKa') or read the file with one",
                self.source,
            )
        return value

    @property
    def q(self) -> np.ndarray:
        """The axis as q in Å^-1."""
        if self.axis == "q":
            return self.x
        return two_theta_to_q(self.x, self._need_wavelength(None))

    @property
    def two_theta(self) -> np.ndarray:
        """The axis as 2θ in degrees (needs the wavelength for a q pattern)."""
        if self.axis == "two_theta":
            return self.x
        return q_to_two_theta(self.x, self._need_wavelength(None))

    def to_q(self) -> Diffractogram:
        """The same points on a q axis (q is monotonic in 2θ, so nothing is reordered)."""
        if self.axis == "q":
            return self
        return replace(self, x=self.q, axis="q")

    def to_two_theta(self, wavelength: float | str | None = None) -> Diffractogram:
        """The same points on a 2θ axis for this (or the given) wavelength."""
        if self.axis == "two_theta" and wavelength is None:
            return self
        lam = self._need_wavelength(wavelength)
        q = self.q
        two_theta = q_to_two_theta(q, lam)
        reachable = np.isfinite(two_theta) & (two_theta > 0) & (two_theta < 180)
        if not reachable.any():
            raise WavelengthError(f"no point of this pattern is reachable with λ = {lam:g} Å", self.source)
        return replace(
            self,
            x=two_theta[reachable],
            intensity=self.intensity[reachable],
            mask=self.mask[reachable],
            axis="two_theta",
            wavelength=lam,
        )

    # -- grids -------------------------------------------------------------------------
    def resample(self, grid: np.ndarray | QGrid, axis: Axis = "q") -> Diffractogram:
        """Linear interpolation onto `grid`; points outside the measured range get 0 and mask False."""
        target = grid.values if isinstance(grid, QGrid) else np.asarray(grid, dtype=float)
        source = self.to_q() if axis == "q" else self.to_two_theta()
        src_x, src_y, src_m = source.x, source.intensity, source.mask
        inside = (target >= src_x[0]) & (target <= src_x[-1])
        values = np.interp(target, src_x, src_y, left=0.0, right=0.0)
        # a target point is measured only if both neighbours it was interpolated from were
        measured = np.interp(target, src_x, src_m.astype(float), left=0.0, right=0.0) > 0.999
        mask = inside & measured
        values = np.where(mask, values, 0.0)
        return Diffractogram(
            x=target,
            intensity=values,
            axis=axis,
            wavelength=self.wavelength,
            mask=mask,
            source=self.source,
            metadata=dict(self.metadata),
        )

    def on_canonical_grid(self, grid: QGrid = CANONICAL_GRID) -> Diffractogram:
        """The model input: resampled onto the canonical q grid and normalised to max 1."""
        resampled = self.resample(grid, axis="q")
        if not resampled.mask.any():
            raise PatternError(
                f"no measured point falls inside the model's q range {grid.q_min:g}-{grid.q_max:g} Å^-1 "
                f"(pattern covers q {self.q[0]:.3g}-{self.q[-1]:.3g} Å^-1)",
                self.source,
            )
        return resampled.normalised("max")

    # -- intensity -----------------------------------------------------------------------
    def normalised(self, mode: Literal["max", "area", "none"] = "max") -> Diffractogram:
        """Scale intensities (measured points only) to max 1 or unit area; a flat zero pattern stays zero."""
        if mode == "none":
            return self
        y = np.where(self.mask, self.intensity, 0.0)
        if mode == "max":
            scale = np.max(np.abs(y)) if y.size else 0.0
        elif mode == "area":
            scale = float(np.trapezoid(np.abs(y), self.x))
        else:
            raise PatternError(f"normalisation mode must be 'max', 'area' or 'none', got {mode!r}", self.source)
        if scale <= 0 or not np.isfinite(scale):
            return replace(self, intensity=y)
        return replace(self, intensity=y / scale)

    def with_mask(self, x_min: float | None = None, x_max: float | None = None) -> Diffractogram:
        """Mark points outside [x_min, x_max] (in this pattern's axis units) as unmeasured."""
        keep = np.ones_like(self.mask)
        if x_min is not None:
            keep &= self.x >= x_min
        if x_max is not None:
            keep &= self.x <= x_max
        return replace(self, mask=self.mask & keep)

    @property
    def n_points(self) -> int:
        return int(self.x.size)

    def __repr__(self) -> str:
        unit = "deg 2θ" if self.axis == "two_theta" else "1/Å"
        lam = f", λ={self.wavelength:g} Å" if self.wavelength else ""
        src = f", source={self.source!r}" if self.source else ""
        return f"Diffractogram({self.n_points} points, {self.x[0]:g}-{self.x[-1]:g} {unit}{lam}{src})"

"""Physics-informed, seeded augmentations of simulated powder patterns, for whole batches.

`PowderSimulator.run` calls `pipeline.apply(stage, state, generator)` at four stages; each
transform belongs to one of them and acts on every pattern of the batch at once with tensor
operations (CPU or GPU). Each pattern independently gets a transform with its `probability`,
and what was drawn is recorded per pattern in `state.extras[<transform name>]`.

Stage "crystal" (the `CrystalBatch`)
    RandomDebyeWaller     isotropic B factors per structure or per element
Stage "reflections" (a row per Friedel pair, or per symmetry orbit of a crystal with a known
space group (`PeakList.orbit_rotations`), before equal q merge)
    PreferredOrientation  March–Dollase texture about a low-index direction
Stage "peaks" (merged stick pattern: q, integrated intensity, hkl)
    LatticeStrain         d -> d (1 + ε): isotropic, or per cell edge ("anisotropic")
    PeakLoss              drops merged peaks (missed or overlapped weak reflections)
    IntensityScaling      random factor per peak (texture, absorption, extinction, ...)
    ImpurityPhase         adds the peaks of a second phase at a small weight
    PeakShift             zero offset and sample displacement, in 2θ at the pattern's λ
    CrystalliteSize       Scherrer size per pattern (read by the renderer)
Stage "pattern" (rendered intensity (B, G) and measured mask (B, G))
    Background            Chebyshev polynomial + smooth random curve + amorphous hump, >= 0
    PoissonNoise          counting statistics for a random count level
    GaussianNoise         additive detector / readout noise
    RangeMask             unmeasured q ranges (detector window, gaps)
    Normalise             maximum over measured points -> 1

Transforms are frozen dataclasses whose fields are physical parameter ranges (lo, hi); a
pipeline round-trips through JSON with `to_config()` / `pipeline_from_config()`.

Random numbers: every draw is made on the device of the state's tensors. A `torch.Generator`
is device-specific; when the generator lives on another device than the batch (the usual
case: a CPU generator and a CUDA batch) each transform call draws one 62-bit seed from the
given generator and seeds a generator on the batch's device with it. Runs are therefore
reproducible for a seed on a given device type, but CPU and GPU draw different numbers.
With `generator=None` torch's global generator of that device is used (not reproducible
unless torch is seeded globally).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from xrd_nexus_ml.errors import XrdNexusMlError
from xrd_nexus_ml.physics.peaks import PeakList

if TYPE_CHECKING:
    from xrd_nexus_ml.physics.profiles import RenderSettings
    from xrd_nexus_ml.physics.simulator import PowderSimulator, SimulatedBatch

STAGES: tuple[str, ...] = ("crystal", "reflections", "peaks", "pattern")

#: Every transform class by name, for configs (filled by `Transform.__init_subclass__`).
TRANSFORMS: dict[str, type[Transform]] = {}


class AugmentationError(XrdNexusMlError, ValueError):
    """An augmentation or its configuration is not valid (unknown name or field, bad range)."""


# -- random numbers on the batch's device ---------------------------------------------------------


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    current = torch.cuda.current_device() if a.type == "cuda" else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


class _Random:
    """Draws on `device` from `generator` (or from a generator there seeded by it, see module doc)."""

    def __init__(self, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype):
        self.device = torch.device(device)
        self.dtype = dtype if dtype.is_floating_point else torch.float32
        if generator is not None and not _same_device(torch.device(generator.device), self.device):
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        self.generator = generator

    def uniform(self, shape, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        u = torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype)
        return lo + (hi - lo) * u

    def log_uniform(self, shape, lo: float, hi: float) -> torch.Tensor:
        u = self.uniform(shape, math.log(lo), math.log(hi))
        return torch.full_like(u, lo) if lo == hi else torch.exp(u)  # a fixed value stays exact

    def normal(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def integers(self, high: int, shape) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self.generator, device=self.device)

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        return torch.poisson(rates, generator=self.generator)


# -- config helpers ---------------------------------------------------------------------------------


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, PeakList):
        return {
            "q": value.q.tolist(),
            "intensity": value.intensity.tolist(),
            "hkl": value.hkl.tolist(),
            "reciprocal_lattice": value.reciprocal_lattice.tolist(),
        }
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def _from_jsonable(value: Any) -> Any:
    """JSON lists back to the tuples the dataclass fields hold."""
    if isinstance(value, list):
        return tuple(_from_jsonable(v) for v in value)
    return value


def _check_probability(owner: str, name: str, p: float) -> None:
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise AugmentationError(f"{owner}.{name} must be a probability in [0, 1], got {p!r}")


def _check_range(owner: str, name: str, value, lo: float | None = None, hi: float | None = None,
                 strict_lo: bool = False) -> None:
    """`value` must be a (low, high) pair with low <= high inside [lo, hi] (or (lo, hi] if strict_lo)."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
        raise AugmentationError(f"{owner}.{name} must be a (low, high) pair of numbers, got {value!r}")
    a, b = value
    if a > b:
        raise AugmentationError(f"{owner}.{name} = {tuple(value)}: low is above high")
    if lo is not None and (a < lo or (strict_lo and a <= lo)):
        raise AugmentationError(f"{owner}.{name} = {tuple(value)}: must be {'>' if strict_lo else '>='} {lo}")
    if hi is not None and b > hi:
        raise AugmentationError(f"{owner}.{name} = {tuple(value)}: must be <= {hi}")


def _grid_q(settings: RenderSettings, device, dtype) -> torch.Tensor:
    """q (Å^-1) of every grid point, whatever the grid's axis."""
    x = settings.grid.values.to(device=device, dtype=dtype)
    if settings.grid.axis == "q":
        return x
    return 4.0 * math.pi * torch.sin(torch.deg2rad(x) / 2.0) / settings.wavelength


def _masked_max(intensity: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-pattern maximum over measured points, (B,)."""
    if mask is None:
        return intensity.amax(1)
    return torch.where(mask, intensity, torch.full_like(intensity, -torch.inf)).amax(1).clamp_min(0.0)


# -- base classes -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Transform:
    """One augmentation: acts at `stage` on a whole `SimulatedBatch`.

    probability: chance that a given pattern of the batch gets the transform (each pattern
    independently); patterns that do not get it pass through bit-for-bit unchanged.
    Subclasses implement `_apply(state, rng, active) -> (state, record)`, where `active` is
    the (B,) bool of patterns that get it and `record` the per-pattern draws to keep in
    `state.extras[self.name]`.
    """

    stage: ClassVar[str] = ""
    probability: float = 1.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.stage not in STAGES:
            raise TypeError(f"{cls.__name__}.stage must be one of {STAGES}, got {cls.stage!r}")
        TRANSFORMS[cls.__name__] = cls

    def __post_init__(self):
        _check_probability(self.name, "probability", self.probability)

    @property
    def name(self) -> str:
        return type(self).__name__

    # the tensors this stage works on
    def _reference(self, state: SimulatedBatch) -> torch.Tensor:
        if self.stage == "crystal":
            return state.crystals.lattice
        if self.stage == "reflections":
            return state.reflections.q
        if self.stage == "peaks":
            return state.peaks.q
        return state.intensity

    def __call__(self, state: SimulatedBatch, generator: torch.Generator | None = None) -> SimulatedBatch:
        reference = self._reference(state)
        rng = _Random(generator, reference.device, reference.dtype)
        n = reference.shape[0]
        active = rng.uniform((n,)) < self.probability
        state, record = self._apply(state, rng, active)
        record = {"applied": active, **record}
        extras = dict(state.extras)
        key, i = self.name, 1
        while key in extras:  # the same transform twice in one pipeline
            i += 1
            key = f"{self.name}#{i}"
        extras[key] = record
        return replace(state, extras=extras)

    def _apply(self, state: SimulatedBatch, rng: _Random, active: torch.Tensor):
        raise NotImplementedError

    # -- config ------------------------------------------------------------------------------
    def to_config(self) -> dict:
        """{"name": class name, field: value, ...} with JSON types only."""
        out = {"name": self.name}
        for f in dataclasses.fields(self):
            if f.init:
                out[f.name] = _to_jsonable(getattr(self, f.name))
        return out

    @classmethod
    def from_config(cls, params: dict) -> Transform:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(params) - names)
        if unknown:
            raise AugmentationError(
                f"{cls.__name__} has no parameter(s) {', '.join(map(repr, unknown))}; "
                f"its parameters are {', '.join(sorted(names))}"
            )
        return cls(**{k: _from_jsonable(v) for k, v in params.items()})


@dataclass(frozen=True)
class Compose:
    """An ordered list of transforms; `apply(stage, ...)` runs the ones of that stage, in order."""

    transforms: tuple[Transform, ...] = ()

    def __post_init__(self):
        transforms = tuple(self.transforms)
        for t in transforms:
            if not isinstance(t, Transform):
                raise AugmentationError(f"a pipeline holds Transform objects, got {type(t).__name__}")
        object.__setattr__(self, "transforms", transforms)

    def __iter__(self):
        return iter(self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def apply(self, stage: str, state: SimulatedBatch, generator: torch.Generator | None = None) -> SimulatedBatch:
        if stage not in STAGES:
            raise AugmentationError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        for t in self.transforms:
            if t.stage == stage:
                state = t(state, generator)
        return state

    def to_config(self) -> dict:
        return {"transforms": [t.to_config() for t in self.transforms]}


#: The name the simulator's docs use for a pipeline.
AugmentationPipeline = Compose


def transform_from_config(entry: dict) -> Transform:
    """One transform from {"name": ..., field: value, ...}."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise AugmentationError(f"each augmentation needs a 'name', got {entry!r}")
    params = dict(entry)
    name = params.pop("name")
    if name not in TRANSFORMS:
        raise AugmentationError(f"unknown augmentation {name!r}; known: {', '.join(sorted(TRANSFORMS))}")
    return TRANSFORMS[name].from_config(params)


def pipeline_from_config(config: dict | Sequence[dict]) -> Compose:
    """A pipeline from `Compose.to_config()` output (or just its list of transforms)."""
    if isinstance(config, dict):
        unknown = sorted(set(config) - {"transforms"})
        if unknown:
            raise AugmentationError(f"a pipeline config has only 'transforms', got {', '.join(map(repr, unknown))}")
        config = config.get("transforms", [])
    return Compose(tuple(transform_from_config(entry) for entry in config))


# -- crystal --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RandomDebyeWaller(Transform):
    """Isotropic Debye–Waller factors: f -> f exp(-B s²), s = sinθ/λ, so I ∝ exp(-2 B s²).

    Thermal motion (and static disorder) damps high-angle peaks. b_range: B in Å²; room-
    temperature inorganics have B ≈ 0.2-1.5 Å² (light atoms and soft lattices more).
    per_element: one B per element of a structure instead of one per structure.
    Padding atoms keep theirs; patterns that do not get it keep their structures' B.
    """

    stage: ClassVar[str] = "crystal"
    b_range: tuple[float, float] = (0.0, 1.5)
    per_element: bool = False

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "b_range", self.b_range, lo=0.0)

    def _apply(self, state, rng, active):
        crystals = state.crystals
        z = crystals.atomic_numbers
        lo, hi = self.b_range
        if self.per_element:
            table = rng.uniform((z.shape[0], 128), lo, hi)  # one B per Z (fixed width: draws do not depend on content)
            b = torch.gather(table, 1, z.clamp(0, 127))
        else:
            b = rng.uniform((z.shape[0], 1), lo, hi).expand_as(crystals.b_factors)
        b = b.to(crystals.b_factors.dtype)
        real = (z > 0) & (crystals.occupancy > 0)
        new_b = torch.where(active.unsqueeze(1) & real, b, crystals.b_factors)
        weight = crystals.occupancy * real
        b_mean = (new_b * weight).sum(1) / weight.sum(1).clamp_min(1e-12)
        state = replace(state, crystals=crystals.with_b_factors(new_b))
        return state, {"b_mean": b_mean, "b_factors": new_b}


# -- reflections ------------------------------------------------------------------------------------

_LOW_INDEX = ((0, 0, 1), (1, 0, 0), (1, 1, 0), (1, 1, 1))


@dataclass(frozen=True, kw_only=True)
class PreferredOrientation(Transform):
    """March–Dollase texture: I_hkl × P(α), P = (r² cos²α + sin²α / r)^(-3/2).

    α is the angle between the scattering vector of a reflection, (hkl)·(a*, b*, c*), and
    the preferred-orientation vector (a reciprocal-lattice direction). r < 1: platelets
    lying flat with the preferred vector along the normal (reflections along it enhanced up
    to r^-3); r > 1: needles. P averages to 1 over orientations, so the total intensity is
    kept. Applied before symmetry equivalents merge, so each equivalent gets its own α (a row
    that stands for a whole orbit gets the mean of its members' factors).
    r_range: dimensionless, 1 = random powder; 0.7-1.3 is mild to moderate texture of
    a packed lab sample (capillaries and spun samples: closer to 1).
    directions: low-index hkl the preferred vector is drawn from, or None for any hkl with
    |h|, |k|, |l| <= 1.
    """

    stage: ClassVar[str] = "reflections"
    r_range: tuple[float, float] = (0.7, 1.3)
    directions: tuple[tuple[int, int, int], ...] | None = _LOW_INDEX

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "r_range", self.r_range, lo=0.0, strict_lo=True)
        if self.directions is not None:
            ok = len(self.directions) > 0 and all(
                len(d) == 3 and all(isinstance(i, int) for i in d) and any(d) for d in self.directions
            )
            if not ok:
                raise AugmentationError(f"{self.name}.directions must be non-zero integer hkl triples, "
                                        f"got {self.directions!r}")

    def _apply(self, state, rng, active):
        refl = state.reflections
        n, dtype, device = refl.q.shape[0], refl.q.dtype, refl.q.device
        r = rng.uniform((n,), *self.r_range)
        if self.directions is not None:
            table = torch.tensor(self.directions, device=device)
            direction = table[rng.integers(len(self.directions), (n,))]
        else:  # one of the 26 non-zero hkl in {-1, 0, 1}³
            idx = rng.integers(26, (n,))
            idx = idx + (idx >= 13).long()
            direction = torch.stack([idx // 9 - 1, (idx // 3) % 3 - 1, idx % 3 - 1], dim=1)
        recip = refl.reciprocal_lattice.to(dtype)
        g = torch.bmm(refl.hkl.to(dtype), recip)  # (B, M, 3) Cartesian scattering vectors / 2π
        g_pref = torch.bmm(direction.to(dtype).unsqueeze(1), recip)  # (B, 1, 3)
        norms = (g.norm(dim=-1) * g_pref.norm(dim=-1)).clamp_min(1e-12)  # (B, M)
        if refl.orbit_rotations is None:
            cos = (g * g_pref).sum(-1).abs() / norms
        else:  # each row is an orbit {hR}: g(hR)·p = h·(R a* p); |g| is the same for all of it
            rotated = refl.orbit_rotations.to(dtype) @ (recip @ g_pref.transpose(1, 2)).unsqueeze(1)  # (B, R, 3, 1)
            cos = torch.bmm(refl.hkl.to(dtype), rotated.squeeze(-1).transpose(1, 2)).abs() / norms.unsqueeze(-1)
        cos2 = cos.clamp(0.0, 1.0) ** 2
        rr = r.view(-1, *([1] * (cos2.dim() - 1)))
        factor = (rr**2 * cos2 + (1.0 - cos2) / rr) ** -1.5
        if refl.orbit_rotations is not None:
            factor = factor.mean(-1)  # the orbit's intensity is shared equally by its members
        intensity = torch.where(active.unsqueeze(1), refl.intensity * factor, refl.intensity)
        state = replace(state, reflections=refl.replace(intensity=intensity))
        return state, {"r": r, "direction": direction}


# -- peaks ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LatticeStrain(Transform):
    """Uniform (macro) strain of the cell: d -> d (1 + ε), so q -> q / (1 + ε).

    Models thermal expansion, composition (solid solutions, Vegard) and residual stress, i.e.
    lattice parameters a little off the reference. strain_range: ε, dimensionless;
    ±0.5 % covers typical mismatch between a database cell and a measured one.
    mode "isotropic": one ε per pattern. mode "anisotropic": one ε per cell edge (a, b, c
    scaled independently, angles kept), with edges of equal length sharing their ε so the
    metric keeps its symmetry (cubic stays cubic, tetragonal/hexagonal scale a and c
    separately) and symmetry-equivalent reflections, merged into one peak, stay together.
    Peaks with hkl = 000 (e.g. an impurity added earlier) get the mean of the three ε.
    """

    stage: ClassVar[str] = "peaks"
    strain_range: tuple[float, float] = (-0.005, 0.005)
    mode: str = "isotropic"

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "strain_range", self.strain_range, lo=-0.5, hi=0.5)
        if self.mode not in ("isotropic", "anisotropic"):
            raise AugmentationError(f"{self.name}.mode must be 'isotropic' or 'anisotropic', got {self.mode!r}")

    def _apply(self, state, rng, active):
        peaks = state.peaks
        n, dtype = peaks.q.shape[0], peaks.q.dtype
        on = active.unsqueeze(1)
        if self.mode == "isotropic":
            eps = rng.uniform((n,), *self.strain_range)
            q = torch.where(on, peaks.q / (1.0 + eps.unsqueeze(1)), peaks.q)
            return replace(state, peaks=peaks.replace(q=q)), {"strain": eps}
        eps = rng.uniform((n, 3), *self.strain_range)
        recip = peaks.reciprocal_lattice.to(dtype)
        lengths = torch.linalg.inv(recip).transpose(-1, -2).norm(dim=-1)  # |a|, |b|, |c|, (B, 3)
        tie = lambda i, j: ((lengths[:, i] - lengths[:, j]).abs() <= 1e-4 * lengths[:, i])  # noqa: E731
        e_a = eps[:, 0]
        e_b = torch.where(tie(0, 1), e_a, eps[:, 1])
        e_c = torch.where(tie(0, 2), e_a, torch.where(tie(1, 2), e_b, eps[:, 2]))
        eps = torch.stack([e_a, e_b, e_c], dim=1)
        strained = recip / (1.0 + eps.unsqueeze(-1))  # rows a*/(1+ε_a), ...: the edges scale by 1+ε
        hkl = peaks.hkl.to(dtype)
        before = torch.bmm(hkl, recip).norm(dim=-1)
        after = torch.bmm(hkl, strained).norm(dim=-1)
        has_hkl = before > 0
        ratio = torch.where(has_hkl, after / before.clamp_min(1e-30), 1.0 / (1.0 + eps.mean(1, keepdim=True)))
        q = torch.where(on, peaks.q * ratio, peaks.q)
        new_recip = torch.where(active.view(-1, 1, 1), strained.to(peaks.reciprocal_lattice.dtype),
                                peaks.reciprocal_lattice)
        state = replace(state, peaks=peaks.replace(q=q, reciprocal_lattice=new_recip))
        return state, {"strain": eps.mean(1), "strain_abc": eps}


@dataclass(frozen=True, kw_only=True)
class PeakShift(Transform):
    """Instrumental peak shifts in 2θ, converted back to q at the pattern's wavelength.

    zero_offset_deg: Δ2θ = const, degrees of 2θ (goniometer zero error); lab ±0.05°, a
    calibrated synchrotron much less. displacement_mm: sample height displacement s in mm
    (Bragg–Brentano), Δ2θ = -2 s cosθ / R radians, largest at low angle; ±0.1 mm is a
    typical lab mounting error; positive s moves peaks to lower 2θ. goniometer_radius_mm: R,
    ~200-300 mm for lab diffractometers. Set a range to (0, 0) to switch a term off.
    """

    stage: ClassVar[str] = "peaks"
    zero_offset_deg: tuple[float, float] = (-0.05, 0.05)
    displacement_mm: tuple[float, float] = (-0.1, 0.1)
    goniometer_radius_mm: float = 240.0

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "zero_offset_deg", self.zero_offset_deg, lo=-10.0, hi=10.0)
        _check_range(self.name, "displacement_mm", self.displacement_mm)
        if not self.goniometer_radius_mm > 0:
            raise AugmentationError(f"{self.name}.goniometer_radius_mm must be > 0, got {self.goniometer_radius_mm!r}")

    def _apply(self, state, rng, active):
        peaks, lam = state.peaks, state.settings.wavelength
        n = peaks.q.shape[0]
        zero = rng.uniform((n,), *self.zero_offset_deg)
        displacement = rng.uniform((n,), *self.displacement_mm)
        theta = torch.asin((peaks.q * lam / (4.0 * math.pi)).clamp(0.0, 1.0))
        tilt = (2.0 * displacement / self.goniometer_radius_mm).unsqueeze(1)  # 2s/R, radians
        delta = torch.deg2rad(zero).unsqueeze(1) - tilt * torch.cos(theta)
        two_theta = (2.0 * theta + delta).clamp(1e-6, math.pi - 1e-6)
        q_new = 4.0 * math.pi * torch.sin(two_theta / 2.0) / lam
        q = torch.where(active.unsqueeze(1) & (peaks.intensity > 0), q_new, peaks.q)
        return replace(state, peaks=peaks.replace(q=q)), {"zero_offset_deg": zero, "displacement_mm": displacement}


@dataclass(frozen=True, kw_only=True)
class CrystalliteSize(Transform):
    """Scherrer size broadening, FWHM(2θ) = K λ / (L cosθ), added in quadrature to the instrument.

    Sets a per-pattern crystallite size (the renderer takes a (B,) tensor). size_nm: L in nm,
    drawn log-uniformly; 10-200 nm spans nanocrystalline to well-crystallised powders (above
    ~200 nm a lab instrument cannot see size broadening). Patterns that do not get it keep
    the profile's size (none: instrument width only).
    """

    stage: ClassVar[str] = "peaks"
    size_nm: tuple[float, float] = (10.0, 200.0)

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "size_nm", self.size_nm, lo=0.0, strict_lo=True)

    def _apply(self, state, rng, active):
        peaks, profile = state.peaks, state.settings.profile
        n, device, dtype = peaks.q.shape[0], peaks.q.device, peaks.q.dtype
        size = rng.log_uniform((n,), *self.size_nm)
        current = profile.crystallite_size_nm
        if current is None:
            base = torch.full((n,), math.inf, device=device, dtype=dtype)  # infinite crystals: no broadening
        else:
            base = torch.as_tensor(current, device=device, dtype=dtype).expand(n)
        size = torch.where(active, size, base)
        if current is None and not bool(active.any()):
            return state, {"size_nm": size}
        settings = replace(state.settings, profile=profile.replace(crystallite_size_nm=size))
        return replace(state, settings=settings), {"size_nm": size}


@dataclass(frozen=True, kw_only=True)
class PeakLoss(Transform):
    """Drops each merged peak with probability p (drawn per pattern from drop_probability).

    Models reflections missed by peak search, hidden by overlap or killed by texture; the
    identification literature trains with randomly removed peaks. keep_strongest: never drop
    a pattern's strongest peak (a pattern keeps something to normalise to).
    """

    stage: ClassVar[str] = "peaks"
    drop_probability: tuple[float, float] = (0.0, 0.2)
    keep_strongest: bool = True

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "drop_probability", self.drop_probability, lo=0.0, hi=1.0)

    def _apply(self, state, rng, active):
        peaks = state.peaks
        n = peaks.q.shape[0]
        p = rng.uniform((n,), *self.drop_probability)
        dropped = (rng.uniform(peaks.intensity.shape) < p.unsqueeze(1)) & active.unsqueeze(1) & (peaks.intensity > 0)
        if self.keep_strongest:
            strongest = torch.zeros_like(dropped).scatter_(1, peaks.intensity.argmax(1, keepdim=True), True)
            dropped = dropped & ~strongest
        intensity = torch.where(dropped, torch.zeros_like(peaks.intensity), peaks.intensity)
        return replace(state, peaks=peaks.replace(intensity=intensity)), {"drop_probability": p, "dropped": dropped}


@dataclass(frozen=True, kw_only=True)
class IntensityScaling(Transform):
    """Multiplies each peak's integrated intensity by its own random factor.

    Stands in for what the kinematic model leaves out (residual texture, absorption,
    extinction, imperfect structure models). distribution "uniform": factor in
    [1 - spread, 1 + spread] (spread < 1); "lognormal": factor = exp(spread · N(0, 1)).
    spread 0.2-0.3 is what identification networks are commonly trained with.
    """

    stage: ClassVar[str] = "peaks"
    distribution: str = "uniform"
    spread: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        if self.distribution not in ("uniform", "lognormal"):
            raise AugmentationError(f"{self.name}.distribution must be 'uniform' or 'lognormal', "
                                    f"got {self.distribution!r}")
        limit = 1.0 if self.distribution == "uniform" else math.inf
        if not (isinstance(self.spread, (int, float)) and 0.0 <= self.spread < limit):
            raise AugmentationError(f"{self.name}.spread must be in [0, {limit}), got {self.spread!r}")

    def _apply(self, state, rng, active):
        peaks = state.peaks
        if self.distribution == "uniform":
            factor = 1.0 + self.spread * (2.0 * rng.uniform(peaks.intensity.shape) - 1.0)
        else:
            factor = torch.exp(self.spread * rng.normal(peaks.intensity.shape))
        factor = torch.where(active.unsqueeze(1), factor, torch.ones_like(factor))
        intensity = torch.where(active.unsqueeze(1), peaks.intensity * factor, peaks.intensity)
        return replace(state, peaks=peaks.replace(intensity=intensity)), {"factor": factor}


@dataclass(frozen=True, kw_only=True)
class ImpurityPhase(Transform):
    """Adds the peaks of a second phase: one impurity per pattern, drawn from `pool`.

    pool: merged stick patterns (P, M) of the candidate impurities (see `from_structures`);
    q in Å^-1 does not depend on the wavelength, so a pool serves any simulator.
    fraction: height of the impurity's strongest stick relative to the main phase's strongest
    stick (integrated intensities), e.g. 0.01-0.10 for a few % of a minor phase.
    The added peaks carry hkl = 000: their own hkl refer to another cell than the batch's
    `reciprocal_lattice` (hkl-dependent transforms after this one treat them as hkl-less;
    LatticeStrain "anisotropic" gives them the mean strain).
    """

    stage: ClassVar[str] = "peaks"
    pool: PeakList | None = field(default=None, compare=False)
    fraction: tuple[float, float] = (0.01, 0.10)
    names: tuple[str, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "fraction", self.fraction, lo=0.0)
        if not isinstance(self.pool, PeakList) or len(self.pool) == 0:
            raise AugmentationError(f"{self.name} needs a non-empty PeakList pool (see ImpurityPhase.from_structures)")
        if self.names and len(self.names) != len(self.pool):
            raise AugmentationError(f"{self.name}: {len(self.names)} names for {len(self.pool)} impurities")
        object.__setattr__(self, "pool", self.pool.normalised())

    @classmethod
    def from_structures(cls, structures: Sequence, simulator: PowderSimulator, **options) -> ImpurityPhase:
        """Simulate the impurities' merged sticks once with `simulator` (its q range), on the CPU."""
        crystals = simulator.batch(structures)
        peaks = simulator.reflections(crystals).merged().without_weak()
        cpu = lambda t: t.detach().cpu()  # noqa: E731
        pool = PeakList(q=cpu(peaks.q), intensity=cpu(peaks.intensity), hkl=cpu(peaks.hkl),
                        reciprocal_lattice=cpu(peaks.reciprocal_lattice))
        names = tuple(
            getattr(getattr(s, "composition", None), "reduced_formula", None)
            or getattr(s, "name", "")
            or f"impurity {i}"
            for i, s in enumerate(structures)
        )
        return cls(pool=pool, names=names, **options)

    @classmethod
    def from_config(cls, params: dict) -> ImpurityPhase:
        """As `Transform.from_config`, with the pool given as lists (what `to_config` writes)."""
        params = dict(params)
        pool = params.pop("pool", None)
        if isinstance(pool, dict):
            try:
                pool = PeakList(
                    q=torch.tensor(pool["q"], dtype=torch.float32),
                    intensity=torch.tensor(pool["intensity"], dtype=torch.float32),
                    hkl=torch.tensor(pool["hkl"], dtype=torch.long),
                    reciprocal_lattice=torch.tensor(pool["reciprocal_lattice"], dtype=torch.float32),
                )
            except KeyError as missing:
                raise AugmentationError(
                    f"ImpurityPhase.pool needs q, intensity, hkl and reciprocal_lattice; missing {missing}"
                ) from None
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(params) - names)
        if unknown:
            raise AugmentationError(f"ImpurityPhase has no parameter(s) {', '.join(map(repr, unknown))}; "
                                    f"its parameters are {', '.join(sorted(names))}")
        return cls(pool=pool, **{k: _from_jsonable(v) for k, v in params.items()})

    def _apply(self, state, rng, active):
        peaks = state.peaks
        n, device, dtype = peaks.q.shape[0], peaks.q.device, peaks.q.dtype
        pick = rng.integers(len(self.pool), (n,))
        fraction = rng.uniform((n,), *self.fraction)
        pool_q = self.pool.q.to(device=device, dtype=dtype)[pick]
        pool_i = self.pool.intensity.to(device=device, dtype=dtype)[pick]
        main_max = peaks.intensity.amax(1)
        weight = torch.where(active, fraction * main_max, torch.zeros_like(main_max)).unsqueeze(1)
        impurity = PeakList(q=torch.where(weight > 0, pool_q, torch.zeros_like(pool_q)),
                            intensity=pool_i * weight,
                            hkl=torch.zeros(*pool_q.shape, 3, dtype=peaks.hkl.dtype, device=device),
                            reciprocal_lattice=peaks.reciprocal_lattice)
        return replace(state, peaks=peaks.concatenate(impurity)), {"impurity": pick, "fraction": fraction}


# -- pattern ----------------------------------------------------------------------------------------


def _chebyshev_basis(x: torch.Tensor, order: int) -> torch.Tensor:
    """T_0..T_order at x in [-1, 1]: (order + 1, G)."""
    rows = [torch.ones_like(x), x]
    for _ in range(2, order + 1):
        rows.append(2.0 * x * rows[-1] - rows[-2])
    return torch.stack(rows[: order + 1])


def _unit_range(y: torch.Tensor) -> torch.Tensor:
    """Each row rescaled to [0, 1] (rows that are constant -> 0)."""
    lo, hi = y.amin(1, keepdim=True), y.amax(1, keepdim=True)
    return (y - lo) / (hi - lo).clamp_min(1e-12)


@dataclass(frozen=True, kw_only=True)
class Background(Transform):
    """A smooth, non-negative background added to the measured points, sized relative to the pattern max.

    Three terms, each with an amplitude range relative to the pattern's maximum (set a range
    to (0, 0) to switch a term off):
    polynomial_scale: Chebyshev polynomial of `polynomial_order` (random coefficients) on a
        random pedestal — air scatter, fluorescence, sample holder; lab 0-0.1.
    gp_scale / gp_length: a squared-exponential Gaussian-process draw (random Fourier
        features, `gp_features` of them) with length scale a fraction of the grid's span
        (0.1-0.3: slow undulations, never peak-like); 0-0.05.
    hump_scale / hump_q / hump_fwhm: a Gaussian amorphous halo (glass capillary, kapton,
        amorphous fraction) centred at q in Å^-1 (1.2-2.2 for silicate glass) with FWHM in Å^-1.
    Each term is rescaled to [0, 1] before its amplitude, so the sum is >= 0 everywhere.
    """

    stage: ClassVar[str] = "pattern"
    polynomial_order: int = 4
    polynomial_scale: tuple[float, float] = (0.0, 0.1)
    gp_scale: tuple[float, float] = (0.0, 0.05)
    gp_length: tuple[float, float] = (0.1, 0.3)
    gp_features: int = 16
    hump_scale: tuple[float, float] = (0.0, 0.05)
    hump_q: tuple[float, float] = (1.2, 2.2)
    hump_fwhm: tuple[float, float] = (0.4, 1.0)

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.polynomial_order, int) and 0 <= self.polynomial_order <= 20):
            raise AugmentationError(f"{self.name}.polynomial_order must be an integer in 0-20, "
                                    f"got {self.polynomial_order!r}")
        if not (isinstance(self.gp_features, int) and self.gp_features >= 1):
            raise AugmentationError(f"{self.name}.gp_features must be a positive integer, got {self.gp_features!r}")
        for name in ("polynomial_scale", "gp_scale", "hump_scale", "hump_q"):
            _check_range(self.name, name, getattr(self, name), lo=0.0)
        for name in ("gp_length", "hump_fwhm"):
            _check_range(self.name, name, getattr(self, name), lo=0.0, strict_lo=True)

    def _apply(self, state, rng, active):
        y, mask = state.intensity, state.mask
        n, g_points = y.shape
        device, dtype = y.device, y.dtype
        top = _masked_max(y, mask).unsqueeze(1)
        u = torch.linspace(0.0, 1.0, g_points, device=device, dtype=dtype)
        # polynomial on a pedestal
        coeffs = rng.uniform((n, self.polynomial_order + 1), -1.0, 1.0)
        poly = coeffs @ _chebyshev_basis(2.0 * u - 1.0, self.polynomial_order)
        pedestal = rng.uniform((n, 1))
        poly_scale = rng.uniform((n,), *self.polynomial_scale)
        background = poly_scale.unsqueeze(1) * (pedestal + (1.0 - pedestal) * _unit_range(poly))
        # Gaussian process with a squared-exponential kernel: random Fourier features
        length = rng.uniform((n,), *self.gp_length)
        omega = rng.normal((n, self.gp_features)) / length.unsqueeze(1)
        phase = rng.uniform((n, self.gp_features), 0.0, 2.0 * math.pi)
        weight = rng.normal((n, self.gp_features))
        gp = (weight.unsqueeze(-1) * torch.cos(omega.unsqueeze(-1) * u + phase.unsqueeze(-1))).sum(1)
        gp_scale = rng.uniform((n,), *self.gp_scale)
        background = background + gp_scale.unsqueeze(1) * _unit_range(gp)
        # amorphous hump in q
        q = _grid_q(state.settings, device, dtype)
        hump_scale = rng.uniform((n,), *self.hump_scale)
        hump_q = rng.uniform((n,), *self.hump_q)
        hump_fwhm = rng.uniform((n,), *self.hump_fwhm)
        sigma = (hump_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))).unsqueeze(1)
        background = background + hump_scale.unsqueeze(1) * torch.exp(-0.5 * ((q - hump_q.unsqueeze(1)) / sigma) ** 2)
        background = background * top
        if mask is not None:
            background = background * mask
        intensity = torch.where(active.unsqueeze(1), y + background, y)
        record = {"polynomial_scale": poly_scale, "gp_scale": gp_scale, "gp_length": length,
                  "hump_scale": hump_scale, "hump_q": hump_q, "hump_fwhm": hump_fwhm}
        return replace(state, intensity=intensity), record


@dataclass(frozen=True, kw_only=True)
class PoissonNoise(Transform):
    """Counting statistics: the pattern is scaled so its maximum is N counts, Poisson-sampled, scaled back.

    max_counts: N, drawn log-uniformly; 1e2 is a quick scan, 1e4-1e5 a good lab or a
    synchrotron pattern. The noise variance is proportional to the counts (relative noise
    1/sqrt(counts)); put it after Background, whose counts are noisy too.
    """

    stage: ClassVar[str] = "pattern"
    max_counts: tuple[float, float] = (1e2, 1e5)

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "max_counts", self.max_counts, lo=0.0, strict_lo=True)

    def _apply(self, state, rng, active):
        y, mask = state.intensity, state.mask
        n = y.shape[0]
        counts = rng.log_uniform((n,), *self.max_counts)
        top = _masked_max(y, mask)
        scale = (counts / top.clamp_min(1e-30)).unsqueeze(1)
        noisy = rng.poisson((y * scale).clamp_min(0.0)) / scale
        keep = active.unsqueeze(1) if mask is None else active.unsqueeze(1) & mask
        return replace(state, intensity=torch.where(keep, noisy, y)), {"max_counts": counts}


@dataclass(frozen=True, kw_only=True)
class GaussianNoise(Transform):
    """Additive Gaussian noise (detector readout, integration artefacts), σ relative to the pattern max.

    sigma: σ / max, e.g. 0-0.01. clip_negative: clamp the result at 0 (counts are not negative).
    """

    stage: ClassVar[str] = "pattern"
    sigma: tuple[float, float] = (0.0, 0.01)
    clip_negative: bool = True

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "sigma", self.sigma, lo=0.0)

    def _apply(self, state, rng, active):
        y, mask = state.intensity, state.mask
        n = y.shape[0]
        sigma = rng.uniform((n,), *self.sigma)
        noisy = y + (sigma * _masked_max(y, mask)).unsqueeze(1) * rng.normal(y.shape)
        if self.clip_negative:
            noisy = noisy.clamp_min(0.0)
        keep = active.unsqueeze(1) if mask is None else active.unsqueeze(1) & mask
        return replace(state, intensity=torch.where(keep, noisy, y)), {"sigma": sigma}


@dataclass(frozen=True, kw_only=True)
class RangeMask(Transform):
    """Unmeasured q ranges: outside a random measured window, and optionally in a random gap.

    Any detector and wavelength measure a q window [q_lo, q_hi] (Cu Kα 5-90° 2θ: 0.36-5.8 Å^-1;
    a 25 keV beam 2-35°: 0.45-7.8 Å^-1), and area detectors have gaps between modules.
    q_min / q_max: ranges of the window's ends in Å^-1. gap_probability: chance of one gap per
    pattern; gap_width: its width in Å^-1, placed at random inside the window.
    Masked points get mask False and intensity 0. Limits in q also apply to a 2θ grid.
    """

    stage: ClassVar[str] = "pattern"
    q_min: tuple[float, float] = (0.3, 1.0)
    q_max: tuple[float, float] = (4.5, 8.0)
    gap_probability: float = 0.0
    gap_width: tuple[float, float] = (0.05, 0.2)

    def __post_init__(self):
        super().__post_init__()
        _check_range(self.name, "q_min", self.q_min, lo=0.0)
        _check_range(self.name, "q_max", self.q_max, lo=0.0)
        _check_range(self.name, "gap_width", self.gap_width, lo=0.0)
        _check_probability(self.name, "gap_probability", self.gap_probability)
        if self.q_min[1] >= self.q_max[0]:
            raise AugmentationError(f"{self.name}: q_min {self.q_min} must lie below q_max {self.q_max}")

    def _apply(self, state, rng, active):
        y = state.intensity
        n, device, dtype = y.shape[0], y.device, y.dtype
        mask = state.mask if state.mask is not None else torch.ones_like(y, dtype=torch.bool)
        lo = rng.uniform((n,), *self.q_min)
        hi = rng.uniform((n,), *self.q_max)
        has_gap = rng.uniform((n,)) < self.gap_probability
        width = rng.uniform((n,), *self.gap_width)
        gap_start = lo + rng.uniform((n,)) * (hi - lo - width).clamp_min(0.0)
        gap_start = torch.where(has_gap, gap_start, torch.full_like(gap_start, math.nan))
        gap_end = gap_start + width
        q = _grid_q(state.settings, device, dtype)
        inside = (q >= lo.unsqueeze(1)) & (q <= hi.unsqueeze(1))
        in_gap = (q >= gap_start.unsqueeze(1)) & (q <= gap_end.unsqueeze(1))  # NaN: no gap
        measured = inside & ~in_gap
        new_mask = torch.where(active.unsqueeze(1), mask & measured, mask)
        intensity = torch.where(new_mask, y, torch.zeros_like(y))
        intensity = torch.where(active.unsqueeze(1), intensity, y)
        record = {"q_min": lo, "q_max": hi, "gap_start": gap_start, "gap_end": gap_end}
        return replace(state, intensity=intensity, mask=new_mask), record


@dataclass(frozen=True, kw_only=True)
class Normalise(Transform):
    """Maximum over the measured points -> 1 per pattern (what the models see); last in a pipeline.

    Unmeasured points are set to 0. Patterns with nothing above 0 stay all zero.
    """

    stage: ClassVar[str] = "pattern"

    def _apply(self, state, rng, active):
        y, mask = state.intensity, state.mask
        top = _masked_max(y, mask)
        scaled = y / torch.where(top > 0, top, torch.ones_like(top)).unsqueeze(1)
        if mask is not None:
            scaled = torch.where(mask, scaled, torch.zeros_like(scaled))
        return replace(state, intensity=torch.where(active.unsqueeze(1), scaled, y)), {"scale": top}


# -- ready-made pipelines -----------------------------------------------------------------------


def default_pipeline(kind: str = "measured", impurity_pool: PeakList | ImpurityPhase | None = None) -> Compose:
    """Ready-made pipelines.

    "clean": random Debye–Waller factors (0-1.5 Å²) and normalisation: ideal patterns.
    "measured" (what training uses), in order:
      crystal      RandomDebyeWaller 0-1.5 Å² per structure
      reflections  PreferredOrientation r 0.7-1.3 about 001/100/110/111, half the patterns
      peaks        LatticeStrain ±0.5 % per cell edge; PeakLoss 0-20 % of peaks for 30 % of
                   patterns (strongest kept); IntensityScaling ±20 % per peak for half;
                   ImpurityPhase 1-10 % for 30 % (only with `impurity_pool`); PeakShift zero
                   ±0.05° and displacement ±0.1 mm at R = 240 mm; CrystalliteSize 10-200 nm
      pattern      Background (polynomial ≤10 %, smooth GP ≤5 %, amorphous hump ≤5 % of max);
                   PoissonNoise 3e2-1e5 counts at the maximum; GaussianNoise σ ≤ 0.5 % for 30 %;
                   RangeMask: window q 0.3-1.0 to 4.5-8.0 Å^-1 for 80 % (a gap for 10 %); Normalise.
    impurity_pool: a PeakList (e.g. `ImpurityPhase.from_structures(...).pool`) or a ready
    ImpurityPhase to include.
    """
    if kind == "clean":
        return Compose((RandomDebyeWaller(), Normalise()))
    if kind != "measured":
        raise AugmentationError(f"default_pipeline kind must be 'measured' or 'clean', got {kind!r}")
    peaks: list[Transform] = [
        LatticeStrain(strain_range=(-0.005, 0.005), mode="anisotropic"),
        PeakLoss(probability=0.3, drop_probability=(0.0, 0.2)),
        IntensityScaling(probability=0.5, spread=0.2),
    ]
    if isinstance(impurity_pool, ImpurityPhase):
        peaks.append(impurity_pool)
    elif impurity_pool is not None:
        peaks.append(ImpurityPhase(probability=0.3, pool=impurity_pool, fraction=(0.01, 0.10)))
    peaks += [
        PeakShift(zero_offset_deg=(-0.05, 0.05), displacement_mm=(-0.1, 0.1), goniometer_radius_mm=240.0),
        CrystalliteSize(size_nm=(10.0, 200.0)),
    ]
    return Compose((
        RandomDebyeWaller(b_range=(0.0, 1.5)),
        PreferredOrientation(probability=0.5, r_range=(0.7, 1.3)),
        *peaks,
        Background(),
        PoissonNoise(max_counts=(3e2, 1e5)),
        GaussianNoise(probability=0.3, sigma=(0.0, 0.005)),
        RangeMask(probability=0.8, gap_probability=0.1),
        Normalise(),
    ))


__all__ = [
    "STAGES",
    "TRANSFORMS",
    "AugmentationError",
    "AugmentationPipeline",
    "Background",
    "Compose",
    "CrystalliteSize",
    "GaussianNoise",
    "ImpurityPhase",
    "IntensityScaling",
    "LatticeStrain",
    "Normalise",
    "PeakLoss",
    "PeakShift",
    "PoissonNoise",
    "PreferredOrientation",
    "RandomDebyeWaller",
    "RangeMask",
    "Transform",
    "default_pipeline",
    "pipeline_from_config",
    "transform_from_config",
]

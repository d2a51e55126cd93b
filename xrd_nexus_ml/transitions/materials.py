"""Real pressure-induced phase transitions (and compression-only samples) to simulate ramps of.

Each `Material` is a sequence of phases in pressure order, each phase a pymatgen `Structure`
at zero pressure built from literature lattice parameters and Wyckoff positions
(expanded with spglib's symmetry operations, as `Structure.from_spacegroup` does, ten times
faster), with its own third-order Birch–Murnaghan equation of state
for that cell, plus the literature transition pressures (50 % points) and coexistence widths.
`simulate_material_ramp` turns any of them into a `ramp.Ramp` (frames along a pressure scan,
with the true phase fractions) through the same pieces `ramp.simulate_ramp` uses
(`phase_fractions`, `simulate_patterns`, `noise_pipeline`), and `phase_from_cif` makes a
phase of a user's CIF so that `train transition --phase LOW.cif --phase HIGH.cif` can
simulate it.

Model of a phase under pressure (`StructurePhase`)
    Volume: V_cell(P) = V_cell(0) × V_EOS(P) / V0, so the zero-pressure cell is exactly the
    literature structure. Shape: linear strains ln(x/x0) = -r_x k with r = the relative
    linear compressibilities of a, b, c (`axial_compressibility`, default isotropic) and k
    chosen so that the volume follows the EOS exactly. Fractional coordinates are kept (free
    parameters such as u of wurtzite or x of rutile-type O do not move). A ferroelastic phase
    adds a volume-conserving distortion F = exp(e D) (D traceless, Cartesian; default
    D = diag(1/2, -1/2, 0), ln(a/b) = e: orthorhombic splitting of a tetragonal cell) with
    e = strain_at_transition + strain_per_gpa × max(P - onset, 0).

Literature numbers are cited where they are used (in comments and in each material's
`citations`); the module-level notes on doubtful ones are in `LITERATURE_NOTES`. Where a
number is an extrapolation or an assumption (the zero-pressure volume of a phase that is not
stable at zero pressure, a spontaneous-strain rate) the comment says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch

from xrd_nexus_ml.errors import StructureError
from xrd_nexus_ml.io.readers import read_structure
from xrd_nexus_ml.pattern import energy_to_wavelength
from xrd_nexus_ml.physics import CrystalArrays, PeakProfile, PowderSimulator
from xrd_nexus_ml.physics.augment import Compose, PreferredOrientation
from xrd_nexus_ml.transitions import ramp as _ramp
from xrd_nexus_ml.transitions.ramp import (
    FERROPERICLASE_MW80,
    PHASES,
    SEED_COMPOSITION,
    SEED_ENERGY_KEV,
    BirchMurnaghan3,
    Instrument,
    Phase,
    Ramp,
    RampError,
    measured_frames,
    phase_fractions,
    sum_phase_patterns,
)

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = [
    "DEFAULT_TWO_THETA",
    "KINDS",
    "MATERIALS",
    "BoundPhase",
    "Material",
    "StructurePhase",
    "beamline_configs",
    "crystal_to_structure",
    "estimate_bulk_modulus",
    "get_material",
    "phase_from_cif",
    "simulate_material_ramp",
]

#: Kinds of transition a material can have ("none": compression only, one phase).
KINDS = ("reconstructive", "ferroelastic", "isostructural", "none")
#: Default detector range of `simulate_material_ramp`: 2θ 3-25° in 2000 points. At the seed's
#: 25.6 keV this is d = 9.3-1.12 Å, which holds the strongest lines of every material here.
DEFAULT_TWO_THETA = (3.0, 25.0, 2000)
#: Largest d-spacing (Å) of a strong line among the materials at zero pressure (corundum 012
#: at 3.48 Å, Si 111 at 3.14 Å, KCl 111 at 3.63 Å); `beamline_configs` keeps it on the detector.
D_MAX_STRONG = 3.7
#: Relative tolerance between an EOS's V0 and its structure's cell volume.
V0_TOLERANCE = 0.005

_EPS = 1e-12


# -- phases ------------------------------------------------------------------------------------------


def _check_eos_volume(name: str, eos: BirchMurnaghan3, volume: float) -> None:
    if not (eos.v0 > 0 and abs(eos.v0 / volume - 1.0) <= V0_TOLERANCE):
        raise RampError(f"{name}: the EOS's V0 = {eos.v0:.4g} Å^3 is not the cell volume "
                        f"{volume:.4g} Å^3 (to {100 * V0_TOLERANCE:g} %); scale a per-formula-unit V0 by Z")


def _distortion_matrix(distortion) -> np.ndarray:
    """The traceless symmetric 3x3 D of a distortion given as a 3-vector (diagonal) or a 3x3."""
    d = np.asarray(distortion, dtype=float)
    d = np.diag(d) if d.shape == (3,) else d.reshape(3, 3)
    d = 0.5 * (d + d.T)
    return d - np.trace(d) / 3.0 * np.eye(3)


def _sym_expm(d: np.ndarray) -> np.ndarray:
    """exp(D) of a symmetric matrix (volume-conserving when D is traceless)."""
    w, v = np.linalg.eigh(d)
    return (v * np.exp(w)) @ v.T


@dataclass(frozen=True, eq=False)
class StructurePhase:
    """One phase: a pymatgen Structure at zero pressure and how it compresses.

    structure: the zero-pressure cell. eos: Birch–Murnaghan for THAT cell (V0 equals its volume
    to 0.5 %). axial_compressibility: relative linear compressibilities of a, b, c (None:
    isotropic); the volume follows the EOS whatever they are. strain_at_transition /
    strain_per_gpa: ferroelastic distortion e (see `distortion`) at and above the onset
    pressure; below the onset (inside a coexistence region) it stays strain_at_transition.
    onset_pressure: where that growth starts when a caller gives no transition pressure.
    space_group: the expected international number at zero pressure and along the ramp
    (checked by the tests). eos_source / k0_uncertainty: where the EOS comes from and the
    relative uncertainty of K0 (0 when taken from the literature as is).
    """

    name: str
    structure: Structure
    eos: BirchMurnaghan3
    axial_compressibility: tuple[float, float, float] | None = None
    strain_at_transition: float = 0.0
    strain_per_gpa: float = 0.0
    distortion: tuple = (0.5, -0.5, 0.0)
    onset_pressure: float | None = None
    b_iso: float = 0.5
    space_group: int | None = None
    eos_source: str = ""
    k0_uncertainty: float = 0.0

    lattice: ClassVar[str] = "structure"

    def __post_init__(self):
        if len(self.structure) == 0:
            raise StructureError(f"{self.name}: the structure has no atoms")
        _check_eos_volume(self.name, self.eos, float(self.structure.volume))
        if self.axial_compressibility is not None:
            r = np.asarray(self.axial_compressibility, dtype=float)
            if r.shape != (3,) or not np.all(np.isfinite(r)) or r.sum() <= 0:
                raise RampError(f"{self.name}: axial_compressibility must be 3 finite numbers with a "
                                f"positive sum, got {self.axial_compressibility!r}")
        if not (math.isfinite(self.strain_at_transition) and math.isfinite(self.strain_per_gpa)):
            raise RampError(f"{self.name}: strains must be finite numbers")
        if not self.eos_source:
            object.__setattr__(self, "eos_source", self.eos.source)

    # -- derived -------------------------------------------------------------------------------
    @cached_property
    def _base(self) -> CrystalArrays:
        symbols = {getattr(el, "symbol", str(el)) for el in self.structure.composition.elements}
        return CrystalArrays.from_structure(self.structure, name=self.name,
                                            b_factors={s: float(self.b_iso) for s in symbols})

    @property
    def volume_per_atom(self) -> float:
        """Zero-pressure volume per atom (Å^3), occupancies counted."""
        return float(self.structure.volume / self.structure.composition.num_atoms)

    @property
    def is_ferroelastic(self) -> bool:
        return bool(self.strain_at_transition or self.strain_per_gpa)

    def strain(self, pressure, transition_pressure: float | None = None) -> np.ndarray:
        """The ferroelastic distortion e at pressure(s), GPa (zeros for a phase without one)."""
        p = np.asarray(pressure, dtype=float)
        if not self.is_ferroelastic:
            return np.zeros_like(p)
        onset = transition_pressure if transition_pressure is not None else self.onset_pressure
        above = np.clip(p - (onset if onset is not None else 0.0), 0.0, None)
        return self.strain_at_transition + self.strain_per_gpa * above

    def volumes(self, pressures) -> np.ndarray:
        """Cell volume(s) in Å^3 at pressure(s) in GPa."""
        return float(self.structure.volume) * self.eos.volume(pressures) / self.eos.v0

    def lattices(self, pressures, transition_pressure: float | None = None, strain=None) -> np.ndarray:
        """(n, 3, 3) lattice matrices (rows a, b, c) at `pressures`."""
        p = np.atleast_1d(np.asarray(pressures, dtype=float))
        ratio = self.eos.volume(p) / self.eos.v0
        r = np.ones(3) if self.axial_compressibility is None else np.asarray(self.axial_compressibility, float)
        k = -np.log(ratio) / r.sum()  # ln(x/x0) = -r_x k, sum over a, b, c = ln(V/V0)
        scale = np.exp(-np.outer(k, r))  # (n, 3)
        base = self._base.lattice
        lattices = scale[:, :, None] * base[None]
        strains = self.strain(p, transition_pressure) if strain is None else np.broadcast_to(
            np.asarray(strain, dtype=float), p.shape)
        if np.any(strains != 0):
            d = _distortion_matrix(self.distortion)
            for i, e in enumerate(strains):
                if e:
                    lattices[i] = lattices[i] @ _sym_expm(e * d).T  # rows: F a, F b, F c
        return lattices

    def structures(self, pressures, eos: BirchMurnaghan3 | None = None, transition_pressure: float | None = None,
                   composition: dict[str, float] | None = None, strain=None) -> list[CrystalArrays]:
        """One structure per pressure, the signature of `ramp.Phase.structures`: `eos` and
        `composition` (the shared ones of `ramp.simulate_ramp`) are ignored, the phase has its own;
        `transition_pressure` is the onset of the ferroelastic growth; `strain` overrides e."""
        base = self._base
        return [replace(base, lattice=lat) for lat in self.lattices(pressures, transition_pressure, strain)]

    def summary(self) -> dict:
        return {"name": self.name, "formula": self.structure.composition.reduced_formula,
                "space_group": self.space_group, "v0": self.eos.v0, "k0": self.eos.k0,
                "k0_prime": self.eos.k0_prime, "k0_uncertainty": self.k0_uncertainty,
                "eos_source": self.eos_source, "axial_compressibility": self.axial_compressibility,
                "strain_at_transition": self.strain_at_transition, "strain_per_gpa": self.strain_per_gpa}


@dataclass(frozen=True, eq=False)
class BoundPhase:
    """An existing `ramp.Phase` (B1, rB1, B8 of (Mg,Fe)O) bound to its EOS and composition, so it
    can be mixed with `StructurePhase`s: `structures` has the same signature and ignores the
    shared `eos`/`composition` arguments. `lattice`, `strain_at_transition` and
    `strain_per_gpa` are the wrapped phase's, so `ramp.simulate_training_set` still draws rB1
    strains for it."""

    phase: Phase
    eos: BirchMurnaghan3
    composition: dict[str, float] | None = None
    onset_pressure: float | None = None
    space_group: int | None = None
    eos_source: str = ""
    k0_uncertainty: float = 0.0

    @property
    def name(self) -> str:
        return self.phase.name

    @property
    def lattice(self) -> str:
        return self.phase.lattice

    @property
    def strain_at_transition(self) -> float:
        return self.phase.strain_at_transition

    @property
    def strain_per_gpa(self) -> float:
        return self.phase.strain_per_gpa

    @property
    def volume_per_atom(self) -> float:
        atoms = 4.0 if self.phase.lattice == "B8" else 8.0  # B8: 2 formula units; B1 cells: 4
        cell = self.eos.v0 / 2.0 if self.phase.lattice == "B8" else self.eos.v0
        return cell * (1.0 + self.phase.volume_change) / atoms

    def structures(self, pressures, eos: BirchMurnaghan3 | None = None, transition_pressure: float | None = None,
                   composition: dict[str, float] | None = None, strain=None) -> list[CrystalArrays]:
        onset = transition_pressure if transition_pressure is not None else self.onset_pressure
        return self.phase.structures(np.atleast_1d(np.asarray(pressures, dtype=float)), self.eos, onset,
                                     self.composition, strain=strain)

    def summary(self) -> dict:
        return {"name": self.name, "lattice": self.lattice, "space_group": self.space_group, "v0": self.eos.v0,
                "k0": self.eos.k0, "k0_prime": self.eos.k0_prime, "k0_uncertainty": self.k0_uncertainty,
                "eos_source": self.eos_source or self.eos.source, "composition": self.composition,
                "strain_at_transition": self.strain_at_transition, "strain_per_gpa": self.strain_per_gpa}


AnyPhase = StructurePhase | BoundPhase


# -- materials ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Material:
    """A sample for a pressure ramp: its phases in pressure order and the transitions between them.

    transition_pressures[k] is the 50 % point (GPa) between phases k and k+1, coexistence_widths[k]
    the full width of the linear coexistence region there; pressure_range the (start, stop) of a
    default ramp; kind one of `KINDS`; citations a short source string per number used.
    """

    name: str
    phases: tuple[AnyPhase, ...]
    transition_pressures: tuple[float, ...]
    coexistence_widths: tuple[float, ...]
    pressure_range: tuple[float, float]
    kind: Literal["reconstructive", "ferroelastic", "isostructural", "none"]
    citations: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        n = len(self.phases)
        if n < 1:
            raise RampError(f"{self.name}: a material needs at least one phase")
        if self.kind not in KINDS:
            raise RampError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "none") != (n == 1):
            raise RampError(f"{self.name}: kind 'none' goes with exactly one phase ({n} given, kind {self.kind!r})")
        if len(self.transition_pressures) != n - 1 or len(self.coexistence_widths) != n - 1:
            raise RampError(f"{self.name}: {n} phases need {n - 1} transition pressure(s) and width(s)")
        if any(b <= a for a, b in zip(self.transition_pressures, self.transition_pressures[1:])):
            raise RampError(f"{self.name}: transition pressures must increase, got {self.transition_pressures}")
        if any(w < 0 for w in self.coexistence_widths):
            raise RampError(f"{self.name}: coexistence widths must be >= 0")
        lo, hi = self.pressure_range
        if not hi > lo:
            raise RampError(f"{self.name}: pressure_range must be (low, high) with high > low")

    @property
    def phase_names(self) -> tuple[str, ...]:
        return tuple(ph.name for ph in self.phases)

    @property
    def space_groups(self) -> tuple[int | None, ...]:
        return tuple(ph.space_group for ph in self.phases)

    def onset(self, k: int, transition_pressures: Sequence[float] | None = None) -> float | None:
        """The transition pressure below phase k (None for the lowest phase)."""
        pts = self.transition_pressures if transition_pressures is None else transition_pressures
        return float(pts[k - 1]) if k > 0 else None


def _with_onsets(phases: Sequence[AnyPhase], transition_pressures: Sequence[float]) -> tuple[AnyPhase, ...]:
    return tuple(ph if k == 0 else replace(ph, onset_pressure=float(transition_pressures[k - 1]))
                 for k, ph in enumerate(phases))


def _material(name, phases, transition_pressures, coexistence_widths, pressure_range, kind, citations,
              description="") -> Material:
    pts = tuple(float(p) for p in transition_pressures)
    return Material(name, _with_onsets(phases, pts), pts, tuple(float(w) for w in coexistence_widths),
                    (float(pressure_range[0]), float(pressure_range[1])), kind, dict(citations), description)


@cache
def _symmetry_operations(sg: int) -> tuple[np.ndarray, np.ndarray]:
    """(rotations, translations) of space group `sg` in its first (default) setting: origin choice 1,
    hexagonal axes for R groups - the setting `Structure.from_spacegroup` uses for a number."""
    import warnings

    import spglib

    with warnings.catch_warnings():  # spglib 2.x deprecation notes on its error handling, per call
        warnings.simplefilter("ignore", DeprecationWarning)
        for hall in range(1, 531):
            info = spglib.get_spacegroup_type(hall)
            if int(getattr(info, "number", None) or info["number"]) == sg:
                ops = spglib.get_symmetry_from_database(hall)
                return np.asarray(ops["rotations"], dtype=float), np.asarray(ops["translations"], dtype=float)
    raise RampError(f"no space group number {sg}")


def _structure(sg: int, lattice_params: dict, species: Sequence[str], coords: Sequence[Sequence[float]]):
    """`Structure.from_spacegroup(sg, lattice, species, coords)`, expanding the Wyckoff positions
    with spglib's symmetry database (same default setting; pymatgen's own group generation takes
    ~1 s per group, this ~1 ms; tests compare the two)."""
    from pymatgen.core import Lattice, Structure

    lattice = Lattice.from_parameters(**{"alpha": 90.0, "beta": 90.0, "gamma": 90.0, **lattice_params})
    rotations, translations = _symmetry_operations(int(sg))
    all_species, all_coords = [], []
    for sp, xyz in zip(species, coords):
        orbit = (np.einsum("nij,j->ni", rotations, np.asarray(xyz, dtype=float)) + translations) % 1.0
        unique: list[np.ndarray] = []
        for c in orbit:
            if not any(np.all(np.abs((c - u + 0.5) % 1.0 - 0.5) < 1e-4) for u in unique):
                unique.append(c)
        all_species += [sp] * len(unique)
        all_coords += unique
    return Structure(lattice, all_species, np.round(np.asarray(all_coords), 12) % 1.0)


def _cubic(a):
    return {"a": a, "b": a, "c": a}


def _tetragonal(a, c):
    return {"a": a, "b": a, "c": c}


def _hexagonal(a, c):
    return {"a": a, "b": a, "c": c, "gamma": 120.0}


def _eos_for(structure, k0: float, k0_prime: float, source: str, v0_per_cell: float | None = None) -> BirchMurnaghan3:
    """An EOS whose V0 is the structure's cell volume (or `v0_per_cell`, which must match it)."""
    v0 = float(structure.volume) if v0_per_cell is None else float(v0_per_cell)
    return BirchMurnaghan3(v0=v0, k0=float(k0), k0_prime=float(k0_prime), source=source)


def _back_extrapolated_cell(lattice: dict, p_ref: float, k0: float, k0_prime: float) -> dict:
    """Lattice parameters at zero pressure of a cell measured at p_ref, scaled isotropically to the
    V0 that a BM3 of (k0, k0') through (p_ref, v_ref) implies."""
    ratio = float(BirchMurnaghan3(1.0, k0, k0_prime).volume(p_ref))  # V(p_ref)/V0
    s = (1.0 / ratio) ** (1.0 / 3.0)
    out = dict(lattice)
    for key in ("a", "b", "c"):
        out[key] = lattice[key] * s
    return out


def _build_materials() -> dict[str, Material]:
    m: dict[str, Material] = {}

    # ---- KCl: B1 (Fm-3m) -> B2 (Pm-3m) near 2 GPa ----------------------------------------------
    # a(B1) = 6.2931 Å: Swanson & Fuyat 1953, NBS Circular 539 vol. 2 (sylvite, 25 °C).
    # B1 EOS K0 = 17.4 GPa, K' = 5.4: ultrasonic, Spetzler, Sammis & O'Connell 1972, J. Phys. Chem.
    #   Solids 33, 1727 (isothermal K from the adiabatic one).
    # B2 EOS V0 = 54.5 Å^3 per formula unit, K0 = 17.2 GPa, K' = 5.89: Dewaele et al. 2012, Phys.
    #   Rev. B 85, 214105 (a Vinet fit, used here as BM3 constants; below 5 GPa they differ little).
    # P_t = 2.0 GPa: Vaidya & Kennedy 1971, J. Phys. Chem. Solids 32, 951 (1.96 GPa); Campbell &
    #   Heinz 1991, J. Phys. Chem. Solids 52, 495 (~2 GPa); coexistence 0.5 GPa assumed (sharp).
    s1 = _structure(225, _cubic(6.2931), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    b2_a = 54.5 ** (1.0 / 3.0)
    s2 = _structure(221, _cubic(b2_a), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    m["KCl"] = _material(
        "KCl",
        (StructurePhase("KCl-B1", s1, _eos_for(s1, 17.4, 5.4, "Spetzler et al. 1972, J. Phys. Chem. Solids 33, 1727"),
                        space_group=225),
         StructurePhase("KCl-B2", s2, _eos_for(s2, 17.2, 5.89, "Dewaele et al. 2012, PRB 85, 214105 (Vinet)", 54.5),
                        space_group=221)),
        (2.0,), (0.5,), (0.0, 5.0), "reconstructive",
        {"a(B1) 6.2931 Å": "Swanson & Fuyat 1953, NBS Circular 539 vol. 2",
         "B1 K0 17.4 GPa, K' 5.4": "Spetzler, Sammis & O'Connell 1972, J. Phys. Chem. Solids 33, 1727",
         "B2 V0 54.5 Å^3/f.u., K0 17.2 GPa, K' 5.89": "Dewaele et al. 2012, Phys. Rev. B 85, 214105",
         "P_t 2.0 GPa": "Vaidya & Kennedy 1971, J. Phys. Chem. Solids 32, 951; Campbell & Heinz 1991, "
                        "J. Phys. Chem. Solids 52, 495",
         "width 0.5 GPa": "assumed"},
        "rock salt -> CsCl type, ΔV/V ≈ 12 %")

    # ---- NaCl: B1 -> B2 near 30 GPa ---------------------------------------------------------------
    # a(B1) = 5.6402 Å: Swanson & Fuyat 1953, NBS Circular 539 vol. 2 (halite).
    # B1 K0 = 23.7 GPa, K' = 5.14: Dorogokupets & Dewaele 2007, High Press. Res. 27, 431.
    # B2 V0 = 41.35 Å^3/f.u., K0 = 26.86 GPa, K' = 5.25 (BM3): Sata et al. 2002, PRB 65, 104114.
    # P_t = 29.3 GPa: Bassett et al. 1968, J. Appl. Phys. 39, 319; coexistence 2 GPa (sluggish in
    #   the DAC, e.g. Li & Jeanloz 1987, PRB 36, 474) is an estimate.
    s1 = _structure(225, _cubic(5.6402), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s2 = _structure(221, _cubic(41.35 ** (1.0 / 3.0)), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    m["NaCl"] = _material(
        "NaCl",
        (StructurePhase("NaCl-B1", s1, _eos_for(s1, 23.7, 5.14, "Dorogokupets & Dewaele 2007, HPR 27, 431"),
                        space_group=225),
         StructurePhase("NaCl-B2", s2, _eos_for(s2, 26.86, 5.25, "Sata et al. 2002, PRB 65, 104114", 41.35),
                        space_group=221)),
        (29.3,), (2.0,), (15.0, 45.0), "reconstructive",
        {"a(B1) 5.6402 Å": "Swanson & Fuyat 1953, NBS Circular 539 vol. 2",
         "B1 K0 23.7 GPa, K' 5.14": "Dorogokupets & Dewaele 2007, High Press. Res. 27, 431",
         "B2 V0 41.35 Å^3/f.u., K0 26.86 GPa, K' 5.25": "Sata et al. 2002, Phys. Rev. B 65, 104114",
         "P_t 29.3 GPa": "Bassett, Takahashi, Mao & Weaver 1968, J. Appl. Phys. 39, 319",
         "width 2 GPa": "estimate (sluggish transition: Li & Jeanloz 1987, Phys. Rev. B 36, 474)"},
        "rock salt -> CsCl type, ΔV/V ≈ 5 %")

    # ---- Si: diamond (Fd-3m) -> β-Sn (I4_1/amd) near 11.7 GPa ---------------------------------------
    # a = 5.4310 Å (NIST SRM 640 series); K0 = 97.9 GPa, K' = 4.24: McSkimin & Andreatch 1964, J.
    #   Appl. Phys. 35, 3312 (ultrasonic).
    # β-Sn: a = 4.686, c = 2.585 Å at ~11.7 GPa: Jamieson 1963, Science 139, 762 (also Hu, Merkle,
    #   Menoni & Spain 1986, PRB 34, 4679). β-Sn Si is not stable at 0 GPa: its V0 is back-
    #   extrapolated from that cell with K0 = 115 GPa, K' = 4, an ASSUMPTION of the order of LDA
    #   values (Yin & Cohen 1982, PRB 26, 5668). Volume collapse at 11.7 GPa: ~22 %.
    # P_t = 11.7 GPa: McMahon & Nelmes 1993, PRB 47, 8337; coexistence 1 GPa (estimate). Above
    #   ~13 GPa Si-II turns Imma (McMahon et al. 1994, PRB 50, 739): the range stops at 13.
    s1 = _structure(227, _cubic(5.4310), ["Si"], [[0, 0, 0]])  # pymatgen: origin choice 1, 8a at 0,0,0
    bsn_ref = _tetragonal(4.686, 2.585)
    bsn = _back_extrapolated_cell(bsn_ref, 11.7, 115.0, 4.0)
    s2 = _structure(141, bsn, ["Si"], [[0, 0, 0]])  # origin choice 1: 4a at 0,0,0
    m["Si"] = _material(
        "Si",
        (StructurePhase("Si-I (diamond)", s1, _eos_for(s1, 97.9, 4.24, "McSkimin & Andreatch 1964, JAP 35, 3312"),
                        space_group=227),
         StructurePhase("Si-II (β-Sn)", s2, _eos_for(s2, 115.0, 4.0, "V0 back-extrapolated from Jamieson 1963 "
                                                                    "(11.7 GPa cell); K0, K' assumed"),
                        space_group=141, k0_uncertainty=0.15)),
        (11.7,), (1.0,), (4.0, 13.0), "reconstructive",
        {"a(diamond) 5.4310 Å": "NIST SRM 640 (Si line-position standard)",
         "diamond K0 97.9 GPa, K' 4.24": "McSkimin & Andreatch 1964, J. Appl. Phys. 35, 3312",
         "β-Sn a 4.686, c 2.585 Å at 11.7 GPa": "Jamieson 1963, Science 139, 762; Hu et al. 1986, PRB 34, 4679",
         "β-Sn K0 115 GPa, K' 4": "assumed, order of LDA values (Yin & Cohen 1982, Phys. Rev. B 26, 5668)",
         "P_t 11.7 GPa": "McMahon & Nelmes 1993, Phys. Rev. B 47, 8337",
         "width 1 GPa": "estimate"},
        "diamond -> β-tin, ΔV/V ≈ 22 %")

    # ---- ZnO: wurtzite (P6_3mc) -> rock salt near 9 GPa ------------------------------------------------
    # a = 3.2496, c = 5.2042 Å (JCPDS 36-1451), u = 0.3825: Abrahams & Bernstein 1969, Acta Cryst.
    #   B25, 1233. Wurtzite K0 = 142.6 GPa, K' = 3.6 and rock salt K0 = 202.5 GPa, K' = 3.54:
    #   Desgreniers 1998, PRB 58, 14102. Rock-salt a0 = 4.275 Å: Karzel et al. 1996, PRB 53, 11425.
    # P_t = 9.1 GPa on compression: Desgreniers 1998 (Bates, Roy & Roy 1962, Science 137, 993: ~9 GPa);
    #   coexistence 1.5 GPa: estimate.
    s1 = _structure(186, _hexagonal(3.2496, 5.2042), ["Zn", "O"], [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.3825]])
    s2 = _structure(225, _cubic(4.275), ["Zn", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    m["ZnO"] = _material(
        "ZnO",
        (StructurePhase("ZnO-wurtzite", s1, _eos_for(s1, 142.6, 3.6, "Desgreniers 1998, PRB 58, 14102"),
                        space_group=186),
         StructurePhase("ZnO-rocksalt", s2, _eos_for(s2, 202.5, 3.54, "Desgreniers 1998, PRB 58, 14102; "
                                                                     "a0 Karzel et al. 1996"),
                        space_group=225)),
        (9.1,), (1.5,), (2.0, 16.0), "reconstructive",
        {"wurtzite a 3.2496, c 5.2042 Å": "JCPDS card 36-1451",
         "wurtzite u 0.3825": "Abrahams & Bernstein 1969, Acta Cryst. B25, 1233",
         "wurtzite K0 142.6 GPa, K' 3.6; rock salt K0 202.5 GPa, K' 3.54": "Desgreniers 1998, Phys. Rev. B 58, 14102",
         "rock salt a0 4.275 Å": "Karzel et al. 1996, Phys. Rev. B 53, 11425",
         "P_t 9.1 GPa": "Desgreniers 1998; Bates, Roy & Roy 1962, Science 137, 993",
         "width 1.5 GPa": "estimate"},
        "wurtzite -> rock salt, ΔV/V ≈ 17 %")

    # ---- Fe: bcc (Im-3m) -> hcp (P6_3/mmc), 13-17 GPa -------------------------------------------------
    # a(bcc) = 2.8665 Å (Swanson et al. 1955, NBS Circular 539 vol. 4: 2.8664 Å); bcc K0 = 166 GPa,
    #   K' = 5.3: Guinan & Beshers 1968, J. Phys. Chem. Solids 29, 541 (ultrasonic, isothermal).
    # hcp V0 = 22.428 Å^3 per 2-atom cell, K0 = 163.4 GPa, K' = 5.38: Dewaele et al. 2006, PRL 97,
    #   215504 (Vinet constants used as BM3); c/a = 1.603: Jephcoat, Mao & Bell 1986, JGR 91, 4677.
    # Transition starts at ~13 GPa (Mao, Bassett & Takahashi 1967, J. Appl. Phys. 38, 272) and runs
    #   over several GPa (Taylor et al. 1991, J. Appl. Phys. 69, 6126): P_t = 15 GPa, width 4 GPa.
    s1 = _structure(229, _cubic(2.8665), ["Fe"], [[0, 0, 0]])
    c_a = 1.603
    a_hcp = (2.0 * 22.428 / (math.sqrt(3.0) * c_a)) ** (1.0 / 3.0)
    s2 = _structure(194, _hexagonal(a_hcp, c_a * a_hcp), ["Fe"], [[1 / 3, 2 / 3, 0.25]])
    m["Fe"] = _material(
        "Fe",
        (StructurePhase("Fe-bcc", s1, _eos_for(s1, 166.0, 5.3, "Guinan & Beshers 1968, JPCS 29, 541"),
                        space_group=229),
         StructurePhase("Fe-hcp", s2, _eos_for(s2, 163.4, 5.38, "Dewaele et al. 2006, PRL 97, 215504 (Vinet)",
                                               22.428),
                        space_group=194)),
        (15.0,), (4.0,), (5.0, 25.0), "reconstructive",
        {"a(bcc) 2.8665 Å": "Swanson et al. 1955, NBS Circular 539 vol. 4",
         "bcc K0 166 GPa, K' 5.3": "Guinan & Beshers 1968, J. Phys. Chem. Solids 29, 541",
         "hcp V0 22.428 Å^3, K0 163.4 GPa, K' 5.38": "Dewaele et al. 2006, Phys. Rev. Lett. 97, 215504",
         "hcp c/a 1.603": "Jephcoat, Mao & Bell 1986, J. Geophys. Res. 91, 4677",
         "onset 13 GPa": "Mao, Bassett & Takahashi 1967, J. Appl. Phys. 38, 272",
         "P_t 15 GPa, width 4 GPa": "estimate from the 13-17 GPa coexistence, Taylor et al. 1991, "
                                    "J. Appl. Phys. 69, 6126"},
        "bcc -> hcp (martensitic), ΔV/V ≈ 5 %, long coexistence")

    # ---- SiO2: stishovite (P4_2/mnm) -> CaCl2 type (Pnnm) near 50 GPa, ferroelastic --------------------
    # a = 4.1790, c = 2.6649 Å, O at 4f (x, x, 0) with x = 0.3062: Baur & Khan 1971, Acta Cryst. B27,
    #   2133. K0 = 309.9 GPa, K' = 4.59: Andrault et al. 2003, Am. Mineral. 88, 301. Relative linear
    #   compressibilities a : c ≈ 1 : 0.55 (c, along the edge-sharing octahedral chains, is stiffer;
    #   Ross et al. 1990, Am. Mineral. 75, 739) - approximate.
    # Transition ~50 GPa: Kingma et al. 1995, Nature 374, 243; Andrault et al. 1998, Science 282, 720
    #   (Zhang et al. 2023, Am. Mineral. 108, 110: O coordinates split at ~51.4 GPa). Second order:
    #   no volume change (same EOS for both), the 1 GPa "coexistence" stands for the pressure gradient
    #   of a DAC sample. Spontaneous strain ln(a/b): 0.005 at the transition growing 0.0008 / GPa
    #   (~2 % 20 GPa above it) is an ESTIMATE of the order Andrault et al. 1998 report. The O
    #   coordinates are kept at x = y (the octahedral rotation is left out): only the lattice
    #   splits, so 110, 211, ... split, 101, 111, 002 do not.
    s1 = _structure(136, _tetragonal(4.1790, 2.6649), ["Si", "O"], [[0, 0, 0], [0.3062, 0.3062, 0]])
    eos_st = _eos_for(s1, 309.9, 4.59, "Andrault et al. 2003, Am. Mineral. 88, 301")
    axial = (1.0, 1.0, 0.55)
    m["SiO2"] = _material(
        "SiO2",
        (StructurePhase("stishovite", s1, eos_st, axial_compressibility=axial, space_group=136),
         StructurePhase("CaCl2-type SiO2", s1, eos_st, axial_compressibility=axial, strain_at_transition=0.005,
                        strain_per_gpa=0.0008, distortion=(0.5, -0.5, 0.0), space_group=58)),
        (50.0,), (1.0,), (35.0, 70.0), "ferroelastic",
        {"a 4.1790, c 2.6649 Å, x(O) 0.3062": "Baur & Khan 1971, Acta Cryst. B27, 2133",
         "K0 309.9 GPa, K' 4.59": "Andrault et al. 2003, Am. Mineral. 88, 301",
         "axial compressibility a:c 1:0.55": "approximate, after Ross et al. 1990, Am. Mineral. 75, 739",
         "P_t 50 GPa": "Kingma et al. 1995, Nature 374, 243; Andrault et al. 1998, Science 282, 720",
         "strain 0.005 + 0.0008/GPa": "estimate of the order of Andrault et al. 1998",
         "width 1 GPa": "assumed (DAC pressure gradient)"},
        "rutile type -> CaCl2 type: orthorhombic splitting of the tetragonal cell, no volume change")

    # ---- (Mg0.2Fe0.8)O: B1 -> rB1 (R-3m), the seed's ramp -----------------------------------------------
    # Phases, EOS and the 30 GPa default are those of `ramp` (see its docstring for the sources).
    eos_fp = FERROPERICLASE_MW80
    comp = dict(SEED_COMPOSITION)
    m["(Mg0.2Fe0.8)O"] = _material(
        "(Mg0.2Fe0.8)O",
        (BoundPhase(PHASES["B1"], eos_fp, comp, space_group=225, eos_source=eos_fp.source),
         BoundPhase(PHASES["rB1"], eos_fp, comp, space_group=166, eos_source=eos_fp.source)),
        (30.0,), (2.0,), (5.0, 55.0), "ferroelastic",
        {"EOS V0 78.96 Å^3, K0 150 GPa, K' 4": FERROPERICLASE_MW80.source,
         "P_t 30 GPa": "assumption inside 12 GPa (FeO) - 35 GPa ((Mg0.8Fe0.2)O), see ramp.py docstring; "
                       "Shu et al. 1998, N. Jb. Miner. Abh. 172, 309; Jacobsen et al. 2005, J. Synchrotron Rad. "
                       "12, 577",
         "rB1 strain 0.004 + 0.0006/GPa": "model assumption of ramp.py, order reported for wüstite",
         "width 2 GPa": "ramp.py default"},
        "the seed's cubic -> rhombohedral transition (ramp.PHASES B1, rB1)")

    # ---- compression only ----------------------------------------------------------------------------------
    # MgO: a = 4.2117 Å (as in ramp.py); K0 = 160.2 GPa, K' = 3.99: Speziale et al. 2001, JGR 106, 515.
    s = _structure(225, _cubic(4.2117), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    m["MgO"] = _material(
        "MgO", (StructurePhase("MgO", s, _eos_for(s, 160.2, 3.99, "Speziale et al. 2001, JGR 106, 515"),
                               space_group=225),),
        (), (), (0.0, 40.0), "none",
        {"a 4.2117 Å": "as ramp.py (MgO end member of its Vegard's law)",
         "K0 160.2 GPa, K' 3.99": "Speziale et al. 2001, J. Geophys. Res. 106, 515"},
        "periclase, no transition to > 200 GPa")
    # Au: a = 4.0786 Å: Swanson & Tatge 1953, NBS Circular 539 vol. 1; K0 = 167 GPa, K' = 6.0: Fei et
    #   al. 2007, PNAS 104, 9182 (Vinet constants used as BM3).
    s = _structure(225, _cubic(4.0786), ["Au"], [[0, 0, 0]])
    m["Au"] = _material(
        "Au", (StructurePhase("Au", s, _eos_for(s, 167.0, 6.0, "Fei et al. 2007, PNAS 104, 9182 (Vinet)"),
                              space_group=225),),
        (), (), (0.0, 40.0), "none",
        {"a 4.0786 Å": "Swanson & Tatge 1953, NBS Circular 539 vol. 1",
         "K0 167 GPa, K' 6.0": "Fei et al. 2007, Proc. Natl. Acad. Sci. 104, 9182"},
        "fcc gold, a pressure standard")
    # Al2O3 corundum (R-3c, hexagonal axes): a = 4.7602, c = 12.9933 Å, Al at 12c (0, 0, 0.35216), O at
    #   18e (0.30624, 0, 1/4): Lewis, Schwarzenbach & Flack 1982, Acta Cryst. A38, 733. K0 = 254.1 GPa,
    #   K' = 4.3: Dewaele & Torrent 2013, PRB 88, 064107. Compressed isotropically here (c/a of corundum
    #   changes little under pressure: d'Amour, Schiferl, Denner, Schulz & Holzapfel 1978, JAP 49, 4411).
    s = _structure(167, _hexagonal(4.7602, 12.9933), ["Al", "O"], [[0, 0, 0.35216], [0.30624, 0, 0.25]])
    m["Al2O3"] = _material(
        "Al2O3", (StructurePhase("corundum", s, _eos_for(s, 254.1, 4.3, "Dewaele & Torrent 2013, PRB 88, 064107"),
                                 space_group=167),),
        (), (), (0.0, 40.0), "none",
        {"a 4.7602, c 12.9933 Å, z(Al) 0.35216, x(O) 0.30624": "Lewis, Schwarzenbach & Flack 1982, Acta Cryst. "
                                                               "A38, 733",
         "K0 254.1 GPa, K' 4.3": "Dewaele & Torrent 2013, Phys. Rev. B 88, 064107",
         "isotropic compression": "approximation (d'Amour et al. 1978, J. Appl. Phys. 49, 4411)"},
        "corundum, stable to ~80 GPa at room temperature")
    return m


#: Every material by name: transitions first, then compression-only samples.
MATERIALS: dict[str, Material] = _build_materials()

#: Numbers that are assumptions or extrapolations rather than measurements (see the comments above).
LITERATURE_NOTES = (
    "Si β-Sn: V0, K0 and K' are an extrapolation/assumption (the phase is not stable at 0 GPa).",
    "SiO2 CaCl2 type: the spontaneous-strain rate and the a:c compressibility ratio are estimates.",
    "(Mg0.2Fe0.8)O: the 30 GPa transition and the rB1 strain are ramp.py's model assumptions.",
    "Vinet constants (KCl-B2, Fe-hcp, Au) are used in a Birch–Murnaghan form: a few 0.1 % in volume.",
    "Coexistence widths are estimates except Fe's, which follows the reported 13-17 GPa range.",
)


def get_material(name: str | Material) -> Material:
    """A material by name (case-insensitive) or as given."""
    if isinstance(name, Material):
        return name
    lowered = {k.lower(): v for k, v in MATERIALS.items()}
    key = str(name).lower()
    if key not in lowered:
        raise RampError(f"unknown material {name!r}; known: {', '.join(MATERIALS)}")
    return lowered[key]


# -- CIF phases and an empirical bulk modulus --------------------------------------------------------------

#: (material, phase index) whose literature K0 calibrates `estimate_bulk_modulus`: phases stable at
#: zero pressure with measured EOS (their sources are in MATERIALS' citations).
_K0_CALIBRATION = (("KCl", 0), ("NaCl", 0), ("Si", 0), ("ZnO", 0), ("Fe", 0), ("SiO2", 0), ("MgO", 0),
                   ("Au", 0), ("Al2O3", 0), ("(Mg0.2Fe0.8)O", 0))


@cache
def _k0_relation() -> tuple[float, float, float]:
    """(A, b, relative uncertainty) of K0 = A (V/atom)^-b fitted to the calibration phases."""
    va, k = [], []
    for key, index in _K0_CALIBRATION:
        ph = MATERIALS[key].phases[index]
        va.append(ph.volume_per_atom)
        k.append(ph.eos.k0)
    x, y = np.log(va), np.log(k)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    sigma = float(np.sqrt(np.sum(resid**2) / (len(x) - 2)))
    return float(np.exp(intercept)), float(-slope), float(math.expm1(sigma))


def estimate_bulk_modulus(structure) -> tuple[float, float, str]:
    """(K0 in GPa, relative uncertainty, source) of a structure from its volume per atom.

    Empirical: the bulk modulus of solids scales inversely with volume (for isostructural
    compounds K0·V0 ≈ const: Anderson & Nafe 1965, J. Geophys. Res. 70, 3951; Anderson &
    Anderson 1970, J. Geophys. Res. 75, 3494). Across structure types and bonding the exponent
    is steeper, so K0 = A (V0/atom)^-b is fitted (log-log least squares) to the literature K0
    of the zero-pressure phases in `MATERIALS` (halides, oxides, silicon, metals), giving
    K0 ≈ 12800 (V/atom)^-1.82 GPa; the scatter of that fit, exp(σ_ln) - 1 (about ±60 %), is the
    stated relative uncertainty. K0' = 4 goes with it.
    It is a rough prior for a phase the user gives no EOS for, not a prediction: pass a literature
    EOS when there is one.
    """
    a, b, rel = _k0_relation()
    va = float(structure.volume / structure.composition.num_atoms)
    k0 = a * va ** (-b)
    source = (f"estimated: K0 = {a:.4g} (V/atom)^-{b:.3f} GPa at V/atom = {va:.3f} Å^3 (inverse volume "
              f"relation, Anderson & Anderson 1970, fitted to {len(_K0_CALIBRATION)} literature phases), "
              f"±{100 * rel:.0f} %, K0' = 4 assumed")
    return float(k0), float(rel), source


def phase_from_cif(path, name: str | None = None, eos: BirchMurnaghan3 | None = None, *,
                   axial_compressibility: tuple[float, float, float] | None = None,
                   b_iso: float = 0.5) -> StructurePhase:
    """A `StructurePhase` of the structure in a CIF (any file pymatgen reads).

    eos: the phase's Birch–Murnaghan EOS. Its V0 must be the CIF cell's volume to 0.5 %, or that
    volume divided by a whole number of formula units (a per-formula-unit V0 is scaled up).
    Without one, K0 comes from `estimate_bulk_modulus` (an inverse volume-per-atom relation,
    about ±60 %), K0' = 4 and V0 the cell volume; `eos_source` and `k0_uncertainty` say so.
    A missing or unreadable file raises a `StructureError` (`StructureFileNotFoundError` for a
    missing one) that names the file.
    """
    structure = read_structure(path)
    label = name or Path(str(path)).stem or structure.composition.reduced_formula
    volume = float(structure.volume)
    if eos is None:
        k0, rel, source = estimate_bulk_modulus(structure)
        eos = BirchMurnaghan3(v0=volume, k0=k0, k0_prime=4.0, source=source)
        k0_uncertainty = rel
    else:
        k0_uncertainty = 0.0
        source = eos.source or "given"
        ratio = volume / eos.v0 if eos.v0 > 0 else float("nan")
        n = round(ratio) if math.isfinite(ratio) else 0
        if abs(ratio - 1.0) > V0_TOLERANCE:
            if n >= 2 and abs(ratio / n - 1.0) <= V0_TOLERANCE:
                eos = replace(eos, v0=eos.v0 * n)
                source = f"{source} (V0 per formula unit x {n})"
            else:
                raise RampError(f"{path}: the EOS's V0 = {eos.v0:.4g} Å^3 matches neither the cell volume "
                                f"{volume:.4g} Å^3 nor a whole fraction of it")
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        space_group = int(SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_number())
    except Exception:  # noqa: BLE001 - symmetry is informative only
        space_group = None
    return StructurePhase(label, structure, eos, axial_compressibility=axial_compressibility, b_iso=b_iso,
                          space_group=space_group, eos_source=source, k0_uncertainty=k0_uncertainty)


def crystal_to_structure(crystal: CrystalArrays) -> Structure:
    """A pymatgen Structure of `CrystalArrays` (atoms sharing a position become one disordered site),
    e.g. for a symmetry check of a compressed or distorted phase."""
    from pymatgen.core import Element, Lattice, Structure

    sites: dict[tuple, dict] = {}
    for xyz, z, occ in zip(crystal.frac_coords % 1.0, crystal.atomic_numbers, crystal.occupancy):
        if z <= 0 or occ <= 0:
            continue
        key = tuple(np.round(xyz, 6) % 1.0)
        species = sites.setdefault(key, {})
        el = Element.from_Z(int(z))
        species[el] = species.get(el, 0.0) + float(occ)
    return Structure(Lattice(crystal.lattice), list(sites.values()), [list(k) for k in sites])


# -- ramps -------------------------------------------------------------------------------------------------


def _patterns(structures, instrument: Instrument, pressures, augment, generator, device) -> np.ndarray:
    """`ramp.simulate_patterns`, with a reflection-stage augmentation (texture) when given."""
    if augment is None:
        return _ramp.simulate_patterns(structures, instrument, pressures, device=device)
    grid = instrument.grid
    u = instrument.caglioti_u(pressures)
    out = np.zeros((len(structures), grid.n_points), dtype=np.float64)
    batch_size = 256
    for start in range(0, len(structures), batch_size):
        stop = min(start + batch_size, len(structures))
        u_batch = torch.as_tensor(u[start:stop], dtype=torch.float32).unsqueeze(1)
        profile = PeakProfile(shape="pseudo_voigt", eta=instrument.eta,
                              caglioti_uvw=(u_batch, 0.0, instrument.instrument_fwhm_deg**2))
        sim = PowderSimulator(wavelength=instrument.wavelength, grid=grid, profile=profile, device=device,
                              batch_size=batch_size)
        out[start:stop] = sim.simulate(list(structures[start:stop]), augment=augment,
                                       generator=generator).double().cpu().numpy()
    return out


_TEXTURE_DIRECTIONS = ((0, 0, 1), (1, 0, 0), (1, 1, 0), (1, 1, 1))


def simulate_material_ramp(
    material: Material | str,
    pressures=None,
    n_frames: int = 60,
    seed: int = 0,
    noise: float = 0.01,
    background: float = 0.1,
    texture: float = 0.0,
    energy_kev: float | None = None,
    two_theta: tuple[float, float, int] | None = None,
    transition_pressures: Sequence[float] | None = None,
    coexistence_widths: Sequence[float] | None = None,
    *,
    instrument: Instrument | None = None,
    device: str | None = "cpu",
) -> Ramp:
    """One diffractogram per pressure (GPa) of `material` (a `Material` or a `MATERIALS` key).

    pressures: the frames' pressures in order (default: n_frames from the material's
    pressure_range). transition_pressures / coexistence_widths override the literature values
    (one per boundary). noise: relative counting noise at the strongest peak (0: none);
    background: smooth background relative to the maximum; texture: March–Dollase strength
    (r = 1 - texture, platelets about one low-index direction drawn from the seed, the same for
    every frame; 0: random powder), applied with `physics.augment.PreferredOrientation` at the
    reflection stage. energy_kev (default the seed's 25.6 keV) and two_theta (start, stop,
    points; default `DEFAULT_TWO_THETA`) make the `Instrument`, or pass `instrument`.
    Each phase's pattern is scaled by its volume fraction / V_cell^2 as in `ramp.simulate_ramp`.
    A compression-only material gives fractions of shape (n, 1) and no transition.
    """
    mat = get_material(material)
    if pressures is None:
        if int(n_frames) < 1:
            raise RampError(f"n_frames must be >= 1, got {n_frames}")
        pressures = np.linspace(mat.pressure_range[0], mat.pressure_range[1], int(n_frames))
    p = np.asarray(pressures, dtype=float).ravel()
    if p.size == 0 or not np.all(np.isfinite(p)):
        raise RampError("pressures must be a non-empty sequence of finite numbers of GPa")
    n_b = len(mat.phases) - 1
    pts = list(mat.transition_pressures) if transition_pressures is None else _ramp._as_list(
        transition_pressures, n_b, "transition_pressures")
    widths = list(mat.coexistence_widths) if coexistence_widths is None else _ramp._as_list(
        coexistence_widths, n_b, "coexistence_widths")
    if any(w < 0 for w in widths):
        raise RampError(f"coexistence widths must be >= 0, got {widths}")
    if any(b <= a for a, b in zip(pts, pts[1:])):
        raise RampError(f"transition pressures must increase from one boundary to the next, got {pts}")
    if noise < 0 or background < 0:
        raise RampError(f"noise and background must be >= 0, got {noise}, {background}")
    if not (0.0 <= texture < 1.0):
        raise RampError(f"texture must be in [0, 1), got {texture}")
    if instrument is None:
        instrument = Instrument(energy_kev=float(energy_kev if energy_kev is not None else SEED_ENERGY_KEV),
                                two_theta=tuple(two_theta) if two_theta is not None else DEFAULT_TWO_THETA)
    elif energy_kev is not None or two_theta is not None:
        instrument = replace(instrument, **({"energy_kev": float(energy_kev)} if energy_kev is not None else {}),
                             **({"two_theta": tuple(two_theta)} if two_theta is not None else {}))
    start, stop, n_points = instrument.two_theta
    if not (0.0 < float(start) < float(stop) < 180.0 and int(n_points) >= 2):
        raise RampError(f"two_theta must be (start, stop, points) with 0 < start < stop < 180 and >= 2 points, "
                        f"got {instrument.two_theta}")

    rng = np.random.default_rng(seed)
    augment, direction = None, None
    if texture > 0:
        direction = _TEXTURE_DIRECTIONS[int(rng.integers(len(_TEXTURE_DIRECTIONS)))]
        r = 1.0 - float(texture)
        augment = Compose((PreferredOrientation(r_range=(r, r), directions=(direction,)),))

    fractions = phase_fractions(p, pts, widths)
    total = sum_phase_patterns(
        p, fractions, pts, instrument.grid.n_points,
        structures_at=lambda k, at, onset: mat.phases[k].structures(at, None, onset, None),
        patterns_of=lambda k, structures, at: _patterns(
            structures, instrument, at, augment, torch.Generator().manual_seed(int(seed) + 7919 * (k + 1)), device))

    return Ramp(
        two_theta=instrument.grid.values.numpy(),
        intensity=measured_frames(total, instrument, noise, background, seed, device),
        pressures=p,
        fractions=fractions,
        phase_names=mat.phase_names,
        wavelength=instrument.wavelength,
        transition_pressures=tuple(float(v) for v in pts),
        coexistence_widths=tuple(float(v) for v in widths),
        metadata={
            "material": mat.name, "kind": mat.kind, "noise": float(noise), "background": float(background),
            "seed": int(seed), "texture": float(texture),
            "texture_direction": list(direction) if direction is not None else None,
            "energy_kev": float(instrument.energy_kev),
            "two_theta": [float(start), float(stop), int(n_points)],
            "instrument": {"fwhm_deg": instrument.instrument_fwhm_deg, "microstrain_0": instrument.microstrain_0,
                           "microstrain_per_gpa": instrument.microstrain_per_gpa, "eta": instrument.eta},
            "n_frames": int(p.size), "pressure_range": [float(p.min()), float(p.max())],
            "literature_transition_pressures": list(mat.transition_pressures),
            "literature_coexistence_widths": list(mat.coexistence_widths),
            "phases": [ph.summary() for ph in mat.phases],
            "citations": dict(mat.citations),
        },
    )


def _two_theta_deg(d: float, wavelength: float) -> float:
    return 2.0 * math.degrees(math.asin(min(1.0, wavelength / (2.0 * d))))


def beamline_configs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` beamline settings drawn as beamlines vary, reproducible from `seed`.

    Each dict holds keyword arguments of `simulate_material_ramp`: energy_kev 20-42 keV,
    two_theta (start 3-8° but below the 2θ of d = `D_MAX_STRONG` at that energy, stop 25-30°,
    1500-4000 points), noise 0.3-3 % (log-uniform), background 0-0.3, texture 0-0.3, n_frames
    30-80 and a seed for the ramp. At 20-42 keV a stop of 25-30° reaches d ≤ 1.43 Å, below the
    strongest lines of every material here.
    """
    if int(n) < 0:
        raise RampError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n)):
        energy = float(rng.uniform(20.0, 42.0))
        lam = energy_to_wavelength(energy)
        start_max = min(8.0, _two_theta_deg(D_MAX_STRONG, lam) - 0.5)
        start = float(rng.uniform(3.0, max(3.0, start_max)))
        stop = float(rng.uniform(25.0, 30.0))
        points = int(rng.integers(1500, 4001))
        out.append({
            "energy_kev": round(energy, 3),
            "two_theta": (round(start, 3), round(stop, 3), points),
            "noise": float(np.exp(rng.uniform(math.log(0.003), math.log(0.03)))),
            "background": float(rng.uniform(0.0, 0.3)),
            "texture": float(rng.uniform(0.0, 0.3)),
            "n_frames": int(rng.integers(30, 81)),
            "seed": int(rng.integers(0, 2**31 - 1)),
        })
    return out

"""A simulated pressure ramp of Fe-rich (Mg,Fe)O through its cubic -> rhombohedral transition.

The seed data (Sun, Brockhauser, Plueckthun, Konopkova; European XFEL / PaNOSC use case 3) are
349 diffractograms of a (Mg0.2Fe0.8)O compression measured at PETRA III P02.2 with a 25.6 keV
beam, 4023 points over 2θ ≈ 10-26°. This module simulates such a ramp with the project's
batched simulator, frame by frame:

Equation of state
    Third-order Birch–Murnaghan, P(V) = 3K0/2 (x^7 - x^5) [1 + 3/4 (K0' - 4)(x^2 - 1)],
    x = (V0/V)^(1/3). Constants for (Mg0.2Fe0.8)O (`FERROPERICLASE_MW80`):
    V0 = 78.96 Å^3 per 4-formula-unit B1 cell (a0 = 4.290 Å: Vegard's law between MgO,
    a = 4.2117 Å, and Fe0.95O, a ≈ 4.310 Å); K0 = 150 GPa and K0' = 4.0, between the
    room-temperature single-crystal values of Jacobsen et al. (2005, J. Synchrotron Rad. 12,
    577: B1 Fe0.93O K0 = 146(2) GPa, (Mg0.27Fe0.73)O 154(3) GPa, both with K' = 4).
High-pressure phase ("rB1")
    Above the transition Fe-rich (Mg,Fe)O, like wüstite, becomes rhombohedral (R-3m): the B1
    cell is stretched along one body diagonal [111] (Shu et al. 1998, N. Jb. Miner. Abh.
    172, 309: sharp, reversible, displacive transition of Fe0.947O at 18 GPa in helium;
    Jacobsen et al. 2005: rhombohedral Fe0.93O above 23 GPa). Mg-bearing compositions
    transform at higher pressure: a GSA book chapter on "High-pressure phase transformations
    in the system FeO-MgO" reports the distortion at 12 GPa for FeO and 35 GPa for
    (Mg0.8Fe0.2)O at room temperature. The default 30 GPa for (Mg0.2Fe0.8)O is an assumption
    inside that bracket; it is an argument.
    The strain e stretches [111] by (1+e)^(2/3) and the perpendicular plane by (1+e)^(-1/3)
    (volume kept), so the rhombohedral angle of the primitive cell falls below 60°:
    cos α = (4 (1+e)^2 - 1) / (4 (1+e)^2 + 2). 111, 220, 311 and 222 split; 200 does not.
    Defaults: e = 0.004 at the transition (α = 59.82°), growing by 0.0006 per GPa (α ≈ 59.3°
    20 GPa above it), of the order reported for wüstite. These are model assumptions, not a
    fit to the seed's data, and are arguments (`Phase`).
Third phase ("B8", optional)
    NiAs-type (P6_3/mmc) FeO, reported above ~70 GPa at high temperature (Fei & Mao 1994,
    Science 266, 1678); here only a schematic third phase (volume from the B1 EOS minus 2 %,
    c/a = 1.95) so that sequences of more than two phases can be simulated and tested.
Coexistence
    The fraction of the higher phase rises linearly from 0 at P_t - w/2 to 1 at P_t + w/2;
    the transition pressure P_t is where both phases are 50 %. Each phase's pattern is scaled
    by its volume fraction / V_cell^2 (powder intensity per unit sample volume).
Peak widths
    Pseudo-Voigt (η = 0.4). Instrument FWHM 0.035° (Caglioti W) plus Stokes–Wilson
    microstrain broadening 4 ε tanθ from non-hydrostatic stress in the diamond-anvil cell,
    ε = 5e-4 + 2.5e-5 / GPa × P (≈ 0.045° at 2θ = 11° and 60 GPa).
Background and noise
    `physics.augment`: a smooth polynomial + Gaussian-process background (diamond Compton,
    gasket, pressure medium) of `background` × the pattern maximum, Poisson counting noise with
    1/noise^2 counts at the strongest peak, and Gaussian readout noise of noise/3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from xrd_nexus_ml.errors import XrdNexusMlError
from xrd_nexus_ml.pattern import HC_KEV_ANGSTROM, Diffractogram, energy_to_wavelength
from xrd_nexus_ml.physics import CrystalArrays, PeakProfile, PowderSimulator, RenderGrid
from xrd_nexus_ml.physics.augment import Background, Compose, GaussianNoise, Normalise, PoissonNoise
from xrd_nexus_ml.physics.simulator import SimulatedBatch

#: The seed's beam: 25.6 keV at PETRA III P02.2 (λ = 0.4843 Å).
SEED_ENERGY_KEV = 25.6
#: The seed's detector range and point count: 2θ 10-26° in 4023 points (step 0.00398°).
SEED_TWO_THETA = (10.0, 26.0, 4023)
#: The seed's composition: the cation site of rock salt, (Mg0.2Fe0.8)O.
SEED_COMPOSITION = {"Mg": 0.2, "Fe": 0.8}


class RampError(XrdNexusMlError, ValueError):
    """A ramp cannot be simulated as asked (bad pressures, transitions out of order, unknown phase)."""


@dataclass(frozen=True)
class BirchMurnaghan3:
    """Third-order Birch–Murnaghan equation of state. v0 in Å^3, k0 in GPa, k0_prime dimensionless."""

    v0: float
    k0: float
    k0_prime: float = 4.0
    source: str = ""

    def pressure(self, volume) -> np.ndarray:
        """P in GPa at volume(s) in Å^3."""
        x2 = (self.v0 / np.asarray(volume, dtype=float)) ** (2.0 / 3.0)
        return 1.5 * self.k0 * (x2**3.5 - x2**2.5) * (1.0 + 0.75 * (self.k0_prime - 4.0) * (x2 - 1.0))

    def volume(self, pressure) -> np.ndarray:
        """V in Å^3 at pressure(s) in GPa (bisection, to 1e-10 relative; P from -K0/10 to ~10 K0)."""
        p = np.asarray(pressure, dtype=float)
        if not np.all(np.isfinite(p)):
            raise RampError("pressures must be finite numbers of GPa")
        if np.any(p < -0.1 * self.k0):
            raise RampError(f"pressure {float(p.min()):g} GPa is below the EOS's range (-K0/10)")
        lo = np.full(p.shape, 0.3 * self.v0)
        hi = np.full(p.shape, 1.2 * self.v0)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.pressure(mid) > p  # P decreases with V: the root lies at larger V
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def bulk_modulus(self, pressure) -> np.ndarray:
        """K = -V dP/dV in GPa (numerical derivative), for checks."""
        v = self.volume(pressure)
        dv = 1e-6 * v
        return -v * (self.pressure(v + dv) - self.pressure(v - dv)) / (2.0 * dv)


#: (Mg0.2Fe0.8)O in the B1 cell (4 formula units); see the module docstring for the sources.
FERROPERICLASE_MW80 = BirchMurnaghan3(
    v0=78.96,
    k0=150.0,
    k0_prime=4.0,
    source="V0 from Vegard's law (MgO a=4.2117 Å, Fe0.95O a≈4.310 Å); K0, K' between Fe0.93O (146 GPa) "
    "and (Mg0.27Fe0.73)O (154 GPa), Jacobsen et al. 2005, J. Synchrotron Rad. 12, 577",
)


def rhombohedral_angle(strain: float) -> float:
    """Primitive rhombohedral angle α in degrees of a B1 cell stretched by `strain` along [111]."""
    r2 = (1.0 + strain) ** 2
    return math.degrees(math.acos((4.0 * r2 - 1.0) / (4.0 * r2 + 2.0)))


_FCC = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])


def _cation_sites(coords: np.ndarray, composition: dict[str, float], b_iso: float):
    from pymatgen.core import Element

    xyz, z, occ, b = [], [], [], []
    for symbol, amount in composition.items():
        for c in coords:
            xyz.append(c)
            z.append(Element(symbol).Z)
            occ.append(float(amount))
            b.append(b_iso)
    return xyz, z, occ, b


def b1_structure(volume: float, strain: float = 0.0, composition: dict[str, float] | None = None,
                 b_cation: float = 0.4, b_oxygen: float = 0.5, name: str = "B1") -> CrystalArrays:
    """Rock-salt (Fm-3m) conventional cell of `volume` Å^3; strain > 0 stretches it along [111]
    at constant volume (the rhombohedral rB1 phase). Cation site disordered as `composition`."""
    composition = composition or SEED_COMPOSITION
    a = volume ** (1.0 / 3.0)
    n = np.ones(3) / math.sqrt(3.0)
    deform = (1.0 + strain) ** (-1.0 / 3.0) * (np.eye(3) + strain * np.outer(n, n))
    lattice = (a * np.eye(3)) @ deform.T  # rows: deformed a, b, c
    xyz, z, occ, b = _cation_sites(_FCC, composition, b_cation)
    anions = (_FCC + np.array([0.5, 0.0, 0.0])) % 1.0
    for c in anions:
        xyz.append(c)
        z.append(8)
        occ.append(1.0)
        b.append(b_oxygen)
    return CrystalArrays.from_arrays(lattice, np.array(xyz), np.array(z), np.array(occ), np.array(b), name=name)


def b8_structure(volume_b1_cell: float, c_over_a: float = 1.95, composition: dict[str, float] | None = None,
                 b_cation: float = 0.4, b_oxygen: float = 0.5, name: str = "B8") -> CrystalArrays:
    """NiAs-type (P6_3/mmc) cell holding 2 formula units, at the volume per formula unit of a
    B1 cell of `volume_b1_cell` (4 formula units)."""
    composition = composition or SEED_COMPOSITION
    v_hex = volume_b1_cell / 2.0
    a = (v_hex / (c_over_a * math.sqrt(3.0) / 2.0)) ** (1.0 / 3.0)
    c = c_over_a * a
    lattice = np.array([[a, 0.0, 0.0], [-0.5 * a, math.sqrt(3.0) / 2.0 * a, 0.0], [0.0, 0.0, c]])
    xyz, z, occ, b = _cation_sites(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]), composition, b_cation)
    for frac in ([1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]):
        xyz.append(frac)
        z.append(8)
        occ.append(1.0)
        b.append(b_oxygen)
    return CrystalArrays.from_arrays(lattice, np.array(xyz), np.array(z), np.array(occ), np.array(b), name=name)


@dataclass(frozen=True)
class Phase:
    """One phase of a ramp: its lattice type and how it deforms with pressure.

    lattice: "B1" (cubic rock salt), "rB1" (B1 stretched along [111]) or "B8" (NiAs type).
    volume_change: ΔV/V against the B1 equation of state at the same pressure.
    strain_at_transition / strain_per_gpa: rB1's rhombohedral strain at its transition
    pressure and its growth above it (below the transition, inside the coexistence region,
    it keeps strain_at_transition).
    """

    name: str
    lattice: Literal["B1", "rB1", "B8"] = "B1"
    volume_change: float = 0.0
    strain_at_transition: float = 0.0
    strain_per_gpa: float = 0.0
    c_over_a: float = 1.95

    def strain(self, pressure, transition_pressure: float | None) -> np.ndarray:
        p = np.asarray(pressure, dtype=float)
        if self.lattice != "rB1":
            return np.zeros_like(p)
        above = np.clip(p - (transition_pressure if transition_pressure is not None else 0.0), 0.0, None)
        return self.strain_at_transition + self.strain_per_gpa * above

    def structures(self, pressures, eos: BirchMurnaghan3, transition_pressure: float | None = None,
                   composition: dict[str, float] | None = None, strain=None) -> list[CrystalArrays]:
        """One structure per pressure; `strain` overrides the pressure-dependent rB1 strain."""
        volumes = eos.volume(pressures) * (1.0 + self.volume_change)
        strains = self.strain(pressures, transition_pressure) if strain is None else np.broadcast_to(
            np.asarray(strain, dtype=float), volumes.shape)
        if self.lattice == "B8":
            return [b8_structure(v, self.c_over_a, composition, name=self.name) for v in volumes]
        return [b1_structure(v, s, composition, name=self.name) for v, s in zip(volumes, strains)]


#: Phases a ramp can hold, by name, in order of increasing pressure.
PHASES: dict[str, Phase] = {
    "B1": Phase("B1", "B1"),
    "rB1": Phase("rB1", "rB1", strain_at_transition=0.004, strain_per_gpa=0.0006),
    "B8": Phase("B8", "B8", volume_change=-0.02, c_over_a=1.95),
}


@dataclass(frozen=True)
class Instrument:
    """Beam, detector range and resolution, and the pressure broadening of the sample."""

    energy_kev: float = SEED_ENERGY_KEV
    two_theta: tuple[float, float, int] = SEED_TWO_THETA  # start, stop (degrees), number of points
    instrument_fwhm_deg: float = 0.035
    microstrain_0: float = 5e-4
    microstrain_per_gpa: float = 2.5e-5
    eta: float = 0.4

    @property
    def wavelength(self) -> float:
        return energy_to_wavelength(self.energy_kev)

    @property
    def grid(self) -> RenderGrid:
        start, stop, n = self.two_theta
        return RenderGrid("two_theta", float(start), (float(stop) - float(start)) / (int(n) - 1), int(n))

    def caglioti_u(self, pressures) -> np.ndarray:
        """Caglioti U (degrees² of 2θ) of Stokes–Wilson microstrain broadening 4 ε tanθ."""
        eps = self.microstrain_0 + self.microstrain_per_gpa * np.clip(np.asarray(pressures, float), 0.0, None)
        return (4.0 * eps * 180.0 / math.pi) ** 2


@dataclass
class Ramp:
    """A sequence of frames along a pressure scan and the truth behind them.

    intensity (n_frames, n_points) on `two_theta` (degrees) at `wavelength` (Å), normalised to
    max 1; fractions (n_frames, n_phases) the volume fraction of each phase; labels the
    majority phase. transition_pressures[k] is the 50 % point between phases k and k+1.
    """

    two_theta: np.ndarray
    intensity: np.ndarray
    pressures: np.ndarray
    fractions: np.ndarray
    phase_names: tuple[str, ...]
    wavelength: float
    transition_pressures: tuple[float, ...]
    coexistence_widths: tuple[float, ...]
    metadata: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return np.argmax(self.fractions, axis=1)

    @property
    def n_frames(self) -> int:
        return int(self.intensity.shape[0])

    @property
    def energy_kev(self) -> float:
        return HC_KEV_ANGSTROM / self.wavelength

    @property
    def pressure_step(self) -> float:
        """Median |ΔP| between consecutive frames, GPa."""
        steps = np.abs(np.diff(self.pressures))
        return float(np.median(steps)) if steps.size else float("nan")

    def pure(self, margin: float = 0.0) -> np.ndarray:
        """(n_frames,) bool: frames farther than `margin` GPa from every coexistence region."""
        keep = self.fractions.max(1) >= 1.0 - 1e-9
        for pt, w in zip(self.transition_pressures, self.coexistence_widths):
            keep &= np.abs(self.pressures - pt) >= 0.5 * w + margin - 1e-9
        return keep

    def diffractogram(self, index: int) -> Diffractogram:
        return Diffractogram(x=self.two_theta, intensity=self.intensity[index], axis="two_theta",
                             wavelength=self.wavelength, source=f"ramp frame {index}",
                             metadata={"pressure_gpa": float(self.pressures[index])})

    def subset(self, index) -> Ramp:
        index = np.asarray(index)
        return replace(self, intensity=self.intensity[index], pressures=self.pressures[index],
                       fractions=self.fractions[index])


def phase_fractions(pressures, transition_pressures: Sequence[float], widths: Sequence[float]) -> np.ndarray:
    """(n, K+1) volume fractions for K transitions: linear coexistence over P_t ± w/2."""
    p = np.asarray(pressures, dtype=float)
    above = []  # fraction of phases above boundary k
    for pt, w in zip(transition_pressures, widths):
        g = (p >= pt).astype(float) if w <= 0 else np.clip((p - pt) / w + 0.5, 0.0, 1.0)
        above.append(np.minimum(g, above[-1]) if above else g)
    cols, previous = [], np.ones_like(p)
    for g in above:
        cols.append(previous - g)
        previous = g
    cols.append(previous)
    return np.stack(cols, axis=1)


def _as_list(value, n: int, name: str) -> list[float]:
    values = [float(value)] * n if np.isscalar(value) else [float(v) for v in value]
    if len(values) != n:
        raise RampError(f"{name} needs {n} value(s) for {n + 1} phases, got {len(values)}")
    return values


def simulate_patterns(structures: Sequence, instrument: Instrument, pressures, batch_size: int = 256,
                      device: str | None = "cpu", strain_scale=None) -> np.ndarray:
    """Clean patterns (n, n_points) of one structure per pressure, with pressure-dependent widths
    (`strain_scale`, one factor per pattern, scales the microstrain)."""
    grid = instrument.grid
    u = instrument.caglioti_u(pressures)
    if strain_scale is not None:
        u = u * np.asarray(strain_scale, dtype=float) ** 2
    out = np.zeros((len(structures), grid.n_points), dtype=np.float64)
    for start in range(0, len(structures), batch_size):
        stop = min(start + batch_size, len(structures))
        u_batch = torch.as_tensor(u[start:stop], dtype=torch.float32).unsqueeze(1)  # (B, 1): per pattern
        profile = PeakProfile(shape="pseudo_voigt", eta=instrument.eta,
                              caglioti_uvw=(u_batch, 0.0, instrument.instrument_fwhm_deg**2))
        sim = PowderSimulator(wavelength=instrument.wavelength, grid=grid, profile=profile, device=device,
                              batch_size=batch_size)
        out[start:stop] = sim.simulate(list(structures[start:stop])).double().cpu().numpy()
    return out


def noise_pipeline(noise: float, background: float) -> Compose:
    """Pattern-stage transforms of a ramp: background, counting and readout noise, normalisation."""
    stages = []
    if background > 0:
        stages.append(Background(polynomial_order=3, polynomial_scale=(0.5 * background, background),
                                 gp_scale=(0.0, 0.25 * background), gp_length=(0.15, 0.4),
                                 hump_scale=(0.0, 0.0)))
    if noise > 0:
        counts = 1.0 / noise**2
        stages.append(PoissonNoise(max_counts=(counts, counts)))
        stages.append(GaussianNoise(sigma=(noise / 3.0, noise / 3.0)))
    stages.append(Normalise())
    return Compose(tuple(stages))


def simulate_ramp(
    pressures,
    transition_pressure: float | Sequence[float] = 30.0,
    coexistence_width: float | Sequence[float] = 2.0,
    noise: float = 0.01,
    seed: int = 0,
    *,
    phases: Sequence[str | Phase] = ("B1", "rB1"),
    background: float = 0.1,
    eos: BirchMurnaghan3 = FERROPERICLASE_MW80,
    composition: dict[str, float] | None = None,
    instrument: Instrument | None = None,
    device: str | None = "cpu",
) -> Ramp:
    """Simulate one diffractogram per pressure (GPa), in the given order.

    transition_pressure / coexistence_width: one value per boundary between consecutive
    `phases` (GPa; the 50 % point and the full width of the coexistence region). noise: relative
    counting noise at the strongest peak (0.01: 10^4 counts there; 0 switches noise off).
    background: smooth background amplitude relative to the maximum. seed: all random draws.
    """
    p = np.asarray(pressures, dtype=float).ravel()
    if p.size == 0 or not np.all(np.isfinite(p)):
        raise RampError("pressures must be a non-empty sequence of finite numbers of GPa")
    phase_objs = _resolve_phases(phases)
    if len(phase_objs) < 2:
        raise RampError("a transition ramp needs at least two phases")
    n_b = len(phase_objs) - 1
    pts = _as_list(transition_pressure, n_b, "transition_pressure")
    widths = _as_list(coexistence_width, n_b, "coexistence_width")
    if any(w < 0 for w in widths):
        raise RampError(f"coexistence widths must be >= 0, got {widths}")
    if any(b <= a for a, b in zip(pts, pts[1:])):
        raise RampError(f"transition pressures must increase from one boundary to the next, got {pts}")
    if noise < 0 or background < 0:
        raise RampError(f"noise and background must be >= 0, got {noise}, {background}")
    instrument = instrument or Instrument()

    fractions = phase_fractions(p, pts, widths)
    total = sum_phase_patterns(
        p, fractions, pts, instrument.grid.n_points,
        structures_at=lambda k, at, onset: phase_objs[k].structures(at, eos, onset, composition),
        patterns_of=lambda k, structures, at: simulate_patterns(structures, instrument, at, device=device))

    return Ramp(
        two_theta=instrument.grid.values.numpy(),
        intensity=measured_frames(total, instrument, noise, background, seed, device),
        pressures=p,
        fractions=fractions,
        phase_names=tuple(ph.name for ph in phase_objs),
        wavelength=instrument.wavelength,
        transition_pressures=tuple(pts),
        coexistence_widths=tuple(widths),
        metadata={"noise": noise, "background": background, "seed": int(seed), "energy_kev": instrument.energy_kev,
                  "eos": {"v0": eos.v0, "k0": eos.k0, "k0_prime": eos.k0_prime}},
    )


def sum_phase_patterns(pressures: np.ndarray, fractions: np.ndarray, transitions: Sequence[float], n_points: int,
                       structures_at, patterns_of) -> np.ndarray:
    """The sample's pattern at each pressure: each phase's pattern weighted by its fraction and
    divided by its cell volume squared (scattering per unit volume: a denser phase is brighter).

    structures_at(k, pressures, onset): phase k's structures at those pressures (onset: the
    transition it appears at, None for the first); patterns_of(k, structures, pressures): their
    simulated patterns (rows on the instrument's grid). Phases absent at every pressure are skipped."""
    total = np.zeros((pressures.size, n_points))
    for k in range(fractions.shape[1]):
        present = fractions[:, k] > 0
        if not present.any():
            continue
        onset = float(transitions[k - 1]) if k > 0 else None
        structures = structures_at(k, pressures[present], onset)
        volumes = np.array([s.volume for s in structures])
        patterns = patterns_of(k, structures, pressures[present])
        total[present] += fractions[present, k, None] * patterns / volumes[:, None] ** 2
    return total


def measured_frames(total: np.ndarray, instrument: Instrument, noise: float, background: float, seed: int,
                    device: str | None = "cpu") -> np.ndarray:
    """Clean summed patterns (n, points) as a detector records them: normalised, the cell's
    background and counting noise added through the project's augmentation transforms (seeded),
    normalised again; float32."""
    sim = PowderSimulator(wavelength=instrument.wavelength, grid=instrument.grid, device=device)
    generator = torch.Generator().manual_seed(int(seed))
    intensity = torch.as_tensor(total / np.maximum(total.max(axis=1, keepdims=True), 1e-300), dtype=torch.float64)
    state = SimulatedBatch(crystals=None, settings=sim.settings, intensity=intensity,
                           mask=torch.ones_like(intensity, dtype=torch.bool))
    state = noise_pipeline(noise, background).apply("pattern", state, generator)
    return state.intensity.float().cpu().numpy()


def seed_pressures(n_frames: int = 349, start: float = 5.0, stop: float = 55.0) -> np.ndarray:
    """A linear compression like the seed's: `n_frames` pressures from `start` to `stop` GPa."""
    return np.linspace(start, stop, n_frames)


def _resolve_phases(phases: Sequence[str | Phase]) -> list[Phase]:
    out = []
    for ph in phases:
        if isinstance(ph, Phase) or callable(getattr(ph, "structures", None)):  # materials.StructurePhase
            out.append(ph)
        elif ph in PHASES:
            out.append(PHASES[ph])
        else:
            raise RampError(f"unknown phase {ph!r}; known: {', '.join(PHASES)} (or pass a Phase)")
    return out


@dataclass
class TrainingSet:
    """Patterns (n, n_points) on `two_theta` with their phase fractions (n, n_phases), in the
    seed's regime: a few "measured" frames of a reference ramp plus simulated patterns
    ("simulated" single-phase, "mixed" two-phase coexistence with fractional labels)."""

    two_theta: np.ndarray
    intensity: np.ndarray
    fractions: np.ndarray
    pressures: np.ndarray
    kinds: list[str]
    phase_names: tuple[str, ...]
    wavelength: float
    recipe: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """Majority phase of each pattern."""
        return np.argmax(self.fractions, axis=1)

    def __len__(self) -> int:
        return int(self.intensity.shape[0])


def simulate_training_set(
    phases: Sequence[str | Phase] = ("B1", "rB1"),
    n_measured_per_phase: int = 2,
    n_simulated_per_phase: int = 16,
    n_mixed_per_boundary: int = 8,
    pressure_range: tuple[float, float] = (5.0, 55.0),
    reference_transition: float | Sequence[float] | None = None,
    reference_noise: float = 0.01,
    seed: int = 0,
    *,
    width_scale_range: tuple[float, float] = (0.7, 1.5),
    eos: BirchMurnaghan3 = FERROPERICLASE_MW80,
    composition: dict[str, float] | None = None,
    instrument: Instrument | None = None,
    device: str | None = "cpu",
) -> TrainingSet:
    """The seed's 4 measured + 40 simulated regime (defaults: 2 x 2 measured, 2 x 16 single-phase
    + 8 coexistence patterns simulated), generalised to any number of phases.

    Measured-like: `n_measured_per_phase` frames per phase from a reference ramp of 349 frames
    over `pressure_range` (transitions `reference_transition`, default evenly spaced) at the
    pressures farthest from any transition: the first frames of the compression for the lowest
    phase, the last for the highest, the middle of its range otherwise.
    Simulated: `n_simulated_per_phase` single-phase patterns per phase at pressures drawn over
    the whole `pressure_range`: the transition pressure is what a scan must find, so the
    classifier must not be able to learn it from peak positions. rB1 strains run from the
    transition value to half the range above it; widths (x0.7-1.5 microstrain), background
    (0-0.2) and noise (0.3-3 %) are random.
    Mixed: `n_mixed_per_boundary` two-phase patterns per boundary, fraction of the upper phase
    0.1-0.9 (its label), distortion as just above a transition, so that the classifiers'
    probability tracks the phase fraction and the 50 % point is the transition pressure.
    """
    phase_objs = _resolve_phases(phases)
    k = len(phase_objs)
    lo, hi = (float(v) for v in pressure_range)
    if not hi > lo:
        raise RampError(f"pressure_range must be (low, high) with high > low, got {pressure_range}")
    if reference_transition is None:
        reference_transition = [lo + (hi - lo) * (j + 1) / k for j in range(k - 1)]
    pts = _as_list(reference_transition, k - 1, "reference_transition")
    instrument = instrument or Instrument()
    rng = np.random.default_rng(seed)

    # measured-like frames of a reference ramp (1 GPa coexistence), as far from the transitions as it goes
    edges = [lo, *pts, hi]
    measured_p = []
    step = (hi - lo) / 348.0  # the seed's 349 frames
    for j in range(k):
        if j == 0:
            p = lo + step * np.arange(n_measured_per_phase)
        elif j == k - 1:
            p = hi - step * np.arange(n_measured_per_phase)[::-1]
        else:
            mid = 0.5 * (edges[j] + edges[j + 1])
            p = mid + step * (np.arange(n_measured_per_phase) - 0.5 * (n_measured_per_phase - 1))
        measured_p.extend(p)
    rows, fractions, pressures, kinds = [], [], [], []
    if measured_p:
        reference = simulate_ramp(np.array(measured_p), pts, 1.0, noise=reference_noise, seed=seed + 7919,
                                  phases=phase_objs, eos=eos, composition=composition, instrument=instrument,
                                  device=device)
        rows, fractions, pressures = [reference.intensity], [reference.fractions], [reference.pressures]
        kinds = ["measured"] * reference.n_frames

    def single(phase: Phase, p: np.ndarray, near_transition: bool, width_scale: np.ndarray) -> np.ndarray:
        strain = None
        if phase.lattice == "rB1":
            reach = 2.0 if near_transition else 0.5 * (hi - lo)
            strain = phase.strain_at_transition + phase.strain_per_gpa * rng.uniform(0.0, reach, len(p))
        structures = phase.structures(p, eos, None, composition, strain=strain)
        volumes = np.array([s_.volume for s_ in structures])
        patterns = simulate_patterns(structures, instrument, p, device=device, strain_scale=width_scale)
        return patterns / volumes[:, None] ** 2

    for j, phase in enumerate(phase_objs):  # single-phase patterns over the whole range
        n = n_simulated_per_phase
        if n <= 0:
            continue
        p = rng.uniform(lo, hi, n)
        width_scale = np.exp(rng.uniform(*np.log(width_scale_range), n))
        patterns = single(phase, p, False, width_scale)
        rows.append(_add_noise(patterns, noise=rng.uniform(0.003, 0.03, n), background=rng.uniform(0.0, 0.2, n),
                               instrument=instrument, seed=seed + 104729 * (j + 1), device=device))
        frac = np.zeros((n, k))
        frac[:, j] = 1.0
        fractions.append(frac)
        pressures.append(p)
        kinds += ["simulated"] * n

    for j in range(k - 1):  # two-phase coexistence patterns, fractional labels
        n = n_mixed_per_boundary
        if n <= 0:
            continue
        p = rng.uniform(lo, hi, n)
        f = rng.uniform(0.1, 0.9, n)
        width_scale = np.exp(rng.uniform(*np.log(width_scale_range), n))
        mixed = ((1.0 - f[:, None]) * single(phase_objs[j], p, True, width_scale)
                 + f[:, None] * single(phase_objs[j + 1], p, True, width_scale))
        rows.append(_add_noise(mixed, noise=rng.uniform(0.003, 0.03, n), background=rng.uniform(0.0, 0.2, n),
                               instrument=instrument, seed=seed + 15485863 * (j + 1), device=device))
        frac = np.zeros((n, k))
        frac[:, j], frac[:, j + 1] = 1.0 - f, f
        fractions.append(frac)
        pressures.append(p)
        kinds += ["mixed"] * n

    if not rows:
        raise RampError("a training set needs at least one pattern")
    return TrainingSet(
        two_theta=instrument.grid.values.numpy(),
        intensity=np.concatenate(rows).astype(np.float32),
        fractions=np.concatenate(fractions),
        pressures=np.concatenate(pressures),
        kinds=kinds,
        phase_names=tuple(ph.name for ph in phase_objs),
        wavelength=instrument.wavelength,
        recipe={"n_measured_per_phase": n_measured_per_phase, "n_simulated_per_phase": n_simulated_per_phase,
                "n_mixed_per_boundary": n_mixed_per_boundary, "pressure_range": [lo, hi],
                "reference_transition": pts, "reference_noise": reference_noise, "seed": seed,
                "phases": [ph.name for ph in phase_objs]},
    )


def _add_noise(patterns: np.ndarray, noise, background, instrument: Instrument, seed: int, device) -> np.ndarray:
    """Per-pattern background and noise levels (arrays of len n) through the augmentation transforms."""
    sim = PowderSimulator(wavelength=instrument.wavelength, grid=instrument.grid, device=device)
    generator = torch.Generator().manual_seed(int(seed))
    out = np.zeros_like(patterns, dtype=np.float32)
    for i in range(patterns.shape[0]):
        y = torch.as_tensor(patterns[i: i + 1] / max(patterns[i].max(), 1e-300), dtype=torch.float64)
        state = SimulatedBatch(crystals=None, settings=sim.settings, intensity=y,
                               mask=torch.ones_like(y, dtype=torch.bool))
        state = noise_pipeline(float(noise[i]), float(background[i])).apply("pattern", state, generator)
        out[i] = state.intensity[0].float().cpu().numpy()
    return out


def evaluation_ramp_configs(n_ramps: int, seed: int) -> list[dict]:
    """The (Mg,Fe)O test ramps' parameters (transition 20-40 GPa), drawn from `seed` (never the training
    seed's draws): `evaluate transition` and the models' change-point calibration (another seed range)."""
    rng = np.random.default_rng(10_000 + seed)
    configs = []
    for i in range(n_ramps):
        configs.append({
            "seed": int(seed * 1000 + 101 + i),
            "transition_pressure": round(float(rng.uniform(20.0, 40.0)), 3),
            "coexistence_width": round(float(rng.uniform(0.5, 3.0)), 3),
            "noise": round(float(math.exp(rng.uniform(math.log(0.003), math.log(0.05)))), 4),
            "background": round(float(rng.uniform(0.05, 0.3)), 3),
        })
    return configs

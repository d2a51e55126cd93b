"""The one powder-pattern simulator: structures in, batches of patterns out, CPU or GPU.

Training, tests, the simulated beamline and the benchmarks all call this. Structures are
streamed in batches (memory is bounded by `batch_size`, never by the number of structures),
and within a stream they are grouped by atoms and expected reflections so a batch carries little padding.
Augmentations hook in at four stages: the crystal (e.g. Debye-Waller factors), the individual
reflections (preferred orientation), the merged peaks (shifts, strain, peak loss, impurity)
and the rendered pattern (background, noise, masking); see `physics.augment`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from xrd_nexus_ml.device import resolve_device
from xrd_nexus_ml.pattern import CANONICAL_GRID, Diffractogram, QGrid, resolve_wavelength
from xrd_nexus_ml.physics.crystal import CrystalArrays, CrystalBatch, as_crystal_arrays
from xrd_nexus_ml.physics.diffraction import reflection_intensities
from xrd_nexus_ml.physics.orbits import prepare_tables, reflection_saving
from xrd_nexus_ml.physics.peaks import PeakList
from xrd_nexus_ml.physics.profiles import PeakProfile, RenderGrid, RenderSettings, render

log = logging.getLogger(__name__)


@dataclass
class SimulatedBatch:
    """What flows through one simulation: the stages augmentations act on, in order."""

    crystals: CrystalBatch
    settings: RenderSettings
    reflections: PeakList | None = None
    peaks: PeakList | None = None
    intensity: torch.Tensor | None = None  # (B, G)
    mask: torch.Tensor | None = None  # (B, G) bool: measured points
    extras: dict = field(default_factory=dict)  # per-pattern facts transforms record (e.g. shifts)


@dataclass
class PowderSimulator:
    """Batched kinematic powder simulator.

    wavelength: Å or an anode name ('CuKa'). grid: a `RenderGrid` (2θ or q); defaults to the
    canonical q grid. profile: peak shape and widths. batch_size bounds memory. use_symmetry:
    one reflection per orbit for structures with a known space group (False: every Friedel
    pair, the reference the orbit path is tested against).
    """

    wavelength: float | str = "CuKa"
    grid: RenderGrid | QGrid = field(default_factory=lambda: RenderGrid.from_qgrid(CANONICAL_GRID))
    profile: PeakProfile = field(default_factory=PeakProfile)
    device: torch.device | str | None = None
    dtype: torch.dtype = torch.float32
    batch_size: int = 128
    use_symmetry: bool = True

    def __post_init__(self):
        self.wavelength = resolve_wavelength(self.wavelength)
        if isinstance(self.grid, QGrid):
            self.grid = RenderGrid.from_qgrid(self.grid)
        self.device = resolve_device(self.device)

    @property
    def settings(self) -> RenderSettings:
        return RenderSettings(wavelength=self.wavelength, grid=self.grid, profile=self.profile)

    # -- one batch ---------------------------------------------------------------------
    def batch(self, structures: Sequence) -> CrystalBatch:
        return CrystalBatch.from_items(structures, device=self.device, dtype=self.dtype)

    def reflections(self, crystals: CrystalBatch) -> PeakList:
        """Every reflection that can reach the grid with its integrated intensity: one row per
        symmetry orbit where the space group is known, per Friedel pair otherwise."""
        s = self.settings
        return reflection_intensities(crystals, s.wavelength, q_max=s.q_max, q_min=s.q_min,
                                      use_symmetry=self.use_symmetry)

    def run(self, structures: Sequence, augment=None, generator: torch.Generator | None = None) -> SimulatedBatch:
        """Simulate one batch through all stages, applying `augment` (a `physics.augment` pipeline)."""
        state = SimulatedBatch(crystals=self.batch(structures), settings=self.settings)
        stage = augment.apply if augment is not None else (lambda _name, st, _gen: st)
        state = stage("crystal", state, generator)
        state.reflections = self.reflections(state.crystals)
        state = stage("reflections", state, generator)
        state.peaks = state.reflections.merged().without_weak()
        state = stage("peaks", state, generator)
        state.intensity = render(state.peaks, state.settings)
        state.mask = torch.ones_like(state.intensity, dtype=torch.bool)
        state = stage("pattern", state, generator)
        return state

    def simulate(self, structures: Sequence, augment=None, generator=None) -> torch.Tensor:
        """Patterns (B, n_points) on the grid, integrated intensities preserved (not normalised)."""
        return self.run(structures, augment=augment, generator=generator).intensity

    def sticks(self, structures: Sequence, two_theta_range: tuple[float, float] | None = None):
        """(2θ in degrees, intensity scaled to max 100) per structure, merged like pymatgen's sticks."""
        crystals = self.batch(structures)
        peaks = self.reflections(crystals).merged().without_weak(1e-5)
        two_theta = peaks.two_theta(self.wavelength).cpu().numpy()
        intensity = peaks.intensity.cpu().numpy()
        lo, hi = two_theta_range if two_theta_range is not None else (0.0, 180.0)
        out = []
        for tt, inten in zip(two_theta, intensity):
            keep = (inten > 0) & (tt >= lo) & (tt <= hi)
            order = np.argsort(tt[keep])
            tt_k, in_k = tt[keep][order], inten[keep][order]
            out.append((tt_k, 100.0 * in_k / in_k.max() if in_k.size else in_k))
        return out

    # -- many structures -------------------------------------------------------------------
    def stream(
        self,
        structures: Iterable,
        augment=None,
        generator: torch.Generator | None = None,
        sort_window: int = 8,
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield (indices, patterns) batches for any number of structures, holding at most
        `sort_window` batches of structures at a time. Within that window structures are
        grouped by atoms and expected reflections (padding in a batch stays small), so the indices say
        which input each row belongs to.
        """
        for indices, state in self.stream_states(structures, augment, generator, sort_window):
            yield indices, state.intensity

    def stream_states(
        self,
        structures: Iterable,
        augment=None,
        generator: torch.Generator | None = None,
        sort_window: int = 8,
    ) -> Iterator[tuple[list[int], SimulatedBatch]]:
        """As `stream`, but each batch's whole `SimulatedBatch` (intensity and mask, e.g. after a
        pipeline that masks unmeasured ranges)."""
        window: list[tuple[int, CrystalArrays]] = []
        for index, item in enumerate(structures):
            window.append((index, as_crystal_arrays(item)))
            if len(window) >= self.batch_size * sort_window:
                yield from self._simulate_window(window, augment, generator)
                window = []
        if window:
            yield from self._simulate_window(window, augment, generator)

    def _simulate_window(self, window, augment, generator):
        settings = self.settings
        if self.use_symmetry:
            q_max = min(settings.q_max, 4.0 * math.pi / settings.wavelength)
            prepare_tables(np.stack([c.lattice for _, c in window]), [c.space_group for _, c in window], q_max)
        work = {i: _work_estimate(c, settings.q_min, settings.q_max, self.use_symmetry) for i, c in window}
        window.sort(key=lambda pair: _batch_order(work[pair[0]]))
        for chunk in _balanced_batches(window, self.batch_size, lambda index: work[index]):
            state = self.run([c for _, c in chunk], augment=augment, generator=generator)
            yield [i for i, _ in chunk], state

    def simulate_all(self, structures: Iterable, augment=None, generator=None, progress: bool = False) -> np.ndarray:
        """All patterns as one (n, n_points) float32 array, in input order (for modest n)."""
        rows: dict[int, np.ndarray] = {}
        batches = self.stream(structures, augment=augment, generator=generator)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="simulating", unit="batch")
        for indices, patterns in batches:
            for i, row in zip(indices, patterns.cpu().numpy().astype(np.float32)):
                rows[i] = row
        return np.stack([rows[i] for i in range(len(rows))]) if rows else np.zeros((0, self.grid.n_points))

    def diffractogram(self, structure, normalise: bool = True) -> Diffractogram:
        """One structure as a `Diffractogram` on the simulator's grid."""
        pattern = self.simulate([structure])[0].cpu().double().numpy()
        axis = self.grid.axis
        x = self.grid.values.numpy()
        d = Diffractogram(x=x, intensity=pattern, axis=axis, wavelength=self.wavelength,
                          source=getattr(structure, "formula", None) or as_crystal_arrays(structure).name)
        return d.normalised("max") if normalise else d


def _work_estimate(crystal: CrystalArrays, q_min: float, q_max: float, use_symmetry: bool = True) -> tuple[float, int]:
    """(reflections, atoms): the structure-factor work is their product. Reflections are those of
    the q shell in the Friedel half of reciprocal space, fewer by the orbit path's saving."""
    shell = 4.0 * math.pi / 3.0 * ((q_max / (2 * math.pi)) ** 3 - (q_min / (2 * math.pi)) ** 3)
    saving = reflection_saving(crystal.space_group) if use_symmetry else 1.0
    return shell * crystal.volume / 2.0 / saving, len(crystal.atomic_numbers)


def _batch_order(work: tuple[float, int]) -> tuple[int, float]:
    """Sort key: atoms by powers of two, then reflections, so a batch pads little in either."""
    reflections, atoms = work
    return int(atoms).bit_length(), reflections


#: Work (reflections x atoms) one more batch costs in fixed overhead: cutting a batch early
#: pays only when padding would waste more than this.
BATCH_OVERHEAD = 2e5


def _balanced_batches(items: list, batch_size: int, work_estimate, max_padding: float = 2.0):
    """Cut a sorted list of (index, structure) into batches of at most `batch_size`, starting a new batch early when
    padding every row to the batch's most reflections and most atoms would cost more than
    `max_padding` x the real work (plus one batch's overhead): a few very large cells then come
    in small batches instead of inflating a big one. work_estimate: index -> (reflections, atoms)."""
    batch: list = []
    total, most_reflections, most_atoms = 0.0, 0.0, 0
    for item in items:
        reflections, atoms = work_estimate(item[0])
        m, n = max(most_reflections, reflections), max(most_atoms, atoms)
        if batch and (len(batch) >= batch_size
                      or (len(batch) + 1) * m * n > max_padding * (total + reflections * atoms) + BATCH_OVERHEAD):
            yield batch
            batch, total, m, n = [], 0.0, reflections, atoms
        batch.append(item)
        total += reflections * atoms
        most_reflections, most_atoms = m, n
    if batch:
        yield batch

"""Endless streams of simulated (pattern, labels) batches for training, one per DataLoader worker.

A stream draws structures from a `StructureSource` (a fixed list, or the synthetic crystal
generator), simulates them with the batched simulator and an augmentation pipeline, and
yields whole batches: use it with `DataLoader(stream, batch_size=None, num_workers=k)`.
Each worker seeds its own random state from (seed, worker id), so workers never repeat each
other and a run is reproducible for a given seed and worker count. Nothing is stored: memory
is one batch per worker.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from xrd_nexus_ml.pattern import CANONICAL_GRID, QGrid
from xrd_nexus_ml.physics.crystal import CrystalArrays, as_crystal_arrays
from xrd_nexus_ml.physics.profiles import PeakProfile
from xrd_nexus_ml.physics.simulator import PowderSimulator
from xrd_nexus_ml.physics.symmetry import crystal_system_index
from xrd_nexus_ml.physics.synthetic import RandomCrystalGenerator


class StructureSource:
    """Draws (structure, labels) pairs; labels is a dict of ints."""

    def draw(self, rng: np.random.Generator, n: int) -> tuple[list, dict[str, list[int]]]:
        raise NotImplementedError


@dataclass
class ListSource(StructureSource):
    """Uniform draws, with replacement, from a fixed list of structures and their integer labels."""

    structures: Sequence
    labels: dict[str, Sequence[int]]

    def __post_init__(self):
        self.structures = [as_crystal_arrays(s) for s in self.structures]  # convert once, not per draw
        for key, values in self.labels.items():
            if len(values) != len(self.structures):
                raise ValueError(f"label {key!r} has {len(values)} values for {len(self.structures)} structures")

    def draw(self, rng, n):
        picks = rng.integers(0, len(self.structures), size=n)
        return [self.structures[i] for i in picks], {k: [int(v[i]) for i in picks] for k, v in self.labels.items()}


@dataclass
class SyntheticSource(StructureSource):
    """Random crystals by Wyckoff occupation; labels: space group (1-230), extinction group, crystal system."""

    generator_options: dict | None = None

    def draw(self, rng, n):
        generator = RandomCrystalGenerator(seed=int(rng.integers(2**63)), **(self.generator_options or {}))
        crystals = [generator.sample() for _ in range(n)]
        labels = {
            "space_group": [c.space_group for c in crystals],
            "extinction_group": [c.extinction_group for c in crystals],
            "crystal_system": [crystal_system_index(c.space_group) for c in crystals],
        }
        arrays = [CrystalArrays.from_arrays(c.lattice, c.frac_coords, c.atomic_numbers) for c in crystals]
        return arrays, labels


class PatternStream(IterableDataset):
    """Endless batches {"intensity": (B, G), "mask": (B, G), label: (B,) long ...} on a q grid."""

    def __init__(
        self,
        source: StructureSource,
        batch_size: int = 64,
        augment=None,
        wavelength: float | str = "CuKa1",
        grid: QGrid = CANONICAL_GRID,
        profile: PeakProfile | None = None,
        seed: int = 0,
        max_batches: int | None = None,
    ):
        self.source = source
        self.batch_size = batch_size
        self.augment = augment
        self.wavelength = wavelength
        self.grid = grid
        self.profile = profile or PeakProfile(shape="pseudo_voigt", eta=0.3, caglioti_uvw=(0.004, -0.002, 0.004))
        self.seed = seed
        self.max_batches = max_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        rng = np.random.default_rng([self.seed, worker_id])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        # simulation in DataLoader workers runs on the CPU; the model consumes on its device
        simulator = PowderSimulator(
            wavelength=self.wavelength, grid=self.grid, profile=self.profile, device="cpu", batch_size=self.batch_size
        )
        produced = 0
        while self.max_batches is None or produced < self.max_batches:
            structures, labels = self.source.draw(rng, self.batch_size)
            state = simulator.run(structures, augment=self.augment, generator=generator)
            batch = {"intensity": state.intensity, "mask": state.mask}
            batch.update({k: torch.as_tensor(v, dtype=torch.long) for k, v in labels.items()})
            yield batch
            produced += 1

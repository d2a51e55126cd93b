"""A batch of crystal structures as padded tensors: what the batched simulator consumes.

Structures of different sizes are padded with atoms of Z = 0 and occupancy 0, which scatter
nothing, so one set of tensor operations simulates the whole batch on CPU or GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from xrd_nexus_ml.errors import StructureError
from xrd_nexus_ml.physics.form_factors import check_supported


@dataclass(frozen=True)
class CrystalArrays:
    """One structure as plain arrays (what synthetic generators and pymatgen both reduce to)."""

    lattice: np.ndarray  # (3, 3) rows a, b, c in Å
    frac_coords: np.ndarray  # (N, 3)
    atomic_numbers: np.ndarray  # (N,)
    occupancy: np.ndarray  # (N,)
    b_factors: np.ndarray  # (N,) isotropic Debye-Waller B in Å²
    name: str = ""
    # A space group whose standard-setting rotations map the structure onto itself (as the
    # synthetic generator guarantees); lets the simulator compute one reflection per orbit.
    # None: not known, every Friedel pair is computed.
    space_group: int | None = None

    @classmethod
    def from_structure(cls, structure, name: str | None = None, b_factors: dict[str, float] | None = None):
        """Flatten a pymatgen Structure; each species of a disordered site becomes one partial atom."""
        if len(structure) == 0:
            raise StructureError(f"{name or structure.formula}: the structure has no atoms")
        b_factors = b_factors or {}
        if structure.is_ordered:  # fast path: one species per site, no per-site dictionaries
            coords = structure.frac_coords
            z = [site.specie.Z for site in structure]
            occ = np.ones(len(z))
            bfac = [b_factors.get(site.specie.symbol, 0.0) for site in structure] if b_factors else np.zeros(len(z))
        else:
            coords, z, occ, bfac = [], [], [], []
            for site in structure:
                for species, amount in site.species.items():
                    coords.append(site.frac_coords)
                    z.append(species.Z)
                    occ.append(amount)
                    bfac.append(b_factors.get(species.symbol, 0.0))
        return cls(
            lattice=np.asarray(structure.lattice.matrix, dtype=float),
            frac_coords=np.asarray(coords, dtype=float),
            atomic_numbers=np.asarray(z, dtype=np.int64),
            occupancy=np.asarray(occ, dtype=float),
            b_factors=np.asarray(bfac, dtype=float),
            name=name or "",
        )

    @classmethod
    def from_arrays(cls, lattice, frac_coords, atomic_numbers, occupancy=None, b_factors=None, name="",
                    space_group: int | None = None):
        n = len(atomic_numbers)
        return cls(
            lattice=np.asarray(lattice, dtype=float).reshape(3, 3),
            frac_coords=np.asarray(frac_coords, dtype=float).reshape(n, 3),
            atomic_numbers=np.asarray(atomic_numbers, dtype=np.int64),
            occupancy=np.ones(n) if occupancy is None else np.asarray(occupancy, dtype=float),
            b_factors=np.zeros(n) if b_factors is None else np.asarray(b_factors, dtype=float),
            name=name,
            space_group=None if space_group is None else int(space_group),
        )

    @cached_property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))


def as_crystal_arrays(item) -> CrystalArrays:
    """Accept CrystalArrays, a pymatgen Structure, anything with lattice/frac_coords/atomic_numbers,
    or an object that converts itself (`to_crystal_arrays()`, e.g. a synthetic crystal with its space group)."""
    if isinstance(item, CrystalArrays):
        return item
    if hasattr(item, "to_crystal_arrays"):
        return item.to_crystal_arrays()
    if hasattr(item, "sites") and hasattr(item, "lattice"):
        return CrystalArrays.from_structure(item)
    if hasattr(item, "atomic_numbers") and hasattr(item, "frac_coords"):
        return CrystalArrays.from_arrays(item.lattice, item.frac_coords, item.atomic_numbers)
    raise StructureError(f"cannot simulate an object of type {type(item).__name__}: expected a structure")


@dataclass(frozen=True)
class CrystalBatch:
    """B structures padded to N atoms. Padding atoms have Z = 0 and occupancy 0."""

    lattice: torch.Tensor  # (B, 3, 3)
    frac_coords: torch.Tensor  # (B, N, 3)
    atomic_numbers: torch.Tensor  # (B, N) long
    occupancy: torch.Tensor  # (B, N)
    b_factors: torch.Tensor  # (B, N) Å²
    names: tuple[str, ...] = ()
    space_groups: tuple[int | None, ...] = ()  # per structure, see CrystalArrays; empty: none known

    @classmethod
    def from_items(
        cls,
        items: Sequence,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> CrystalBatch:
        """Pad and stack structures (pymatgen, CrystalArrays or synthetic crystals) into one batch."""
        crystals = [as_crystal_arrays(item) for item in items]
        if not crystals:
            raise StructureError("cannot build a batch from zero structures")
        n_max = max(len(c.atomic_numbers) for c in crystals)
        b = len(crystals)
        coords = np.zeros((b, n_max, 3))
        z = np.zeros((b, n_max), dtype=np.int64)
        occ = np.zeros((b, n_max))
        bfac = np.zeros((b, n_max))
        for i, c in enumerate(crystals):
            n = len(c.atomic_numbers)
            coords[i, :n], z[i, :n], occ[i, :n], bfac[i, :n] = c.frac_coords, c.atomic_numbers, c.occupancy, c.b_factors
            if c.volume < 1e-3:
                raise StructureError(f"{c.name or f'structure {i}'}: the lattice is degenerate "
                                     f"(volume {c.volume:g} Å³)")
        check_supported(z)
        lattice = np.stack([c.lattice for c in crystals])
        as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        return cls(
            lattice=as_t(lattice),
            frac_coords=as_t(coords),
            atomic_numbers=torch.as_tensor(z, device=device),
            occupancy=as_t(occ),
            b_factors=as_t(bfac),
            names=tuple(c.name for c in crystals),
            space_groups=tuple(c.space_group for c in crystals),
        )

    def __len__(self) -> int:
        return int(self.lattice.shape[0])

    @property
    def device(self) -> torch.device:
        return self.lattice.device

    @property
    def reciprocal_lattice(self) -> torch.Tensor:
        """(B, 3, 3) rows a*, b*, c* without the 2π (crystallographic convention: a·a* = 1)."""
        return torch.linalg.inv(self.lattice).transpose(-1, -2)

    @property
    def known_space_groups(self) -> tuple[int | None, ...]:
        """One entry per structure (None where unknown), also for batches built without them."""
        return self.space_groups if len(self.space_groups) == len(self) else (None,) * len(self)

    def with_b_factors(self, b_factors: torch.Tensor) -> CrystalBatch:
        return replace(self, b_factors=b_factors)

"""One reflection per symmetry orbit, for crystals whose space group is known.

Without anomalous scattering every reflection of an orbit of the Laue group (the point group
plus the inversion) has the same |F|²: an operation (R, t) of the space group gives
F(hR) = exp(-2πi h·t) F(h), and F(-h) = F(h)*. So the simulator computes F once per orbit and
weights it by the orbit's size, and drops systematically absent orbits before computing F at
all. The representative of an orbit is its lexicographically largest hkl, which lies in the
Friedel half-space (h > 0, or h = 0 and k > 0, or h = k = 0 and l > 0).

The rotations are those of the standard setting (`symmetry.symmetry_operations`), the same
rotations as pyxtal's settings that the synthetic generator builds in (checked for all 230
groups in the tests); an origin shift changes only phases, never |F|. Structures without a
known space group fall back to Friedel pairs: the half-space of the hkl box, each counted twice.

Which hkl are representatives, and the size of their orbits, does not depend on the crystal:
it is tabulated once per Laue group on a box that grows when a larger cell asks for more.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch

from xrd_nexus_ml.physics import symmetry

#: Every crystallographic Laue group's order (2, 4, 6, 8, 12, 16, 24, 48) divides 48, so each
#: rotation set is tiled to 48 rows: a mean over the rows is then a uniform mean over the group.
ORBIT_ROTATIONS = 48

#: Extra room (fraction of the request) when a Laue table grows, so a stream of similar cells
#: does not rebuild the table batch after batch.
_GROWTH = 0.25


@functools.cache
def laue_rotations(sg: int) -> np.ndarray:
    """The Laue group of a space group: its distinct rotations and their negatives, (L, 3, 3) int."""
    rot, _ = symmetry.symmetry_operations(sg)
    both = np.concatenate([rot, -rot]).reshape(-1, 9)
    out = np.unique(both, axis=0).reshape(-1, 3, 3)
    out.setflags(write=False)
    return out


@functools.cache
def _centring_translations(sg: int) -> np.ndarray:
    """Translations of the conventional cell's lattice, (n, 3): 1 for P, 2 A/C/I, 3 R (hexagonal axes), 4 F."""
    rot, trans = symmetry.symmetry_operations(sg)
    out = trans[(rot.reshape(-1, 9) == np.eye(3, dtype=np.int64).ravel()).all(axis=1)]
    out.setflags(write=False)
    return out


def reflection_saving(sg: int | None) -> float:
    """About how many times fewer reflections the orbit path computes than the Friedel half-space
    (orbit size / 2, times the centring's share of absent reflections); 1 without a space group."""
    if sg is None:
        return 1.0
    return len(laue_rotations(sg)) / 2.0 * len(_centring_translations(sg))


def half_space_box(bounds: tuple[int, int, int]) -> np.ndarray:
    """Integer hkl with |h| <= bounds, one of each Friedel pair, without 000: (M, 3)."""
    h_max, k_max, l_max = bounds
    h = np.arange(0, h_max + 1)
    k = np.arange(-k_max, k_max + 1)
    l = np.arange(-l_max, l_max + 1)  # noqa: E741
    hkl = np.stack(np.meshgrid(h, k, l, indexing="ij"), axis=-1).reshape(-1, 3)
    hh, kk, ll = hkl.T
    return hkl[(hh > 0) | ((hh == 0) & (kk > 0)) | ((hh == 0) & (kk == 0) & (ll > 0))]


class LaueTable:
    """Orbit representatives of one Laue group on the box |h| <= bounds, with their orbit sizes,
    and per space group which of them are not systematically absent.

    Whether hkl represents its orbit does not depend on the box, so growing the box only appends
    the representatives of the new region: earlier rows (and masks over them) stay valid.
    """

    def __init__(self, rotations: np.ndarray):
        self.rotations = rotations
        self.bounds = (0, 0, 0)
        self.reps = np.zeros((0, 3), dtype=np.int64)
        self.sizes = np.zeros(0, dtype=np.int64)
        self.extent = np.zeros((0, 3), dtype=np.int16)  # |h|, |k|, |l| of each representative
        self._allowed: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def ensure(self, bounds: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grow the table to cover `bounds` (with headroom) if it does not yet; returns (reps, sizes,
        extent) as they are now (rows are only ever appended, so a caller's copy stays consistent)."""
        if any(b > have for b, have in zip(bounds, self.bounds)):
            with self._lock:
                if any(b > have for b, have in zip(bounds, self.bounds)):
                    self._grow(tuple(max(have, math.ceil(b * (1 + _GROWTH)), 16)
                                     for b, have in zip(bounds, self.bounds)))
        return self.reps, self.sizes, self.extent

    def _grow(self, grown: tuple[int, int, int]) -> None:
        box = half_space_box(grown)
        box = box[(np.abs(box) > np.asarray(self.bounds)).any(axis=1)]  # the new region only
        # lexicographic keys of all images at once: key(hR) = hR·w = h·(Rw), w = (base², base, 1),
        # plus a constant offset that keeps every key positive (not needed for comparisons)
        base = 2 * (3 * max(grown) + 1) + 1  # hR stays within ±(|h| + |k| + |l|)
        weights = np.array([base * base, base, 1], dtype=float)
        rotated = np.ascontiguousarray((self.rotations.astype(float) @ weights).T)  # (3, L)
        box_f = box.astype(float)
        own = box_f @ weights  # exact: integers below 2**53
        # a representative has no image with a larger key; a few rotations at a time rule out
        # most rows, so the later (more numerous) comparisons run on the survivors only
        alive = np.arange(len(box))
        for start in range(0, rotated.shape[1] if len(self.rotations) > 2 else 0, 4):  # -1: the half-space
            keys = box_f[alive] @ np.ascontiguousarray(rotated[:, start : start + 4])  # BLAS needs contiguous
            alive = alive[(keys <= own[alive, None]).all(axis=1)]
        fixed = ((box_f[alive] @ rotated) == own[alive, None]).sum(axis=1)
        canonical = alive
        reps = np.concatenate([self.reps, box[canonical]])
        sizes = np.concatenate([self.sizes, len(self.rotations) // fixed])
        extent = np.abs(reps).astype(np.int16)
        for a in (reps, sizes, extent):
            a.setflags(write=False)
        self.reps, self.sizes, self.extent, self.bounds = reps, sizes, extent, grown

    def allowed(self, sg: int, n: int) -> np.ndarray:
        """Which of the first `n` representatives `sg` does not extinguish (absence is a property
        of the orbit).

        Only a rotation that fixes h can extinguish it, so an orbit of full size (no rotation but
        the identity fixes it) can only be extinguished by the centring: the full test runs on
        the few special orbits alone.
        """
        mask = self._allowed.get(sg, np.zeros(0, dtype=bool))
        if len(mask) < n:
            reps, sizes = self.reps[len(mask):n], self.sizes[len(mask):n]
            phase = reps @ _centring_translations(sg).T  # integers times k/2, k/3: far from the tolerance
            more = (np.abs(phase - np.rint(phase)) < 1e-6).all(axis=1)
            special = np.flatnonzero(sizes < len(self.rotations))
            more[special] &= symmetry.is_allowed(sg, reps[special])
            mask = np.concatenate([mask, more])
            mask.setflags(write=False)
            self._allowed[sg] = mask
        return mask[:n]


@functools.cache
def _table_for_key(key: bytes) -> LaueTable:
    return LaueTable(np.frombuffer(key, dtype=np.int64).reshape(-1, 3, 3).copy())


def laue_table(sg: int) -> LaueTable:
    """The (shared, growing) table of a space group's Laue group."""
    return _table_for_key(laue_rotations(sg).tobytes())


@functools.cache
def _tiled_rotations(sg: int | None) -> np.ndarray:
    rot = laue_rotations(sg) if sg is not None else np.stack([np.eye(3, dtype=np.int64), -np.eye(3, dtype=np.int64)])
    out = np.tile(rot, (ORBIT_ROTATIONS // len(rot), 1, 1))
    out.setflags(write=False)
    return out


def orbit_rotations(space_groups, device) -> torch.Tensor:
    """(B, 48, 3, 3) long: each structure's Laue rotations (Friedel pair without a space group), tiled."""
    return torch.as_tensor(np.stack([_tiled_rotations(sg) for sg in space_groups]), device=device)


def hkl_bounds(lattice, q_max: float):
    """Largest |h|, |k|, |l| a reflection with q <= q_max can have: floor(q_max |a| / 2π), (..., 3)."""
    lengths = lattice.norm(dim=-1) if isinstance(lattice, torch.Tensor) else np.linalg.norm(lattice, axis=-1)
    scaled = q_max / (2.0 * math.pi) * lengths + 1e-9
    return scaled.floor().long() if isinstance(scaled, torch.Tensor) else np.floor(scaled).astype(np.int64)


def prepare_tables(lattices: np.ndarray, space_groups, q_max: float) -> None:
    """Grow each Laue group's table once for all of these structures (a stream's window), instead
    of step by step as batches of ever larger cells arrive."""
    bounds = hkl_bounds(np.asarray(lattices, dtype=float).reshape(-1, 3, 3), q_max)
    most: dict[bytes, np.ndarray] = {}
    for b, sg in zip(bounds, space_groups):
        if sg is not None:
            key = laue_rotations(sg).tobytes()
            most[key] = np.maximum(most.get(key, b), b)
    for key, b in most.items():
        _table_for_key(key).ensure(tuple(int(x) for x in b))


def _g2(hkl: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """|g|² = hᵀ G* h for candidates hkl (M, 3) and metrics (b, 3, 3): (b, M), one matmul."""
    h, k, l = hkl.to(metric.dtype).unbind(-1)  # noqa: E741
    monomials = torch.stack([h * h, k * k, l * l, 2 * h * k, 2 * h * l, 2 * k * l], dim=1)
    terms = torch.stack(
        [metric[:, 0, 0], metric[:, 1, 1], metric[:, 2, 2], metric[:, 0, 1], metric[:, 0, 2], metric[:, 1, 2]]
    )
    return (monomials @ terms).T


def _compact(inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column of each True entry of `inside` (b, M), moved to the front of its row in order, and
    the valid mask: (source, valid), both (b, m) with m the longest row's count."""
    slot = torch.cumsum(inside, dim=1) - 1
    m = max(int(slot[:, -1].max().item()) + 1, 1) if inside.shape[1] else 1
    slot = torch.where(inside, slot, torch.full_like(slot, m))  # outside -> spill column
    index = torch.arange(inside.shape[1], device=inside.device).expand_as(slot)
    rows = inside.shape[0]
    source = torch.zeros(rows, m + 1, dtype=torch.long, device=inside.device).scatter_(1, slot, index)
    valid = torch.zeros(rows, m + 1, dtype=torch.bool, device=inside.device).scatter_(1, slot, inside)
    return source[:, :m], valid[:, :m]


def enumerate_orbits(lattice: torch.Tensor, space_groups, q_max: float, q_min: float = 0.0):
    """One representative per reflection orbit with q_min <= q <= q_max, packed to (B, M).

    lattice: (B, 3, 3) rows a, b, c. space_groups: per structure a space-group number or None.
    Returns (hkl (B, M, 3) long, q (B, M), weight (B, M): reflections the representative stands
    for, 0 for padding). The orbits of each Laue group present are enumerated together, each
    on the candidates of its own table, so a batch of mixed symmetry pads only to the longest list.
    """
    device, n = lattice.device, lattice.shape[0]
    g_max, g_min = q_max / (2.0 * math.pi), q_min / (2.0 * math.pi)
    recip = torch.linalg.inv(lattice).transpose(-1, -2)
    metric = recip @ recip.transpose(1, 2)  # (B, 3, 3)
    bounds_all = hkl_bounds(lattice, q_max).cpu().numpy()  # (B, 3)
    groups: dict[bytes | None, list[int]] = {}
    for i, sg in enumerate(space_groups):
        groups.setdefault(None if sg is None else laue_rotations(sg).tobytes(), []).append(i)
    parts = []
    for key, rows in groups.items():
        bounds = tuple(int(b) for b in bounds_all[rows].max(axis=0))
        if key is None:  # Friedel pairs only: every hkl of the half-space, weight 2
            cand = half_space_box(bounds)
            size = np.full(len(cand), 2, dtype=np.int64)
            allowed = None
        else:
            table = _table_for_key(key)
            reps, sizes, extent = table.ensure(bounds)
            near = np.flatnonzero((extent <= np.asarray(bounds, dtype=np.int16)).all(axis=1))
            cand, size = reps[near], sizes[near]
            distinct = sorted({space_groups[i] for i in rows})
            masks = np.stack([table.allowed(sg, len(reps))[near] for sg in distinct])
            allowed = masks[[distinct.index(space_groups[i]) for i in rows]]
        if len(cand) == 0:  # nothing in the box: one 000 placeholder, which g2 > 0 rejects
            cand, size, allowed = np.zeros((1, 3), dtype=np.int64), np.zeros(1, dtype=np.int64), None
        cand_t = torch.as_tensor(cand, device=device)
        index = torch.as_tensor(rows, device=device)
        g2 = _g2(cand_t, metric[index])  # (b, M)
        inside = (g2 <= g_max**2) & (g2 >= g_min**2) & (g2 > 0)
        if allowed is not None:
            inside &= torch.as_tensor(allowed, device=device)
        size_t = torch.as_tensor(size, device=device, dtype=g2.dtype)
        source, valid = _compact(inside)
        hkl, g2_c, weight = cand_t[source], torch.gather(g2, 1, source), size_t[source]
        parts.append((index, hkl, g2_c, weight, valid))
    m = max(p[1].shape[1] for p in parts)
    dtype = lattice.dtype
    hkl_out = torch.zeros(n, m, 3, dtype=torch.long, device=device)
    q_out = torch.zeros(n, m, dtype=dtype, device=device)
    w_out = torch.zeros(n, m, dtype=dtype, device=device)
    for index, hkl, g2_c, weight, valid in parts:
        width = hkl.shape[1]
        hkl_out[index, :width] = torch.where(valid.unsqueeze(-1), hkl, torch.zeros_like(hkl))
        q_out[index, :width] = torch.where(valid, 2.0 * math.pi * torch.sqrt(g2_c.clamp_min(0)), 0.0)
        w_out[index, :width] = torch.where(valid, weight, 0.0)
    return hkl_out, q_out, w_out

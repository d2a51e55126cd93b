"""Space-group tables for labels and checks: crystal system, centring, absences, extinction groups.

Everything is computed lazily (and cached) from spglib's database of symmetry operations, so
there is no hand-typed table to get wrong. Each space group is taken in its standard (ITA
default) setting: the first Hall number spglib lists for it, i.e. unique axis b / cell choice 1
for monoclinic groups, hexagonal axes for the rhombohedral (R) groups and origin choice 1 where
ITA gives two origins. The origin choice does not matter for absences (an origin shift o changes
h·t by h·(R - 1)·o, which is zero whenever hR = h), so these tables agree with pyxtal's settings
(origin choice 2), which the synthetic generator uses; the tests check this for all 230 groups.

Systematic absences (general position only): a reflection h = (h, k, l) is absent when some
operation (R, t) of the group, centring translations included, leaves it fixed (hR = h, with h a
row vector and x' = Rx + t acting on fractional column vectors) and gives it a non-integer
phase h·t, because then F(h) = exp(2πi h·t) F(hR) = exp(2πi h·t) F(h) forces F(h) = 0.

Extinction groups: a powder pattern cannot tell apart space groups that have the same lattice
metric and the same absent reflections, so the honest classification label is the extinction
group. Here two space groups share one when they belong to the same crystal system and have
identical absence sets on the box |h|, |k|, |l| <= 6. Every reflection condition of the 230
groups is a congruence modulo 2, 3, 4 or 6 (e.g. 00l: l = 6n for 6_1, hhl: 2h + l = 4n for
I4_1md), so this box holds a witness for every difference; boxes of 4, 8 and 12 give exactly the
same grouping (checked when this was written; the tests re-check 8). Groups are numbered
0, 1, ... in the order of the lowest space-group number they contain.

With standard settings only this gives ``N_EXTINCTION_GROUPS`` = 112 groups: 1 triclinic,
6 monoclinic, 44 orthorhombic, 31 tetragonal, 6 trigonal, 7 hexagonal and 17 cubic. That is
fewer than the extinction symbols of International Tables Vol. A (Table 3.2.3), which also list
non-standard settings (P 1 n 1 and P 1 a 1 besides P 1 c 1, Pcab besides Pbca, ...): a model
trained on standard-setting crystals only ever sees one setting per group, and a measured
pattern indexed in another setting has to be transformed to the standard one first. Known
ITA groupings come out as expected, e.g. {P2, Pm, P2/m}, {P2_1, P2_1/m}, {F23, Fm-3, F432,
F-43m, Fm-3m}, {Fd-3, Fd-3m}, {I23, I2_13, Im-3, I432, I-43m, Im-3m}, and Ia-3d alone.

Names are ``"<crystal system> <centring> <lowest member symbol> [<member numbers>]"``, for
instance ``"cubic F F23 [196, 202, 209, 216, 225]"``; the member tuple is what matters.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import numpy as np
import spglib

CRYSTAL_SYSTEMS: tuple[str, ...] = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "trigonal",
    "hexagonal",
    "cubic",
)

#: Last space-group number of each crystal system, in the order of CRYSTAL_SYSTEMS (the
#: definition of the numbering in International Tables, not a data table).
_SYSTEM_LAST_NUMBER = (2, 15, 74, 142, 167, 194, 230)

#: Half-width of the hkl box on which absence sets are compared to form extinction groups.
GROUPING_HKL_MAX = 6

_PHASE_TOL = 1e-6


@contextlib.contextmanager
def quiet_spglib():
    """Silence spglib 2.x's DeprecationWarning about its old error handling (one per call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Set OLD_ERROR_HANDLING", category=DeprecationWarning)
        yield


def check_space_group(sg: int) -> int:
    """Reject anything that is not a space-group number, so table look-ups cannot wrap around."""
    if isinstance(sg, bool) or not isinstance(sg, (int, np.integer)) or not 1 <= int(sg) <= 230:
        raise ValueError(f"space group must be an integer from 1 to 230, got {sg!r}")
    return int(sg)


@functools.cache
def _first_hall_numbers() -> tuple[int, ...]:
    """The first (standard-setting) Hall number of each space group, index sg - 1."""
    first: dict[int, int] = {}
    with quiet_spglib():
        for hall in range(1, 531):
            first.setdefault(spglib.get_spacegroup_type(hall).number, hall)
    return tuple(first[n] for n in range(1, 231))


def hall_number(sg: int) -> int:
    """spglib Hall number of the standard setting used by every table in this module."""
    return _first_hall_numbers()[check_space_group(sg) - 1]


@functools.cache
def _spacegroup_type(sg: int):
    with quiet_spglib():
        return spglib.get_spacegroup_type(hall_number(sg))


@functools.cache
def symmetry_operations(sg: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (n, 3, 3) int and translations (n, 3) of the conventional cell, centrings included."""
    with quiet_spglib():
        ops = spglib.get_symmetry_from_database(hall_number(sg))
    rot = np.array(ops["rotations"], dtype=np.int64)
    trans = np.array(ops["translations"], dtype=float)
    rot.setflags(write=False)
    trans.setflags(write=False)
    return rot, trans


@functools.cache
def _absence_operations(sg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operations that can extinguish a reflection (non-lattice translation), laid out for matmuls.

    Returns (R - 1 of each distinct rotation stacked as (3, 3u) float, rotation index of each
    operation (n,), fractional translations (3, n)). Many operations share a rotation (centring
    translations), so testing hR = h once per distinct rotation saves most of the work.
    """
    rot, trans = symmetry_operations(sg)
    frac = trans - np.rint(trans)
    keep = np.abs(frac).max(axis=1) > _PHASE_TOL
    rot, frac = rot[keep], frac[keep]
    unique, index = np.unique(rot.reshape(-1, 9), axis=0, return_inverse=True)
    minus_one = unique.reshape(-1, 3, 3) - np.eye(3, dtype=np.int64)
    stacked = np.ascontiguousarray(minus_one.transpose(1, 0, 2).reshape(3, -1), dtype=float)
    out = (stacked, np.asarray(index, dtype=np.int64).reshape(-1), np.ascontiguousarray(frac.T))
    for a in out:
        a.setflags(write=False)
    return out


def crystal_system(sg: int) -> str:
    """Crystal system of a space group, from the ITA numbering ranges."""
    return CRYSTAL_SYSTEMS[crystal_system_index(sg)]


def crystal_system_index(sg: int) -> int:
    """Index of the crystal system in CRYSTAL_SYSTEMS (a 7-class label)."""
    sg = check_space_group(sg)
    return next(i for i, last in enumerate(_SYSTEM_LAST_NUMBER) if sg <= last)


def lattice_centering(sg: int) -> str:
    """Centring letter of the standard setting: 'P', 'A', 'C', 'I', 'F' or 'R' ('B' never occurs)."""
    return space_group_symbol(sg)[0]


def space_group_symbol(sg: int) -> str:
    """Short Hermann–Mauguin symbol as spglib writes it, e.g. 'P2_1/c', 'Fm-3m', 'R-3m'."""
    return str(_spacegroup_type(check_space_group(sg)).international_short)


def is_allowed(sg: int, hkl: np.ndarray) -> np.ndarray:
    """True where a reflection is not systematically absent; hkl has shape (..., 3) of integers.

    Vectorised over reflections and over the operations that carry a fractional translation,
    so it is cheap enough to call inside tests and data checks on whole reflection lists.
    """
    hkl = np.asarray(hkl)
    if hkl.shape[-1:] != (3,):
        raise ValueError(f"hkl must have shape (..., 3), got {hkl.shape}")
    h = np.rint(hkl).astype(np.int64)
    if not np.array_equal(h, hkl):
        raise ValueError("hkl must hold integer Miller indices")
    stacked, rot_index, trans = _absence_operations(check_space_group(sg))
    flat = h.reshape(-1, 3).astype(float)  # small integers: float matmuls are exact and use BLAS
    if len(rot_index) == 0 or len(flat) == 0:
        return np.ones(h.shape[:-1], dtype=bool)
    moved = (flat @ stacked).reshape(len(flat), -1, 3)  # h(R - 1) for each distinct R
    fixed = ~moved.any(axis=-1)  # (K, u)
    phase = flat @ trans  # (K, n)
    extinct = fixed[:, rot_index] & (np.abs(phase - np.rint(phase)) > _PHASE_TOL)
    return ~extinct.any(axis=1).reshape(h.shape[:-1])


@functools.cache
def hkl_box(hkl_max: int) -> np.ndarray:
    """All (h, k, l) with |h|, |k|, |l| <= hkl_max, shape (M, 3), in a fixed order."""
    r = np.arange(-hkl_max, hkl_max + 1)
    box = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    box.setflags(write=False)
    return box


@functools.cache
def _absence_mask(sg: int, hkl_max: int) -> np.ndarray:
    mask = ~is_allowed(sg, hkl_box(hkl_max))
    mask.setflags(write=False)
    return mask


def systematic_absences(sg: int, hkl_max: int = 6) -> frozenset[tuple[int, int, int]]:
    """Reflections with |h|, |k|, |l| <= hkl_max that the general position extinguishes."""
    box = hkl_box(int(hkl_max))
    return frozenset(map(tuple, box[_absence_mask(check_space_group(sg), int(hkl_max))].tolist()))


@functools.cache
def _extinction_table() -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """(members of each group, group index of each space group), groups ordered by lowest member."""
    groups: dict[tuple[int, bytes], list[int]] = {}
    for sg in range(1, 231):
        key = (crystal_system_index(sg), np.packbits(_absence_mask(sg, GROUPING_HKL_MAX)).tobytes())
        groups.setdefault(key, []).append(sg)
    members = tuple(sorted(tuple(m) for m in groups.values()))
    index = [0] * 230
    for i, group in enumerate(members):
        for sg in group:
            index[sg - 1] = i
    return members, tuple(index)


def extinction_group(sg: int) -> int:
    """0-based extinction-group index of a space group (the label a powder pattern can support)."""
    return _extinction_table()[1][check_space_group(sg) - 1]


def _check_group(index: int) -> int:
    n = len(_extinction_table()[0])
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < n:
        raise ValueError(f"extinction group index must be an integer from 0 to {n - 1}, got {index!r}")
    return int(index)


def extinction_group_members(index: int) -> tuple[int, ...]:
    """Space-group numbers of one extinction group, ascending."""
    return _extinction_table()[0][_check_group(index)]


def extinction_group_name(index: int) -> str:
    """Readable name: crystal system, centring, symbol of the lowest member, and all members."""
    members = extinction_group_members(index)
    first = members[0]
    numbers = ", ".join(str(m) for m in members)
    return f"{crystal_system(first)} {lattice_centering(first)} {space_group_symbol(first)} [{numbers}]"


def __getattr__(name: str):
    # N_EXTINCTION_GROUPS is computed on first access, so importing this module stays cheap.
    if name == "N_EXTINCTION_GROUPS":
        return len(_extinction_table()[0])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Fast random crystals for an endless training stream (the recipe of Schopmans et al. 2023).

Space-group classifiers are trained on synthetic crystals drawn on the fly: pick a space group,
occupy Wyckoff positions at random, draw a lattice consistent with the crystal system and a cell
volume from a density estimate, apply the symmetry. ``pyxtal.pyxtal.from_random`` does this in
~30 ms per crystal, too slow to feed a GPU simulator, so this module keeps only what is needed:
pyxtal's Wyckoff operations are turned once per space group into numpy arrays (cached), and a
crystal is then a handful of small vectorised numpy operations (about 1.2-1.4 ms on one core).

Recipe of ``RandomCrystalGenerator.sample`` (all randomness from one ``numpy.random.Generator``,
so a seed gives the same stream):

1. Space group: uniform over the allowed groups unless ``space_group_weights`` is given.
2. Orbits: a number of orbits uniform in ``min_orbits``..``max_orbits`` (default 2..8); each
   takes a Wyckoff position whose multiplicity still fits in ``max_atoms`` (conventional cell),
   drawn with weight 1 + (its number of free parameters). A position without free parameters
   (0 dof) is a fixed set of points and is used at most once. The weights and the floor of two
   orbits are there for honest labels: with one orbit and uniform choice only ~35 % (all sizes:
   ~76 %) of the crystals have exactly the requested space group, since a lone orbit or an
   orbit on a fixed special position easily gains symmetry (one atom in P1 is P-1); with them
   ~92 % do (measured with spglib, symprec 1e-3, 3000 crystals over all 230 groups).
3. Elements: 1..``max_elements`` distinct elements (uniform count, capped by the number of
   orbits), drawn without replacement from ``elements`` with ``element_weights`` (uniform by
   default: a frequency prior would mostly teach the model oxygen, and the space-group label
   does not depend on chemistry). Every chosen element gets at least one orbit.
4. Volume: the sum over atoms of the van der Waals sphere volume 4/3 π r_vdW³ (pymatgen's
   ``Element.van_der_waals_radius``) times a packing factor drawn from a log-normal with median
   ``PACKING_MEDIAN`` = 0.52 and log-sd ``PACKING_SIGMA`` = 0.26, clipped to [0.3, 1.2]. Those
   constants are the geometric mean and spread of V_cell / Σ 4/3 π r_vdW³ over the 128 ordered
   inorganic structures that ship with pymatgen (``util/structures``), pyxtal
   (``database/cifs``), ase (``test/testdata``) and this package's reference CIFs (organics,
   noble gases and two outliers, LiCs and a hypothetical JARVIS entry, left out; 95 % lie in
   0.37-0.92). Van der Waals spheres were chosen over covalent ones (log-sd 0.56) and pymatgen's
   empirical atomic radii (0.62) because they spread least and stay sensible for H, N, O, F,
   whose covalent spheres are tiny compared with the room they take in a solid. A small,
   oxide-heavy sample, but it gives realistic densities, which is what peak positions need.
5. Lattice: shape by crystal system (cubic a = b = c; tetragonal a = b; trigonal and hexagonal
   a = b, γ = 120°, hexagonal axes for R groups; orthorhombic all 90°; monoclinic unique axis b,
   β uniform in 90-120°; triclinic angles uniform in 60-120° with a non-degenerate metric), axis
   ratios log-normal (σ = ``AXIS_RATIO_SIGMA``, clipped to 1/3..3), then scaled to the volume.
   Rows of the matrix are a, b, c: a along x, b in the xy plane.
6. Coordinates: a uniform random vector is pushed through every operation of the Wyckoff
   position (pyxtal writes each as a function of the free parameters, so this lands exactly on
   the special position) and wrapped into [0, 1). An orbit whose points coincide within 1e-4
   (an accidental extra site symmetry) is resampled, so atom counts equal multiplicities; an
   orbit that puts atoms closer than ``min_distance_factor`` × (r_i + r_j) (covalent radii of
   Cordero et al., Dalton Trans. 2008, 2832, as tabulated in pymatgen) to each other or to
   atoms already placed (periodic images in the 27 neighbouring cells; by symmetry only the
   orbit's first point needs testing, so it is O(N·27) per orbit) is resampled
   up to ``orbit_tries`` times, after which the whole composition is redrawn (same space group,
   up to ``max_tries`` times).

Random special parameters and few orbits can give a crystal more symmetry than requested (one
atom in P1 is P-1). ``verify_symmetry=True`` redraws those with spglib (about 3 ms more per crystal); otherwise
``SyntheticCrystal.space_group`` is the group the crystal was built in, which spglib returns for
most crystals (fraction measured in the tests) and a supergroup for the rest.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from xrd_nexus_ml.errors import StructureError
from xrd_nexus_ml.physics import symmetry
from xrd_nexus_ml.physics.crystal import CrystalArrays

#: Log-normal packing factor V_cell / Σ 4/3 π r_vdW³ (see the module docstring for the fit).
PACKING_MEDIAN = 0.52
PACKING_SIGMA = 0.26
PACKING_BOUNDS = (0.3, 1.2)
#: Log-sd of the axis ratios b/a and c/a, and their bounds.
AXIS_RATIO_SIGMA = 0.35
AXIS_RATIO_BOUNDS = (1 / 3, 3.0)
#: Smallest accepted triclinic volume factor sqrt(1 - Σcos² + 2Πcos) (1 for a right-angled cell).
MIN_TRICLINIC_VOLUME_FACTOR = 0.3

_NOBLE_GASES = {2, 10, 18, 36, 54}
_NO_STABLE_ISOTOPE = {43, 61}  # Tc, Pm
#: Default elements: H..Bi without the noble gases and without Tc and Pm (no stable isotope).
DEFAULT_ELEMENTS: tuple[int, ...] = tuple(
    z for z in range(1, 84) if z not in _NOBLE_GASES and z not in _NO_STABLE_ISOTOPE
)

_DUPLICATE_TOL = 1e-4  # fractional distance below which two orbit points are one site
_IMAGES = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)
_CENTRE_IMAGE = 13  # index of (0, 0, 0) in _IMAGES


@functools.cache
def _element_tables() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Covalent and van der Waals radii (Å, NaN where unknown) and symbols, indexed by Z = 0..118."""
    from pymatgen.core import Element

    try:  # moved to pymatgen.core in recent pymatgen
        from pymatgen.core.molecule_structure_comparator import CovalentRadius
    except ImportError:  # pragma: no cover - older pymatgen
        from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    covalent = np.full(119, np.nan)
    vdw = np.full(119, np.nan)
    symbols = [""] * 119
    with warnings.catch_warnings():  # pymatgen warns for every superheavy element without data
        warnings.simplefilter("ignore")
        for z in range(1, 119):
            element = Element.from_Z(z)
            symbols[z] = element.symbol
            covalent[z] = CovalentRadius.radius.get(element.symbol, np.nan)
            if element.van_der_waals_radius is not None:
                vdw[z] = float(element.van_der_waals_radius)
    covalent.setflags(write=False)
    vdw.setflags(write=False)
    return covalent, vdw, tuple(symbols)


@dataclass(frozen=True, eq=False)
class WyckoffArrays:
    """One Wyckoff position of a space group as arrays; ``points(x)`` is its orbit for free vector x."""

    letter: str
    multiplicity: int
    dof: int
    rotations: np.ndarray  # (m, 3, 3)
    translations: np.ndarray  # (m, 3)

    def points(self, x: np.ndarray) -> np.ndarray:
        """The m sites generated by free parameters x (3,), wrapped into [0, 1)."""
        return _wrap(self.rotations @ x + self.translations)


def _wrap(frac: np.ndarray) -> np.ndarray:
    out = frac - np.floor(frac)
    out[out >= 1.0] = 0.0  # -1e-17 - floor(-1e-17) rounds to 1.0
    return out


@functools.cache
def wyckoff_positions(sg: int) -> tuple[WyckoffArrays, ...]:
    """Wyckoff positions of a space group (pyxtal's standard setting), general position first."""
    from pyxtal.symmetry import Group  # slow import (~1 s): only when a generator needs it

    sg = symmetry.check_space_group(sg)
    out = []
    for wp in Group(sg).Wyckoff_positions:
        affine = np.array([op.affine_matrix for op in wp.ops], dtype=float)
        rot = np.ascontiguousarray(affine[:, :3, :3])
        trans = np.ascontiguousarray(affine[:, :3, 3])
        rot.setflags(write=False)
        trans.setflags(write=False)
        pos = WyckoffArrays(str(wp.letter), int(wp.multiplicity), int(wp.get_dof()), rot, trans)
        if len(rot) != pos.multiplicity or _has_duplicates(pos.points(np.array([0.1234, 0.3571, 0.6803]))):
            raise StructureError(f"space group {sg}: position {pos.letter} does not give {pos.multiplicity} sites")
        out.append(pos)
    return tuple(out)


@functools.cache
def _position_table(sg: int) -> tuple[tuple[WyckoffArrays, ...], np.ndarray, np.ndarray, np.ndarray, tuple]:
    """(positions, multiplicities, 0-dof mask, choice weights 1 + dof, orbit of every 0-dof position)."""
    positions = wyckoff_positions(sg)
    mult = np.array([p.multiplicity for p in positions])
    fixed = np.array([p.dof == 0 for p in positions])
    weight = np.array([1.0 + p.dof for p in positions])
    fixed_points = tuple(p.points(np.zeros(3)) if p.dof == 0 else None for p in positions)
    return positions, mult, fixed, weight, fixed_points


def _has_duplicates(points: np.ndarray) -> bool:
    d = points[:, None, :] - points[None, :, :]
    d -= np.rint(d)
    close = np.abs(d).max(axis=-1) < _DUPLICATE_TOL
    return int(close.sum()) > len(points)


def lattice_from_parameters(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Rows a, b, c (Å) from lengths and angles in degrees; a along x, b in the xy plane."""
    ca, cb, cg = np.cos(np.radians([alpha, beta, gamma]))
    sg = np.sin(np.radians(gamma))
    cy = (ca - cb * cg) / sg if sg > 1e-8 else np.inf
    cz2 = 1.0 - cb * cb - cy * cy
    if not cz2 > 1e-10:
        raise StructureError(f"lattice angles {alpha:g}, {beta:g}, {gamma:g} do not form a cell")
    matrix = np.array([[a, 0.0, 0.0], [b * cg, b * sg, 0.0], [c * cb, c * cy, c * np.sqrt(cz2)]])
    matrix[np.abs(matrix) < 1e-12 * max(a, b, c)] = 0.0  # cos 90° is 6e-17, not 0
    return matrix


@dataclass(frozen=True, eq=False, repr=False)
class SyntheticCrystal:
    """A random crystal in the conventional cell of ``space_group``.

    The setting is pyxtal's: the ITA standard with unique axis b, hexagonal axes for R groups
    and origin choice 2 where ITA offers two (the origin does not change absences).

    Compared by identity (it holds arrays). Works wherever the simulator takes a structure:
    it has ``lattice``, ``frac_coords`` and ``atomic_numbers``.
    """

    lattice: np.ndarray  # (3, 3) rows a, b, c in Å
    frac_coords: np.ndarray  # (N, 3) in [0, 1)
    atomic_numbers: np.ndarray  # (N,) int
    space_group: int
    wyckoff: tuple[tuple[str, str], ...]  # (element symbol, Wyckoff letter) per orbit, in atom order

    @property
    def crystal_system(self) -> str:
        return symmetry.crystal_system(self.space_group)

    @property
    def extinction_group(self) -> int:
        return symmetry.extinction_group(self.space_group)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    def __len__(self) -> int:
        return len(self.atomic_numbers)

    def __repr__(self) -> str:
        symbols = _element_tables()[2]
        z, n = np.unique(self.atomic_numbers, return_counts=True)
        formula = "".join(f"{symbols[int(a)]}{int(b)}" for a, b in zip(z, n))
        return (
            f"SyntheticCrystal({symmetry.space_group_symbol(self.space_group)} ({self.space_group}), "
            f"{formula}, {len(self)} atoms, V={self.volume:.1f} Å³)"
        )

    def to_crystal_arrays(self):
        """The simulator's input, carrying the space group so reflections are computed per orbit."""
        return CrystalArrays.from_arrays(self.lattice, self.frac_coords, self.atomic_numbers,
                                         space_group=self.space_group)

    def to_structure(self):
        """pymatgen Structure with the same cell, sites and order."""
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.atomic_numbers.tolist(), self.frac_coords)


class RandomCrystalGenerator:
    """Endless stream of random crystals, ~1.3 ms each; see the module docstring for the recipe.

    ``seed`` (int, Generator or None) fixes the stream. ``space_groups`` restricts the groups
    (default: all 230 that can fit in ``max_atoms``); ``space_group_weights`` and
    ``element_weights`` replace the uniform choices. ``elements`` are symbols or Z.
    """

    def __init__(
        self,
        seed: int | np.random.Generator | None = None,
        space_groups: Sequence[int] | None = None,
        elements: Sequence[str | int] | None = None,
        max_atoms: int = 100,
        max_orbits: int = 8,
        space_group_weights: Sequence[float] | None = None,
        *,
        min_orbits: int = 2,
        element_weights: Sequence[float] | None = None,
        max_elements: int = 4,
        min_distance_factor: float = 0.5,
        verify_symmetry: bool = False,
        symprec: float = 1e-3,
        orbit_tries: int = 10,
        max_tries: int = 200,
    ):
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        if min(max_atoms, min_orbits, max_elements, orbit_tries, max_tries) < 1 or max_orbits < min_orbits:
            raise ValueError(
                "max_atoms, min_orbits, max_elements, orbit_tries and max_tries must be >= 1, "
                "and max_orbits >= min_orbits"
            )
        if min_distance_factor < 0:
            raise ValueError(f"min_distance_factor must be >= 0, got {min_distance_factor}")
        self.max_atoms = int(max_atoms)
        self.max_orbits = int(max_orbits)
        self.min_orbits = int(min_orbits)
        self.max_elements = int(max_elements)
        self.min_distance_factor = float(min_distance_factor)
        self.verify_symmetry = bool(verify_symmetry)
        self.symprec = float(symprec)
        self.orbit_tries = int(orbit_tries)
        self.max_tries = int(max_tries)

        requested = space_groups is not None
        groups = [symmetry.check_space_group(sg) for sg in (space_groups if requested else range(1, 231))]
        if space_group_weights is not None:
            weights = np.asarray(space_group_weights, dtype=float)
            if weights.shape != (len(groups),) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(f"space_group_weights must be {len(groups)} non-negative numbers, not all 0")
        else:
            weights = np.ones(len(groups))
        fits = np.array([_smallest_multiplicity(sg) <= self.max_atoms for sg in groups])
        if requested and not fits.all():
            bad = [sg for sg, ok in zip(groups, fits) if not ok]
            raise ValueError(f"space groups {bad} have no Wyckoff position with at most {self.max_atoms} atoms")
        self.space_groups = tuple(sg for sg, ok in zip(groups, fits) if ok)
        if not self.space_groups:
            raise ValueError("no space group left to sample")
        weights = weights[fits]
        self._sg_cumulative = np.cumsum(weights / weights.sum())

        radii, vdw_radii, symbols = _element_tables()
        zs = []
        for e in elements if elements is not None else DEFAULT_ELEMENTS:
            z = int(e) if isinstance(e, (int, np.integer)) else (symbols.index(e) if e in symbols else -1)
            if not 1 <= z <= 118 or np.isnan(radii[z]) or np.isnan(vdw_radii[z]):
                raise StructureError(f"element {e!r}: unknown, or no covalent or van der Waals radius")
            zs.append(z)
        if not zs or len(set(zs)) != len(zs):
            raise ValueError("elements must be a non-empty list without repeats")
        self.elements = np.array(zs, dtype=np.int64)
        if element_weights is not None:
            ew = np.asarray(element_weights, dtype=float)
            if ew.shape != (len(zs),) or (ew < 0).any() or (ew > 0).sum() < 1:
                raise ValueError(f"element_weights must be {len(zs)} non-negative numbers, not all 0")
            self._element_p = ew / ew.sum()
        else:
            self._element_p = None
        # rng.choice without replacement cannot draw more elements than have non-zero weight
        self._max_elements = min(self.max_elements, int((ew > 0).sum()) if element_weights is not None else len(zs))
        self._radii = radii
        self._sphere_volume = 4.0 / 3.0 * np.pi * np.nan_to_num(vdw_radii) ** 3
        self._symbols = symbols

    def __iter__(self) -> Iterator[SyntheticCrystal]:
        while True:
            yield self.sample()

    def sample(self) -> SyntheticCrystal:
        """One crystal; the space group is drawn first and kept while compositions are redrawn."""
        rng = self.rng
        index = int(np.searchsorted(self._sg_cumulative, rng.random(), side="right"))
        sg = self.space_groups[min(index, len(self.space_groups) - 1)]  # guards cumsum rounding
        for _ in range(self.max_tries):
            crystal = self._attempt(sg)
            if crystal is not None:
                return crystal
        raise StructureError(
            f"space group {sg}: no crystal without short contacts in {self.max_tries} tries "
            f"(min_distance_factor={self.min_distance_factor})"
        )

    # -- internals ---------------------------------------------------------------------------

    def _attempt(self, sg: int) -> SyntheticCrystal | None:
        rng = self.rng
        positions, mult, fixed, weight, fixed_points = _position_table(sg)
        available = np.ones(len(positions), dtype=bool)
        remaining = self.max_atoms
        chosen: list[int] = []
        for _ in range(int(rng.integers(self.min_orbits, self.max_orbits + 1))):
            candidates = np.flatnonzero(available & (mult <= remaining))
            if len(candidates) == 0:
                break
            cumulative = np.cumsum(weight[candidates])
            pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            i = int(candidates[min(pick, len(candidates) - 1)])
            chosen.append(i)
            remaining -= int(mult[i])
            if fixed[i]:
                available[i] = False
        # 0-dof orbits first: they cannot be resampled, so later orbits make room around them.
        chosen.sort(key=lambda i: not fixed[i])
        n_orbits = len(chosen)

        n_elements = min(int(rng.integers(1, self._max_elements + 1)), n_orbits)
        picked = rng.choice(len(self.elements), size=n_elements, replace=False, p=self._element_p)
        assign = np.concatenate([np.arange(n_elements), rng.integers(0, n_elements, n_orbits - n_elements)])
        rng.shuffle(assign)
        orbit_z = self.elements[picked[assign]]
        z = np.repeat(orbit_z, mult[chosen])

        packing = np.clip(PACKING_MEDIAN * np.exp(PACKING_SIGMA * rng.standard_normal()), *PACKING_BOUNDS)
        volume = packing * float(self._sphere_volume[z].sum())
        lattice = self._lattice(symmetry.crystal_system(sg), volume)
        radii = self._radii[z]
        limit = self.min_distance_factor * radii
        images = _IMAGES @ lattice
        if self.min_distance_factor > 0:
            shortest = np.sqrt((images[np.arange(27) != _CENTRE_IMAGE] ** 2).sum(axis=1).min())
            if shortest < 2 * limit.max():
                return None  # an atom would touch its own periodic image

        coords = np.empty((len(z), 3))
        start = 0
        for i in chosen:
            pos, end = positions[i], start + int(mult[i])
            for _ in range(self.orbit_tries if pos.dof else 1):
                pts = fixed_points[i] if pos.dof == 0 else pos.points(rng.random(3))
                if self._placeable(pts, limit[start], coords[:start], limit[:start], lattice, images, pos.dof > 0):
                    coords[start:end] = pts
                    break
            else:
                return None
            start = end

        symbols = self._symbols
        wyckoff = tuple((symbols[int(orbit_z[k])], positions[i].letter) for k, i in enumerate(chosen))
        lattice.setflags(write=False)
        coords.setflags(write=False)
        z.setflags(write=False)
        crystal = SyntheticCrystal(lattice, coords, z, sg, wyckoff)
        if self.verify_symmetry and detected_space_group(crystal, self.symprec) != sg:
            return None
        return crystal

    def _placeable(
        self,
        pts: np.ndarray,
        lim_new: float,
        old: np.ndarray,
        lim_old: np.ndarray,
        lattice: np.ndarray,
        images: np.ndarray,
        check_duplicates: bool,
    ) -> bool:
        """No duplicate points within the orbit and no contact shorter than the limit (27 images).

        Only the orbit's first point is tested: every symmetry operation is an isometry that
        maps the orbit onto itself and each earlier orbit onto itself, so the distances from
        point i to everything equal those from point 0. That makes the check O(N·27) per orbit.
        """
        d = pts - pts[0]
        d -= np.rint(d)
        if check_duplicates and int((np.abs(d).max(axis=-1) < _DUPLICATE_TOL).sum()) > 1:
            return False
        if self.min_distance_factor == 0:
            return True
        d2 = _image_distances2(d, lattice, images)
        d2[0, _CENTRE_IMAGE] = np.inf  # an atom is not its own neighbour
        if d2.min() < (2 * lim_new) ** 2:
            return False
        if len(old) == 0:
            return True
        d = old - pts[0]
        d -= np.rint(d)
        pair = lim_new + lim_old
        return not (_image_distances2(d, lattice, images).min(axis=-1) < pair * pair).any()

    def _lattice(self, system: str, volume: float) -> np.ndarray:
        rng = self.rng
        lo, hi = AXIS_RATIO_BOUNDS

        def ratio() -> float:
            return float(np.clip(np.exp(AXIS_RATIO_SIGMA * rng.standard_normal()), lo, hi))

        alpha = beta = gamma = 90.0
        if system == "cubic":
            b = c = 1.0
        elif system == "tetragonal":
            b, c = 1.0, ratio()
        elif system in ("trigonal", "hexagonal"):
            b, c, gamma = 1.0, ratio(), 120.0
        else:
            b, c = ratio(), ratio()
            if system == "monoclinic":
                beta = float(rng.uniform(90.0, 120.0))
            elif system == "triclinic":
                while True:
                    alpha, beta, gamma = rng.uniform(60.0, 120.0, size=3)
                    cos = np.cos(np.radians([alpha, beta, gamma]))
                    factor2 = 1 - (cos**2).sum() + 2 * cos.prod()
                    if factor2 > MIN_TRICLINIC_VOLUME_FACTOR**2:
                        break
        unit = lattice_from_parameters(1.0, b, c, alpha, beta, gamma)
        return unit * (volume / abs(np.linalg.det(unit))) ** (1.0 / 3.0)


def _image_distances2(frac_diff: np.ndarray, lattice: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Squared distances |d + s|² for wrapped differences d (..., 3) and the 27 image shifts s.

    Expanded as |d|² + 2 d·s + |s|² so the work is one (M, 3) x (3, 27) matmul rather than an
    (M, 27, 3) temporary: this check is most of the generator's time.
    """
    cart = frac_diff @ lattice
    d2 = (cart * cart).sum(axis=-1)[..., None] + 2.0 * (cart @ images.T) + (images * images).sum(axis=-1)
    return d2


@functools.cache
def _smallest_multiplicity(sg: int) -> int:
    return min(p.multiplicity for p in wyckoff_positions(sg))


def detected_space_group(crystal: SyntheticCrystal, symprec: float = 1e-3) -> int:
    """Space-group number spglib finds for a crystal (0 if none): the check behind ``verify_symmetry``."""
    import spglib

    with symmetry.quiet_spglib():
        cell = (crystal.lattice, crystal.frac_coords, crystal.atomic_numbers)
        dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    return 0 if dataset is None else int(dataset.number)

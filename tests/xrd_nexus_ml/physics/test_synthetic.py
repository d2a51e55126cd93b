"""Random crystal generator: symmetry, counts, lattices, distances, determinism and speed."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from xrd_nexus_ml.errors import StructureError
from xrd_nexus_ml.physics import symmetry as sym
from xrd_nexus_ml.physics.synthetic import (
    DEFAULT_ELEMENTS,
    RandomCrystalGenerator,
    SyntheticCrystal,
    _element_tables,
    detected_space_group,
    lattice_from_parameters,
    wyckoff_positions,
)

#: Groups spread over all crystal systems, centrings and screw/glide types.
SPREAD = (1, 2, 4, 9, 14, 15, 19, 33, 43, 61, 62, 64, 70, 74, 88, 92, 122, 129, 139, 141, 142, 146, 148,
          152, 161, 166, 167, 173, 176, 186, 191, 194, 198, 205, 206, 212, 216, 221, 225, 227, 229, 230)


@pytest.fixture(scope="module")
def sample() -> list[SyntheticCrystal]:
    gen = RandomCrystalGenerator(seed=7, space_groups=SPREAD)
    return [gen.sample() for _ in range(126)]  # ~3 per group


def _images_min_distance(crystal: SyntheticCrystal) -> np.ndarray:
    """Brute-force (N, N) shortest distances over the 27 neighbouring cells."""
    f = crystal.frac_coords
    d = f[:, None] - f[None]
    d -= np.rint(d)
    shifts = np.array(list(itertools.product((-1, 0, 1), repeat=3))) @ crystal.lattice
    d2 = (((d @ crystal.lattice)[:, :, None, :] + shifts) ** 2).sum(-1)
    n = len(f)
    d2[np.arange(n), np.arange(n), 13] = np.inf
    return np.sqrt(d2.min(-1))


def test_wyckoff_orbits_are_closed_under_the_general_position():
    rng = np.random.default_rng(0)
    for sg in (14, 63, 141, 166, 191, 225, 227, 230):
        general = wyckoff_positions(sg)[0]
        assert general.multiplicity == max(p.multiplicity for p in wyckoff_positions(sg))
        for pos in wyckoff_positions(sg):
            pts = pos.points(rng.random(3))
            assert pts.shape == (pos.multiplicity, 3) and ((pts >= 0) & (pts < 1)).all()
            images = (general.rotations @ pts[0] + general.translations) % 1.0
            d = images[:, None] - pts[None]
            d -= np.rint(d)
            hit = np.abs(d).max(-1) < 1e-8
            assert hit.any(axis=0).all() and hit.any(axis=1).all(), (sg, pos.letter)


def test_pyxtal_settings_have_the_absences_of_the_symmetry_tables():
    """The generator uses pyxtal's operations, the labels spglib's: their absences must agree."""
    hkl = sym.hkl_box(4).astype(float)
    for sg in range(1, 231):
        general = wyckoff_positions(sg)[0]
        moved = np.einsum("kj,nji->nki", hkl, general.rotations)
        fixed = (moved == hkl[None]).all(-1)
        phase = general.translations @ hkl.T
        absent = (fixed & (np.abs(phase - np.rint(phase)) > 1e-6)).any(0)
        assert np.array_equal(absent, sym._absence_mask(sg, 4)), sg


def test_same_seed_same_stream_and_other_seed_differs():
    a = RandomCrystalGenerator(seed=123)
    b = RandomCrystalGenerator(seed=123)
    c = RandomCrystalGenerator(seed=124)
    xs, ys, zs = ([g.sample() for _ in range(15)] for g in (a, b, c))
    for x, y in zip(xs, ys):
        assert x.space_group == y.space_group and x.wyckoff == y.wyckoff
        assert np.array_equal(x.lattice, y.lattice) and np.array_equal(x.frac_coords, y.frac_coords)
        assert np.array_equal(x.atomic_numbers, y.atomic_numbers)
    assert [x.space_group for x in xs] != [z.space_group for z in zs]
    assert len(list(itertools.islice(iter(a), 3))) == 3


def test_atom_counts_are_the_multiplicities(sample):
    for x in sample:
        mult = {p.letter: p.multiplicity for p in wyckoff_positions(x.space_group)}
        symbols = _element_tables()[2]
        expected = Counter()
        for element, letter in x.wyckoff:
            expected[element] += mult[letter]
        assert Counter(symbols[z] for z in x.atomic_numbers.tolist()) == expected
        assert len(x) == sum(expected.values()) <= 100
        assert 1 <= len(x.wyckoff) <= 8 and 1 <= len(expected) <= 4
        assert ((x.frac_coords >= 0) & (x.frac_coords < 1)).all()
        # no duplicate sites anywhere in the cell
        assert _images_min_distance(x).min() > 0.1
        # 0-dof positions are used at most once
        fixed = {p.letter for p in wyckoff_positions(x.space_group) if p.dof == 0}
        letters = Counter(letter for _, letter in x.wyckoff)
        assert all(letters[f] <= 1 for f in fixed)


def test_lattice_matches_the_crystal_system(sample):
    from pymatgen.core import Lattice

    seen = set()
    for x in sample:
        a, b, c, alpha, beta, gamma = Lattice(x.lattice).parameters
        system = x.crystal_system
        seen.add(system)
        close = lambda u, v: abs(u - v) < 1e-6  # noqa: E731
        if system == "cubic":
            assert close(a, b) and close(b, c) and all(close(t, 90) for t in (alpha, beta, gamma))
        elif system == "tetragonal":
            assert close(a, b) and all(close(t, 90) for t in (alpha, beta, gamma))
        elif system in ("trigonal", "hexagonal"):
            assert close(a, b) and close(alpha, 90) and close(beta, 90) and close(gamma, 120)
        elif system == "orthorhombic":
            assert all(close(t, 90) for t in (alpha, beta, gamma))
        elif system == "monoclinic":
            assert close(alpha, 90) and close(gamma, 90) and 90 <= beta <= 120
        else:
            assert all(60 <= t <= 120 for t in (alpha, beta, gamma))
        assert 1.0 < x.volume / len(x) < 200.0  # Å³ per atom: real solids lie in ~5-60
        assert x.lattice[0, 1] == x.lattice[0, 2] == x.lattice[1, 2] == 0.0  # a along x, b in xy
    assert seen == set(sym.CRYSTAL_SYSTEMS)


def test_spglib_recovers_the_space_group_or_a_supergroup(sample):
    import spglib

    exact = 0
    for x in sample:
        found = detected_space_group(x)
        exact += found == x.space_group
        with sym.quiet_spglib():
            ops = spglib.get_symmetry_dataset((x.lattice, x.frac_coords, x.atomic_numbers), symprec=1e-3)
        # every requested operation is a symmetry by construction, so spglib sees at least as many
        assert len(ops.rotations) >= len(sym.symmetry_operations(x.space_group)[0])
    # measured 0.98 here (0.98-0.99 for seeds 7-10) and 0.92 over 20 000 crystals from all 230
    # groups; the rest come back as supergroups (checked above)
    assert exact / len(sample) >= 0.85


def test_verify_symmetry_gives_exact_labels():
    gen = RandomCrystalGenerator(seed=3, space_groups=(16, 112, 203, 209, 226), verify_symmetry=True)
    for _ in range(10):
        x = gen.sample()
        assert detected_space_group(x) == x.space_group


def test_absent_reflections_have_zero_structure_factor(sample):
    hkl = sym.hkl_box(4)
    for x in sample[::3]:
        phase = np.exp(2j * np.pi * (x.frac_coords @ hkl.T))  # (N, M)
        f = x.atomic_numbers @ phase
        absent = ~sym.is_allowed(x.space_group, hkl)
        assert np.abs(f[absent]).max(initial=0) < 1e-8 * x.atomic_numbers.sum()


def test_no_contacts_shorter_than_half_the_covalent_radii(sample):
    radii = _element_tables()[0]
    for x in sample:
        r = radii[x.atomic_numbers]
        assert (_images_min_distance(x) >= 0.5 * (r[:, None] + r[None]) - 1e-9).all()


def test_to_structure_round_trip(sample):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    x = next(c for c in sample if c.space_group == 62)
    s = x.to_structure()
    assert len(s) == len(x) and s.lattice.volume == pytest.approx(x.volume)
    assert np.allclose(s.lattice.matrix, x.lattice) and np.allclose(s.frac_coords, x.frac_coords)
    assert [site.specie.Z for site in s] == x.atomic_numbers.tolist()
    with sym.quiet_spglib():
        assert SpacegroupAnalyzer(s, symprec=1e-3).get_space_group_number() in (62, 63, 194, 221, 225, 229)
    assert x.extinction_group == sym.extinction_group(62) and x.crystal_system == "orthorhombic"
    assert "Pnma (62)" in repr(x)


def test_simulator_batches_accept_synthetic_crystals(sample):
    from xrd_nexus_ml.physics.crystal import CrystalBatch

    batch = CrystalBatch.from_items(sample[:4])
    assert len(batch) == 4


def test_options_restrict_the_stream():
    gen = RandomCrystalGenerator(seed=1, elements=["Na", "Cl", 8], max_atoms=12, max_orbits=3, max_elements=2)
    for x in itertools.islice(gen, 40):
        assert set(x.atomic_numbers.tolist()) <= {11, 17, 8} and len(set(x.atomic_numbers.tolist())) <= 2
        assert len(x) <= 12 and len(x.wyckoff) <= 3
    # Fd-3c and Ia-3d have no Wyckoff position with 12 atoms or fewer; I-43d has 12a
    assert 228 not in gen.space_groups and 230 not in gen.space_groups and 220 in gen.space_groups
    weighted = RandomCrystalGenerator(seed=2, elements=["Na", "Cl"], element_weights=[1, 0], space_groups=[225],
                                      space_group_weights=[1.0])
    assert all(set(x.atomic_numbers.tolist()) == {11} for x in itertools.islice(weighted, 10))
    assert 83 in DEFAULT_ELEMENTS and 18 not in DEFAULT_ELEMENTS and 43 not in DEFAULT_ELEMENTS


def test_bad_options_are_rejected():
    with pytest.raises(ValueError):
        RandomCrystalGenerator(space_groups=[230], max_atoms=12)
    with pytest.raises(ValueError):
        RandomCrystalGenerator(space_groups=[14, 15], space_group_weights=[1.0])
    with pytest.raises(ValueError):
        RandomCrystalGenerator(space_groups=[0])
    with pytest.raises(StructureError):
        RandomCrystalGenerator(elements=["Xx"])
    with pytest.raises(ValueError):
        RandomCrystalGenerator(min_orbits=3, max_orbits=2)
    with pytest.raises(StructureError):
        lattice_from_parameters(1, 1, 1, 10, 10, 100)

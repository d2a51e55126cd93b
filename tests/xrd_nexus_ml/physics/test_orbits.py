"""One reflection per symmetry orbit: the same peaks as every Friedel pair, and as pymatgen."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from xrd_nexus_ml.physics import CrystalArrays, PowderSimulator, symmetry
from xrd_nexus_ml.physics.augment import Compose, PreferredOrientation
from xrd_nexus_ml.physics.crystal import as_crystal_arrays
from xrd_nexus_ml.physics.orbits import LaueTable, laue_rotations, laue_table
from xrd_nexus_ml.physics.parity import compare_sticks, pymatgen_sticks
from xrd_nexus_ml.physics.synthetic import RandomCrystalGenerator, wyckoff_positions

#: Every crystal system and Laue class, both trigonal -3m settings, R in hexagonal axes, and the
#: centrings P, A, C, I, F, R; screw axes and glides of several kinds.
GROUPS = (1, 2, 4, 9, 14, 15, 38, 43, 62, 63, 70, 71, 88, 113, 129, 141, 143, 146, 148, 152, 155, 162, 164,
          166, 167, 173, 178, 187, 191, 194, 198, 205, 206, 216, 220, 225, 227, 230)


@pytest.fixture(scope="module")
def crystals():
    gen = RandomCrystalGenerator(seed=11, space_groups=GROUPS, max_atoms=60)
    return [gen.sample() for _ in range(3 * len(GROUPS))]


def _merged(sim: PowderSimulator, items, augment=None, seed=0):
    """Merged peaks per structure: (q, intensity) arrays. In float64 the members of an orbit
    agree to ~1e-15 in q, so a merge tolerance of 1e-9 joins them without also chaining the
    accidental near-coincidences (within the default 1e-5) that the two paths see differently:
    the full path still holds absent reflections, whose F² is rounding noise."""
    state = sim.run(items, augment=augment, generator=torch.Generator().manual_seed(seed))
    peaks = state.reflections.merged(tolerance=1e-9).without_weak(1e-9)
    out = []
    for q, inten in zip(peaks.q.numpy(), peaks.intensity.numpy()):
        keep = inten > 0
        order = np.argsort(q[keep])
        out.append((q[keep][order], inten[keep][order]))
    return out


def _assert_same_peaks(ours, reference, labels):
    for (q_a, i_a), (q_b, i_b), label in zip(ours, reference, labels):
        assert len(q_a) == len(q_b) > 0, label
        np.testing.assert_allclose(q_a, q_b, rtol=1e-6, err_msg=str(label))
        np.testing.assert_allclose(i_a, i_b, rtol=1e-6, atol=1e-9 * i_b.max(), err_msg=str(label))


def test_standard_rotations_are_the_generators_rotations():
    """The orbit path takes spglib's standard-setting rotations for a synthetic crystal built in
    pyxtal's setting: the rotation sets must be the same for every group."""
    for sg in range(1, 231):
        ours = {tuple(r.ravel()) for r in symmetry.symmetry_operations(sg)[0]}
        generator = {tuple(np.rint(r).astype(int).ravel()) for r in wyckoff_positions(sg)[0].rotations}
        assert ours == generator, sg


def test_orbit_path_equals_every_friedel_pair(crystals):
    orbits = PowderSimulator(dtype=torch.float64, batch_size=64)
    pairs = PowderSimulator(dtype=torch.float64, batch_size=64, use_symmetry=False)
    # one mixed batch: all Laue classes together, and two structures without a space group
    plain = [CrystalArrays.from_arrays(c.lattice, c.frac_coords, c.atomic_numbers) for c in crystals[:2]]
    items = list(crystals) + plain
    computed = [int((sim.reflections(sim.batch(items)).q > 0).sum()) for sim in (orbits, pairs)]
    assert computed[0] * 4 < computed[1]  # the point of it: far fewer structure factors
    _assert_same_peaks(_merged(orbits, items), _merged(pairs, items), items)


def test_orbit_path_with_preferred_orientation_equals_every_friedel_pair(crystals):
    """Texture weights each member of an orbit by its own angle: the orbit row takes their mean."""
    texture = Compose((PreferredOrientation(probability=1.0, r_range=(0.5, 0.6), directions=None),))
    items = crystals[::3]
    orbits = PowderSimulator(dtype=torch.float64)
    pairs = PowderSimulator(dtype=torch.float64, use_symmetry=False)
    textured = _merged(orbits, items, texture, seed=3)
    _assert_same_peaks(textured, _merged(pairs, items, texture, seed=3), items)
    untextured = _merged(orbits, items)
    assert any(len(a[1]) == len(b[1]) and not np.allclose(a[1], b[1], rtol=1e-3)
               for a, b in zip(textured, untextured))


@pytest.mark.parametrize("sg", [14, 63, 148, 167, 176, 206, 227])
def test_orbit_path_matches_pymatgen(sg):
    crystal = RandomCrystalGenerator(seed=sg, space_groups=[sg], max_atoms=40).sample()
    sim = PowderSimulator(wavelength=1.54184, device="cpu")
    ours = sim.sticks([crystal], two_theta_range=(5, 90))[0]
    comparison = compare_sticks(str(crystal), pymatgen_sticks(crystal.to_structure(), 1.54184), ours)
    assert comparison.passes() and comparison.n_peaks_ours >= 5, comparison


def _brute_force_orbits(rotations, bounds):
    """{representative: orbit size} by walking every hkl of the box through the group."""
    out = {}
    for hkl in itertools.product(*(range(-b, b + 1) for b in bounds)):
        if hkl == (0, 0, 0):
            continue
        images = {tuple(int(x) for x in np.asarray(hkl) @ r) for r in rotations}
        out[max(images)] = len(images)
    return out


@pytest.mark.parametrize("sg", [2, 12, 47, 83, 123, 148, 166, 162, 175, 191, 200, 229])
def test_laue_table_grown_in_steps_holds_each_orbit_once(sg):
    rotations = laue_rotations(sg)
    table = LaueTable(rotations)
    table._grow((5, 5, 5))
    table._grow((9, 9, 7))
    reps, sizes = table.reps, table.sizes
    inside = (np.abs(reps) <= 6).all(axis=1)
    expected = {h: n for h, n in _brute_force_orbits(rotations, (6, 6, 6)).items() if max(map(abs, h)) <= 6}
    got = {tuple(int(x) for x in h): int(n) for h, n in zip(reps[inside], sizes[inside])}
    assert got == expected
    assert len({tuple(h) for h in reps.tolist()}) == len(reps)  # no orbit twice across the steps


def test_absences_per_orbit_equal_the_full_test():
    """The table tests centring on every orbit and the full conditions on special orbits only."""
    for sg in range(1, 231):
        table = laue_table(sg)
        reps, _, _ = table.ensure((7, 7, 7))
        np.testing.assert_array_equal(table.allowed(sg, len(reps)), symmetry.is_allowed(sg, reps), err_msg=str(sg))


def test_space_group_travels_only_with_synthetic_crystals(crystals):
    crystal = crystals[0]
    assert as_crystal_arrays(crystal).space_group == crystal.space_group
    assert as_crystal_arrays(crystal.to_structure()).space_group is None
    sim = PowderSimulator()
    assert sim.batch([crystal, crystal.to_structure()]).space_groups == (crystal.space_group, None)

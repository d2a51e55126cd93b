"""Space-group classifier inputs: the model input, the targets from the symmetry tables, the
non-crystal patterns it learns to call non-crystalline."""

from __future__ import annotations

import numpy as np

from xrd_nexus_ml.pattern import CANONICAL_GRID
from xrd_nexus_ml.physics import symmetry
from xrd_nexus_ml.spacegroup.model import model_input, targets_from_space_groups
from xrd_nexus_ml.spacegroup.negatives import non_crystal_patterns


# -- inputs and labels -----------------------------------------------------------------------
def test_model_input_is_sqrt_of_max_normalised_intensity_inside_the_mask():
    intensity = np.array([[0.0, 4.0, 16.0, 100.0]], dtype=np.float32)
    mask = np.array([[True, True, True, False]])
    x = model_input(intensity, mask)
    assert x.shape == (1, 2, 4)
    np.testing.assert_allclose(x[0, 0].numpy(), [0.0, 0.5, 1.0, 0.0])  # the unmeasured 100 counts nothing
    np.testing.assert_array_equal(x[0, 1].numpy(), [1, 1, 1, 0])


def test_targets_follow_the_symmetry_tables():
    t = targets_from_space_groups([1, 225, 62])
    assert t["space_group"].tolist() == [0, 224, 61]
    assert t["crystal_system"].tolist() == [symmetry.crystal_system_index(s) for s in (1, 225, 62)]
    assert t["extinction_group"].tolist() == [symmetry.extinction_group(s) for s in (1, 225, 62)]


def test_non_crystal_patterns_are_normalised_masked_and_peak_free():
    rng = np.random.default_rng(3)
    intensity, mask = non_crystal_patterns(200, CANONICAL_GRID, rng)
    assert intensity.shape == mask.shape == (200, CANONICAL_GRID.n_points)
    assert np.allclose(intensity.max(axis=1), 1.0)
    assert not intensity[~mask].any()
    # no Bragg peaks: over 20 grid points (0.04 1/angstrom) a smoothed pattern changes little,
    # whereas a simulated crystal's peak rises from background to its top within that distance
    kernel = np.ones(25) / 25
    smooth = np.array([np.convolve(row, kernel, mode="valid") for row in intensity])
    inside = np.array([np.convolve(row, kernel, mode="valid") > 0.999 for row in mask.astype(float)])
    jumps = np.abs(smooth[:, 20:] - smooth[:, :-20])[inside[:, 20:] & inside[:, :-20]]
    assert np.quantile(jumps, 0.999) < 0.25
    again, _ = non_crystal_patterns(200, CANONICAL_GRID, np.random.default_rng(3))
    np.testing.assert_array_equal(intensity, again)

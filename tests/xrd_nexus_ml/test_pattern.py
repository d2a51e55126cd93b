"""The canonical pattern: conversions, resampling, masks, and the errors users meet."""

import numpy as np
import pytest

from xrd_nexus_ml.errors import PatternError, WavelengthError
from xrd_nexus_ml.pattern import (
    CANONICAL_GRID,
    Diffractogram,
    QGrid,
    energy_to_wavelength,
    q_to_two_theta,
    resolve_wavelength,
    two_theta_to_q,
)


def gaussian_pattern(centre=30.0, start=5.0, stop=90.0, step=0.02, wavelength=1.5406):
    x = np.arange(start, stop + step / 2, step)
    return Diffractogram(x=x, intensity=100 * np.exp(-0.5 * ((x - centre) / 0.05) ** 2) + 1, wavelength=wavelength)


def test_q_two_theta_round_trip_and_bragg_law():
    two_theta = np.array([10.0, 45.0, 90.0, 150.0])
    q = two_theta_to_q(two_theta, 1.5406)
    np.testing.assert_allclose(q_to_two_theta(q, 1.5406), two_theta, rtol=1e-12)
    # Bragg: d = λ / (2 sin θ) and q = 2π / d
    d = 1.5406 / (2 * np.sin(np.radians(two_theta / 2)))
    np.testing.assert_allclose(q, 2 * np.pi / d)


def test_unreachable_q_is_nan():
    assert np.isnan(q_to_two_theta(np.array([10.0]), 1.5406)[0])  # 4π/λ = 8.16 < 10


def test_canonical_grid_holds_lab_and_synchrotron_ranges():
    cu = two_theta_to_q(np.array([5.0, 90.0]), resolve_wavelength("CuKa1"))
    sync = two_theta_to_q(np.array([2.0, 35.0]), energy_to_wavelength(25.6))
    for lo, hi in (cu, sync):
        assert CANONICAL_GRID.q_min <= lo and hi <= CANONICAL_GRID.q_max


def test_peak_lands_at_same_q_for_any_wavelength():
    d_spacing = 3.1356  # Si 111
    peaks_q = []
    for wavelength in (1.5406, 0.4843):
        two_theta = 2 * np.degrees(np.arcsin(wavelength / (2 * d_spacing)))
        pattern = gaussian_pattern(centre=two_theta, start=max(1.0, two_theta - 5), stop=two_theta + 5,
                                   step=0.002, wavelength=wavelength)
        canonical = pattern.on_canonical_grid()
        peaks_q.append(canonical.x[np.argmax(canonical.intensity)])
    assert abs(peaks_q[0] - peaks_q[1]) <= CANONICAL_GRID.step
    assert abs(peaks_q[0] - 2 * np.pi / d_spacing) <= CANONICAL_GRID.step


def test_resample_masks_unmeasured_range_and_normalises():
    pattern = gaussian_pattern(start=20, stop=40)
    canonical = pattern.on_canonical_grid()
    q_lo, q_hi = two_theta_to_q(np.array([20.0, 40.0]), 1.5406)
    inside = (CANONICAL_GRID.values >= q_lo) & (CANONICAL_GRID.values <= q_hi)
    assert np.array_equal(canonical.mask, inside)
    assert np.all(canonical.intensity[~canonical.mask] == 0)
    assert canonical.intensity.max() == pytest.approx(1.0)


def test_user_mask_survives_resampling():
    pattern = gaussian_pattern().to_q().with_mask(x_min=2.0)
    canonical = pattern.on_canonical_grid()
    assert not canonical.mask[CANONICAL_GRID.values < 1.99].any()
    assert canonical.mask[(CANONICAL_GRID.values > 2.01) & (CANONICAL_GRID.values < 5.7)].all()


def test_to_two_theta_for_other_wavelength_drops_unreachable_points():
    q_pattern = Diffractogram(x=np.linspace(0.5, 10.0, 96), intensity=np.ones(96), axis="q")
    cu = q_pattern.to_two_theta("CuKa1")  # Cu Kα1 reaches q <= 4π/λ = 8.157 Å^-1
    assert cu.n_points == int(np.sum(q_pattern.x < 4 * np.pi / 1.54056))
    assert cu.x.max() < 180
    assert cu.wavelength == pytest.approx(1.54056)


def test_area_normalisation():
    pattern = gaussian_pattern().normalised("area")
    assert np.trapezoid(pattern.intensity, pattern.x) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "x, y, match",
    [
        ([1, 2, np.nan], [1, 2, 3], "NaN"),
        ([1, 2, 3], [1, np.inf, 3], "NaN or infinite"),
        ([1, 3, 2], [1, 2, 3], "not strictly increasing"),
        ([0, 1, 2], [1, 2, 3], "inside \\(0, 180\\)"),
        ([170, 180, 185], [1, 2, 3], "inside \\(0, 180\\)"),
        ([1, 2], [1, 2, 3], "axis has 2 points"),
        ([], [], "empty"),
        ([[1, 2]], [[1, 2]], "one-dimensional"),
    ],
)
def test_bad_patterns_name_the_problem_and_source(x, y, match):
    with pytest.raises(PatternError, match=match) as err:
        Diffractogram(x=x, intensity=y, wavelength=1.54, source="scan_0042.xy")
    assert "scan_0042.xy" in str(err.value)


@pytest.mark.parametrize("wavelength", [-1.0, 0.0, float("nan"), "CuKb9"])
def test_bad_wavelength(wavelength):
    with pytest.raises(WavelengthError):
        Diffractogram(x=[10, 20], intensity=[1, 2], wavelength=wavelength)


def test_conversion_without_wavelength_says_how_to_fix():
    pattern = Diffractogram(x=[10, 20, 30], intensity=[1, 2, 3], source="run7.xy")
    with pytest.raises(WavelengthError, match="wavelength") as err:
        pattern.on_canonical_grid()
    assert "run7.xy" in str(err.value)


def test_pattern_outside_model_range_is_refused():
    pattern = Diffractogram(x=[0.05, 0.1, 0.2], intensity=[1, 2, 3], axis="q", source="saxs.dat")
    with pytest.raises(PatternError, match="q range"):
        pattern.on_canonical_grid()


def test_qgrid_step():
    grid = QGrid(1.0, 2.0, 11)
    assert grid.step == pytest.approx(0.1)
    assert grid.values[-1] == pytest.approx(2.0)

"""Augmentations: determinism, per-pattern probability, and the physics each transform claims."""

import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from xrd_nexus_ml.physics import PeakProfile, PowderSimulator, RenderGrid, RenderSettings, SimulatedBatch
from xrd_nexus_ml.physics.augment import (
    AugmentationError,
    Background,
    Compose,
    CrystalliteSize,
    GaussianNoise,
    ImpurityPhase,
    IntensityScaling,
    LatticeStrain,
    Normalise,
    PeakLoss,
    PeakShift,
    PoissonNoise,
    PreferredOrientation,
    RandomDebyeWaller,
    RangeMask,
    default_pipeline,
    pipeline_from_config,
)

CU_KA1 = 1.54056


@functools.cache  # building a pymatgen structure from its space group takes ~1 s
def rutile():
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                     [[0, 0, 0], [0.305, 0.305, 0]])


@functools.cache  # building a pymatgen structure from its space group takes ~1 s
def wurtzite():
    return Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.207), ["Zn", "O"],
                                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def q_sim():
    return PowderSimulator(wavelength=CU_KA1, device="cpu",
                           profile=PeakProfile(shape="pseudo_voigt", eta=0.3, caglioti_uvw=(0.004, -0.002, 0.004)))


@pytest.fixture(scope="module")
def tt_sim():
    """A 2θ grid with narrow Gaussian peaks (FWHM 0.05°) to locate maxima precisely."""
    return PowderSimulator(wavelength=CU_KA1, grid=RenderGrid.two_theta(10, 80, 0.002), device="cpu",
                           profile=PeakProfile(shape="gaussian", caglioti_uvw=(0.0, 0.0, 0.0025)))


@pytest.fixture(scope="module")
def impurity(q_sim):
    return ImpurityPhase.from_structures([rutile(), wurtzite()], q_sim, probability=1.0, fraction=(0.05, 0.05))


def run(sim, structures, *transforms, seed=0):
    return sim.run(structures, augment=Compose(transforms), generator=seeded(seed))


def peak_maximum(x, y, centre, half_width):
    """Position of the maximum of y near `centre` (parabolic interpolation), in x units."""
    x, y = np.asarray(x), np.asarray(y)
    window = np.flatnonzero(np.abs(x - centre) <= half_width)
    i = window[np.argmax(y[window])]
    a, b, c = y[i - 1], y[i], y[i + 1]
    step = x[1] - x[0]
    return x[i] + 0.5 * step * (a - c) / (a - 2 * b + c)


def fwhm(x, y, centre, half_width):
    """Full width at half maximum of the peak near `centre` (linear interpolation of the crossings)."""
    x, y = np.asarray(x), np.asarray(y)
    window = np.flatnonzero(np.abs(x - centre) <= half_width)
    i = window[np.argmax(y[window])]
    half = y[i] / 2
    left = i
    while y[left] > half:
        left -= 1
    right = i
    while y[right] > half:
        right += 1
    xl = x[left] + (half - y[left]) / (y[left + 1] - y[left]) * (x[left + 1] - x[left])
    xr = x[right - 1] + (half - y[right - 1]) / (y[right] - y[right - 1]) * (x[right] - x[right - 1])
    return xr - xl


def strong_peaks(peaks, row=0, relative=0.05):
    """(q, intensity, hkl) of the live peaks of one pattern above `relative` of its strongest."""
    inten = peaks.intensity[row]
    keep = inten > relative * inten.max()
    return peaks.q[row][keep].numpy(), inten[keep].numpy(), peaks.hkl[row][keep].numpy()


# -- pipeline behaviour ----------------------------------------------------------------------


def test_same_seed_same_output_different_seed_differs(q_sim, impurity, rocksalt):
    pipeline = default_pipeline("measured", impurity_pool=impurity.pool)
    structures = [rocksalt(), rutile(), wurtzite()] * 2
    first = q_sim.run(structures, augment=pipeline, generator=seeded(7))
    again = q_sim.run(structures, augment=pipeline, generator=seeded(7))
    other = q_sim.run(structures, augment=pipeline, generator=seeded(8))
    assert torch.equal(first.intensity, again.intensity) and torch.equal(first.mask, again.mask)
    assert not torch.equal(first.intensity, other.intensity)
    # every pattern is distinct from its duplicate in the batch: draws are per pattern
    assert not torch.equal(first.intensity[0], first.intensity[3])
    assert torch.isfinite(first.intensity).all() and (first.intensity >= 0).all()
    for name in ("RandomDebyeWaller", "PeakShift", "CrystalliteSize", "PoissonNoise", "RangeMask"):
        assert first.extras[name]["applied"].shape == (6,)


def test_probability_zero_leaves_the_batch_unchanged(q_sim, impurity, rocksalt):
    transforms = [dataclasses.replace(t, probability=0.0)
                  for t in default_pipeline("measured", impurity_pool=impurity.pool)]
    structures = [rocksalt(), rutile(), wurtzite()]
    clean = q_sim.run(structures)
    untouched = q_sim.run(structures, augment=Compose(transforms), generator=seeded(1))
    assert torch.equal(untouched.intensity, clean.intensity)
    assert untouched.mask.all()
    assert torch.equal(untouched.crystals.b_factors, clean.crystals.b_factors)
    assert untouched.settings == clean.settings
    assert not any(record["applied"].any() for record in untouched.extras.values())


def test_probability_is_drawn_per_pattern(q_sim, rocksalt):
    structures = [rocksalt()] * 32
    clean = q_sim.run(structures)
    state = run(q_sim, structures, LatticeStrain(probability=0.5, strain_range=(0.01, 0.01)))
    applied = state.extras["LatticeStrain"]["applied"]
    assert 0 < int(applied.sum()) < 32
    assert torch.equal(state.peaks.q[~applied], clean.peaks.q[~applied])
    assert not torch.equal(state.peaks.q[applied], clean.peaks.q[applied])


# -- crystal and reflections -------------------------------------------------------------------


def test_debye_waller_damps_high_q_as_exp_minus_2_b_s2(q_sim, rocksalt):
    clean = q_sim.run([rocksalt()])
    state = run(q_sim, [rocksalt()], RandomDebyeWaller(b_range=(1.2, 1.2)))
    assert torch.allclose(state.crystals.b_factors, torch.full((1, 8), 1.2))
    q, i_clean, _ = strong_peaks(clean.peaks, relative=1e-3)
    ratio = strong_peaks(state.peaks, relative=0)[1][: len(q)] / i_clean
    s = q / (4 * math.pi)  # sinθ/λ
    # f -> f exp(-B s²) in the amplitude, so the intensity goes with exp(-2 B s²)
    np.testing.assert_allclose(ratio, np.exp(-2 * 1.2 * s**2), rtol=2e-4)
    assert ratio[-1] < 0.5 * ratio[0]  # high-q peaks lose relative to low-q ones


def test_debye_waller_per_element_gives_each_element_its_own_b(q_sim, rocksalt):
    state = run(q_sim, [rocksalt(), rutile()], RandomDebyeWaller(per_element=True))
    b, z = state.crystals.b_factors, state.crystals.atomic_numbers
    for row in range(2):
        for element in z[row][z[row] > 0].unique():
            values = b[row][z[row] == element]
            assert torch.all(values == values[0]) and 0 <= values[0] <= 1.5
        assert len(b[row][z[row] > 0].unique()) == 2


@pytest.mark.parametrize("structure", [rutile(), wurtzite()], ids=["tetragonal", "hexagonal"])
def test_march_dollase_platelets_enhance_00l(q_sim, structure):
    r = 0.7
    clean = q_sim.run([structure])
    state = run(q_sim, [structure], PreferredOrientation(r_range=(r, r), directions=((0, 0, 1),)))
    q0, i0, hkl = strong_peaks(clean.peaks, relative=0)
    q1, i1, _ = strong_peaks(state.peaks, relative=0)
    np.testing.assert_allclose(q0, q1)
    ratio = i1 / i0
    basal = (hkl[:, 0] == 0) & (hkl[:, 1] == 0)
    in_plane = hkl[:, 2] == 0
    assert basal.sum() >= 1 and in_plane.sum() >= 2
    np.testing.assert_allclose(ratio[basal], r**-3, rtol=1e-4)  # P(α=0) = r^-3
    np.testing.assert_allclose(ratio[in_plane], r**1.5, rtol=1e-4)  # P(α=90°) = r^(3/2)
    # relative to the strongest in-plane reflection, 00l peaks gain a factor r^-4.5
    assert ratio[basal].min() > 4 * ratio[in_plane].max()
    assert state.extras["PreferredOrientation"]["direction"].tolist() == [[0, 0, 1]]


# -- peaks -------------------------------------------------------------------------------------


def test_isotropic_strain_moves_every_peak_by_one_over_one_plus_eps(rocksalt):
    eps = 0.004
    sim = PowderSimulator(wavelength=CU_KA1, grid=RenderGrid("q", 1.0, 0.0004, 10001), device="cpu",
                          profile=PeakProfile(shape="gaussian", caglioti_uvw=(0.0, 0.0, 0.0025)))
    clean = sim.run([rocksalt()])
    state = run(sim, [rocksalt()], LatticeStrain(strain_range=(eps, eps)))
    np.testing.assert_allclose(state.peaks.q.numpy(), clean.peaks.q.numpy() / (1 + eps), rtol=1e-6)
    x = sim.grid.values.numpy()
    q, _, _ = strong_peaks(clean.peaks, relative=0.05)
    q = q[(q > 1.1) & (q < 4.8)]
    assert len(q) >= 5
    for centre in q:
        before = peak_maximum(x, clean.intensity[0].numpy(), centre, 0.01)
        after = peak_maximum(x, state.intensity[0].numpy(), centre / (1 + eps), 0.01)
        assert after == pytest.approx(before / (1 + eps), abs=2e-4)  # shift is 0.004 q


def test_anisotropic_strain_scales_a_and_c_separately_and_keeps_cubic_isotropic(q_sim, rocksalt):
    clean = q_sim.run([rutile(), rocksalt()])
    state = run(q_sim, [rutile(), rocksalt()], LatticeStrain(strain_range=(-0.005, 0.005), mode="anisotropic"),
                seed=3)
    e = state.extras["LatticeStrain"]["strain_abc"]
    assert e[0, 0] == e[0, 1] and e[1, 0] == e[1, 1] == e[1, 2]  # a = b in rutile; cubic a = b = c
    q0, _, hkl = strong_peaks(clean.peaks, relative=0)
    q1 = strong_peaks(state.peaks, relative=0)[0]
    # tetragonal d-spacing: 1/d² = (h² + k²)/a² + l²/c²
    a, c = 4.594 * (1 + float(e[0, 0])), 2.959 * (1 + float(e[0, 2]))
    expected = 2 * math.pi * np.sqrt((hkl[:, 0] ** 2 + hkl[:, 1] ** 2) / a**2 + hkl[:, 2] ** 2 / c**2)
    np.testing.assert_allclose(q1, expected, rtol=1e-5)
    assert not np.allclose(q1 / q0, (q1 / q0)[0])  # genuinely anisotropic
    nacl = state.peaks.q[1][state.peaks.intensity[1] > 0] / clean.peaks.q[1][clean.peaks.intensity[1] > 0]
    torch.testing.assert_close(nacl, torch.full_like(nacl, 1 / (1 + float(e[1, 0]))))


def test_zero_offset_shifts_every_two_theta_position_by_the_offset(tt_sim, rocksalt):
    offset = 0.12
    clean = tt_sim.run([rocksalt()])
    state = run(tt_sim, [rocksalt()], PeakShift(zero_offset_deg=(offset, offset), displacement_mm=(0.0, 0.0)))
    x = tt_sim.grid.values.numpy()
    centres = strong_peaks(clean.peaks, relative=0.05)[0]
    two_theta = np.degrees(2 * np.arcsin(centres * CU_KA1 / (4 * math.pi)))
    two_theta = two_theta[(two_theta > 12) & (two_theta < 78)]
    assert len(two_theta) >= 4
    for tt in two_theta:
        before = peak_maximum(x, clean.intensity[0].numpy(), tt, 0.1)
        after = peak_maximum(x, state.intensity[0].numpy(), tt + offset, 0.1)
        assert after - before == pytest.approx(offset, abs=2e-3)


def test_sample_displacement_shift_goes_with_cos_theta(tt_sim, rocksalt):
    s_mm, radius = 0.2, 240.0
    clean = tt_sim.run([rocksalt()])
    shift = PeakShift(zero_offset_deg=(0.0, 0.0), displacement_mm=(s_mm, s_mm), goniometer_radius_mm=radius)
    state = run(tt_sim, [rocksalt()], shift)
    live = clean.peaks.intensity[0] > 0
    before = clean.peaks.two_theta(CU_KA1)[0][live].double().numpy()
    after = state.peaks.two_theta(CU_KA1)[0][live].double().numpy()
    cos_theta = np.cos(np.radians(before / 2))
    # Δ2θ = -2 s cosθ / R: the shift divided by cosθ is the same for every peak
    np.testing.assert_allclose((after - before) / cos_theta, np.degrees(-2 * s_mm / radius), rtol=2e-3)
    # and the rendered maximum of a low-angle peak moves accordingly
    x = tt_sim.grid.values.numpy()
    tt = before[np.argmax(clean.peaks.intensity[0][live].numpy())]
    moved = peak_maximum(x, state.intensity[0].numpy(), tt, 0.2) - peak_maximum(x, clean.intensity[0].numpy(), tt, 0.2)
    assert moved == pytest.approx(np.degrees(-2 * s_mm / radius * np.cos(np.radians(tt / 2))), abs=2e-3)


def test_crystallite_size_broadening_follows_scherrer(rocksalt):
    size_nm, k = 25.0, 0.9
    sim = PowderSimulator(wavelength=CU_KA1, grid=RenderGrid.two_theta(10, 80, 0.002), device="cpu",
                          profile=PeakProfile(shape="gaussian", caglioti_uvw=None, scherrer_k=k))
    state = run(sim, [rocksalt(), rocksalt()], CrystalliteSize(size_nm=(size_nm, size_nm)))
    assert torch.equal(state.settings.profile.crystallite_size_nm, torch.full((2,), size_nm))
    x = sim.grid.values.numpy()
    for tt in (31.69, 45.45, 66.23):  # NaCl 200, 220, 400
        scherrer = np.degrees(k * CU_KA1 / (size_nm * 10 * np.cos(np.radians(tt / 2))))
        assert fwhm(x, state.intensity[0].numpy(), tt, 0.5) == pytest.approx(scherrer, rel=0.03)


def test_smaller_crystallites_give_wider_peaks(tt_sim, rocksalt):
    clean = tt_sim.run([rocksalt()])
    state = run(tt_sim, [rocksalt()], CrystalliteSize(size_nm=(15.0, 15.0)))
    x = tt_sim.grid.values.numpy()
    assert fwhm(x, state.intensity[0].numpy(), 31.69, 0.6) > 3 * fwhm(x, clean.intensity[0].numpy(), 31.69, 0.6)
    # integrated intensity is kept (area-normalised profiles)
    assert state.intensity.sum() == pytest.approx(float(clean.intensity.sum()), rel=0.02)


def test_peak_loss_with_p_one_removes_every_peak(q_sim, rocksalt):
    state = run(q_sim, [rocksalt(), rutile()], PeakLoss(drop_probability=(1.0, 1.0), keep_strongest=False))
    assert (state.peaks.intensity == 0).all()
    assert (state.intensity == 0).all()
    kept = run(q_sim, [rocksalt(), rutile()], PeakLoss(drop_probability=(1.0, 1.0)))
    assert ((kept.peaks.intensity > 0).sum(1) == 1).all()  # only the strongest survives


def test_intensity_scaling_stays_within_its_range(q_sim):
    clean = q_sim.run([rutile()])
    state = run(q_sim, [rutile()], IntensityScaling(spread=0.3))
    live = clean.peaks.intensity > 0
    ratio = state.peaks.intensity[live] / clean.peaks.intensity[live]
    assert ratio.min() >= 0.7 - 1e-6 and ratio.max() <= 1.3 + 1e-6 and ratio.std() > 0.05
    torch.testing.assert_close(state.extras["IntensityScaling"]["factor"][live], ratio)


def test_impurity_adds_its_peaks_at_its_positions(q_sim, impurity, rocksalt):
    clean = q_sim.run([rocksalt()] * 4)
    state = run(q_sim, [rocksalt()] * 4, impurity, seed=2)
    picks = state.extras["ImpurityPhase"]["impurity"]
    assert set(picks.tolist()) == {0, 1}  # both impurities drawn across the batch
    x = q_sim.grid.values.numpy()
    for row, pick in enumerate(picks.tolist()):
        pool_q, pool_i = impurity.pool.q[pick], impurity.pool.intensity[pick]
        added = state.peaks.intensity[row, clean.peaks.q.shape[1]:]
        main_max = float(clean.peaks.intensity[row].max())
        torch.testing.assert_close(added, pool_i * 0.05 * main_max)
        # the impurity's strongest peak is now in the pattern, where the clean pattern is empty
        q_imp = float(pool_q[pool_i.argmax()])
        near = np.abs(x - q_imp) < 0.01
        diff = (state.intensity[row] - clean.intensity[row]).numpy()
        assert peak_maximum(x, diff, q_imp, 0.01) == pytest.approx(q_imp, abs=1e-3)
        assert diff[near].max() > 0.02 * clean.intensity[row].max().item()
    assert impurity.names == ("TiO2", "ZnO")


# -- pattern -----------------------------------------------------------------------------------


def test_background_is_non_negative_and_smooth(q_sim, rocksalt):
    structures = [rocksalt(), rutile(), wurtzite()] * 3
    clean = q_sim.run(structures)
    state = run(q_sim, structures, Background(polynomial_scale=(0.05, 0.1), gp_scale=(0.02, 0.05),
                                              hump_scale=(0.02, 0.05)))
    background = (state.intensity - clean.intensity).double()
    top = clean.intensity.amax(1, keepdim=True).double()
    assert (background >= -1e-6 * top).all()
    assert (background.amax(1, keepdim=True) > 0.02 * top).all()
    assert (background.amax(1, keepdim=True) < 0.25 * top).all()
    # smooth: the second difference is tiny next to the amplitude (peaks have ~1 per step)
    curvature = (background[:, 2:] - 2 * background[:, 1:-1] + background[:, :-2]).abs().amax(1, keepdim=True)
    assert (curvature < 1e-3 * background.amax(1, keepdim=True)).all()


def _flat_state(levels, n_rows=4, n_points=20000):
    """A hand-made pattern stage: half the points at levels[0], half at levels[1] (q grid)."""
    intensity = torch.empty(n_rows, n_points)
    intensity[:, : n_points // 2] = levels[0]
    intensity[:, n_points // 2 :] = levels[1]
    settings = RenderSettings(wavelength=CU_KA1, grid=RenderGrid("q", 0.3, 7.7 / (n_points - 1), n_points))
    return SimulatedBatch(crystals=None, settings=settings, intensity=intensity,
                          mask=torch.ones_like(intensity, dtype=torch.bool))


@pytest.mark.parametrize("counts", [100.0, 3000.0])
def test_poisson_noise_variance_is_proportional_to_counts(counts):
    state = PoissonNoise(max_counts=(counts, counts))(_flat_state((1.0, 0.25)), seeded(4))
    y = state.intensity * counts  # back to counts
    for part, level in ((y[:, :10000], counts), (y[:, 10000:], 0.25 * counts)):
        assert part.mean().item() == pytest.approx(level, rel=0.02)
        assert part.var().item() == pytest.approx(level, rel=0.05)  # Poisson: variance = mean
    torch.testing.assert_close(y, torch.round(y), atol=1e-3, rtol=0)  # integer counts


def test_gaussian_noise_has_the_requested_sigma():
    state = GaussianNoise(sigma=(0.01, 0.01), clip_negative=False)(_flat_state((1.0, 0.5)), seeded(5))
    residual = state.intensity - _flat_state((1.0, 0.5)).intensity
    assert residual.std().item() == pytest.approx(0.01, rel=0.03)
    assert abs(residual.mean().item()) < 1e-3


def test_range_mask_zeroes_and_masks_outside_the_window(q_sim, rocksalt):
    structures = [rocksalt(), rutile(), wurtzite()] * 2
    state = run(q_sim, structures, RangeMask(q_min=(0.5, 1.5), q_max=(4.0, 6.0), gap_probability=1.0))
    record = state.extras["RangeMask"]
    q = q_sim.grid.values.float()
    for row in range(len(structures)):
        lo, hi = record["q_min"][row], record["q_max"][row]
        gap = (q >= record["gap_start"][row]) & (q <= record["gap_end"][row])
        expected = (q >= lo) & (q <= hi) & ~gap
        assert torch.equal(state.mask[row], expected)
        assert (state.intensity[row][~expected] == 0).all()
        assert gap.sum() > 10  # a gap of 0.05-0.2 1/Å is 25-100 grid points
    assert (state.intensity[state.mask] > 0).any()


def test_normalise_gives_max_one_over_measured_points(q_sim, rocksalt):
    structures = [rocksalt(), rutile(), wurtzite()]
    state = run(q_sim, structures, Background(), RangeMask(), Normalise())
    measured_max = torch.where(state.mask, state.intensity, torch.zeros_like(state.intensity)).amax(1)
    torch.testing.assert_close(measured_max, torch.ones(3))
    assert (state.intensity[~state.mask] == 0).all()


def test_clean_pipeline_is_debye_waller_and_normalise(q_sim, rocksalt):
    pipeline = default_pipeline("clean")
    assert [t.name for t in pipeline] == ["RandomDebyeWaller", "Normalise"]
    state = q_sim.run([rocksalt()], augment=pipeline, generator=seeded(0))
    assert state.intensity.max().item() == pytest.approx(1.0) and state.mask.all()


# -- configs -----------------------------------------------------------------------------------


def test_config_round_trips_through_json(impurity):
    pipeline = default_pipeline("measured", impurity_pool=impurity.pool)
    config = json.loads(json.dumps(pipeline.to_config()))
    again = pipeline_from_config(config)
    assert again == pipeline and again.to_config() == config
    restored = next(t for t in again if isinstance(t, ImpurityPhase))
    torch.testing.assert_close(restored.pool.intensity, impurity.pool.intensity)
    plain = Compose((PreferredOrientation(directions=None, r_range=(0.8, 1.2)), LatticeStrain(mode="anisotropic")))
    assert pipeline_from_config(json.loads(json.dumps(plain.to_config()))) == plain


def test_unknown_names_and_fields_are_refused():
    with pytest.raises(AugmentationError, match="'Sparkle'"):
        pipeline_from_config({"transforms": [{"name": "Sparkle", "probability": 0.5}]})
    with pytest.raises(AugmentationError, match="PeakShift.*'radius'"):
        pipeline_from_config([{"name": "PeakShift", "radius": 200}])
    with pytest.raises(AugmentationError, match="size_nm"):
        CrystalliteSize(size_nm=(200.0, 10.0))
    with pytest.raises(AugmentationError, match="probability"):
        Normalise(probability=1.5)
    with pytest.raises(AugmentationError, match="stage"):
        Compose(()).apply("detector", None, None)


@pytest.mark.gpu
def test_cpu_generator_drives_a_gpu_batch_reproducibly(impurity, rocksalt):
    sim = PowderSimulator(wavelength=CU_KA1, device="cuda")
    pipeline = default_pipeline("measured", impurity_pool=impurity.pool)
    first = sim.run([rocksalt(), rutile()], augment=pipeline, generator=seeded(3))
    again = sim.run([rocksalt(), rutile()], augment=pipeline, generator=seeded(3))
    assert first.intensity.is_cuda and torch.equal(first.intensity, again.intensity)

"""The fast training stream: FFT rendering of flat stick lists, flat augmentations, and the stream
that joins them, checked against the padded transforms and `physics.profiles.render` they replace."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from xrd_nexus_ml.identification import flat_augment as fa
from xrd_nexus_ml.identification.render import render_flat
from xrd_nexus_ml.identification.stream import (
    CU_KALPHA2_RATIO,
    PeakCache,
    ReferenceStream,
    _fill_outside,
    identification_pipeline,
)
from xrd_nexus_ml.io import read_structure
from xrd_nexus_ml.physics import PeakList, PowderSimulator
from xrd_nexus_ml.physics.augment import (
    GaussianNoise,
    LatticeStrain,
    PeakShift,
    PoissonNoise,
    PreferredOrientation,
    RangeMask,
)
from xrd_nexus_ml.physics.profiles import render
from xrd_nexus_ml.physics.simulator import SimulatedBatch
from xrd_nexus_ml.preprocess.background import snip_background

NAMES = ["MnO_225.cif", "MnO2_136.cif", "TiO2_141.cif", "TiO2_136.cif", "LiF_225.cif", "Mn2O3_206.cif"]


@pytest.fixture(scope="module")
def simulator() -> PowderSimulator:
    return PowderSimulator(wavelength="CuKa1", device="cpu")


@pytest.fixture(scope="module")
def cache(lmtof_references: Path, simulator) -> PeakCache:
    return PeakCache.build([read_structure(lmtof_references / n) for n in NAMES], simulator)


def _stream(cache, simulator, seed=3, batch=16, renderer="fft") -> ReferenceStream:
    pool = cache.peaks(range(len(cache)))
    return ReferenceStream(cache, simulator, range(len(cache)), batch_size=batch, seed=seed,
                           pipeline=identification_pipeline(pool), renderer=renderer)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# -- rendering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,kalpha2", [("gaussian", False), ("gaussian", True), ("pseudo_voigt", True)])
def test_fft_render_agrees_with_the_windowed_render(simulator, shape, kalpha2):
    """Same sticks, same widths (crystallites 5-150 nm, as the stream draws): the same patterns."""
    rng = np.random.default_rng(0)
    b, m = 24, 150
    q = rng.uniform(0.2, 8.2, (b, m))
    intensity = rng.exponential(1.0, (b, m)) * (rng.random((b, m)) < 0.8)
    size = np.exp(rng.uniform(math.log(5.0), math.log(150.0), b))
    settings = simulator.settings
    profile = settings.profile.replace(shape=shape, crystallite_size_nm=torch.tensor(size))
    if kalpha2:
        profile = profile.replace(kalpha2_ratio=0.5, kalpha2_wavelength=settings.wavelength * CU_KALPHA2_RATIO)
    settings = replace(settings, profile=profile)
    peaks = PeakList(q=torch.tensor(q), intensity=torch.tensor(intensity), hkl=torch.zeros(b, m, 3, dtype=torch.long),
                     reciprocal_lattice=torch.eye(3).expand(b, 3, 3))
    reference = render(peaks, settings).numpy()
    fast = render_flat(np.repeat(np.arange(b), m), q.ravel(), intensity.ravel(), b, settings)
    assert fast.dtype == np.float32 and fast.shape == reference.shape
    assert _cosine(fast, reference).min() >= 0.99
    area = fast.sum(1) / reference.sum(1)  # the windowed render cuts pseudo-Voigt tails at 10 FWHM
    assert np.all(np.abs(area - 1.0) < (0.005 if shape == "gaussian" else 0.03)), area


def test_fft_render_puts_one_stick_where_it_belongs(simulator):
    """A single Gaussian stick: centred on its q, its FWHM the Scherrer and instrument widths in quadrature."""
    settings = replace(simulator.settings, profile=simulator.settings.profile.replace(crystallite_size_nm=20.0))
    grid = settings.grid
    y = render_flat(np.array([0]), np.array([3.0]), np.array([2.0]), 1, settings)[0]
    x = grid.start + grid.step * np.arange(grid.n_points)
    assert abs(x[np.argmax(y)] - 3.0) <= grid.step
    assert y.sum() * grid.step == pytest.approx(2.0, rel=1e-3)
    above = x[y >= y.max() / 2]
    theta = math.asin(3.0 * settings.wavelength / (4 * math.pi))
    inst = (2 * math.pi / settings.wavelength) * math.cos(theta) * math.radians(0.1)
    expected = math.hypot(inst, 2 * math.pi * 0.9 / 200.0)
    assert above[-1] - above[0] == pytest.approx(expected, abs=2 * grid.step)


# -- flat transforms against the padded ones ----------------------------------------------------


def _flat_and_padded(cache, refs):
    flat = cache.flat_peaks(refs)
    return flat, flat.padded()


def _padded_state(settings, peaks):
    return SimulatedBatch(crystals=None, settings=settings, reflections=peaks, peaks=peaks)


def test_flat_peaks_round_trip_the_cache(cache):
    refs = [0, 3, 3, 5]
    flat = cache.flat_peaks(refs, np.array([0.0, 0.0, 1.0, 0.0]))
    padded = cache.peaks(refs, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    for row in range(len(refs)):
        live = padded.intensity[row] > 0
        assert np.allclose(flat.q[flat.row == row], padded.q[row][live].numpy(), rtol=1e-6)
        assert np.allclose(flat.intensity[flat.row == row], padded.intensity[row][live].numpy(), rtol=1e-5)
        assert np.array_equal(flat.hkl[flat.row == row], padded.hkl[row][live].numpy())
    back = fa.FlatPeaks.from_padded(flat.padded())
    assert np.array_equal(back.row, flat.row) and np.allclose(back.q, flat.q)


@pytest.mark.parametrize("transform", [
    PreferredOrientation(r_range=(0.6, 0.6), directions=((1, 1, 0),)),
    PeakShift(zero_offset_deg=(0.08, 0.08), displacement_mm=(-0.1, -0.1)),
    LatticeStrain(strain_range=(0.02, 0.02), mode="anisotropic"),
    LatticeStrain(strain_range=(-0.01, -0.01), mode="isotropic"),
], ids=lambda t: t.name)
def test_flat_peak_transforms_equal_the_padded_ones(cache, simulator, transform):
    """With its draws pinned (a one-value range), a flat transform gives the padded transform's peaks."""
    flat, padded = _flat_and_padded(cache, [0, 1, 2, 3, 4, 5])
    stage = transform.stage
    expected = transform(_padded_state(simulator.settings, padded), torch.Generator().manual_seed(0))
    expected = fa.FlatPeaks.from_padded(expected.reflections if stage == "reflections" else expected.peaks)
    q0, i0 = flat.q.copy(), flat.intensity.copy()
    state = fa.FlatState(peaks=flat, settings=simulator.settings)
    fa.apply_flat(transform, state, np.random.default_rng(0), torch.Generator())
    assert np.array_equal(state.peaks.row, expected.row)
    assert np.allclose(state.peaks.q, expected.q, rtol=1e-6)
    assert np.allclose(state.peaks.intensity, expected.intensity, rtol=1e-5)
    changed = state.peaks.intensity if transform.name == "PreferredOrientation" else state.peaks.q
    assert not np.allclose(changed, i0 if transform.name == "PreferredOrientation" else q0)


def test_every_transform_of_the_pipeline_acts(cache, simulator):
    """Each transform of the identification pipeline changes what it should, and only that."""
    rng = np.random.default_rng(1)
    pipeline = identification_pipeline(cache.peaks(range(len(cache))))
    refs = np.tile(np.arange(len(cache)), 8)
    state = fa.FlatState(peaks=cache.flat_peaks(refs), settings=simulator.settings)
    for t in pipeline:
        if t.stage == "pattern":
            continue
        before = (state.peaks.q.copy(), state.peaks.intensity.copy(), len(state.peaks.q))
        fa.apply_flat(t, state, rng, torch.Generator())
        p = state.peaks
        if t.name == "ImpurityPhase":
            assert len(p.q) > before[2] and np.all(p.hkl[before[2]:] == 0)
            main = np.zeros(p.n_rows)
            np.maximum.at(main, p.row[:before[2]], before[1])
            added = np.zeros(p.n_rows)
            np.maximum.at(added, p.row[before[2]:], p.intensity[before[2]:])
            has = added > 0
            ratio = added[has] / main[has]
            assert 0.25 < has.mean() < 0.75 and ratio.min() >= 0.02 - 1e-9 and ratio.max() <= 0.8 + 1e-9
        elif t.name == "CrystalliteSize":
            size = state.settings.profile.crystallite_size_nm.numpy()
            assert size.shape == (len(refs),) and size.min() >= 5.0 and size.max() <= 150.0
        elif t.name in ("LatticeStrain", "PeakShift"):
            assert not np.allclose(p.q, before[0]) and np.array_equal(p.intensity, before[1])
            assert np.abs(p.q / before[0] - 1).max() < 0.05
        elif t.name == "PeakLoss":
            assert (p.intensity == 0).any() and np.all((p.intensity == 0) | (p.intensity == before[1]))
            assert np.all(p.row_max() > 0)  # the strongest peak of a pattern is kept
        else:  # PreferredOrientation, IntensityScaling: intensities only
            assert np.array_equal(p.q, before[0]) and not np.allclose(p.intensity, before[1])
    state.intensity = render_flat(state.peaks.row, state.peaks.q, state.peaks.intensity, len(refs), state.settings)
    state.mask = np.ones(state.intensity.shape, dtype=bool)
    clean = state.intensity.copy()
    for t in pipeline:
        if t.stage != "pattern":
            continue
        before = state.intensity.copy()
        fa.apply_flat(t, state, rng, torch.Generator())
        if t.name == "Background":
            added = state.intensity - before
            assert added.min() >= -1e-6 and (added.max(1) > 0).all()
            assert np.all(added.max(1) <= 0.2 * clean.max(1) * 1.001)
        elif t.name == "RangeMask":
            q = simulator.settings.grid.start + simulator.settings.grid.step * np.arange(clean.shape[1])
            assert not state.mask.all() and np.all(state.intensity[~state.mask] == 0)
            first = q[state.mask.argmax(1)]
            assert first.min() >= 0.3 - 1e-6 and first.max() <= 1.2 + simulator.settings.grid.step
        else:
            assert not np.array_equal(state.intensity, before)


def test_range_mask_matches_the_padded_transform(simulator):
    t = RangeMask(q_min=(1.0, 1.0), q_max=(5.0, 5.0))
    y = np.random.default_rng(0).random((3, simulator.grid.n_points)).astype(np.float32)
    expected = t(SimulatedBatch(crystals=None, settings=simulator.settings, intensity=torch.from_numpy(y.copy()),
                                mask=torch.ones(y.shape, dtype=torch.bool)), torch.Generator())
    state = fa.FlatState(peaks=None, settings=simulator.settings, intensity=y.copy(), mask=np.ones(y.shape, bool))
    fa.apply_flat(t, state, np.random.default_rng(0), torch.Generator())
    assert np.array_equal(state.mask, expected.mask.numpy())
    assert np.array_equal(state.intensity, expected.intensity.numpy())


@pytest.mark.parametrize("counts", [3.0, 40.0, 2000.0])
def test_poisson_noise_has_the_counting_mean_and_variance(simulator, counts):
    """Exact below POISSON_EXACT_BELOW, skew-corrected normal above: mean λ, variance λ, whole counts."""
    t = PoissonNoise(max_counts=(counts, counts))
    y = np.ones((64, simulator.grid.n_points), dtype=np.float32)
    state = fa.FlatState(peaks=None, settings=simulator.settings, intensity=y, mask=np.ones(y.shape, bool))
    fa.apply_flat(t, state, np.random.default_rng(0), torch.Generator())
    n = state.intensity * counts
    assert np.allclose(n, np.round(n), atol=1e-3 * counts)
    assert n.mean() == pytest.approx(counts, rel=0.01)
    assert n.var() == pytest.approx(counts, rel=0.05)
    if counts < 100:  # a Poisson's third central moment is λ (too noisy to check above)
        assert ((n - n.mean()) ** 3).mean() / counts == pytest.approx(1.0, abs=0.15)


def test_pattern_transforms_without_a_flat_version_run_as_themselves(simulator):
    """A transform missing from FLAT runs on tensors: the pipeline stays open to new transforms."""
    t = GaussianNoise(sigma=(0.05, 0.05))
    saved = fa.FLAT.pop(GaussianNoise)
    try:
        y = np.ones((4, simulator.grid.n_points), dtype=np.float32)
        state = fa.FlatState(peaks=None, settings=simulator.settings, intensity=y.copy(), mask=np.ones(y.shape, bool))
        fa.apply_flat(t, state, np.random.default_rng(0), torch.Generator().manual_seed(0))
        assert state.intensity.dtype == np.float32 and 0.03 < state.intensity.std() < 0.07
    finally:
        fa.FLAT[GaussianNoise] = saved


# -- preparation --------------------------------------------------------------------------------


def test_fill_outside_extends_edges_and_bridges_gaps():
    rng = np.random.default_rng(0)
    y = rng.random((5, 200))
    mask = np.zeros_like(y, dtype=bool)
    mask[0, 20:150] = True
    mask[1, :] = True
    mask[2, 30:80] = mask[2, 100:190] = True  # a gap
    mask[4, 7] = True
    out = _fill_outside(y, mask)
    for row in range(5):
        idx = np.flatnonzero(mask[row])
        expected = y[row].copy()
        if idx.size:
            expected = np.interp(np.arange(200), idx, y[row, idx])  # flat outside, linear across gaps
        assert np.allclose(out[row], expected), row


def test_float32_snip_matches_float64():
    y = np.random.default_rng(0).gamma(2.0, 50.0, (6, 4096))
    a, b = snip_background(y, 64), snip_background(y.astype(np.float32), 64, np.float32)
    assert b.dtype == np.float32 and np.allclose(a, b, rtol=1e-4, atol=1e-3)


# -- the stream ---------------------------------------------------------------------------------


def test_stream_is_seeded_shaped_and_normalised(cache, simulator):
    a, b, other = _stream(cache, simulator), _stream(cache, simulator), _stream(cache, simulator, seed=4)
    da, db = a.draw(), b.draw()
    assert torch.equal(da.inputs, db.inputs) and np.array_equal(da.reference, db.reference)
    assert not torch.equal(other.draw().inputs, da.inputs)
    assert not torch.equal(a.draw().inputs, da.inputs)  # every draw is new
    assert da.inputs.dtype == torch.float32 and da.inputs.shape == (16, 2, simulator.grid.n_points)
    x, mask = da.inputs[:, 0], da.inputs[:, 1]
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0} and not bool(mask.all())
    assert torch.all(x[mask == 0] == 0) and float(x.min()) >= 0.0
    assert torch.allclose(x.amax(1), torch.ones(16))
    assert a.config()["renderer"] == "fft"
    chosen = a.draw(np.array([2, 2, 5]))
    assert np.array_equal(chosen.reference, [2, 2, 5]) and chosen.inputs.shape[0] == 3


def test_stream_draws_references_evenly(cache, simulator):
    stream = _stream(cache, simulator, batch=64)
    counts = np.bincount(np.concatenate([stream.draw().reference for _ in range(8)]), minlength=len(cache))
    expected = 8 * 64 / len(cache)
    assert counts.min() > 0.6 * expected and counts.max() < 1.4 * expected


def test_fast_and_windowed_streams_draw_the_same_patterns_on_average(cache, simulator):
    """Mean model input of one reference over many draws: the two renderers describe one distribution."""
    means = {}
    for renderer in ("fft", "windowed"):
        stream = _stream(cache, simulator, seed=11, batch=96, renderer=renderer)
        means[renderer] = np.mean([stream.draw(np.full(96, 0)).inputs[:, 0].numpy() for _ in range(2)], axis=(0, 1))
    assert _cosine(means["fft"], means["windowed"]) > 0.98
    other = _stream(cache, simulator, seed=11, batch=96).draw(np.full(96, 2)).inputs[:, 0].numpy().mean(0)
    assert _cosine(means["fft"], other) < 0.9  # and another reference's patterns are told apart


@pytest.mark.gpu
def test_peak_cache_built_on_the_gpu_matches_the_cpu_and_lives_on_the_cpu(lmtof_references: Path, cache):
    structures = [read_structure(lmtof_references / n) for n in NAMES]
    on_gpu = PeakCache.build(structures, PowderSimulator(device="cuda"), chunk=512)
    assert on_gpu.lattice.device.type == "cpu" and all(q.device.type == "cpu" for q in on_gpu.q)
    for a, b, ia, ib in zip(on_gpu.q, cache.q, on_gpu.intensity, cache.intensity):
        assert torch.allclose(a, b, rtol=1e-6) and torch.allclose(ia, ib, rtol=1e-5)

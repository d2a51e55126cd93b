"""The batched fast paths give the results of the frame-by-frame ones: frame preparation, the
compression alignment, the open-set gate and the online change point."""

import math

import numpy as np
import pytest

from xrd_nexus_ml.inference.library import LibraryGate
from xrd_nexus_ml.pattern import CANONICAL_GRID, Diffractogram
from xrd_nexus_ml.preprocess import frames as transition_frames
from xrd_nexus_ml.preprocess import prepare_frames, snip_background
from xrd_nexus_ml.transitions import CosineBaseline, OnlineChangePoint, phase_fractions, simulate_ramp
from xrd_nexus_ml.transitions.alignment import CompressionAlignment


@pytest.fixture(scope="module")
def ramp():
    return simulate_ramp(np.linspace(5, 55, 40), noise=0.02, seed=1)


def _bad_frames(ramp) -> list:
    """The ramp's frames as a list with every kind of frame the batched path must set aside or route."""
    frames = [row.astype(float) for row in ramp.intensity]
    frames[3] = frames[3].copy()
    frames[3][100] = np.nan
    frames[5] = np.zeros_like(frames[5])
    frames[7] = np.full_like(frames[7], 3.0)
    frames[9] = np.interp(np.linspace(ramp.two_theta[0], ramp.two_theta[-1], 2001), ramp.two_theta, frames[9])
    frames[10] = np.interp(np.linspace(ramp.two_theta[0], ramp.two_theta[-1], 2001), ramp.two_theta, frames[10])
    frames[12] = ramp.diffractogram(12)  # the same axis, as a pattern
    frames[13] = ramp.diffractogram(13).to_q()  # another axis
    frames[14] = Diffractogram(x=np.linspace(100, 120, 50), intensity=np.arange(50.0), axis="q")  # off the grid
    frames[15] = frames[15][:1]  # one point
    return frames


def _assert_same_prepared(fast, slow, atol=1e-5):
    assert fast.flags == slow.flags
    assert fast.notes == slow.notes
    np.testing.assert_array_equal(fast.mask, slow.mask)
    np.testing.assert_allclose(fast.x, slow.x, rtol=0, atol=atol)


# -- prepare_frames -----------------------------------------------------------------------------------


def test_snip_of_a_stack_is_the_1d_snip_of_every_row():
    rng = np.random.default_rng(0)
    rows = rng.random((7, 301)) * 50 + np.linspace(0, 20, 301)
    rows[2, 40:45] += 400.0
    stacked = snip_background(rows, 25)
    assert stacked.shape == rows.shape
    np.testing.assert_array_equal(stacked, np.stack([snip_background(r, 25) for r in rows]))
    np.testing.assert_array_equal(snip_background(rows[None], 25)[0], stacked)  # any leading shape


def test_batched_prepare_matches_frame_by_frame(ramp, monkeypatch):
    kwargs = {"two_theta": ramp.two_theta, "wavelength": ramp.wavelength}
    frames = _bad_frames(ramp)
    one_by_one = []
    per_frame = transition_frames._one_frame
    monkeypatch.setattr(transition_frames, "_one_frame",
                        lambda frame, *a: one_by_one.append(frame) or per_frame(frame, *a))
    fast = prepare_frames(frames, **kwargs)
    assert len(one_by_one) == 1 and one_by_one[0] is frames[15]  # only the one-point frame went frame by frame
    slow = prepare_frames(frames, batched=False, **kwargs)
    _assert_same_prepared(fast, slow)
    assert fast.flags[3] == "nan" and fast.flags[5] == "zero" and fast.flags[7] == "flat"
    assert fast.flags[14] == "out_of_range" and fast.flags[9] is None and "2001" in fast.notes[9]
    assert fast.flags[12] is None and fast.flags[13] is None
    assert sum(f is None for f in fast.flags) == len(frames) - 5
    # a (n, m) array (here float32, as the ramp holds it) and the ramp itself
    _assert_same_prepared(prepare_frames(ramp.intensity, **kwargs), prepare_frames(ramp.intensity, batched=False,
                                                                                   **kwargs))
    _assert_same_prepared(prepare_frames(ramp), prepare_frames(ramp, batched=False))


def test_batched_prepare_of_frames_on_the_model_grid_and_of_rejected_axes(ramp):
    on_grid = prepare_frames(ramp)
    rows = np.where(on_grid.mask, on_grid.x * 100.0 + 5.0, 0.0)  # arrays already on the model grid
    rows[1] = np.nan
    _assert_same_prepared(prepare_frames(rows), prepare_frames(rows, batched=False))
    backwards = ramp.two_theta[::-1].copy()  # an axis a pattern rejects: every usable frame "unreadable"
    fast = prepare_frames(_bad_frames(ramp)[:8], two_theta=backwards, wavelength=ramp.wavelength)
    slow = prepare_frames(_bad_frames(ramp)[:8], two_theta=backwards, wavelength=ramp.wavelength, batched=False)
    _assert_same_prepared(fast, slow)
    assert fast.flags[0] == "unreadable"


def test_axis_plans_are_cached_and_bounded(ramp):
    transition_frames._PLANS.clear()
    kwargs = {"two_theta": ramp.two_theta, "wavelength": ramp.wavelength}
    prepare_frames(ramp.intensity[:4], **kwargs)
    assert len(transition_frames._PLANS) == 1
    plan = next(iter(transition_frames._PLANS.values()))
    prepare_frames(ramp.intensity[4:8], two_theta=ramp.two_theta.copy(), wavelength=ramp.wavelength)
    assert len(transition_frames._PLANS) == 1 and next(iter(transition_frames._PLANS.values())) is plan
    for k in range(transition_frames.PLAN_CACHE_SIZE + 3):
        prepare_frames(ramp.intensity[:2], two_theta=ramp.two_theta + 0.001 * (k + 1), wavelength=ramp.wavelength)
    assert len(transition_frames._PLANS) == transition_frames.PLAN_CACHE_SIZE


# -- compression alignment -------------------------------------------------------------------------------


def _reference_alignment(align: CompressionAlignment, x: np.ndarray, mask: np.ndarray):
    """The alignment written out frame by frame with np.interp and a full-length FFT."""
    q = align.grid.values
    log_q = np.linspace(math.log(q[0]), math.log(q[-1]), q.size)
    du = log_q[1] - log_q[0]

    def to_log(rows):
        return np.stack([np.interp(np.exp(log_q), q, row) for row in np.atleast_2d(rows)])

    n_fft = 2 * q.size
    ref = np.fft.rfft(to_log(align.reference)[0], n_fft)
    corr = np.fft.irfft(np.fft.rfft(to_log(x), n_fft, axis=1) * np.conj(ref)[None, :], n_fft, axis=1)
    lo, hi = (math.log(v) / du for v in align.scale_range)
    lags = np.arange(math.floor(lo), math.ceil(hi) + 1)
    window = corr[:, lags % n_fft]
    best = window.argmax(1)
    rows = np.arange(len(x))
    b = np.clip(best, 1, len(lags) - 2)
    y0, y1, y2 = window[rows, b - 1], window[rows, b], window[rows, b + 1]
    denom = y0 - 2 * y1 + y2
    inner = (best > 0) & (best < len(lags) - 1)
    frac = np.where(inner & (denom < 0), 0.5 * (y0 - y2) / np.where(denom < 0, denom, -1.0), 0.0)
    c = np.exp((lags[best] + frac) * du)
    out = np.zeros_like(x)
    out_mask = np.zeros_like(mask)
    for i in range(len(x)):
        out[i] = np.interp(q * c[i], q, x[i], left=0.0, right=0.0)
        out_mask[i] = np.interp(q * c[i], q, mask[i].astype(float), left=0.0, right=0.0) > 0.999
    return out * out_mask, out_mask, c


def test_vectorised_alignment_matches_the_interp_loop(ramp):
    prepared = prepare_frames(ramp)
    ok = prepared.ok
    x, mask = prepared.x[ok], prepared.mask[ok]
    align = CompressionAlignment(CANONICAL_GRID, reference=x[0])
    aligned, aligned_mask, c = align.apply(x, mask)
    ref_x, ref_mask, ref_c = _reference_alignment(align, x, mask)
    np.testing.assert_allclose(c, ref_c, rtol=1e-12)
    assert c.max() > 1.05  # the ramp is compressed: the scales are not all 1
    np.testing.assert_array_equal(aligned_mask, ref_mask)
    np.testing.assert_allclose(aligned, ref_x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(align._to_log(x[:3]), np.stack(
        [np.interp(np.exp(align._log_q), CANONICAL_GRID.values, row) for row in x[:3]]), atol=1e-12)
    # frames measured over other ranges (masks cut at both ends), and a new reference
    rng = np.random.default_rng(2)
    cut_mask = mask.copy()
    for i in range(len(cut_mask)):
        on = np.flatnonzero(cut_mask[i])
        cut_mask[i, : on[0] + rng.integers(0, 300)] = False
        cut_mask[i, on[-1] - rng.integers(0, 300):] = False
    cut = np.where(cut_mask, x, 0.0).astype(np.float32)
    align.reference = x[len(x) // 2]
    for got, want in zip(align.apply(cut, cut_mask), _reference_alignment(align, cut, cut_mask)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-6)


def test_gate_and_model_share_the_aligned_inputs(ramp):
    labels = (ramp.pressures > 30).astype(int)
    model = CosineBaseline(("low", "high"), align=True).fit(ramp, labels)
    prepared = prepare_frames(_bad_frames(ramp), two_theta=ramp.two_theta, wavelength=ramp.wavelength)
    probs, inputs = model.predict_proba_prepared(prepared, return_inputs=True)
    np.testing.assert_array_equal(probs, model.predict_proba(prepared))
    x, mask, ok = inputs
    np.testing.assert_array_equal(ok, np.flatnonzero(prepared.ok))
    np.testing.assert_array_equal(model.proba(x, mask), probs[ok])

    references = model.references.numpy()[:6]
    ref_x = np.zeros((len(references), CANONICAL_GRID.n_points), np.float32)
    ref_x[:, model.span[0]: model.span[1]] = references
    ref_mask = ref_x > -1
    ref_mask[:, : model.span[0]] = False
    ref_mask[:, model.span[1]:] = False
    gate = LibraryGate(ref_x, ref_mask, model.alignment)
    assert gate.accepts_inputs_of(model)
    assert not LibraryGate(ref_x, ref_mask, None).accepts_inputs_of(model)
    once = gate.similarity(prepared, inputs=inputs)
    again = gate.similarity(prepared)
    np.testing.assert_allclose(once, again, rtol=0, atol=1e-6)
    assert np.isnan(once[~prepared.ok]).all() and np.isfinite(once[prepared.ok]).all()
    # against the cosine written out in float64 on the shared points
    ax, am = x.astype(float), mask.astype(float)
    r, rm = gate.references.astype(float), gate.reference_mask.astype(float)
    cosine = (ax * am) @ r.T / np.sqrt(((ax * am) ** 2 @ rm.T) * (am @ (r**2).T))
    np.testing.assert_allclose(once[ok], cosine.max(1), rtol=0, atol=1e-5)


# -- the online change point -----------------------------------------------------------------------------


def _same_estimates(a, b, tol=1e-9):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.boundary, x.settled, x.n_frames) == (y.boundary, y.settled, y.n_frames)
        for u, v in [(x.pressure, y.pressure), (x.sigma, y.sigma), (x.map_pressure, y.map_pressure),
                     (x.observed, y.observed), *zip(x.interval, y.interval)]:
            assert (math.isnan(u) and math.isnan(v)) or abs(u - v) <= tol, (x, y)


def _noisy_ramp(n, transitions, widths, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    pressures = np.linspace(5.0, 55.0, n)
    fractions = phase_fractions(pressures, transitions, widths)
    return np.clip(fractions + rng.normal(0.0, noise, fractions.shape), 0.0, 1.0), pressures


@pytest.mark.parametrize("batch", [1, 7, 50, 500])
def test_update_many_equals_frame_by_frame_updates(batch):
    probs, pressures = _noisy_ramp(120, [31.3], [2.0], seed=4)
    probs[[3, 40, 77]] = np.nan  # flagged frames
    pressures = pressures.copy()
    pressures[90] = np.nan
    one = OnlineChangePoint(("low", "high"))
    per_frame = [one.update(q, p) for q, p in zip(probs, pressures)]
    many = OnlineChangePoint(("low", "high"))
    for i in range(0, len(pressures), batch):
        last = many.update_many(probs[i: i + batch], pressures[i: i + batch])
        _same_estimates(last, per_frame[min(i + batch, len(pressures)) - 1])
    assert many.flagged == one.flagged == [3, 40, 77, 90]
    assert many.n_seen == one.n_seen == 120
    _same_estimates(many.estimates(), one.estimates())
    np.testing.assert_allclose(many.phase_probability(31.0), one.phase_probability(31.0), atol=1e-9)
    assert many.estimates()[0].settled and abs(many.estimates()[0].pressure - 31.3) < 0.5
    # `run` is still the per-frame path
    _same_estimates(OnlineChangePoint(("low", "high")).run(probs, pressures)[-1], per_frame[-1])


def test_update_many_with_three_phases_and_frames_before_the_step_is_known():
    probs, pressures = _noisy_ramp(90, [20.0, 40.0], [3.0, 1.0], seed=5, noise=0.03)
    pressures = np.concatenate([[5.0, 5.0, 5.0], pressures[3:]])  # the step is unknown for three frames
    one = OnlineChangePoint(("B1", "rB1", "B8"))
    for q, p in zip(probs, pressures):
        expected = one.update(q, p)
    many = OnlineChangePoint(("B1", "rB1", "B8"))
    many.update_many(probs[:2], pressures[:2])
    assert math.isnan(many.estimates()[0].pressure)
    _same_estimates(many.update_many(probs[2:], pressures[2:]), expected)
    first, second = expected
    assert abs(first.pressure - 20.0) < 0.5 and abs(second.pressure - 40.0) < 0.5


def test_estimates_are_kept_until_the_next_frame():
    probs, pressures = _noisy_ramp(60, [30.0], [1.0])
    cp = OnlineChangePoint(("low", "high"))
    cp.update_many(probs, pressures)
    first = cp.estimates()
    assert cp.estimates() == first and cp.estimates()[0] is first[0]
    cp.update(probs[-1], pressures[-1] + 0.5)
    assert cp.estimates()[0].n_frames == first[0].n_frames + 1


def test_coarsening_is_exact_and_the_same_for_both_paths():
    probs, pressures = _noisy_ramp(300, [31.3], [0.0], seed=6)
    small = {"max_cells": 150}
    one = OnlineChangePoint(("low", "high"), **small)
    for q, p in zip(probs, pressures):
        expected = one.update(q, p)
    many = OnlineChangePoint(("low", "high"), **small)
    for i in range(0, 300, 64):
        many.update_many(probs[i: i + 64], pressures[i: i + 64])
    _same_estimates(many.estimates(), expected)
    b = many._boundaries[0]
    assert b.n_cells <= 150 and b.resolution > 50.0 / 299 / 10  # coarsened
    unbounded = OnlineChangePoint(("low", "high"), max_cells=None)
    unbounded.update_many(probs, pressures)
    assert unbounded._boundaries[0].resolution == pytest.approx(50.0 / 299 / 10)
    assert unbounded._boundaries[0].n_cells > 3000
    # the kept cells are the cells of a grid that had that resolution from the start
    direct = OnlineChangePoint(("low", "high"), resolution=b.resolution, widths=b.width_values, margin=b.margin,
                               max_cells=10**6)
    direct.update_many(probs, pressures)
    d = direct._boundaries[0]
    shared, i, j = np.intersect1d(np.round(b.theta / b.resolution), np.round(d.theta / d.resolution),
                                  return_indices=True)
    assert len(shared) >= b.n_cells - 2
    np.testing.assert_allclose(b.loglik[i], d.loglik[j], rtol=1e-11, atol=1e-8)


def test_a_long_run_keeps_the_grid_bounded_and_the_estimate_right():
    n, max_cells = 20_000, 1500
    probs, pressures = _noisy_ramp(n, [31.3], [0.0], seed=7)
    cp = OnlineChangePoint(("low", "high"), max_cells=max_cells)
    for i in range(0, n, 500):
        est = cp.update_many(probs[i: i + 500], pressures[i: i + 500])[0]
        assert cp._boundaries[0].n_cells <= max_cells
    b = cp._boundaries[0]
    step = cp.pressure_step
    assert step == pytest.approx(50.0 / (n - 1))
    assert b.resolution > step  # coarsened well past a tenth of a step
    assert est.settled and est.n_frames == n
    assert abs(est.pressure - 31.3) <= max(step, b.resolution)  # right to within one (coarsened) grid cell
    assert est.interval[0] - b.resolution <= 31.3 <= est.interval[1] + b.resolution


@pytest.mark.parametrize("error_rate", [0.05, 0.0])
def test_grid_log_likelihood_is_the_written_out_sum(error_rate):
    probs, pressures = _noisy_ramp(80, [31.3], [1.5], seed=8)
    order = np.random.default_rng(8).permutation(80)  # any order of pressures
    probs, pressures = probs[order], pressures[order]
    cp = OnlineChangePoint(("low", "high"), error_rate=error_rate)
    for i in range(0, 80, 16):
        cp.update_many(probs[i: i + 16], pressures[i: i + 16])
    b = cp._boundaries[0]
    q = probs / probs.sum(1, keepdims=True)
    e = q[:, 1][None, :, None]
    theta = b.theta[:, None, None]
    pi = 1.0 / (1.0 + np.exp(-(pressures[None, :, None] - theta) / b.widths[None, None, :]))
    gauss = np.exp(-0.5 * ((e - pi) / b.taus) ** 2) / (b.taus * math.sqrt(2.0 * math.pi))
    expected = np.log((1.0 - error_rate) * gauss + error_rate).sum(1)  # (cells, pairs)
    np.testing.assert_allclose(b.loglik, expected, rtol=1e-12, atol=1e-9)
    assert b.theta[0] <= pressures.min() - b.margin + 1e-9 and b.theta[-1] >= pressures.max() + b.margin - 1e-9

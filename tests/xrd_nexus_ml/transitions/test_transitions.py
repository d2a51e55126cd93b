"""Phase transitions along a pressure scan: the simulated ramp, the classifiers, the change point."""

import json
import math

import numpy as np
import pytest
from scipy.signal import find_peaks

from xrd_nexus_ml.pattern import CANONICAL_GRID, Diffractogram, energy_to_wavelength
from xrd_nexus_ml.physics import PowderSimulator
from xrd_nexus_ml.preprocess import prepare_frames
from xrd_nexus_ml.transitions import (
    FERROPERICLASE_MW80,
    PHASES,
    BinnedVoteClassifier,
    BirchMurnaghan3,
    CosineBaseline,
    EndToEndClassifier,
    ModelBundleError,
    OnlineChangePoint,
    RampError,
    TransitionTracker,
    believability,
    load_model,
    phase_fractions,
    rhombohedral_angle,
    simulate_ramp,
    simulate_training_set,
    train_models,
)
from xrd_nexus_ml.transitions.alignment import CompressionAlignment
from xrd_nexus_ml.transitions.ramp import Instrument, b1_structure, simulate_patterns

PT, WIDTH = 30.0, 2.0


@pytest.fixture(scope="module")
def ramp():
    """81 frames, 10-50 GPa (step 0.5 GPa), transition at 30 GPa with 2 GPa of coexistence."""
    return simulate_ramp(np.linspace(10.0, 50.0, 81), PT, WIDTH, noise=0.01, seed=3)


@pytest.fixture(scope="module")
def models():
    """The three models trained (fewer epochs) in the seed's 4 measured + 40 simulated regime."""
    training_set = simulate_training_set(seed=0)
    assert len(training_set) == 44 and training_set.kinds.count("measured") == 4
    return train_models(training_set, seed=0, fast=True)


# -- physics ---------------------------------------------------------------------------------------


def test_eos_volume_decreases_and_matches_birch_murnaghan():
    eos = FERROPERICLASE_MW80
    pressures = np.linspace(0.0, 80.0, 41)
    volumes = eos.volume(pressures)
    assert volumes[0] == pytest.approx(eos.v0, rel=1e-9)
    assert np.all(np.diff(volumes) < 0)
    np.testing.assert_allclose(eos.pressure(volumes), pressures, atol=1e-6)
    # third-order BM written out at V = 0.9 V0: x = (V0/V)^(1/3), P = 3K0/2 (x^7 - x^5)(1 + 3/4 (K'-4)(x^2-1))
    other = BirchMurnaghan3(v0=80.0, k0=160.0, k0_prime=4.5)
    x = (1 / 0.9) ** (1 / 3)
    expected = 1.5 * 160.0 * (x**7 - x**5) * (1 + 0.75 * 0.5 * (x**2 - 1))
    assert other.pressure(72.0) == pytest.approx(expected, rel=1e-12)
    assert other.volume(expected) == pytest.approx(72.0, rel=1e-8)
    # K(0) = K0 and dK/dP = K0' at zero pressure
    assert float(other.bulk_modulus(0.0)) == pytest.approx(160.0, rel=1e-4)
    k1, k2 = other.bulk_modulus([-0.5, 0.5])
    assert (k2 - k1) / 1.0 == pytest.approx(4.5, rel=1e-2)
    # (Mg0.2Fe0.8)O at 30 GPa: ~14 % denser than at ambient pressure
    assert float(eos.volume(30.0)) / eos.v0 == pytest.approx(0.862, abs=0.01)


def test_rhombohedral_strain_gives_the_stated_angle_and_keeps_the_volume():
    for strain in (0.0, 0.004, 0.02):
        crystal = b1_structure(70.0, strain)
        assert crystal.volume == pytest.approx(70.0, rel=1e-9)
        primitive = 0.5 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]) @ crystal.lattice
        cos = primitive[0] @ primitive[1] / (np.linalg.norm(primitive[0]) * np.linalg.norm(primitive[1]))
        assert math.degrees(math.acos(cos)) == pytest.approx(rhombohedral_angle(strain), abs=1e-9)
    assert rhombohedral_angle(0.0) == pytest.approx(60.0)
    assert rhombohedral_angle(0.004) < 60.0


def test_peak_splitting_only_above_the_transition():
    pressures = np.array([20.0, 28.0, 34.0, 45.0])
    clean = simulate_ramp(pressures, PT, 0.0, noise=0.0, background=0.0, seed=0)
    lam = energy_to_wavelength(25.6)
    assert clean.wavelength == pytest.approx(lam)
    assert clean.intensity.shape == (4, 4023)
    assert clean.two_theta[0] == pytest.approx(10.0) and clean.two_theta[-1] == pytest.approx(26.0)

    def maxima(row, window):
        sel = (clean.two_theta > window[0]) & (clean.two_theta < window[1])
        peaks, _ = find_peaks(row[sel], prominence=0.02 * row[sel].max())
        return len(peaks)

    sticks = PowderSimulator(wavelength=lam, device="cpu").sticks(
        PHASES["B1"].structures([20.0], FERROPERICLASE_MW80), two_theta_range=(10.0, 26.0))
    two_theta_111 = sticks[0][0][0]
    for i, p in enumerate(pressures):
        shift = 2.0 * (p - 20.0) / 40.0  # 111 moves up by < 1° over this range
        n111 = maxima(clean.intensity[i], (two_theta_111 - 0.3, two_theta_111 + shift + 0.3))
        assert n111 == (1 if p < PT else 2), (p, n111)
    # 200 never splits: one maximum in both phases
    two_theta_200 = sticks[0][0][1]
    for i in (0, 3):
        assert maxima(clean.intensity[i], (two_theta_200 - 0.3, two_theta_200 + 1.0)) == 1
    # the stick patterns: 5 lines of rock salt in 10-26°, more once 111, 220, 311, 222 split
    hp = PowderSimulator(wavelength=lam, device="cpu").sticks(
        PHASES["rB1"].structures([45.0], FERROPERICLASE_MW80, transition_pressure=PT), two_theta_range=(10.0, 26.0))
    assert len(sticks[0][0]) == 5 and len(hp[0][0]) >= 9


def test_coexistence_fractions():
    p = np.array([20.0, 28.9, 29.5, 30.0, 30.5, 31.1, 40.0])
    f = phase_fractions(p, [30.0], [2.0])
    np.testing.assert_allclose(f.sum(1), 1.0)
    np.testing.assert_allclose(f[:, 1], [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    three = phase_fractions(np.linspace(0, 60, 121), [20.0, 40.0], [4.0, 2.0])
    np.testing.assert_allclose(three.sum(1), 1.0)
    assert three[0, 0] == 1.0 and three[-1, 2] == 1.0 and three[60, 1] == 1.0
    ramp = simulate_ramp(np.linspace(25, 35, 21), PT, WIDTH, noise=0.01, seed=1)
    coexisting = (ramp.fractions > 0).sum(1) == 2
    assert np.all(np.abs(ramp.pressures[coexisting] - PT) < WIDTH / 2)
    assert np.array_equal(ramp.pure(), ~coexisting)
    with pytest.raises(RampError, match="increase"):
        simulate_ramp([10.0], [30.0, 20.0], 1.0, phases=("B1", "rB1", "B8"))


def test_ramp_is_seeded_and_normalised(ramp):
    again = simulate_ramp(np.linspace(10.0, 50.0, 81), PT, WIDTH, noise=0.01, seed=3)
    other = simulate_ramp(np.linspace(10.0, 50.0, 81), PT, WIDTH, noise=0.01, seed=4)
    assert np.array_equal(ramp.intensity, again.intensity)
    assert not np.array_equal(ramp.intensity, other.intensity)
    np.testing.assert_allclose(ramp.intensity.max(1), 1.0, rtol=1e-6)
    assert ramp.pressure_step == pytest.approx(0.5)


def test_alignment_undoes_compression():
    lam = energy_to_wavelength(25.6)
    low, high = (PHASES["B1"].structures([p], FERROPERICLASE_MW80)[0] for p in (5.0, 40.0))
    inst = Instrument()
    rows = simulate_patterns([low, high], inst, [5.0, 40.0])
    frames = prepare_frames(rows, two_theta=inst.grid.values.numpy(), wavelength=lam)
    align = CompressionAlignment(CANONICAL_GRID, reference=frames.x[0])
    expected = (low.volume / high.volume) ** (1 / 3)  # q of every line scales with a(5)/a(40)
    assert align.scales(frames.x[1:])[0] == pytest.approx(expected, abs=5e-4)


# -- models ----------------------------------------------------------------------------------------


def test_believability_weight():
    w = believability([1.0, 0.5, 0.55, 0.8])
    assert w[0] == pytest.approx(1.0, abs=1e-12) and w[1] == 0.0
    assert w[2] == pytest.approx(max(0.0, 1.4337 * 0.55**2 - 0.4337))
    assert w[3] == pytest.approx(1.4337 * 0.64 - 0.4337)


def test_models_beat_chance_and_the_better_one_is_accurate(models, ramp):
    accuracy = {}
    pure = ramp.pure()
    assert pure.sum() > 60
    for name, model in models.items():
        p = model.predict_proba(ramp)
        assert p.shape == (ramp.n_frames, 2)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
        accuracy[name] = float((p.argmax(1) == ramp.labels)[pure].mean())
    assert accuracy["binned_vote"] > 0.8 and accuracy["end_to_end"] > 0.8  # chance is 0.5
    assert max(accuracy["binned_vote"], accuracy["end_to_end"]) >= 0.95, accuracy
    assert models["binned_vote"].metrics["bins_voting"] >= 1
    assert 0 < models["binned_vote"].weights.max() <= 1.0


def test_each_model_carries_its_calibrated_crossing_point_error(models, tmp_path):
    """Measured on calibration ramps at training time, saved in the card, applied by the tracker."""
    calibration = models["end_to_end"].changepoint
    assert calibration["n_ramps"] == 2 and len(calibration["errors_gpa"]) == 2
    assert calibration["bias_gpa"] == pytest.approx(np.mean(calibration["errors_gpa"]), abs=1e-3)
    assert calibration["systematic_sigma_gpa"] >= 0.0
    # the cosine baseline is far off: its systematic sigma says so (GPa, not a tenth of a step)
    assert models["cosine_baseline"].changepoint["systematic_sigma_gpa"] > 1.0
    loaded = load_model(models["end_to_end"].save(tmp_path / "e2e"))
    assert loaded.changepoint == json.loads(json.dumps(calibration))

    clean = simulate_ramp(np.linspace(10.0, 50.0, 81), PT, WIDTH, noise=0.003, background=0.05, seed=12)
    raw = TransitionTracker(loaded, two_theta=clean.two_theta, wavelength=clean.wavelength,
                            systematic_sigma=0.0, systematic_bias=0.0)
    calibrated = TransitionTracker(loaded, two_theta=clean.two_theta, wavelength=clean.wavelength)
    a = raw.run(list(clean.intensity), clean.pressures)[-1].boundaries[0]
    b = calibrated.run(list(clean.intensity), clean.pressures)[-1].boundaries[0]
    assert b.pressure == pytest.approx(a.pressure - calibration["bias_gpa"], abs=1e-9)
    assert b.sigma_statistical == pytest.approx(a.sigma, abs=1e-9)
    assert b.sigma == pytest.approx(math.hypot(a.sigma, calibration["systematic_sigma_gpa"]), abs=1e-9)
    assert b.interval[1] - b.interval[0] >= a.interval[1] - a.interval[0]
    assert a.settled == b.settled  # settling looks at the statistical part only
    with pytest.raises(ValueError, match="systematic_sigma"):
        OnlineChangePoint(("low", "high"), systematic_sigma=-0.1)


def test_change_point_on_a_clean_ramp(models):
    clean = simulate_ramp(np.linspace(10.0, 50.0, 81), PT, WIDTH, noise=0.003, background=0.05, seed=11)
    tracker = TransitionTracker(models["end_to_end"], two_theta=clean.two_theta, wavelength=clean.wavelength)
    records = [tracker.update(frame, p) for frame, p in zip(clean.intensity, clean.pressures)]
    final = records[-1].boundaries[0]
    assert abs(final.pressure - PT) <= 2 * clean.pressure_step
    assert final.settled and 0 < final.sigma < 2 * clean.pressure_step
    assert final.interval[0] <= final.pressure <= final.interval[1]
    # before the transition the estimate cannot be settled
    before = [r for r in records if r.pressure < PT - WIDTH / 2]
    assert not any(r.boundaries[0].settled for r in before)
    assert json.dumps(records[-1].to_dict())  # records are plain JSON-ready data


def test_change_point_from_perfect_fractions_and_three_phases():
    pressures = np.linspace(0.0, 60.0, 121)
    truth = phase_fractions(pressures, [20.0, 40.0], [3.0, 1.0])
    probs = truth.copy()
    probs[[10, 50, 90]] = np.nan  # flagged frames are skipped
    cp = OnlineChangePoint(("B1", "rB1", "B8"))
    history = cp.run(probs, pressures)
    first, second = history[-1]
    assert first.pressure == pytest.approx(20.0, abs=0.25) and second.pressure == pytest.approx(40.0, abs=0.25)
    assert first.settled and second.settled
    assert cp.flagged == [10, 50, 90]
    assert cp.phase_probability(30.0).argmax() == 1 and cp.phase_probability(50.0).argmax() == 2
    # one confidently wrong frame far from the transition does not move the estimate
    noisy = phase_fractions(pressures, [30.0], [1.0])
    noisy[10] = [0.0, 1.0]
    est = OnlineChangePoint(("low", "high")).run(noisy, pressures)[-1][0]
    assert est.pressure == pytest.approx(30.0, abs=0.5)


def test_bad_frames_are_flagged_and_do_not_break_the_estimate(models, ramp):
    frames = [row for row in ramp.intensity]
    nan_frame = frames[5].copy()
    nan_frame[100] = np.nan
    frames[5] = nan_frame
    frames[60] = np.zeros_like(frames[60])
    x_short = np.linspace(ramp.two_theta[0], ramp.two_theta[-1], 2001)
    frames[20] = np.interp(x_short, ramp.two_theta, frames[20])  # wrong length: resampled
    far = Diffractogram(x=np.linspace(100, 120, 50), intensity=np.arange(50.0), axis="q")  # outside the model grid
    frames[70] = far
    frames[40] = ramp.diffractogram(40).to_q()  # another axis: resampled from its own q axis
    prepared = prepare_frames(frames, two_theta=ramp.two_theta, wavelength=ramp.wavelength)
    assert prepared.flags[5] == "nan" and prepared.flags[60] == "zero" and prepared.flags[70] == "out_of_range"
    assert prepared.flags[20] is None and "2001" in prepared.notes[20]
    assert prepared.flags[40] is None

    model = models["end_to_end"]
    p = model.predict_proba(frames, two_theta=ramp.two_theta, wavelength=ramp.wavelength)
    assert np.isnan(p[[5, 60, 70]]).all() and not np.isnan(np.delete(p, [5, 60, 70], axis=0)).any()
    assert p[20].argmax() == ramp.labels[20] and p[40].argmax() == ramp.labels[40]
    tracker = TransitionTracker(model, two_theta=ramp.two_theta, wavelength=ramp.wavelength)
    records = tracker.run(frames, ramp.pressures)
    assert len(records) == ramp.n_frames
    assert [r.index for r in records if r.flag] == [5, 60, 70]
    assert all(r.probabilities is None for r in records if r.flag)
    final = records[-1].boundaries[0]
    assert abs(final.pressure - PT) <= 2 * ramp.pressure_step and final.settled
    # a frame without a usable pressure is flagged too
    assert tracker.update(ramp.intensity[0], float("nan")).flag == "pressure"


def test_three_phases_classifier_and_both_boundaries():
    phases = ("B1", "rB1", "B8")
    training_set = simulate_training_set(phases=phases, n_simulated_per_phase=8, n_mixed_per_boundary=4,
                                         pressure_range=(10.0, 90.0), seed=0)
    assert training_set.fractions.shape[1] == 3 and training_set.kinds.count("measured") == 6
    model = EndToEndClassifier(phases, epochs=80, calibrate=False).fit(
        training_set.intensity, training_set.fractions, two_theta=training_set.two_theta,
        wavelength=training_set.wavelength)
    ramp3 = simulate_ramp(np.linspace(10.0, 90.0, 81), [35.0, 65.0], [2.0, 2.0], noise=0.01, seed=5, phases=phases)
    records = TransitionTracker(model, two_theta=ramp3.two_theta, wavelength=ramp3.wavelength).run(
        ramp3.intensity, ramp3.pressures)
    p = np.array([r.probabilities for r in records])
    assert p.shape == (81, 3)
    assert (p.argmax(1) == ramp3.labels)[ramp3.pure()].mean() >= 0.95
    low, high = records[-1].boundaries
    assert (low.lower, low.upper, high.lower, high.upper) == ("B1", "rB1", "rB1", "B8")
    assert abs(low.pressure - 35.0) <= 2 * ramp3.pressure_step and abs(high.pressure - 65.0) <= 2 * ramp3.pressure_step


# -- bundles ---------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_predictions(models, ramp, tmp_path):
    for name, model in models.items():
        folder = model.save(tmp_path / name)
        assert {f.name for f in folder.iterdir()} == {"card.json", "weights.safetensors"}
        assert (folder / "weights.safetensors").stat().st_size < 300_000
        card = json.loads((folder / "card.json").read_text())
        assert card["kind"] == name and card["phases"] == ["B1", "rB1"] and card["input"]["grid"]["n_points"] == 4096
        loaded = load_model(folder)
        assert type(loaded) is type(model)
        np.testing.assert_array_equal(loaded.predict_proba(ramp), model.predict_proba(ramp))
    assert isinstance(EndToEndClassifier.load(tmp_path / "end_to_end"), EndToEndClassifier)
    with pytest.raises(ModelBundleError, match="not 'end_to_end'"):
        EndToEndClassifier.load(tmp_path / "binned_vote")


def test_corrupt_bundle_gives_a_clear_error_naming_the_file(models, tmp_path):
    folder = models["binned_vote"].save(tmp_path / "bv")
    weights = folder / "weights.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelBundleError, match=r"weights\.safetensors"):
        load_model(folder)
    folder = models["end_to_end"].save(tmp_path / "e2e")
    (folder / "card.json").write_text('{"kind": "end_to_end", ')
    with pytest.raises(ModelBundleError, match=r"card\.json.*not valid JSON"):
        load_model(folder)
    folder = models["cosine_baseline"].save(tmp_path / "cos")
    (folder / "weights.safetensors").unlink()
    with pytest.raises(ModelBundleError, match=r"weights\.safetensors.*missing"):
        load_model(folder)
    with pytest.raises(ModelBundleError, match="card.json"):
        BinnedVoteClassifier.load(tmp_path / "nowhere")


def test_untrained_model_and_bad_labels_raise_clear_errors(ramp):
    from xrd_nexus_ml.errors import XrdNexusMlError

    with pytest.raises(XrdNexusMlError, match="not trained"):
        CosineBaseline(("B1", "rB1")).predict_proba(ramp)
    with pytest.raises(XrdNexusMlError, match="labels"):
        CosineBaseline(("B1", "rB1")).fit(ramp, np.full(ramp.n_frames, 3))


# -- command line ------------------------------------------------------------------------------------


def test_cli_has_the_transition_commands(monkeypatch, capsys):
    from xrd_nexus_ml import cli

    args = cli.build_parser().parse_args(["evaluate", "transition", "--n-ramps", "3", "--seed", "2", "--json"])
    assert (args.n_ramps, args.seed, args.json) == (3, 2, True)
    args = cli.build_parser().parse_args(["train", "transition", "--out", "somewhere"])
    assert args.out == "somewhere"
    import xrd_nexus_ml.evaluation.transitions as ev

    fake = {"models": {"end_to_end": {"frame_accuracy": 1.0, "transition_error_steps": 0.5, "frames_to_settle": 3}},
            "n_ramps": 3}
    monkeypatch.setattr(ev, "evaluate_transition", lambda **kw: fake)
    assert cli.main(["evaluate", "transition", "--n-ramps", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == fake


@pytest.mark.slow
def test_evaluate_transition_json_keys(capsys):
    from xrd_nexus_ml.cli import main

    assert main(["evaluate", "transition", "--n-ramps", "1", "--fast", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_ramps"] == 1
    for name in ("binned_vote", "end_to_end", "cosine_baseline"):
        for key in ("frame_accuracy", "transition_error_steps", "frames_to_settle"):
            assert key in result["models"][name]
        scores = result["models"][name]
        assert 0.0 <= scores["frame_accuracy"] <= 1.0, (name, scores["frame_accuracy"])
        assert 0.0 <= scores["transition_error_steps"] <= scores["transition_error_steps_max"], name  # mean <= max
        assert 0 <= scores["settled_ramps"] <= result["n_ramps"], name
        assert (scores["frames_to_settle"] is None) == (scores["settled_ramps"] == 0), name
        assert scores["frames_to_settle"] is None or scores["frames_to_settle"] >= 0, name  # never "before" it
        assert 0 <= scores["settled_before_transition"] <= scores["settled_ramps"], name
        # a mean over the settled ramps
        assert scores["frames_to_settle"] is None or scores["frames_to_settle"] <= scores["frames_to_settle_max"], name
    assert result["models"]["end_to_end"]["bad_frames_flagged"]


@pytest.mark.slow
def test_train_transition_writes_small_bundles(tmp_path):
    from xrd_nexus_ml.cli import main

    assert main(["train", "transition", "--out", str(tmp_path), "--fast"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["total_bytes"] < 500_000
    for name in ("binned_vote", "end_to_end", "cosine_baseline"):
        assert load_model(tmp_path / name).fitted

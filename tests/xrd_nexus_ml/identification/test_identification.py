"""Identification: training stream, model bundle, reference fit, identifier and CLI, on real data.

The model trained here is tiny (a few dozen steps on a handful of references) so the fast suite
checks mechanics; what the shipped models achieve is measured by `evaluate identify` and by
the tests on the committed small real-data model below."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.identify import BuildConfig, build_model
from xrd_nexus_ml.cli import main
from xrd_nexus_ml.errors import ModelBundleError
from xrd_nexus_ml.identification.identifier import Identifier, _gaussian_sum
from xrd_nexus_ml.identification.library import LibraryError, default_library, formula_elements, load_cif_library
from xrd_nexus_ml.identification.model import IdentificationModel
from xrd_nexus_ml.identification.stream import PeakCache, ReferenceStream, identification_pipeline
from xrd_nexus_ml.io import read_pattern
from xrd_nexus_ml.physics import PowderSimulator

FEW = ["MnO_225.cif", "MnO2_136.cif", "TiO2_141.cif", "TiO2_136.cif", "LiF_225.cif", "Mn2O3_206.cif"]


@pytest.fixture(scope="module")
def few_cifs(tmp_path_factory, lmtof_references) -> Path:
    folder = tmp_path_factory.mktemp("cifs")
    for name in FEW:
        shutil.copy(lmtof_references / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tiny_model(few_cifs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    library = load_cif_library(few_cifs)
    config = BuildConfig(steps=30, batch_size=32, replay=128, val_fraction=0.2, calibration_patterns=64,
                         checkpoint_every=10, workers=0)
    build_model(library, out, config, progress=False)
    return out


def test_peak_cache_matches_the_simulator(few_cifs):
    from xrd_nexus_ml.io import read_structure

    structures = [read_structure(few_cifs / n) for n in FEW[:3]]
    sim = PowderSimulator(wavelength="CuKa1", device="cpu")
    cache = PeakCache.build(structures, sim)
    crystals = sim.batch(structures)
    direct = sim.reflections(crystals.with_b_factors(torch.zeros_like(crystals.b_factors))).merged().without_weak()
    for i in range(3):
        live = direct.intensity[i] > 0
        assert torch.allclose(cache.q[i], direct.q[i][live])
        assert torch.allclose(cache.intensity[i], direct.intensity[i][live])
    # the Debye-Waller factor damps high-q peaks more than low-q ones
    damped = cache.peaks([0], torch.tensor([2.0]))
    ratio = damped.intensity[0, : len(cache.q[0])] / cache.intensity[0]
    assert ratio[0] > ratio[-1] and float(ratio.max()) <= 1.0


def test_stream_draws_are_seeded_masked_and_normalised(few_cifs):
    from xrd_nexus_ml.io import read_structure

    structures = [read_structure(few_cifs / n) for n in FEW]
    sim = PowderSimulator(wavelength="CuKa1", device="cpu")
    cache = PeakCache.build(structures, sim)
    pool = cache.peaks(range(len(cache)))
    a = ReferenceStream(cache, sim, range(len(cache)), batch_size=8, seed=3, pipeline=identification_pipeline(pool))
    b = ReferenceStream(cache, sim, range(len(cache)), batch_size=8, seed=3, pipeline=identification_pipeline(pool))
    da, db = a.draw(), b.draw()
    assert torch.equal(da.inputs, db.inputs) and np.array_equal(da.reference, db.reference)
    x, mask = da.inputs[:, 0], da.inputs[:, 1]
    assert da.inputs.shape == (8, 2, sim.grid.n_points)
    assert float(x.max()) == pytest.approx(1.0) and float(x.min()) >= 0.0
    assert torch.all(x[mask == 0] == 0)
    assert not torch.equal(a.draw().inputs, da.inputs)  # every draw is new
    config = a.config()
    assert any(t["name"] == "ImpurityPhase" and t["pool"] == "the library's references" for t in config["transforms"])


def test_bundle_round_trip_and_errors(tiny_model, tmp_path, examples_dir):
    model = IdentificationModel.load(tiny_model)
    card = json.loads((tiny_model / "card.json").read_text())
    assert card["kind"] == "identification-moe" and len(card["phases"]) == len(FEW)
    assert {"unseen_polymorph_top1", "calibration_top1", "expected_calibration_error"} <= set(card["metrics"])
    for key in ("unseen_polymorph_top1", "calibration_top1", "expected_calibration_error"):
        assert 0.0 <= card["metrics"][key] <= 1.0, (key, card["metrics"][key])
    assert card["metrics"]["n_calibration_patterns"] > 0
    assert card["training"]["library"]["held_out_phases"], "a polymorph must be held out by structure"
    assert not (tiny_model / "checkpoint.pt").exists()
    x = torch.rand(4, 2, model.grid.n_points)
    x[:, 1] = 1.0
    p1, s1 = model.predict(x)
    copy = tmp_path / "copy"
    model.save(copy)
    p2, s2 = IdentificationModel.load(copy).predict(x)
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    np.testing.assert_allclose(p1.sum(1), 1.0, atol=1e-5)

    (copy / "card.json").write_text("{not json")
    with pytest.raises(ModelBundleError, match="card.json"):
        IdentificationModel.load(copy)
    model.save(copy)
    (copy / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelBundleError, match="weights.safetensors"):
        IdentificationModel.load(copy)
    with pytest.raises(ModelBundleError, match="missing"):
        IdentificationModel.load(tmp_path / "nowhere")
    transition = examples_dir.parent / "models" / "transition" / "end_to_end"
    with pytest.raises(ModelBundleError, match="expected 'identification-moe'"):
        IdentificationModel.load(transition)


def test_build_resumes_from_its_checkpoint(few_cifs, tmp_path):
    library = load_cif_library(few_cifs)
    config = BuildConfig(steps=12, batch_size=16, replay=0, calibration_patterns=32, checkpoint_every=6, workers=0)
    out = tmp_path / "resumed"
    build_model(library, out, config, progress=False)
    history = json.loads((out / "card.json").read_text())["training"]["loss_history"]
    assert history and history[-1][0] == 12
    # a checkpoint of another recipe is not resumed from: the build starts over and still finishes
    torch.save({"step": 6, "recipe": "other", "library_hash": "x"}, out / "checkpoint.pt")
    build_model(library, out, config, progress=False)
    assert not (out / "checkpoint.pt").exists()


def test_reference_fit_recovers_strain_and_removes_the_phase(tiny_model):
    identifier = Identifier.from_bundle(tiny_model)
    model = identifier.model
    phase = next(i for i, p in enumerate(model.phases) if p["formula"] == "MnO")
    q, inten = model.sticks[phase]
    grid = model.grid.values
    pattern = _gaussian_sum(grid, q * 1.02, inten.astype(float), 0.01)  # a 2 % smaller cell: q × 1.02
    pattern /= pattern.max()
    mask = (grid > 0.7) & (grid < 5.0)
    pattern *= mask
    padded, _ = identifier._log_residual(pattern, mask)
    fit = identifier._fit(model.phases[phase]["class_id"], pattern, mask, padded)
    assert fit.phase == phase
    assert fit.strain == pytest.approx(1 / 1.02 - 1, abs=0.002)
    residual = np.clip(pattern - fit.pattern, 0, None)
    assert (residual**2).sum() < 0.1 * (pattern**2).sum()


def test_identify_flags_unusable_patterns_and_respects_elements(tiny_model, examples_dir):
    identifier = Identifier.from_bundle(tiny_model)
    grid = identifier.model.grid.values
    good = read_pattern(examples_dir / "MnO.xy", wavelength="CuKa")
    results = identifier.identify([good, np.zeros(grid.size), np.full(grid.size, np.nan)], sources=["a", "b", "c"])
    assert [r.flag for r in results] == [None, "zero", "nan"]
    assert results[1].phases == () and results[2].phases == ()
    assert results[0].seconds > 0
    only_ti = identifier.identify([good], elements=["Ti", "O"])[0]
    assert all(set(formula_elements(p.formula)) <= {"Ti", "O"} for p in only_ti.phases)
    assert [c[0] for c in only_ti.candidates] == ["TiO2"]
    with pytest.raises(LibraryError, match="Xx"):
        identifier.identify([good], elements=["Xx"])
    with pytest.raises(LibraryError, match="no phase"):
        identifier.identify([good], elements=["Zr"])


def test_classify_cli_json_and_plot(tiny_model, tmp_path, capsys, examples_dir):
    files = [str(examples_dir / "MnO.xy"), str(examples_dir / "TiO2.xy")]
    assert main(["classify", *files, "--model", str(tiny_model), "--wavelength", "CuKa", "--json",
                 "--plot", str(tmp_path)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [Path(r["source"]).name for r in records] == ["MnO.xy", "TiO2.xy"]
    references = {Path(name).stem for name in FEW}
    for r in records:
        assert {"phases", "out_of_library", "candidates", "seconds"} <= set(r)
        assert isinstance(r["out_of_library"], bool) and r["seconds"] > 0
        assert r["candidates"] and all(0.0 <= c["probability"] <= 1.0 for c in r["candidates"])
        for p in r["phases"]:  # phases of the model's own references, with a calibrated probability
            assert p["reference"] in references and p["formula"] == p["reference"].split("_")[0]
            assert 0.0 <= p["probability"] <= 1.0 and 1 <= p["space_group_number"] <= 230
        assert Path(r["png"]).is_file() and Path(r["png"]).stat().st_size > 10_000
    assert main(["classify", files[0], "--model", str(tmp_path / "missing")]) == 2
    assert "neither a model bundle" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["classify", files[0], "--max-strain", "4"])
    assert exit_.value.code == 2 and "expected a fraction between 0 and 0.5" in capsys.readouterr().err


def test_evaluate_identify_reuses_the_model_by_content_hash(few_cifs, tmp_path, capsys, examples_dir, llzo_dir):
    spectra = tmp_path / "spectra"
    spectra.mkdir()
    for name in ("MnO.xy", "TiO2.xy"):
        shutil.copy(examples_dir / name, spectra / name)
    (spectra / "labels.csv").write_text("file,phases\nMnO.xy,MnO\nTiO2.xy,TiO2\n")
    args = ["evaluate", "identify", "--references", str(few_cifs), "--patterns", str(spectra), "--labels",
            str(spectra / "labels.csv"), "--steps", "10", "--cache-dir", str(tmp_path / "cache"), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert {"n_patterns", "recall", "precision", "exact_match", "seconds_per_pattern", "build_seconds",
            "device"} <= set(first)
    assert first["n_patterns"] == 2 and not first["model_reused"]
    assert 0 <= first["recall"] <= 1 and 0 <= first["exact_match"] <= 1
    if any(p["predicted"] for p in first["patterns"]):
        assert 0 <= first["precision"] <= 1
    else:  # a model of 10 steps may name nothing: precision is then undefined, not 0 or 1
        assert first["precision"] is None  # NaN in the library, null in strict JSON
    assert first["seconds_per_pattern"] > 0 and first["build_seconds"] > 0  # built here, not reused
    assert re.fullmatch(r"cpu: .+, \d+ threads", first["device"]), first["device"]  # as describe_device
    assert first["n_references"] == len(FEW) and len(first["patterns"]) == first["n_patterns"]
    assert first["open_set"] is None
    mixtures = first["simulated_mixtures"]
    assert mixtures["n_patterns"] == 200
    for scores in (mixtures["with_screen"], mixtures["network_only"]):
        assert 0 <= scores["recall"] <= 1 and 0 <= scores["precision"] <= 1 and scores["seconds_per_pattern"] > 0
    llzo = llzo_dir / "References"
    assert main([*args, "--unknown", str(llzo), "--unknown", "aflow", "--max-strain", "0.015"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["model_reused"] and second["model"] == first["model"]
    assert first["max_strain"] == 0.04 and second["max_strain"] == 0.015
    inside, foreign = second["open_set"]["in_library"], second["open_set"]["foreign"]
    assert inside["n_patterns"] == len(FEW) and 0 <= inside["top1"] <= 1
    by_source = second["open_set"]["foreign_by_source"]
    assert by_source[str(llzo)]["n_patterns"] == 28  # every Li-La-Zr-O phase: no composition is among the six
    assert by_source["aflow"]["n_patterns"] > 250  # the AFLOW prototypes and calibrants, minus the six's compositions
    assert foreign["n_patterns"] == sum(m["n_patterns"] for m in by_source.values())
    assert 0 <= foreign["out_of_library_rate"] <= 1 and set(foreign["named_a_phase"]) <= {
        p.name for p in load_cif_library(llzo).phases} | {p.name for p in default_library().phases}


def test_bench_infer_prints_the_promised_keys(tiny_model, capsys):
    assert main(["bench", "infer", "--model", str(tiny_model), "--n", "16", "--batch-size", "8", "--single", "5",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"throughput_patterns_per_s", "latency_median_ms", "latency_p99_ms", "peak_rss_mb", "model_mb",
            "device"} <= set(result)
    assert result["throughput_patterns_per_s"] > 0 and result["latency_p99_ms"] >= result["latency_median_ms"] > 0
    assert result["n_patterns"] == 16 and result["batch_size"] == 8  # as asked
    assert result["device"] == result["end_to_end"]["device"] and result["device"].startswith("cpu: ")  # --device cpu
    assert result["peak_rss_mb"] > result["model_mb"]  # the process holds the model
    assert 0 < result["model_mb"] < 20 and result["end_to_end"]["latency_median_ms"] > 0


def test_simulated_mixtures_hold_the_classes_they_name(lmtof_references):
    from xrd_nexus_ml.evaluation.identify import simulated_mixtures

    library = load_cif_library(lmtof_references)
    patterns, truth = simulated_mixtures(library, n=30, seed=3)
    assert patterns.shape == (30, PowderSimulator(wavelength="CuKa1").grid.n_points)
    assert {len(t) for t in truth} <= {1, 2, 3} and len({len(t) for t in truth}) > 1
    assert all(t <= set(library.classes) for t in truth)
    again, truth_again = simulated_mixtures(library, n=30, seed=3)
    assert np.array_equal(patterns, again) and truth == truth_again

"""The shipped space-group model: what a user gets from `classify` and `evaluate spacegroup`.

Patterns of real structures are simulated from pymatgen's AFLOW prototypes (never in training:
the model saw only random synthetic crystals); the non-crystal patterns are built here by hand,
independently of the generator the model was trained with.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from xrd_nexus_ml.bundle import resolve_bundle
from xrd_nexus_ml.cli import main
from xrd_nexus_ml.evaluation.spacegroup_data import real_structures, simulate_patterns
from xrd_nexus_ml.pattern import CANONICAL_GRID, q_to_two_theta
from xrd_nexus_ml.patterns_demo import example_dir
from xrd_nexus_ml.physics.symmetry import crystal_system
from xrd_nexus_ml.spacegroup.model import load_model


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def aflow_sample():
    """Every fourth AFLOW prototype (72 structures), simulated without imperfections."""
    structures = [s for s in real_structures() if s.source == "aflow"][::4]
    intensity, mask = simulate_patterns(structures, imperfections=False, seed=1)
    return structures, intensity, mask


def test_shipped_bundle_is_small_and_documents_itself(model):
    size = sum(p.stat().st_size for p in resolve_bundle("spacegroup/default").iterdir())
    assert size < 5_000_000
    card = json.loads((resolve_bundle("spacegroup/default") / "card.json").read_text())
    assert card["training"]["recipe"]["steps"] >= 1000 and "device" in card["training"]
    assert re.match(r"(cpu|cuda)\b", card["training"]["device"]), card["training"]["device"]
    assert card["training"]["world_size"] >= 1 and card["training"]["fresh_crystals_seen"] > 0
    real = card["metrics"]["real_structures"]
    assert real["n_aflow"] == 288 and real["imperfect"]["n_patterns"] == 288 + real["n_pyxtal"]


def test_real_structures_are_recognised_as_crystals_and_ranked_far_above_chance(model, aflow_sample):
    structures, intensity, mask = aflow_sample
    predictions = model.predict(intensity, mask, top_k=5)
    truth = [s.space_group for s in structures]
    assert np.mean([p.crystalline for p in predictions]) >= 0.9
    top5 = np.mean([t in [n for n, _, _ in p.space_groups] for t, p in zip(truth, predictions)])
    systems = np.mean([p.crystal_systems[0][0] == crystal_system(t) for t, p in zip(truth, predictions)])
    # far above chance, not good: the shipped model saw 192,000 crystals on 2 CPU cores (see README)
    assert top5 >= 0.07  # chance: 5/230 = 0.022
    assert systems >= 0.25  # chance: 1/7 = 0.14


def test_patterns_without_crystal_peaks_get_low_confidence(model):
    q = CANONICAL_GRID.values
    rng = np.random.default_rng(11)
    flat = rng.poisson(1000.0, q.size) / 1000.0
    noise = rng.random(q.size)
    glass = np.exp(-0.5 * ((q - 1.55) / 0.35) ** 2) + 0.3 * np.exp(-0.5 * ((q - 3.0) / 0.6) ** 2) + 0.2
    glass = rng.poisson(glass * 5000.0) / 5000.0
    water = np.exp(-0.5 * ((q - 2.0) / 0.25) ** 2) + 0.4 * np.exp(-q / 2.0)
    patterns = np.stack([flat, noise, glass, water]).astype(np.float32)
    mask = (q >= 0.7) & (q <= 6.2)  # a Cu Kα scan, 10-100° 2θ
    masks = np.repeat(mask[None], 4, axis=0)
    predictions = model.predict(np.where(masks, patterns, 0.0), masks)
    for name, p in zip(("flat", "noise", "glass", "water"), predictions):
        assert p.space_groups[0][2] < 0.2, (name, p.space_groups[0])  # never a confident space group
    # flagged as not crystalline; the narrow water-like halo is not (confidence 0.49 against the
    # threshold 0.27: a known weakness, in the README)
    assert [p.crystalline for p in predictions[:3]] == [False, False, False]


def test_classify_prints_the_space_group_of_a_measured_pattern(capsys):
    assert main(["classify", str(example_dir() / "MnO.xy"), "--wavelength", "CuKa1"]) == 0
    out = capsys.readouterr().out
    assert "space group" in out and "MnO.xy" in out
    assert main(["classify", str(example_dir() / "MnO.xy"), "--wavelength", "CuKa1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    sym = record["symmetry"]
    assert len(sym["space_group"]) == 5 and len(sym["crystal_system"]) == 3
    assert sym["crystalline"] is True
    assert sum(s["probability"] for s in sym["space_group"]) <= 1.0 + 1e-6
    assert main(["classify", str(example_dir() / "MnO.xy"), "--wavelength", "CuKa1", "--json",
                 "--spacegroup-model", "none"]) == 0
    assert "symmetry" not in json.loads(capsys.readouterr().out)[0]


def test_evaluate_spacegroup_scores_a_folder_of_measured_files(tmp_path, capsys):
    """Two-column 2θ files written from simulated patterns, and the three shipped measured patterns."""
    structures = [s for s in real_structures() if s.source == "aflow"][:6]
    intensity, mask = simulate_patterns(structures, imperfections=True, seed=2)
    two_theta = q_to_two_theta(CANONICAL_GRID.values, 1.5406)
    rows = ["file,space_group"]
    for i, s in enumerate(structures):
        keep = mask[i] & np.isfinite(two_theta)
        np.savetxt(tmp_path / f"p{i}.xy", np.column_stack([two_theta[keep], intensity[i][keep]]))
        rows.append(f"p{i}.xy,{s.space_group}")
    for name, sg in (("MnO.xy", "Fm-3m"), ("TiO2.xy", "I4_1/amd"), ("Mn2O3.xy", "Ia-3")):
        shutil.copy(example_dir() / name, tmp_path / name)
        rows.append(f"{name},{sg}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert main(["evaluate", "spacegroup", "--patterns", str(tmp_path), "--labels", "labels.csv",
                 "--wavelength", "CuKa1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("n_patterns", "top1", "top5", "extinction_top1", "crystal_system_top1", "seconds_per_pattern",
                "device"):
        assert key in result
    assert result["n_patterns"] == 9 and 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert len(result["patterns"]) == result["n_patterns"]
    assert 0.0 <= result["extinction_top1"] <= 1.0 and 0.0 <= result["crystal_system_top1"] <= 1.0
    assert result["seconds_per_pattern"] > 0 and re.match(r"(cpu|cuda)\b", result["device"]), result["device"]
    assert [p["space_group"] for p in result["patterns"]][-3:] == [225, 141, 206]
    (tmp_path / "labels.csv").write_text("file,space_group\nmissing.xy,225\n")
    assert main(["evaluate", "spacegroup", "--patterns", str(tmp_path), "--labels", "labels.csv",
                 "--wavelength", "CuKa1", "--json"]) == 2
    assert "missing.xy" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_spacegroup_without_arguments_scores_the_real_structures(capsys):
    assert main(["evaluate", "spacegroup", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_patterns"] == result["n_aflow"] + result["n_pyxtal"] == result["clean"]["n_patterns"]
    assert 0.0 < result["top1"] <= result["top5"] <= 1.0


def test_shipped_example_labels_come_from_their_cifs(capsys):
    """examples/spacegroups.csv: each label is what spglib finds in the CIF the row names, and the
    file scores the three measured examples as it is (`--labels examples/spacegroups.csv`)."""
    import csv

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from xrd_nexus_ml.io import read_structure

    labels = example_dir() / "spacegroups.csv"
    rows = list(csv.DictReader(line for line in labels.read_text().splitlines() if not line.startswith("#")))
    assert [r["file"] for r in rows] == ["MnO.xy", "Mn2O3.xy", "TiO2.xy"]
    for r in rows:
        structure = read_structure(example_dir() / r["cif"])
        assert SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_number() == int(r["space_group"])
    assert main(["evaluate", "spacegroup", "--patterns", str(example_dir()), "--labels", str(labels),
                 "--wavelength", "CuKa1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_patterns"] == 3 and [p["space_group"] for p in result["patterns"]] == [225, 206, 141]
    assert set(result["accuracy_at_coverage"]) >= {"0.5", "1"} and 0.0 <= result["coverage"] <= 1.0

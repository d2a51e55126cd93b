"""`evaluate identify` scores an existing model without references, reads each file's own
wavelength, and refuses a folder whose names are not its truth before building anything."""

from __future__ import annotations

import json
import shutil

import pytest

from xrd_nexus_ml.cli import main
from xrd_nexus_ml.evaluation.identify import FALLBACK_WAVELENGTH, read_for_evaluation


def test_an_existing_model_is_scored_without_references(tmp_path, capsys, examples_dir):
    spectra = tmp_path / "spectra"
    spectra.mkdir()
    for name in ("MnO.xy", "TiO2.xy", "Mn2O3.xy"):
        shutil.copy(examples_dir / name, spectra / name)
    assert main(["evaluate", "identify", "--model", "li-mn-ti-o-f", "--patterns", str(spectra), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_patterns"] == 3 and result["recall"] == 1.0 and result["precision"] == 1.0
    assert result["model_reused"] and result["model"].endswith("li-mn-ti-o-f")
    assert result["n_classes"] == 39 and result["simulated_mixtures"] is None and result["open_set"] is None
    # two-column files record no wavelength: Cu Kα, said so
    assert {p["wavelength_origin"] for p in result["patterns"]} == {"argument"}
    assert all(p["wavelength_angstrom"] == pytest.approx(1.5418, abs=1e-3) for p in result["patterns"])


def test_a_recorded_wavelength_wins_unless_one_is_given(tmp_path):
    path = tmp_path / "MnO.xy"
    path.write_text("# wavelength = 1.540598 A\n" + "\n".join(f"{10 + i * 0.5} {1 + (i % 7)}" for i in range(100)))
    assert read_for_evaluation(path).wavelength == pytest.approx(1.540598)  # the file's, not the fallback's
    assert FALLBACK_WAVELENGTH == "CuKa"
    assert read_for_evaluation(path, wavelength=0.7093).wavelength == pytest.approx(0.7093)  # given: for every file


def test_a_name_that_is_no_truth_fails_before_any_model_is_built(tmp_path, capsys, examples_dir, lmtof_references):
    spectra = tmp_path / "spectra"
    spectra.mkdir()
    shutil.copy(examples_dir / "MnO.xy", spectra / "scan_0001.xy")  # no phase in this name
    cache = tmp_path / "cache"
    assert main(["evaluate", "identify", "--references", str(lmtof_references), "--patterns", str(spectra),
                 "--cache-dir", str(cache), "--json"]) == 2
    assert "scan_0001" in capsys.readouterr().err
    assert not cache.exists() or not any(cache.iterdir())  # nothing was built


def test_references_or_a_model_not_both(capsys, examples_dir, lmtof_references):
    assert main(["evaluate", "identify", "--references", str(lmtof_references), "--model", "default",
                 "--patterns", str(examples_dir)]) == 2
    assert "not both" in capsys.readouterr().err

"""`classify` honours its flags for NeXus files too, and a mixed call classifies every file.

Two defects of the old layout: for NeXus inputs the engine was built from `--device` alone
(`--model`, `--spacegroup-model`, `--elements` silently ignored), and the pattern files of a
mixed call were looked up in an argument list the NeXus branch had overwritten.
"""

from __future__ import annotations

import json

import h5py

from xrd_nexus_ml.cli import main
from xrd_nexus_ml.patterns_demo import example_dir


def _json_lines(text: str) -> list:
    """The NeXus branch prints one JSON object per file, the pattern branch one list."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        value, i = decoder.raw_decode(text, i)
        out.append(value)
    return out


def test_nexus_classification_runs_the_models_and_elements_the_flags_name(tmp_path, capsys, beamline_file):
    path, pressures, _ = beamline_file(tmp_path / "p02.nxs")
    assert main(["classify", str(path), "--in-place", "--json", "--spacegroup-model", "none", "--model", "li-mn-ti-o-f",
                 "--elements", "Mg,Fe,O"]) == 0
    summary = json.loads(capsys.readouterr().out)
    tasks = [m.split("/")[0] for m in summary["models"]]
    assert "space_group" not in tasks  # --spacegroup-model none
    assert "material_identification" in tasks
    with h5py.File(path, "r") as f:
        results = f["entry/predictions/results"]
        # li-mn-ti-o-f has no phase within Mg, Fe, O: every frame is out of its library
        assert results["material_out_of_library"][()].all()
        assert len(results["material_out_of_library"][()]) == len(pressures)

    assert main(["classify", str(path), "--in-place", "--json"]) == 0  # the defaults: all three models
    defaults = json.loads(capsys.readouterr().out)
    assert {m.split("/")[0] for m in defaults["models"]} >= {"phase_classification", "space_group",
                                                             "material_identification"}
    assert defaults["models"] != summary["models"]


def test_a_mixed_call_classifies_the_nexus_file_and_the_pattern_files(tmp_path, capsys, beamline_file):
    path, pressures, _ = beamline_file(tmp_path / "p02.nxs")
    pattern = example_dir() / "Mn2O3.xy"
    assert main(["classify", str(path), str(pattern), "--wavelength", "CuKa1", "--model", "li-mn-ti-o-f",
                 "--spacegroup-model", "none", "--json"]) == 0
    nexus_summary, records = _json_lines(capsys.readouterr().out)
    assert nexus_summary["frames"] == len(pressures)
    assert [r["source"] for r in records] == [str(pattern)]
    assert [p["formula"] for p in records[0]["phases"]] == ["Mn2O3"]

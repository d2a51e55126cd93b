"""`xrd-nexus-ml classify FILE.nxs`: predictions appended to another beamline's file, raw data untouched."""

from __future__ import annotations

import json

import h5py
import numpy as np

from xrd_nexus_ml.cli import main


def test_classify_appends_a_process_group_and_changes_nothing_else(tmp_path, capsys, beamline_file, checksums):
    path, pressures, transition = beamline_file(tmp_path / "p02.nxs")
    before = checksums(path)
    assert main(["classify", str(path), "--in-place", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["group"] == "/entry/predictions" and summary["frames"] == len(pressures)
    assert abs(summary["transition_pressure_gpa"] - transition) < 4.5  # 4 GPa steps in this file
    after = checksums(path)
    assert {k: v for k, v in after.items() if k in before} == before
    with h5py.File(path, "r") as f:
        results = f["entry/predictions/results"]
        phase = [v.decode() if isinstance(v, bytes) else str(v) for v in results["phase"][()]]
        expected = ["B1" if p < transition else "rB1" for p in pressures]
        far = np.abs(pressures - transition) > 3
        assert [a for a, keep in zip(phase, far) if keep] == [b for b, keep in zip(expected, far) if keep]
        assert list(results["sequence_number"][()]) == list(range(1, len(pressures) + 1))
    assert main(["classify", str(path), "--in-place", "--json"]) == 0  # a second pass gets its own group
    assert json.loads(capsys.readouterr().out)["group"] == "/entry/predictions_2"


def test_classify_leaves_the_input_untouched_unless_asked(tmp_path, capsys, beamline_file):
    path, pressures, _ = beamline_file(tmp_path / "p02.nxs")
    original = path.read_bytes()
    assert main(["classify", str(path), "--json", "--spacegroup-model", "none", "--model", "li-mn-ti-o-f"]) == 0
    summary = json.loads(capsys.readouterr().out)
    copy = tmp_path / "p02.classified.nxs"
    assert path.read_bytes() == original  # not one byte of the input changed
    assert summary["file"] == str(path) and summary["written_to"] == str(copy)
    with h5py.File(copy, "r") as f:
        assert f["entry/predictions/results/phase"].shape == (len(pressures),)
    # a second call does not overwrite the copy; --out puts copies elsewhere
    assert main(["classify", str(path), "--json", "--spacegroup-model", "none", "--model", "li-mn-ti-o-f"]) == 2
    refused = json.loads(capsys.readouterr().out)
    assert refused["file"] == str(path) and "p02.classified.nxs: exists" in refused["error"]
    assert main(["classify", str(path), "--out", str(tmp_path / "classified"), "--spacegroup-model", "none",
                 "--model", "li-mn-ti-o-f", "--json"]) == 0
    assert (tmp_path / "classified" / "p02.classified.nxs").is_file() and path.read_bytes() == original

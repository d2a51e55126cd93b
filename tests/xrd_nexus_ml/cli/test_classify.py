"""`xrd-nexus-ml classify FILE.nxs`: predictions appended to another beamline's file, raw data untouched."""

from __future__ import annotations

import json

import h5py
import numpy as np

from xrd_nexus_ml.cli import main


def test_classify_appends_a_process_group_and_changes_nothing_else(tmp_path, capsys, beamline_file, checksums):
    path, pressures, transition = beamline_file(tmp_path / "p02.nxs")
    before = checksums(path)
    assert main(["classify", str(path), "--json"]) == 0
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
    assert main(["classify", str(path), "--json"]) == 0  # a second pass gets its own group
    assert json.loads(capsys.readouterr().out)["group"] == "/entry/predictions_2"

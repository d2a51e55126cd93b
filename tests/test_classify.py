"""`xrd-nexus-ml classify FILE.nxs`: predictions appended to another beamline's file, raw data untouched."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from tests.test_nexus import checksums
from xrd_nexus_ml.cli import main
from xrd_nexus_ml.transitions import simulate_ramp

TRANSITION = 30.0


def beamline_file(path: Path) -> tuple[Path, np.ndarray]:
    """A compression measured elsewhere: frames on 2θ (degrees), pressure in GPa, energy in keV."""
    ramp = simulate_ramp(np.linspace(8, 52, 12), transition_pressure=TRANSITION, noise=0.02, seed=21)
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs.update(NX_class="NXentry", default="data")
        mono = entry.create_group("instrument/monochromator")
        entry["instrument"].attrs["NX_class"] = "NXinstrument"
        mono.attrs["NX_class"] = "NXmonochromator"
        mono.create_dataset("energy", data=ramp.energy_kev).attrs["units"] = "keV"
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample.create_dataset("pressure", data=ramp.pressures).attrs["units"] = "GPa"
        data = entry.create_group("data")
        data.attrs.update(NX_class="NXdata", signal="counts", axes=[".", "two_theta"])
        data.create_dataset("counts", data=ramp.intensity * 1e4)
        data.create_dataset("two_theta", data=ramp.two_theta).attrs["units"] = "degrees"
    return path, ramp.pressures


def test_classify_appends_a_process_group_and_changes_nothing_else(tmp_path, capsys):
    path, pressures = beamline_file(tmp_path / "p02.nxs")
    before = checksums(path)
    assert main(["classify", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["group"] == "/entry/predictions" and summary["frames"] == len(pressures)
    assert abs(summary["transition_pressure_gpa"] - TRANSITION) < 4.5  # 4 GPa steps in this file
    after = checksums(path)
    assert {k: v for k, v in after.items() if k in before} == before
    with h5py.File(path, "r") as f:
        results = f["entry/predictions/results"]
        phase = [v.decode() if isinstance(v, bytes) else str(v) for v in results["phase"][()]]
        expected = ["B1" if p < TRANSITION else "rB1" for p in pressures]
        far = np.abs(pressures - TRANSITION) > 3
        assert [a for a, keep in zip(phase, far) if keep] == [b for b, keep in zip(expected, far) if keep]
        assert list(results["sequence_number"][()]) == list(range(1, len(pressures) + 1))
    assert main(["classify", str(path), "--json"]) == 0  # a second pass gets its own group
    assert json.loads(capsys.readouterr().out)["group"] == "/entry/predictions_2"

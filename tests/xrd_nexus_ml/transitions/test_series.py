"""A measured series along a control variable: reading it, its bad input, the `transition` command,
models trained from a user's CIFs, and the training-free detector live in a real RunEngine scan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xrd_nexus_ml.cli import main
from xrd_nexus_ml.transition_series import SeriesError, find_transitions, load_series, read_control_csv
from xrd_nexus_ml.transitions.materials import MATERIALS, simulate_material_ramp

TWO_THETA = (10.0, 26.0, 2000)


def _write_series(folder, pressures, material="KCl", seed=5, header="file,pressure_GPa"):
    ramp = simulate_material_ramp(MATERIALS[material], pressures=np.asarray(pressures, float), seed=seed,
                                  noise=0.01, energy_kev=25.6, two_theta=TWO_THETA)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [header]
    for i, (p, y) in enumerate(zip(ramp.pressures, ramp.intensity)):
        name = f"frame_{i:03d}.xy"
        np.savetxt(folder / name, np.column_stack([ramp.two_theta, 1000 * y]),
                   header=f"wavelength = {ramp.wavelength} A\n2theta intensity")
        rows.append(f"{name},{p:.4f}")
    (folder / "control.csv").write_text("\n".join(rows) + "\n")
    return ramp


def test_the_transition_command_finds_kcl_b1_b2_from_files_and_a_csv(tmp_path, capsys):
    _write_series(tmp_path / "s", np.linspace(0.2, 4.0, 39))
    png = tmp_path / "waterfall.png"
    assert main(["transition", str(tmp_path / "s"), "--control", str(tmp_path / "s" / "control.csv"), "--json",
                 "--plot", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["control"] == "pressure" and result["unit"] == "GPa"
    assert len(result["transitions"]) == 1
    t = result["transitions"][0]
    assert abs(t["value"] - 2.0) < 0.2 and t["sigma"] > 0  # KCl B1 -> B2 at 2.0 GPa, steps of 0.1 GPa
    assert t["from"] == "assemblage 1" and t["to"] == "assemblage 2" and t["direction"] == "increasing"
    assert len(result["frames"]) == 39 and result["frames"][0]["status"] == "same"
    assert png.stat().st_size > 20_000


def test_no_transition_gives_an_empty_list(tmp_path, capsys):
    _write_series(tmp_path / "s", np.linspace(0.0, 30.0, 25), material="MgO")
    assert main(["transition", str(tmp_path / "s"), "--control", str(tmp_path / "s" / "control.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["transitions"] == []
    assert {f["status"] for f in result["frames"]} == {"same"}


def test_control_csv_problems_name_the_row_or_the_file(tmp_path):
    _write_series(tmp_path / "s", np.linspace(0.2, 1.0, 5))
    csv = tmp_path / "s" / "control.csv"
    good = csv.read_text()
    (tmp_path / "bad.csv").write_text(good + ",3.0\n")
    with pytest.raises(SeriesError, match=r"row 7: .* names no file"):
        read_control_csv(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text(good.replace("0.4000", "abc"))
    with pytest.raises(SeriesError, match=r"row 3: 'abc' is not a number"):
        read_control_csv(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("name,pressure\nframe_000.xy,1\n")
    with pytest.raises(SeriesError, match="header"):
        read_control_csv(tmp_path / "bad.csv")
    missing = "\n".join(line for line in good.splitlines() if not line.startswith("frame_002"))
    (tmp_path / "missing.csv").write_text(missing + "\n")
    with pytest.raises(SeriesError, match="no row for frame_002.xy"):
        load_series([tmp_path / "s"], control=tmp_path / "missing.csv")
    (tmp_path / "extra.csv").write_text(good + "frame_999.xy,9\n")
    with pytest.raises(SeriesError, match="frame_999.xy"):
        load_series([tmp_path / "s"], control=tmp_path / "extra.csv")
    with pytest.raises(SeriesError, match="--control"):
        load_series([tmp_path / "s"])


def test_an_unreadable_frame_is_flagged_and_the_others_still_count(tmp_path):
    _write_series(tmp_path / "s", np.linspace(0.2, 4.0, 39))
    (tmp_path / "s" / "frame_005.xy").write_text("2theta intensity\n10 nan\n11 nan\n")
    (tmp_path / "s" / "frame_030.xy").write_text("")
    series = load_series([tmp_path / "s"], control=tmp_path / "s" / "control.csv")
    result = find_transitions(series)
    flagged = [f["file"] for f in result["frames"] if f["status"] == "flagged"]
    assert flagged == ["frame_005.xy", "frame_030.xy"]
    assert result["n_flagged"] == 2
    assert len(result["transitions"]) == 1 and abs(result["transitions"][0]["value"] - 2.0) < 0.2


def test_models_trained_from_cif_files_find_their_transition(tmp_path, capsys):
    from pymatgen.io.cif import CifWriter

    cifs = []
    for phase in MATERIALS["KCl"].phases:
        path = tmp_path / f"{phase.name}.cif"
        CifWriter(phase.structure).write_file(path)
        cifs += ["--phase", str(path)]
    out = tmp_path / "kcl"
    assert main(["train", "transition", *cifs, "--transition", "2.0", "--pressure-range", "0", "5",
                 "--two-theta", *map(str, TWO_THETA), "--out", str(out), "--fast", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["phases"] == ["KCl-B1", "KCl-B2"]
    assert summary["bulk_modulus_gpa"][0]["relative_uncertainty"] > 0  # estimated: no --eos given
    _write_series(tmp_path / "s", np.linspace(0.2, 4.0, 39))
    assert main(["transition", str(tmp_path / "s"), "--control", str(tmp_path / "s" / "control.csv"),
                 "--model", str(out / "end_to_end"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(t["from"], t["to"]) for t in result["transitions"]] == [("KCl-B1", "KCl-B2")]
    assert abs(result["transitions"][0]["value"] - 2.0) < 0.3
    assert result["frames"][0]["phase"] == "KCl-B1" and result["frames"][-1]["phase"] == "KCl-B2"


def test_the_demo_runs_the_training_free_detector_live_and_its_nexus_file_names_it(tmp_path):
    import h5py

    from bluesky_callbacks.demo import run_demo

    summary = run_demo(tmp_path, transition_model="auto", sample="NaCl", spacegroup_model=None,
                       identification_model=None, store=False, max_frames=30, seed=4)
    assert summary["nexus_valid"] and summary["true_transition_pressure_gpa"] == 29.3  # NaCl B1 -> B2
    assert abs(summary["transition_pressure_gpa"] - 29.3) < 1.0
    assert summary["frames"] <= 30 and set(summary["phases"]) == {"assemblage 1", "assemblage 2"}
    with h5py.File(summary["nexus_file"], "r") as f:
        text = []
        f.visititems(lambda name, obj: text.append(str(obj[()])) if isinstance(obj, h5py.Dataset)
                     and obj.dtype.kind in "SO" and obj.size == 1 else None)
    assert any("assemblage_tracking" in t for t in text)

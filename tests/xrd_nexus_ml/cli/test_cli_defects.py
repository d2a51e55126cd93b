"""Defects a new user hit on the command line, each run as typed: real files, real NeXus runs, no mocks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from xrd_nexus_ml.cli import main
from xrd_nexus_ml.errors import WavelengthError
from xrd_nexus_ml.pattern import WAVELENGTHS, resolve_wavelength
from xrd_nexus_ml.patterns_demo import example_dir


def q_pattern(path: Path, seed: int = 1) -> Path:
    """A two-column pattern on q (Å^-1): needs no wavelength at all."""
    rows = "\n".join(f"{1.0 + 0.01 * i:.3f} {100.0 + (i * seed) % 7}" for i in range(300))
    path.write_text("# q intensity\n" + rows + "\n")
    return path


def q_series(folder: Path, n: int = 6) -> list[str]:
    """n q-axis patterns and the control CSV `transition` needs (pressure per file)."""
    files = [str(q_pattern(folder / f"s{i}.xy", seed=i + 1)) for i in range(n)]
    (folder / "control.csv").write_text("file,pressure_GPa\n" + "".join(f"s{i}.xy,{i}\n" for i in range(n)))
    return [*files, "--control", str(folder / "control.csv")]


# -- 1. `nexus validate` with a relative path ----------------------------------------------------


def test_nexus_validate_accepts_a_relative_path(tmp_path, monkeypatch, capsys, write_nexus_run):
    path = write_nexus_run(tmp_path)
    assert main(["nexus", "validate", str(path)]) == 0  # the file is valid
    capsys.readouterr()
    monkeypatch.chdir(tmp_path.parent)
    relative = Path(tmp_path.name) / path.name
    assert not relative.is_absolute() and relative.is_file()
    assert main(["nexus", "validate", str(relative)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert f"{relative}: valid against NXxrd_ml" in out and "pynxtools: ok" in out
    assert Path.cwd() == tmp_path.parent  # the validator put the working directory back


def test_nexus_validate_accepts_a_relative_definition(tmp_path, monkeypatch, capsys, write_nexus_run):
    from nexus_definitions import layout as L

    path = write_nexus_run(tmp_path)
    shutil.copy(L.NXDL_PATH, tmp_path / L.NXDL_PATH.name)
    monkeypatch.chdir(tmp_path.parent)
    assert main(["nexus", "validate", str(Path(tmp_path.name) / path.name), "--definition",
                 str(Path(tmp_path.name) / L.NXDL_PATH.name), "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["checks"]["pynxtools"] == "ok", report
    assert Path.cwd() == tmp_path.parent


# -- 2. a wavelength outside any X-ray or neutron range ------------------------------------------


@pytest.mark.parametrize("value", ["1e6", "0.001", "25", "inf", "-1"])
def test_resolve_wavelength_refuses_unphysical_values(value):
    with pytest.raises(WavelengthError) as err:
        resolve_wavelength(value)
    assert value in str(err.value) and "0.01" in str(err.value) and "20" in str(err.value)


def test_resolve_wavelength_keeps_physical_values():
    assert resolve_wavelength("0.01") == 0.01 and resolve_wavelength(20) == 20.0  # the ends of the range
    assert resolve_wavelength("CuKa1") == WAVELENGTHS["CuKa1"] and resolve_wavelength(0.1771) == 0.1771


@pytest.mark.parametrize("command", [["inspect"], ["classify", "--spacegroup-model", "none"],
                                     ["transition"]])
@pytest.mark.parametrize("value", ["1e6", "0.001"])
def test_commands_refuse_an_unphysical_wavelength(tmp_path, capsys, command, value):
    """A q-axis file never needs the wavelength: the argument itself must be refused."""
    inputs = q_series(tmp_path) if command[0] == "transition" else [str(q_pattern(tmp_path / "scan.xy"))]
    assert main([command[0], *inputs, *command[1:], "--wavelength", value]) == 2
    err = capsys.readouterr().err
    assert value in err and "0.01" in err and "20 Å" in err


# -- 3. `inspect` of several files prints one JSON document --------------------------------------


def test_inspect_of_several_files_is_one_json_document(tmp_path, capsys):
    a = shutil.copy(example_dir() / "MnO.xy", tmp_path / "a.xy")
    b = q_pattern(tmp_path / "b.xy")
    assert main(["inspect", str(a), str(b), "--wavelength", "CuKa1"]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert isinstance(infos, list) and [i["file"] for i in infos] == [str(a), str(b)]
    assert [i["axis"] for i in infos] == ["two_theta", "q"]
    assert main(["inspect", str(a), "--wavelength", "CuKa1"]) == 0  # one file: one object, as before
    assert json.loads(capsys.readouterr().out)["file"] == str(a)


# -- 4. `classify --wavelength` serves files that record none ------------------------------------


def test_classify_keeps_the_wavelength_the_file_records(tmp_path, capsys):
    recorded = tmp_path / "recorded.xy"
    recorded.write_text("# wavelength = 1.5406 A\n" + (example_dir() / "MnO.xy").read_text())
    bare = shutil.copy(example_dir() / "TiO2.xy", tmp_path / "bare.xy")
    assert main(["classify", str(recorded), str(bare), "--wavelength", "1.6", "--spacegroup-model", "none",
                 "--json"]) == 0
    first, second = json.loads(capsys.readouterr().out)
    assert main(["classify", str(recorded), "--spacegroup-model", "none", "--json"]) == 0
    (alone,) = json.loads(capsys.readouterr().out)
    assert first["phases"] == alone["phases"]  # the same answer as without --wavelength: 1.6 Å was not used
    assert first["source"] == str(recorded) and first["wavelength_angstrom"] == pytest.approx(1.5406)
    assert first["wavelength_origin"] == "file"
    assert second["source"] == str(bare) and second["wavelength_angstrom"] == pytest.approx(1.6)
    assert second["wavelength_origin"] == "argument"


def test_classify_of_a_nexus_file_keeps_the_energy_it_records(tmp_path, capsys, beamline_file):
    """A beamline file on 2θ that records its energy: --wavelength (here a wrong one) must not replace it."""
    plain, _, _ = beamline_file(tmp_path / "plain.nxs")
    other = shutil.copy(plain, tmp_path / "other.nxs")
    assert main(["classify", str(plain), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["classify", str(other), "--wavelength", "5", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["phases"] == expected["phases"] and got["out_of_library"] == expected["out_of_library"]
    assert got["transition_pressure_gpa"] == pytest.approx(expected["transition_pressure_gpa"])


# -- 5. one bad file does not sink the batch -----------------------------------------------------


def test_classify_reports_every_good_file_and_names_the_bad_one(tmp_path, capsys):
    good = [shutil.copy(example_dir() / name, tmp_path / name) for name in ("MnO.xy", "TiO2.xy")]
    broken = tmp_path / "broken.xy"
    broken.write_text("10 1\n11\n")
    files = [str(good[0]), str(broken), str(good[1])]
    assert main(["classify", *files, "--wavelength", "CuKa1", "--spacegroup-model", "none", "--json"]) == 2
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert len(records) == 3
    assert [r.get("source", r.get("file")) for r in records] == files
    assert records[0]["phases"] and records[2]["phases"]
    assert records[1]["file"] == str(broken) and "line 2" in records[1]["error"]
    assert "broken.xy" in captured.err
    # the same as text: a line per file, the bad one named with its problem, then exit status 2
    assert main(["classify", *files, "--wavelength", "CuKa1", "--spacegroup-model", "none"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{good[0]}: ") and lines[2].startswith(f"{good[1]}: ")
    assert lines[1].startswith(f"{broken}: error: ") and "line 2" in lines[1]


def test_classify_names_a_two_theta_file_without_wavelength(tmp_path, capsys):
    good = q_pattern(tmp_path / "q.xy")
    bare = shutil.copy(example_dir() / "MnO.xy", tmp_path / "bare.xy")
    assert main(["classify", str(good), str(bare), "--json"]) == 2
    first, second = json.loads(capsys.readouterr().out)
    assert first["source"] == str(good) and "flag" in first
    assert first["flag"] is None  # usable: a q-axis pattern with signal, classified without any wavelength
    assert first["wavelength_angstrom"] is None and first["wavelength_origin"] == "none"
    assert second["file"] == str(bare) and "--wavelength" in second["error"]


def test_classify_of_nexus_files_goes_on_past_a_bad_one(tmp_path, capsys, write_nexus_run):
    bad = tmp_path / "bad.nxs"
    bad.write_bytes(b"not an HDF5 file at all")
    good = write_nexus_run(tmp_path / "runs")
    assert main(["classify", str(bad), str(good), "--json"]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["file"] == str(bad) and "error" in lines[0]
    assert lines[1]["file"] == str(good) and lines[1]["frames"] == 4
    assert os.path.getsize(bad) == len(b"not an HDF5 file at all")
    assert not (tmp_path / "bad.classified.nxs").exists()  # nothing copied for a file that cannot be read

"""The command line, run in-process as a user would type it."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from xrd_nexus_ml.cli import main
from xrd_nexus_ml.io import read_pattern
from xrd_nexus_ml.patterns_demo import example_dir


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "xrd_nexus_ml.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("demo", "simulate", "inspect", "check", "bench"):
        assert command in out.stdout


def test_bench_simulate_prints_the_promised_keys(capsys):
    result = run_json(capsys, "bench", "simulate", "--n", "12", "--repeats", "1", "--json")
    for key in ("n_structures", "pymatgen_patterns_per_s", "ours_patterns_per_s", "speedup", "device"):
        assert key in result
    assert result["n_structures"] == 12
    assert result["pymatgen_patterns_per_s"] > 0 and result["ours_patterns_per_s"] > 0
    assert re.fullmatch(r"cpu: .+, \d+ threads|cuda: .+", result["device"]), result["device"]
    assert result["speedup"] == pytest.approx(result["ours_patterns_per_s"] / result["pymatgen_patterns_per_s"])
    assert result["pattern_cosine_min"] > 0.98  # the same physics, not just the same speed


def test_check_reports_parity(capsys):
    result = run_json(capsys, "check", "--n", "6", "--json")
    assert result["ok"] and result["n_structures"] == 6
    assert {c["calibrant"] for c in result["calibrants"]} == {"Si", "CeO2", "LaB6", "Al2O3"}


def test_simulate_writes_readable_patterns(tmp_path, capsys):
    cif = example_dir() / "references" / "MnO_225.cif"
    assert main(["simulate", str(cif), "--two-theta", "10", "80", "0.02", "--out", str(tmp_path)]) == 0
    pattern = read_pattern(tmp_path / "MnO_225.xy", wavelength="CuKa1")
    assert pattern.n_points == 3501
    # rock-salt MnO (a = 4.44 Å): strongest line is 200 at 2θ ≈ 40.6°
    assert pattern.x[np.argmax(pattern.intensity)] == pytest.approx(40.6, abs=0.3)


def test_inspect_measured_pattern(capsys):
    info = run_json(capsys, "inspect", str(example_dir() / "MnO.xy"), "--wavelength", "CuKa1")
    assert info["axis"] == "two_theta" and info["points"] > 1000
    # 10-100° 2θ at Cu Kα1 is q 0.71-6.25 1/Å
    assert info["canonical_q_measured"][0] == pytest.approx(0.712, abs=0.01)
    assert info["canonical_q_measured"][1] == pytest.approx(6.248, abs=0.01)


def test_bad_file_gives_clear_error_and_exit_code(tmp_path, capsys):
    bad = tmp_path / "broken.xy"
    bad.write_text("10 1\n11\n")
    assert main(["inspect", str(bad), "--wavelength", "CuKa1"]) == 2
    err = capsys.readouterr().err
    assert "broken.xy" in err


def test_demo_identifies_shipped_measured_patterns(tmp_path, capsys):
    summary = run_json(capsys, "patterns-demo", "--out", str(tmp_path), "--json")
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["measured"] == summary["measured"]
    assert len(summary["measured"]) == 3
    assert all(m["correct_formula"] for m in summary["measured"])
    # the shipped mixture-of-experts model of the 56 references names each single phase first
    for m in summary["measured"]:
        assert not m["out_of_library"], m["file"]
        assert [p["formula"] for p in m["identified"]][:1] == [m["true_phase"]], m


"""The GPU campaign scripts run end to end at a tiny size on the CPU, so a session that is lent a
device spends its minutes training, not debugging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "XRD_NEXUS_ML_THREADS": "1", **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu" / script)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=900)


def test_scaling_campaign_tiny(tmp_path):
    done = _run("scaling.sh", tmp_path, SCALING_TINY="1")
    assert done.returncode == 0, done.stderr[-3000:]
    device = json.loads((tmp_path / "device.json").read_text())
    assert device["cpu"] and "torch" in device
    result = json.loads((tmp_path / "scaling-12.json").read_text())
    assert [r["model"] for r in result["results"]] == ["flat", "hierarchical", "moe", "moe_expert_first"]
    lib = result["libraries"][0]
    assert lib["complete"] and lib["patterns_per_class"] >= 8
    assert "scaling-12.json complete" in done.stdout


def test_scripts_refuse_to_run_without_out(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu" / "scaling.sh")], cwd=ROOT, capture_output=True,
                          text=True, env={**env, "PYTHON": sys.executable, "SCALING_TINY": "1"}, timeout=60)
    assert done.returncode != 0 and "OUT" in done.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts" / "gpu").glob("*.sh")))
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu" / script)]).returncode == 0


def test_spacegroup_campaign_tiny(tmp_path):
    """15 s of training by the clock, then a bundle that loads and an evaluation on the real structures."""
    done = _run("spacegroup.sh", tmp_path, SPACEGROUP_TINY="1")
    assert done.returncode == 0, done.stderr[-3000:]
    train = json.loads((tmp_path / "spacegroup-train.json").read_text())
    assert train["device"].startswith("cpu")
    card = json.loads((tmp_path / "spacegroup" / "card.json").read_text())
    assert card["training"]["steps_done"] >= 1 and card["training"]["recipe"]["max_seconds"] == 15
    assert not (tmp_path / "spacegroup" / "checkpoint.pt").exists()
    evaluation = json.loads((tmp_path / "spacegroup-eval.json").read_text())
    assert 0.0 <= evaluation["top1"] <= evaluation["top5"] <= 1.0
    assert "real structures (imperfect): top-1" in done.stdout

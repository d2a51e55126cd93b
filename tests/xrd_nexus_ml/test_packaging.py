"""`pip install xrd-nexus-ml` (no extras) gives a working library: nothing below the live layer
needs bluesky, ophyd, tiled, 0MQ, msgpack, matplotlib or Ray; the extras name them."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = ["bluesky", "ophyd", "tiled", "zmq", "msgpack", "msgpack_numpy", "event_model", "matplotlib", "ray",
            "databroker"]

LIBRARY_USE = """
import sys
for name in {optional!r}:
    sys.modules[name] = None  # importing any of them now raises ImportError
import xrd_nexus_ml as xnm
import nexus_definitions, nexus_definitions.validate, training.identify, xrd_nexus_ml.evaluation.identify
pattern = xnm.read_pattern("xrd_nexus_ml/data/examples/Mn2O3.xy", wavelength="CuKa1")
print([p["formula"] for p in xnm.identify(pattern, model="identification/li-mn-ti-o-f")["phases"]])
print(xnm.classify_space_group(pattern)["crystal_system"])
"""


def test_the_library_runs_without_the_optional_packages():
    code = LIBRARY_USE.format(optional=OPTIONAL)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0] == "['Mn2O3']"


def test_the_extras_hold_what_the_library_leaves_out():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    extras = project["optional-dependencies"]
    for name in ("bluesky", "ophyd", "tiled", "matplotlib", "ray", "pyzmq", "msgpack"):
        assert name not in core, name
    assert any(r.startswith("bluesky") for r in extras["bluesky"])
    assert extras["plot"] == ["matplotlib>=3.7"] and any(r.startswith("ray") for r in extras["cluster"])
    assert "xrd-nexus-ml[bluesky,plot,cluster]" in extras["test"]  # make demo / make test install everything
    assert project["scripts"]["xrd-nexus-ml"] == "xrd_nexus_ml.cli:main"


def test_the_thread_policy_leaves_a_core_to_the_workstation():
    from xrd_nexus_ml.device import thread_count

    assert thread_count(2, 2) == 1 and thread_count(16, 16) == 15 and thread_count(1, 1) == 1
    assert thread_count(64, 32) == 32  # never more than torch would take
    assert thread_count(16, 16, "4") == 4 and thread_count(16, 16, "keep") is None
    assert thread_count(16, 16, "lots") == 15  # not a number: the default, with a warning
    code = ("import torch; d = torch.get_num_threads(); import xrd_nexus_ml.device; "
            "print(d, torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "XRD_NEXUS_ML_THREADS")}

    def run(extra: dict) -> list[str]:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**env, **extra}).stdout.split()

    default, now = map(int, run({}))
    assert now == max(1, min(default, (os.cpu_count() or 2) - 1))
    assert run({"XRD_NEXUS_ML_THREADS": "keep"})[1] == str(default)
    assert run({"XRD_NEXUS_ML_THREADS": "1"})[1] == "1"

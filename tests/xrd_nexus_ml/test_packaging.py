"""`pip install xrd-nexus-ml` (no extras) gives a working library: nothing below the live layer
needs bluesky, ophyd, tiled, 0MQ, msgpack, matplotlib or Ray; the extras name them."""

from __future__ import annotations

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


def test_openmp_threads_sleep_unless_the_user_says_otherwise():
    code = "import os, xrd_nexus_ml, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert out.stdout.strip() == "ACTIVE"

"""The front door: `import xrd_nexus_ml as xnm` and the six calls the README shows."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import xrd_nexus_ml as xnm
from xrd_nexus_ml.errors import ModelBundleError, WavelengthError
from xrd_nexus_ml.patterns_demo import example_dir

REFERENCES = example_dir() / "references"


def test_importing_the_package_loads_no_model_code():
    code = "import sys, xrd_nexus_ml; print(int('torch' in sys.modules), int('xrd_nexus_ml.api' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"]
    assert set(dir(xnm)) >= {"load_model", "identify", "classify_space_group", "read_pattern", "simulate"}
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        xnm.nonsense  # noqa: B018


def test_available_models_load_by_name_and_by_folder():
    names = xnm.available_models()
    assert {"identification/default", "spacegroup/default", "transition/end_to_end"} <= set(names)
    identifier = xnm.load_model("identification/default")
    assert type(identifier).__name__ == "Identifier" and len(identifier.model.classes) > 100
    assert type(xnm.load_model("spacegroup/default")).__name__ == "SpaceGroupModel"
    transition = xnm.load_model("transition/end_to_end")
    assert transition.phase_names == ("B1", "rB1") or list(transition.phase_names) == ["B1", "rB1"]
    from xrd_nexus_ml.bundle import resolve_bundle

    assert xnm.load_model(resolve_bundle("transition/end_to_end")) is transition  # kept, not reloaded
    with pytest.raises(ModelBundleError, match="shipped: .*identification/default"):
        xnm.load_model("identification/nonexistent")


def test_read_and_identify_a_measured_pattern():
    pattern = xnm.read_pattern(example_dir() / "Mn2O3.xy", wavelength="CuKa1")
    assert pattern.wavelength == pytest.approx(1.5406, abs=1e-3)
    result = xnm.identify(pattern, model="identification/li-mn-ti-o-f", elements=["Li", "Mn", "Ti", "O"])
    assert [p["formula"] for p in result["phases"]] == ["Mn2O3"]
    assert 0.5 < result["phases"][0]["probability"] <= 1.0 and result["out_of_library"] is False
    with pytest.raises(WavelengthError, match="wavelength"):
        xnm.identify(example_dir() / "Mn2O3.xy")  # 2θ file, no wavelength anywhere


def test_simulate_and_classify_the_space_group():
    pattern = xnm.simulate(REFERENCES / "MnO_186.cif", wavelength="CuKa1", two_theta=(10.0, 90.0, 0.02))
    assert pattern.axis == "two_theta" and pattern.x[0] == pytest.approx(10.0) and pattern.x.size == 4001
    assert pattern.intensity.max() == pytest.approx(1.0)
    assert np.argmax(pattern.intensity) > 0  # peaks, not a flat line
    answer = xnm.classify_space_group(pattern, top_k=3)
    assert len(answer["top_k"]) == 3 and answer["top_k"][0]["probability"] == answer["probability"]
    assert 0.0 <= answer["probability"] <= 1.0
    # the shipped model never answers a space group (no threshold keeps 90 % of its answers right):
    # the answer says so, and the ranking is still there
    assert answer["space_group"] == "undetermined" and answer["symbol"] is None
    assert answer["crystal_system"] in {"triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal",
                                        "hexagonal", "cubic", "undetermined"}
    with pytest.raises(ModelBundleError, match="not a space-group model"):
        xnm.classify_space_group(pattern, model="transition/end_to_end")

"""`classify FILE.nxs` estimates the transition with settings that suit the file's frame order
(a steered scan takes its frames out of pressure order; the defaults assume a monotonic ramp)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from nexus_definitions.classify import changepoint_options_for, recorded_steering_policy
from xrd_nexus_ml.cli import main
from xrd_nexus_ml.steering import SteeringPolicy

TRANSITION = 31.0
STEERED = [5.0, 11.0, 17.0, 23.0, 29.0, 35.0, 32.0, 30.5, 31.25, 30.75, 31.5]  # the demo's kind of path


def test_settings_follow_the_frame_order():
    assert changepoint_options_for(np.linspace(5, 50, 10)) is None  # a monotonic ramp: the defaults
    assert changepoint_options_for(None) is None
    options = changepoint_options_for(STEERED)
    assert options["resolution"] == pytest.approx(0.025) and options["margin"] == pytest.approx(12.0)
    policy = SteeringPolicy(precision=0.4)
    assert changepoint_options_for(STEERED, policy) == policy.changepoint_options()


@pytest.mark.parametrize("with_policy", [True, False])
def test_a_steered_file_gets_the_estimate_the_live_run_had(tmp_path, capsys, beamline_file, with_policy):
    start = {"uid": "x", "steering_policy": SteeringPolicy(start=5.0, stop=55.0).to_dict()} if with_policy else None
    path = beamline_file(tmp_path / "steered.nxs", TRANSITION, pressures=STEERED, start_document=start, noise=0.01,
                         seed=5).path
    assert (recorded_steering_policy(path) is not None) == with_policy
    assert main(["classify", str(path), "--in-place", "--json", "--spacegroup-model", "none", "--model",
                 "li-mn-ti-o-f"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # the defaults (widths from the median |ΔP| in acquisition order) gave 51.7 ± 21.9 GPa for such a file
    assert abs(summary["transition_pressure_gpa"] - TRANSITION) < 1.0
    assert summary["transition_uncertainty_gpa"] < 1.0
    assert summary["changepoint_options"] != "defaults (frames in pressure order)"


def test_a_second_classification_keeps_the_file_valid(tmp_path, capsys, write_nexus_run):
    """Classifying a file written live adds predictions_2; the file still validates (pynxtools
    once read predictions_2 as a generic NXdata whose fields must be numbers)."""
    from nexus_definitions.validate import validate_file

    path = write_nexus_run(tmp_path, 8)
    assert validate_file(path).ok
    assert main(["classify", str(path), "--in-place", "--json", "--spacegroup-model", "none", "--model",
                 "li-mn-ti-o-f"]) == 0
    assert json.loads(capsys.readouterr().out)["group"] == "/entry/predictions_2"
    report = validate_file(path)
    assert report.ok, report.format()
    with h5py.File(path, "r+") as f:  # and the structure check still reads the second group
        del f["entry/predictions_2/results/phase"]
    report = validate_file(path, pynxtools=False)
    assert any("predictions_2/results/phase" in e for e in report.errors), report.format()

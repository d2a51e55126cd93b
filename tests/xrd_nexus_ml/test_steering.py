"""Adaptive steering of a pressure ramp: the policy and the evaluation (the Bluesky plans are in
tests/bluesky_callbacks/test_plans.py)."""

import json
import math

import numpy as np
import pytest

from xrd_nexus_ml.cli import build_parser
from xrd_nexus_ml.cli.transitions import cmd_evaluate_steering
from xrd_nexus_ml.evaluation.steering import evaluate_steering
from xrd_nexus_ml.steering import (
    Estimate,
    Observation,
    SteeringError,
    SteeringHistory,
    SteeringPolicy,
    SteeringResult,
)
from xrd_nexus_ml.transitions import OnlineChangePoint, phase_fractions


def drive(policy: SteeringPolicy, transition: float, width: float, flip: set[int] = frozenset()) -> SteeringResult:
    """Run `policy` against a perfect classifier (P(high) = the true phase fraction) and the real
    online change point; frame indices in `flip` are misclassified."""
    cp = OnlineChangePoint(("low", "high"), **policy.changepoint_options())
    result = SteeringResult(policy=policy.to_dict())
    history = SteeringHistory()
    while True:
        decision = policy.decide(history)
        result.decisions.append(decision)
        if decision.pressure is None:
            return result
        q = float(phase_fractions(np.array([decision.pressure]), [transition], [width])[0, 1])
        if len(history) in flip:
            q = 1.0 - q
        estimate = cp.update([1.0 - q, q], decision.pressure)[0]
        history = SteeringHistory((*history.observations, Observation(decision.pressure, q)),
                                  Estimate.from_boundary(estimate))
        result.history = history


# -- the policy ------------------------------------------------------------------------------------


def test_bracketing_ramps_coarsely_then_refines_inside_the_bracket():
    policy = SteeringPolicy(start=5.0, stop=55.0, precision=0.5, coarse_step=4.0)
    result = drive(policy, transition=27.3, width=0.0)
    p = np.array(result.pressures)
    first_high = int(np.argmax(p > 27.3))
    assert np.allclose(np.diff(p[: first_high + 1]), 4.0)  # coarse until the first high-phase frame
    assert all(d.reason.startswith("coarse") for d in result.decisions[1: first_high + 1])
    refine = p[first_high + 1:]
    assert any(d.reason.startswith("refine") for d in result.decisions)
    assert np.all(refine[refine < p[first_high]] > p[first_high - 1])  # refinement stays inside the bracket
    assert result.decompressions >= 1  # bracketing steps back


def test_stops_when_the_transition_is_known_to_the_precision():
    for transition, width in [(27.3, 0.0), (38.9, 2.5)]:
        policy = SteeringPolicy(precision=0.5, coarse_step=4.0)
        result = drive(policy, transition, width)
        assert result.stop_reason == "precision_reached"
        assert result.estimate.half_width <= 0.5
        assert abs(result.estimate.pressure - transition) <= 0.5
        uniform = drive(SteeringPolicy.uniform(0.5), transition, width)
        assert uniform.n_frames > 2 * result.n_frames


def test_one_misclassified_frame_costs_frames_not_the_result():
    policy = SteeringPolicy(precision=0.5, coarse_step=4.0)
    result = drive(policy, transition=41.0, width=1.0, flip={3})  # frame 3 (17 GPa) reads as the high phase
    assert result.stop_reason == "precision_reached"
    assert abs(result.estimate.pressure - 41.0) <= 0.5


def test_respects_bounds_and_max_frames():
    policy = SteeringPolicy(start=10.0, stop=30.0, precision=0.5, coarse_step=4.0)
    beyond = drive(policy, transition=40.0, width=1.0)  # no transition inside the range
    assert beyond.stop_reason == "range_exhausted"
    assert min(beyond.pressures) == 10.0 and max(beyond.pressures) == 30.0
    capped = drive(SteeringPolicy(precision=0.05, coarse_step=4.0, max_frames=6), transition=27.3, width=1.0)
    assert capped.stop_reason == "max_frames" and capped.n_frames == 6
    for transition in (12.0, 29.9):
        assert all(10.0 <= p <= 30.0 for p in drive(policy, transition, 0.5).pressures)


def test_monotonic_mode_never_decompresses_and_says_when_it_cannot_reach_the_precision():
    wide = drive(SteeringPolicy(precision=0.5, coarse_step=2.0, mode="monotonic"), transition=30.0, width=4.0)
    assert np.all(np.diff(wide.pressures) > 0)
    assert wide.stop_reason == "precision_reached" and abs(wide.estimate.pressure - 30.0) <= 0.5
    assert any(d.reason.startswith("fine") for d in wide.decisions)
    sharp = drive(SteeringPolicy(precision=0.5, coarse_step=4.0, mode="monotonic"), transition=27.3, width=0.0)
    assert np.all(np.diff(sharp.pressures) > 0)
    assert sharp.stop_reason == "unreachable_without_decompression"


def test_decide_is_pure_and_validates_its_input():
    policy = SteeringPolicy()
    history = SteeringHistory((Observation(5.0, 0.02), Observation(11.0, 0.97)), Estimate(8.0, 1.7, (5.2, 10.8)))
    assert policy.decide(history) == policy.decide(history)
    assert policy.next_pressure(SteeringHistory()) == policy.start
    with pytest.raises(SteeringError, match="SteeringHistory"):
        policy.decide([5.0, 11.0])


@pytest.mark.parametrize("kwargs, message", [
    ({"start": 30.0, "stop": 10.0}, "start < stop"),
    ({"precision": 0.0}, "precision must be > 0"),
    ({"coarse_step": math.nan}, "coarse_step must be a finite number"),
    ({"mode": "random"}, "mode must be one of bracketing, monotonic, uniform"),
    ({"max_frames": 1}, "max_frames must be an integer >= 2"),
])
def test_policy_errors_name_the_field_and_what_was_expected(kwargs, message):
    with pytest.raises(SteeringError, match=message):
        SteeringPolicy(**kwargs)


# -- the evaluation ----------------------------------------------------------------------------------


def test_evaluate_steering_reports_both_arms_honestly():
    result = evaluate_steering(n_ramps=2, precision=0.5, seed=1, fast=True)
    for key in ("frames_adaptive", "frames_uniform", "frame_ratio", "precision", "n_ramps", "reached_fraction_adaptive",
                "reached_fraction_uniform", "beamtime_adaptive_s", "beamtime_uniform_s", "seconds", "ramps"):
        assert key in result
    assert result["n_ramps"] == 2 and len(result["ramps"]) == 2 and result["precision"] == 0.5
    assert result["frame_ratio"] == pytest.approx(result["frames_uniform"] / result["frames_adaptive"])
    assert 0 < result["frames_adaptive"] < result["frames_uniform"] <= result["frames_uniform_full_range"]
    assert result["reached_fraction_adaptive"] == 1.0
    ramps = result["ramps"]
    for arm in ("adaptive", "uniform"):  # the summary is the mean of the ramps, in frames, beamtime and reach
        assert result[f"frames_{arm}"] == pytest.approx(np.mean([r[arm]["frames"] for r in ramps]))
        assert result[f"beamtime_{arm}_s"] == pytest.approx(np.mean([r[arm]["beamtime_s"] for r in ramps]))
        assert result[f"beamtime_{arm}_s"] > 0
        assert result[f"reached_fraction_{arm}"] == pytest.approx(np.mean([r[arm]["reached"] for r in ramps]))
    assert 0.0 <= result["reached_fraction_uniform"] <= 1.0 and result["seconds"] > 0
    for ramp in result["ramps"]:
        assert 15.0 <= ramp["transition_pressure"] <= 45.0
        assert ramp["adaptive"]["error_over_precision"] <= 1.0
    json.dumps(result)


def test_cli_helper_registers_evaluate_steering(capsys):
    args = build_parser().parse_args(["evaluate", "steering", "--json", "--ramps", "1", "--precision", "1.0", "--fast"])
    assert args.n_ramps == 1 and args.precision == 1.0
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_ramps"] == 1 and out["precision"] == 1.0
    assert cmd_evaluate_steering is args.func

"""The steering plans of a pressure ramp under a real RunEngine: adaptive against uniform, a
classifier in another thread, no classification at all."""

import queue
import threading

import pytest
from bluesky import RunEngine
from ophyd.sim import SynAxis, SynSignal

from bluesky_callbacks.plans import (
    SteeringTimeoutError,
    TrackerEstimateSource,
    TransitionEstimateSource,
    adaptive_pressure_ramp,
    uniform_pressure_ramp,
)
from xrd_nexus_ml.bundle import resolve_bundle
from xrd_nexus_ml.steering import SteeringError, SteeringPolicy, SteeringResult
from xrd_nexus_ml.transitions import TransitionTracker, load_model, simulate_ramp

TRUTH, WIDTH, PRECISION = 31.7, 1.5, 0.5


@pytest.fixture(scope="module")
def model():
    return load_model(resolve_bundle("transition/end_to_end"))


@pytest.fixture()
def beamline():
    """A pressure axis (ophyd SynAxis) and a detector whose frame is simulated at the axis's pressure."""
    pressure = SynAxis(name="pressure", egu="GPa", value=5.0)
    counter = iter(range(10_000))

    def frame():
        p = float(pressure.readback.get())
        return simulate_ramp([p], TRUTH, WIDTH, noise=0.01, seed=next(counter)).intensity[0]

    detector = SynSignal(func=frame, name="xrd")
    probe = simulate_ramp([TRUTH], TRUTH, WIDTH, noise=0.0)
    return pressure, detector, probe.two_theta, probe.wavelength


def _source(model, two_theta, wavelength, policy):
    return TrackerEstimateSource(
        lambda: TransitionTracker(model, two_theta=two_theta, wavelength=wavelength, **policy.changepoint_options()),
        frame_field="xrd", pressure_field="pressure")


def test_adaptive_plan_locates_the_transition_with_fewer_frames_than_a_uniform_ramp(model, beamline, documents):
    pressure, detector, two_theta, wavelength = beamline
    policy = SteeringPolicy(precision=PRECISION, coarse_step=4.0)
    source = _source(model, two_theta, wavelength, policy)
    assert isinstance(source, TransitionEstimateSource)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(source)
    docs = documents()
    RE.subscribe(docs)
    outcome = RE(adaptive_pressure_ramp([detector], pressure, policy, source))
    assert outcome.exit_status == "success"
    result: SteeringResult = outcome.plan_result
    assert result.stop_reason == "precision_reached"
    assert abs(result.estimate.pressure - TRUTH) <= PRECISION

    start = docs.named("start")[0]
    assert start["plan_name"] == "adaptive_pressure_ramp"
    assert start["steering_policy"]["precision"] == PRECISION and start["motors"] == ["pressure"]
    streams = {doc["uid"]: doc["name"] for doc in docs.named("descriptor")}
    primary = [doc for doc in docs.named("event") if streams[doc["descriptor"]] == "primary"]
    steering = [doc for doc in docs.named("event") if streams[doc["descriptor"]] == "steering"]
    assert len(primary) == result.n_frames and len(steering) == result.n_frames + 1
    assert [e["data"]["pressure"] for e in primary] == pytest.approx(result.pressures)
    assert steering[-1]["data"]["steering_reason"] == "precision_reached"

    docs.clear()
    uniform = RE(uniform_pressure_ramp([detector], pressure, policy.start, policy.stop, 2 * PRECISION,
                                       estimate_source=source, precision=PRECISION))
    n_uniform = sum(1 for doc in docs.named("event") if doc["data"].get("xrd") is not None)
    assert uniform.plan_result.n_frames == n_uniform
    assert docs.named("start")[0]["plan_name"] == "uniform_pressure_ramp"
    assert result.n_frames < n_uniform


def test_plan_waits_for_a_classifier_running_in_another_thread(model, beamline):
    pressure, detector, two_theta, wavelength = beamline
    policy = SteeringPolicy(precision=1.0, coarse_step=6.0)
    source = _source(model, two_theta, wavelength, policy)
    inbox: queue.Queue = queue.Queue()

    def worker():
        while (item := inbox.get()) is not None:
            source(*item)

    thread = threading.Thread(target=worker, name="classifier", daemon=True)
    thread.start()
    try:
        RE = RunEngine({}, call_returns_result=True)
        RE.subscribe(lambda name, doc: inbox.put((name, doc)))
        result = RE(adaptive_pressure_ramp([detector], pressure, policy, source, timeout=20.0)).plan_result
    finally:
        inbox.put(None)
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert result.stop_reason == "precision_reached" and abs(result.estimate.pressure - TRUTH) <= 1.0


def test_plan_fails_clearly_when_no_classification_arrives(model, beamline, documents):
    pressure, detector, two_theta, wavelength = beamline
    policy = SteeringPolicy()
    silent = _source(model, two_theta, wavelength, policy)  # never subscribed
    RE = RunEngine({})
    docs = documents()
    RE.subscribe(docs)
    with pytest.raises(SteeringTimeoutError, match="no classification of primary event 1"):
        RE(adaptive_pressure_ramp([detector], pressure, policy, silent, timeout=0.2))
    assert docs.named("stop")[0]["exit_status"] == "fail"


def test_plain_uniform_ramp_visits_every_pressure(beamline, documents):
    pressure, detector, _, _ = beamline
    RE = RunEngine({})
    docs = documents()
    RE.subscribe(docs)
    RE(uniform_pressure_ramp([detector], pressure, 10.0, 14.0, 2.0))
    assert [doc["data"]["pressure"] for doc in docs.named("event")] == [10.0, 12.0, 14.0]
    with pytest.raises(SteeringError, match="precision"):
        list(uniform_pressure_ramp([detector], pressure, 10.0, 14.0, 2.0, estimate_source=_source(None, None, None,
                                                                                                   SteeringPolicy())))

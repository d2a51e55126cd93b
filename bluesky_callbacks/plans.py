"""Bluesky plans that steer a pressure ramp by what the live classifier sees.

`adaptive_pressure_ramp` asks a `xrd_nexus_ml.steering.SteeringPolicy` for each next pressure,
moves the pressure motor there, triggers and reads the detectors, then waits for the live
classification of that very frame before deciding again. The classification arrives through
a `TransitionEstimateSource`: whatever callback classifies frames (in the RunEngine's thread or
in its own) exposes the history of the run so far by event number. The plan never blocks the
RunEngine's event loop while it waits: it polls through `bps.sleep`.

`TrackerEstimateSource` is a small reference implementation (a `TransitionTracker` fed from the
primary stream's events); the project's live classification callback implements the same
one-method protocol. `uniform_pressure_ramp` is the comparison: a fixed-step compression, which
with a source and a precision stops by the same rule as the adaptive plan.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from event_model import DocumentRouter
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import Status

from xrd_nexus_ml.steering import SteeringError, SteeringHistory, SteeringPolicy, SteeringResult

logger = logging.getLogger(__name__)

__all__ = [
    "SteeringStatus",
    "SteeringTimeoutError",
    "TrackerEstimateSource",
    "TransitionEstimateSource",
    "adaptive_pressure_ramp",
    "uniform_pressure_ramp",
    "wait_for_history",
]


class SteeringTimeoutError(SteeringError, TimeoutError):
    """The classification of a frame the plan just took did not arrive in time."""


@runtime_checkable
class TransitionEstimateSource(Protocol):
    """What a steering plan needs of the live classification: one non-blocking query.

    history(seq_num) returns the `SteeringHistory` of the current run up to and including the
    primary-stream event `seq_num` (1-based, as in the event documents), or None while that
    frame is not classified yet. It may raise (a `SteeringError`) when classifying that frame
    failed, which fails the plan with that message. Called from the RunEngine's thread.
    """

    def history(self, seq_num: int) -> SteeringHistory | None: ...


def wait_for_history(source: TransitionEstimateSource, seq_num: int, timeout: float = 30.0,
                     poll_interval: float = 0.01):
    """Plan stub: wait (polling through `bps.sleep`, never blocking the event loop) until the
    source has classified event `seq_num`; returns its `SteeringHistory`."""
    deadline = time.monotonic() + timeout
    while True:
        history = source.history(seq_num)
        if history is not None:
            return history
        if time.monotonic() >= deadline:
            raise SteeringTimeoutError(
                f"no classification of primary event {seq_num} from {type(source).__name__} within {timeout:g} s; "
                "is the estimate source subscribed to the RunEngine (or to the classification callback)?")
        yield from bps.sleep(poll_interval)


class _Record(Signal):
    """A soft record: set() is a put, finished at once (a plain Signal's set() waits until the
    readback equals the target, which never happens for NaN, our "none yet")."""

    def set(self, value, **kwargs) -> Status:
        self.put(value)
        status = Status(self)
        status.set_finished()
        return status


class SteeringStatus(Device):
    """Soft signals the plan reads into a "steering" stream: every decision, its reason and the
    estimate it was based on, so the run's documents tell why each pressure was chosen."""

    target = Cpt(_Record, value=math.nan, kind="hinted")
    reason = Cpt(_Record, value="", kind="normal")
    estimate = Cpt(_Record, value=math.nan, kind="hinted")
    half_width = Cpt(_Record, value=math.nan, kind="normal")
    n_frames = Cpt(_Record, value=0, kind="normal")


def _steering_loop(detectors: Sequence[Any], pressure_motor: Any, policy: SteeringPolicy,
                   estimate_source: TransitionEstimateSource, status: SteeringStatus, timeout: float,
                   poll_interval: float, result: SteeringResult):
    """Decide, record the decision, move, trigger and read, wait for its classification; fills `result`."""
    history = SteeringHistory()
    seq_num = 0
    while True:
        decision = policy.decide(history)
        result.decisions.append(decision)
        est = decision.estimate
        yield from bps.mv(status.target, math.nan if decision.pressure is None else decision.pressure,
                          status.reason, decision.reason,
                          status.estimate, math.nan if est is None else est.pressure,
                          status.half_width, math.nan if est is None else est.half_width,
                          status.n_frames, decision.n_frames)
        yield from bps.trigger_and_read([status], name="steering")
        if decision.pressure is None:
            break
        yield from bps.mv(pressure_motor, decision.pressure)
        yield from bps.trigger_and_read([*detectors, pressure_motor])
        seq_num += 1
        history = yield from wait_for_history(estimate_source, seq_num, timeout, poll_interval)
        result.history = history
    logger.info("steering stopped after %d frames: %s", result.n_frames, result.stop_reason)


def adaptive_pressure_ramp(detectors: Sequence[Any], pressure_motor: Any, policy: SteeringPolicy,
                           estimate_source: TransitionEstimateSource, *, timeout: float = 30.0,
                           poll_interval: float = 0.01, md: dict | None = None):
    """Compress (and, in bracketing mode, step back) where `policy` says, until it stops.

    One run: a "primary" stream (detectors + pressure motor, one event per frame) and a
    "steering" stream (each decision: target pressure, reason, estimate, half-width). Before
    every step it waits up to `timeout` s for `estimate_source` to classify the frame it just
    took. The start document carries plan_name, the policy's configuration and the motor.
    Returns the `SteeringResult` (`RunEngine(call_returns_result=True)` hands it back).
    """
    if not isinstance(policy, SteeringPolicy):
        raise SteeringError(f"policy must be a SteeringPolicy, got {type(policy).__name__}")
    if not isinstance(estimate_source, TransitionEstimateSource):
        raise SteeringError(f"estimate_source must have a history(seq_num) method (TransitionEstimateSource), "
                            f"got {type(estimate_source).__name__}")
    detectors = list(detectors)
    status = SteeringStatus(name="steering")
    _md = {
        "plan_name": "adaptive_pressure_ramp",
        "plan_type": "generator",
        "detectors": [d.name for d in detectors],
        "motors": [pressure_motor.name],
        "plan_args": {"detectors": [repr(d) for d in detectors], "pressure_motor": repr(pressure_motor),
                      "policy": repr(policy), "timeout": timeout},
        "steering_policy": policy.to_dict(),
        "hints": {"dimensions": [(list(pressure_motor.hints.get("fields", [pressure_motor.name])), "primary")]},
        **(md or {}),
    }

    result = SteeringResult(policy=policy.to_dict())  # filled as the run goes (run_wrapper drops return values)

    @bpp.stage_decorator([*detectors, pressure_motor])
    @bpp.run_decorator(md=_md)
    def inner():
        yield from _steering_loop(detectors, pressure_motor, policy, estimate_source, status, timeout,
                                  poll_interval, result)

    yield from inner()
    return result


def uniform_pressure_ramp(detectors: Sequence[Any], pressure_motor: Any, start: float, stop: float, step: float, *,
                          estimate_source: TransitionEstimateSource | None = None, precision: float | None = None,
                          timeout: float = 30.0, poll_interval: float = 0.01, md: dict | None = None):
    """The comparison: compress from `start` to `stop` in steps of `step` GPa.

    Without a source: every pressure of the grid, one run. With `estimate_source` and
    `precision`: the uniform `SteeringPolicy` (same grid), which stops as soon as the transition
    is known to the precision by the same rule as the adaptive plan."""
    if not (math.isfinite(start) and math.isfinite(stop) and stop > start):
        raise SteeringError(f"uniform_pressure_ramp needs start < stop (GPa), got start={start}, stop={stop}")
    if not (math.isfinite(step) and step > 0):
        raise SteeringError(f"uniform_pressure_ramp needs step > 0 GPa, got {step}")
    _md = {"plan_name": "uniform_pressure_ramp", **(md or {})}
    if estimate_source is not None:
        if precision is None:
            raise SteeringError("uniform_pressure_ramp with an estimate_source needs the precision (GPa) to stop at")
        policy = SteeringPolicy.uniform(precision, start=start, stop=stop, step=step)
        return (yield from adaptive_pressure_ramp(detectors, pressure_motor, policy, estimate_source,
                                                  timeout=timeout, poll_interval=poll_interval, md=_md))
    detectors = list(detectors)
    pressures = [float(p) for p in np.arange(start, stop + 1e-9 * step, step)]
    _md.update({"detectors": [d.name for d in detectors], "motors": [pressure_motor.name],
                "plan_args": {"start": start, "stop": stop, "step": step}, "num_points": len(pressures),
                "hints": {"dimensions": [(list(pressure_motor.hints.get("fields", [pressure_motor.name])),
                                          "primary")]}})

    @bpp.stage_decorator([*detectors, pressure_motor])
    @bpp.run_decorator(md=_md)
    def inner():
        for p in pressures:
            yield from bps.mv(pressure_motor, p)
            yield from bps.trigger_and_read([*detectors, pressure_motor])

    yield from inner()
    return pressures


# -- reference estimate source -----------------------------------------------------------------------


class TrackerEstimateSource(DocumentRouter):
    """A `TransitionEstimateSource` from a `TransitionTracker` fed by the primary stream's events.

    Subscribe it to the RunEngine (synchronous) or call it from any thread: results are kept per
    event number under a lock. Every start document builds a fresh tracker with
    `tracker_factory()`. frame_field / pressure_field: the data keys of the diffractogram and of
    the pressure readback. A frame that cannot be classified is recorded as an error that
    `history()` raises, so the plan fails with the reason instead of waiting for its timeout.
    """

    def __init__(self, tracker_factory: Callable[[], Any], frame_field: str, pressure_field: str,
                 boundary: int = 0, stream_name: str = "primary"):
        super().__init__()
        self.tracker_factory = tracker_factory
        self.frame_field = frame_field
        self.pressure_field = pressure_field
        self.boundary = int(boundary)
        self.stream_name = stream_name
        self.tracker: Any = None
        self._descriptors: set[str] = set()
        self._results: dict[int, SteeringHistory | Exception] = {}
        self._condition = threading.Condition()

    def start(self, doc):
        with self._condition:
            self.tracker = self.tracker_factory()
            self._descriptors.clear()
            self._results.clear()

    def descriptor(self, doc):
        if doc.get("name") == self.stream_name:
            self._descriptors.add(doc["uid"])

    def event(self, doc):
        if doc["descriptor"] not in self._descriptors:
            return
        seq_num = int(doc["seq_num"])
        try:
            data = doc["data"]
            for key in (self.frame_field, self.pressure_field):
                if key not in data:
                    raise SteeringError(f"event {seq_num} of stream {self.stream_name!r} has no field {key!r}; "
                                        f"fields: {', '.join(sorted(data))}")
            self.tracker.update(np.asarray(data[self.frame_field], dtype=float), float(data[self.pressure_field]))
            outcome: SteeringHistory | Exception = SteeringHistory.from_records(self.tracker.records, self.boundary)
        except Exception as err:  # recorded for the plan, never raised into the RunEngine
            logger.exception("classifying event %d failed", seq_num)
            outcome = err
        with self._condition:
            self._results[seq_num] = outcome
            self._condition.notify_all()

    def history(self, seq_num: int) -> SteeringHistory | None:
        with self._condition:
            outcome = self._results.get(int(seq_num))
        if isinstance(outcome, Exception):
            raise SteeringError(f"classifying primary event {seq_num} failed: {outcome}") from outcome
        return outcome

    def wait_for(self, seq_num: int, timeout: float) -> SteeringHistory:
        """Blocking wait, for code outside a plan (never call it inside one: it would block the
        RunEngine's event loop)."""
        with self._condition:
            if not self._condition.wait_for(lambda: int(seq_num) in self._results, timeout):
                raise SteeringTimeoutError(f"no classification of primary event {seq_num} within {timeout:g} s")
        result = self.history(seq_num)
        assert result is not None
        return result

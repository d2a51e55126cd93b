"""`ClassifierCallback`: classifies every diffractogram of a Bluesky run while the scan runs.

The RunEngine thread only queues: each document costs it a dictionary look-up and a queue
put. One worker thread reads external frames, runs the `InferenceEngine` on batches, and
publishes a derived run (`event_model.compose_run`, `original_run_uid` in its start document)
with one prediction event per raw frame, to whatever is subscribed (a NexusWriter, a store,
a plot). A model error becomes an "error" record; when the queue is full frames are shed, and
each shed frame still gets a "not_classified" record, so nothing goes missing silently.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import event_model
import numpy as np

from bluesky_callbacks.external import ExternalData
from xrd_nexus_ml.inference import Frame, FramePrediction, InferenceEngine, RunClassifier, event_data_keys
from xrd_nexus_ml.pattern import HC_KEV_ANGSTROM, energy_to_wavelength
from xrd_nexus_ml.steering import Estimate, Observation, SteeringHistory

log = logging.getLogger(__name__)

Subscriber = Callable[[str, dict], object]


@dataclass(frozen=True)
class FrameKeys:
    """Which data keys of the raw run hold the frame and its conditions.

    pattern: the 1D intensity (its 2θ axis, degrees, is `<device>_two_theta` in the device's
    configuration, or the callback's `two_theta`). energy (keV) or wavelength (Å): an event key,
    else `<device>_energy`/`<device>_wavelength` in the configuration, else the start document's
    `energy_kev`/`wavelength`. pressure (GPa): an event key, else the last value seen. The
    elements that may be present (for material identification) come from the start document's
    `elements` or `sample["elements"]`.
    """

    pattern: str = "detector_pattern"
    pressure: str = "pressure"
    energy: str = "energy"
    wavelength: str = "wavelength"


@dataclass
class _Stream:
    """What one raw descriptor tells about its frames."""

    two_theta: np.ndarray | None
    wavelength: float | None  # from configuration or start metadata; events may override
    external: bool
    has_pressure: bool
    has_energy: bool
    has_wavelength: bool


@dataclass
class _Run:
    """One raw run and the derived run that answers it."""

    raw_uid: str
    bundle: event_model.ComposeRunBundle
    classifier: RunClassifier
    start_wavelength: float | None
    streams: dict[str, _Stream] = field(default_factory=dict)
    descriptor: event_model.ComposeDescriptorBundle | None = None
    received: int = 0
    classified: int = 0
    errors: int = 0
    shed: list = field(default_factory=list)  # (seq_num, raw_uid, pressure, received) of frames shed
    n_shed: int = 0
    last_pressure: float = math.nan
    last_seq_num: int = 0  # highest seq_num with a published prediction
    observed_pressure: array = field(default_factory=lambda: array("d"))  # per published frame, for steering
    observed_probability: array = field(default_factory=lambda: array("d"))  # P(above the first transition)
    estimates: list = field(default_factory=list)  # transition estimates after the last published frame

    def counts(self) -> dict:
        return {"received": self.received, "classified": self.classified, "shed": self.n_shed, "errors": self.errors}


_CLOSE = object()


class ClassifierCallback(event_model.DocumentRouter):
    """Live classification of the frames of every run it is subscribed to.

    engine: models loaded once (`InferenceEngine.from_bundles()`). batch_size: most frames per
    model call. max_queue: frames waiting for the worker before new ones are shed. max_open_runs: runs
    kept open at once; a start beyond it closes the oldest run (a source that never sent its stop).
    handler_registry: extra handlers for legacy external data (AD_HDF5 is built in).
    """

    def __init__(self, engine: InferenceEngine, keys: FrameKeys = FrameKeys(), batch_size: int = 64,
                 max_queue: int = 4096, handler_registry: dict | None = None, two_theta=None,
                 wavelength: float | None = None, changepoint_options: dict | None = None,
                 max_open_runs: int = 16):
        super().__init__()
        if batch_size < 1 or max_queue < 1 or max_open_runs < 1:
            raise ValueError(f"batch_size, max_queue and max_open_runs must be >= 1, got {batch_size}, {max_queue}, "
                             f"{max_open_runs}")
        self.max_open_runs = int(max_open_runs)
        self.engine = engine
        self.keys = keys
        self.batch_size = int(batch_size)
        self.max_queue = int(max_queue)
        self.two_theta = None if two_theta is None else np.asarray(two_theta, dtype=float)
        self.wavelength = wavelength
        self.changepoint_options = changepoint_options
        self.external = ExternalData(handler_registry)
        self._subscribers: list[Subscriber] = []
        self._runs: dict[str, _Run] = {}
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # frames queued, not yet taken by the worker
        self._lock = threading.Lock()
        self._published = threading.Lock()  # what history() reads, written by the worker
        self._latest: _Run | None = None
        self.subscriber_errors: list[str] = []
        self._worker = threading.Thread(target=self._work, name="xrd-nexus-ml-classifier", daemon=True)
        self._worker.start()

    # -- who hears the derived run -----------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> int:
        """`callback(name, doc)` gets every document of the derived runs, from the worker thread."""
        self._subscribers.append(callback)
        return len(self._subscribers) - 1

    # -- raw documents (RunEngine thread: look up, queue, return) ------------------------------
    def start(self, doc):
        if "original_run_uid" in doc:  # a derived run (ours, echoed by a 0MQ proxy): nothing to classify
            return
        self.external("start", doc)
        engine = self.engine
        elements = _sample_elements(doc)
        metadata = {"original_run_uid": doc["uid"], "plan_name": "xrd_nexus_ml.classify",
                    "title": f"predictions for {doc.get('title') or doc['uid']}", **engine.describe(),
                    **({"elements": elements} if elements else {})}
        bundle = event_model.compose_run(metadata=metadata)
        run = _Run(raw_uid=doc["uid"], bundle=bundle, classifier=engine.new_run(self.changepoint_options, elements),
                   start_wavelength=_start_wavelength(doc, self.wavelength))
        self._runs[doc["uid"]] = run
        self._latest = run
        self._queue.put(("start", run, bundle.start_doc))
        while len(self._runs) > self.max_open_runs:  # runs whose stop never came (a crashed source)
            oldest = next(iter(self._runs))
            log.warning("run %s has no stop document after %d newer runs started: its derived run is closed",
                        oldest, self.max_open_runs)
            self._queue.put(("stop", self._runs.pop(oldest), {"exit_status": "abandoned (no stop document)"}))

    def descriptor(self, doc):
        self.external("descriptor", doc)
        run = self._runs.get(doc["run_start"])
        data_keys = doc["data_keys"]
        if run is None or self.keys.pattern not in data_keys:
            return
        device, config = device_configuration(doc, self.keys.pattern)
        two_theta = config.get(f"{device}_two_theta", self.two_theta)
        wavelength = config.get(f"{device}_wavelength")
        if wavelength is None and config.get(f"{device}_energy") is not None:
            wavelength = energy_to_wavelength(float(config[f"{device}_energy"]))
        run.streams[doc["uid"]] = _Stream(
            two_theta=None if two_theta is None else np.asarray(two_theta, dtype=float),
            wavelength=float(wavelength) if wavelength is not None else run.start_wavelength,
            external=bool(data_keys[self.keys.pattern].get("external")),
            has_pressure=self.keys.pressure in data_keys,
            has_energy=self.keys.energy in data_keys,
            has_wavelength=self.keys.wavelength in data_keys,
        )

    def event_page(self, doc):
        run = self._run_of(doc["descriptor"])
        if run is None:
            return
        stream = run.streams.get(doc["descriptor"])
        if stream is None:  # a stream without frames (baseline, motors): only its pressure matters
            return
        n = len(doc["seq_num"])
        run.received += n
        with self._lock:
            room = self._pending + n <= self.max_queue
            if room:
                self._pending += n
        if room:
            self._queue.put(("page", run, (stream, doc, time.perf_counter())))
        else:
            self._shed(run, stream, doc)

    def resource(self, doc):
        self.external("resource", doc)

    def datum(self, doc):
        self.external("datum", doc)

    def datum_page(self, doc):
        self.external("datum_page", doc)

    def stream_resource(self, doc):
        self.external("stream_resource", doc)

    def stream_datum(self, doc):
        run = self._run_of(doc["descriptor"])
        stream = run.streams.get(doc["descriptor"]) if run is not None else None
        resource = self.external.stream_resources.get(doc["stream_resource"], {})
        if stream is None or resource.get("data_key") != self.keys.pattern:
            return
        n = int(doc["seq_nums"]["stop"]) - int(doc["seq_nums"]["start"])
        run.received += n
        with self._lock:
            self._pending += n
        self._queue.put(("stream_datum", run, (stream, doc, time.perf_counter())))

    def stop(self, doc):
        run = self._runs.pop(doc["run_start"], None)
        if run is not None:
            self._queue.put(("stop", run, doc))

    def _run_of(self, descriptor_uid: str) -> _Run | None:
        for run in self._runs.values():
            if descriptor_uid in run.streams:
                return run
        return None

    def _shed(self, run: _Run, stream: _Stream, page: dict):
        """Full queue: keep only what the 'not_classified' records need."""
        pressures = page["data"].get(self.keys.pressure, [math.nan] * len(page["seq_num"]))
        now = time.perf_counter()
        run.shed.extend(zip(page["seq_num"], page["uid"], pressures, [now] * len(page["seq_num"])))
        run.n_shed += len(page["seq_num"])
        log.warning("classifier queue full (%d frames): shed %d frame(s) of run %s", self.max_queue,
                    len(page["seq_num"]), run.raw_uid)

    # -- steering: what the scan knows so far ----------------------------------------------------
    def history(self, seq_num: int):
        """`TransitionEstimateSource` for `bluesky_callbacks.plans.adaptive_pressure_ramp`: the
        latest run's `SteeringHistory` once frame `seq_num` has its prediction, else None
        (never blocks: the plan polls through `bps.sleep`)."""
        with self._published:
            run = self._latest
            if run is None or run.last_seq_num < seq_num:
                return None
            observations = tuple(Observation(p, q) for p, q in zip(run.observed_pressure, run.observed_probability))
            estimates = run.estimates
        estimate = Estimate.from_boundary(estimates[0]) if estimates else None
        return SteeringHistory(observations, estimate if estimate is not None and estimate.finite else None)

    def counts(self, raw_uid: str | None = None) -> dict:
        """Frames received, classified, shed and failed for a run (default: the latest)."""
        run = self._latest
        if run is None or (raw_uid is not None and run.raw_uid != raw_uid):
            return {}
        return run.counts()

    # -- the worker ------------------------------------------------------------------------------
    def _work(self):
        while True:
            items = [self._queue.get()]
            frames_in = _n_frames(items[0])
            while frames_in < self.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                frames_in += _n_frames(item)
            try:
                if not self._handle(items):
                    return
            except Exception:  # noqa: BLE001 - the worker outlives any one bad document
                log.exception("classifier worker: a batch of %d queued item(s) could not be handled", len(items))

    def _handle(self, items: list) -> bool:
        batch: list[Frame] = []
        batch_run: _Run | None = None
        for item in items:
            if item is _CLOSE:
                self._classify(batch_run, batch)
                return False
            kind, run, payload = item
            if kind in ("page", "stream_datum"):
                if batch_run is not None and run is not batch_run:
                    self._classify(batch_run, batch)
                    batch = []
                batch_run = run
                batch.extend(self._frames(kind, run, payload))
                continue
            self._classify(batch_run, batch)
            batch, batch_run = [], None
            if kind == "start":
                self._publish("start", payload)
            elif kind == "stop":
                self._finish(run, payload)
            elif kind == "flush":
                payload.set()
        self._classify(batch_run, batch)
        return True

    def _frames(self, kind: str, run: _Run, payload) -> list[Frame]:
        """Frames of one page (or StreamDatum); a page that cannot be read becomes error records."""
        stream, doc, received = payload
        keys = self.keys
        try:
            if kind == "page":
                page = self.external.fill_page(doc, {keys.pattern}) if stream.external else doc
                data = page["data"]
                intensities = data[keys.pattern]
                seq_nums, uids = list(page["seq_num"]), list(page["uid"])
            else:
                _, intensities, seq = self.external.read_stream_datum(doc)
                seq_nums, uids, data = [int(s) for s in seq], [doc["uid"]] * len(seq), {}
        except Exception as err:  # noqa: BLE001 - an unreadable frame must not stop the worker
            with self._lock:
                self._pending -= _payload_frames(kind, doc)
            run.errors += _payload_frames(kind, doc)
            log.error("run %s: %s", run.raw_uid, err)
            self._publish_records(run, run.classifier.failed(
                [Frame(s, np.zeros(0), received=received) for s in _payload_seq(kind, doc)], err))
            return []
        n = len(seq_nums)
        with self._lock:
            self._pending -= n
        pressures = data.get(keys.pressure) if stream.has_pressure else None
        energies = data.get(keys.energy) if stream.has_energy else None
        wavelengths = data.get(keys.wavelength) if stream.has_wavelength else None
        frames = []
        for i in range(n):
            pressure = float(pressures[i]) if pressures is not None else run.last_pressure
            if pressures is not None:
                run.last_pressure = pressure
            wavelength = stream.wavelength
            if energies is not None and energies[i]:
                wavelength = energy_to_wavelength(float(energies[i]))
            elif wavelengths is not None and wavelengths[i]:
                wavelength = float(wavelengths[i])
            energy = HC_KEV_ANGSTROM / wavelength if wavelength else math.nan
            frames.append(Frame(seq_num=seq_nums[i], intensity=np.asarray(intensities[i]), two_theta=stream.two_theta,
                                wavelength=wavelength, pressure=pressure, energy=energy, raw_uid=uids[i],
                                received=received))
        return frames

    def _classify(self, run: _Run | None, frames: list[Frame]):
        if run is None:
            return
        records: list[FramePrediction] = []
        if run.shed:
            shed, run.shed = run.shed, []
            records += run.classifier.failed([Frame(s, np.zeros(0), pressure=p, raw_uid=u, received=t)
                                              for s, u, p, t in shed], "classifier queue full", flag="not_classified")
        if frames:
            try:
                records += run.classifier.classify(frames)
                run.classified += len(frames)
            except Exception as err:  # noqa: BLE001 - a model failure never stops the scan
                log.exception("run %s: classification of %d frame(s) failed", run.raw_uid, len(frames))
                run.errors += len(frames)
                records += run.classifier.failed(frames, err)
        self._publish_records(run, records)

    def _publish_records(self, run: _Run, records: list[FramePrediction]):
        if not records:
            return
        if run.descriptor is None:
            keys = event_data_keys(len(self.engine.phase_names), self.engine.top_k)
            run.descriptor = run.bundle.compose_descriptor(name="primary", data_keys=keys)
            self._publish("descriptor", run.descriptor.descriptor_doc)
        rows = [r.to_event_data() for r in records]
        now = time.time()
        data = {k: [row[k] for row in rows] for k in rows[0]}
        page = run.descriptor.compose_event_page(
            data=data, timestamps={k: [now] * len(rows) for k in data}, seq_num=[r["raw_seq_num"] for r in rows],
            time=[now] * len(rows), validate=False)
        self._publish("event_page", page)
        estimates = run.classifier.estimates  # computed here, in the worker that updates them
        with self._published:
            run.estimates = estimates
            for r in records:
                run.observed_pressure.append(r.pressure)
                run.observed_probability.append(r.transition_probability)
            run.last_seq_num = max(run.last_seq_num, max(r.seq_num for r in records))

    def _finish(self, run: _Run, raw_stop: dict):
        self._classify(run, [])  # frames shed after the last batch
        counts = run.counts()
        reason = (f"classified {run.classified} of {run.received} frames; shed {run.n_shed}; "
                  f"model errors {run.errors}; raw run ended {raw_stop.get('exit_status')}")
        status = "success" if run.n_shed == 0 and run.errors == 0 else "fail"
        stop = run.bundle.compose_stop(exit_status=status, reason=reason)
        log.info("run %s: %s", run.raw_uid, counts)
        self._publish("stop", stop)

    def _publish(self, name: str, doc: dict):
        for callback in self._subscribers:
            try:
                callback(name, doc)
            except Exception as err:  # noqa: BLE001 - logged loudly and kept; the worker goes on
                message = f"{getattr(callback, '__name__', type(callback).__name__)} failed on {name}: {err!r}"
                log.error(message)
                self.subscriber_errors.append(message)

    # -- lifetime --------------------------------------------------------------------------------
    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every queued document has been handled; False on timeout."""
        done = threading.Event()
        self._queue.put(("flush", None, done))
        return done.wait(timeout)

    def close(self, timeout: float = 60.0):
        """Finish what is queued, stop the worker, close files."""
        if self._worker.is_alive():
            self._queue.put(_CLOSE)
            self._worker.join(timeout)
        self.external.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _n_frames(item) -> int:
    if item is _CLOSE or item[0] not in ("page", "stream_datum"):
        return 0
    return _payload_frames(item[0], item[2][1])


def _payload_frames(kind: str, doc: dict) -> int:
    return len(doc["seq_num"]) if kind == "page" else int(doc["seq_nums"]["stop"]) - int(doc["seq_nums"]["start"])


def _payload_seq(kind: str, doc: dict) -> list[int]:
    if kind == "page":
        return list(doc["seq_num"])
    return list(range(int(doc["seq_nums"]["start"]), int(doc["seq_nums"]["stop"])))


def device_configuration(descriptor: dict, key: str) -> tuple[str | None, dict]:
    """The device whose reading `key` is, and its configuration values (`<device>_two_theta`, the
    detector axis; `<device>_energy` or `_wavelength`); (None, {}) when no device owns the key."""
    for device, keys in descriptor.get("object_keys", {}).items():
        if key in keys:
            return device, descriptor.get("configuration", {}).get(device, {}).get("data", {})
    return None, {}


def _sample_elements(start: dict) -> list[str] | None:
    """The elements the run says may be present (`elements`, or `sample.elements`: a list or
    "Mg,Fe,O"); they restrict material identification. None: any element."""
    sample = start.get("sample")
    value = start.get("elements") or (sample.get("elements") if isinstance(sample, dict) else None)
    if isinstance(value, str):
        value = value.split(",")
    elements = [str(e).strip() for e in value or () if str(e).strip()]
    return elements or None


def _start_wavelength(start: dict, default: float | None) -> float | None:
    if start.get("wavelength") is not None:
        return float(start["wavelength"])
    if start.get("energy_kev") is not None:
        return energy_to_wavelength(float(start["energy_kev"]))
    return default

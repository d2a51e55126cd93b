"""ClassifierCallback: live classification through a real RunEngine and real documents."""

from __future__ import annotations

import threading

import bluesky.plans as bp
import event_model
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.sim import SynAxis

from bluesky_callbacks.classifier import ClassifierCallback
from xrd_nexus_ml.inference import FLAGS, InferenceEngine
from xrd_nexus_ml.transitions import simulate_ramp

TRANSITION = 31.3


@pytest.fixture(scope="module")
def engine():
    return InferenceEngine.from_bundles()


@pytest.fixture(scope="module")
def ramp():
    return simulate_ramp(np.linspace(5, 55, 26), transition_pressure=TRANSITION, noise=0.02, seed=11)


@pytest.fixture
def run_scan(ramp_detector, documents):
    """``run_scan(engine, ramp, **callback_options)``: a scan of the ramp, classified live; returns
    the raw run's uid, its documents, the derived run's documents and the callback."""

    def scan(engine, ramp, **callback_options):
        pressure = SynAxis(name="pressure")
        detector = ramp_detector(ramp, pressure)
        RE = RunEngine({})
        raw = documents()
        classifier = ClassifierCallback(engine, **callback_options)
        derived = documents()
        classifier.subscribe(derived)
        RE.subscribe(raw)
        RE.subscribe(classifier)
        (uid,) = RE(bp.scan([detector], pressure, 5, 55, ramp.n_frames), sample="(Mg0.2Fe0.8)O")
        assert classifier.flush(60)
        classifier.close()
        return uid, raw, derived, classifier

    return scan


def test_every_frame_gets_a_valid_prediction_in_a_derived_run(engine, ramp, run_scan):
    uid, raw, derived, classifier = run_scan(engine, ramp, batch_size=8)
    names = [n for n, _ in derived.docs]
    assert names[0] == "start" and names[1] == "descriptor" and names[-1] == "stop"
    for name, doc in derived.docs:  # real event-model schemas
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
    start = derived.named("start")[0]
    assert start["original_run_uid"] == uid
    assert start["phase_names"] == ["B1", "rB1"] and start["models"][0]["model_id"].startswith("phase_classification/")
    p = derived.page_data()
    raw_seq = [s for e in raw.named("event") for s in [e["seq_num"]]]
    assert sorted(p["raw_seq_num"]) == raw_seq  # one prediction per raw frame, none lost
    assert p["raw_uid"] == [e["uid"] for e in raw.named("event")]
    truth = {int(s): int(P > TRANSITION) for s, P in zip(p["raw_seq_num"], p["pressure"])}
    far = [i for i, P in enumerate(p["pressure"]) if abs(P - TRANSITION) > 3]
    assert all(p["phase"][i] == ["B1", "rB1"][truth[p["raw_seq_num"][i]]] for i in far)
    assert abs(p["transition_pressure"][-1] - TRANSITION) < 2.0
    assert 0 < p["transition_pressure_uncertainty"][-1] < 2.0
    assert all(f == "" for f in p["flag"]) and all(lat > 0 for lat in p["latency"])
    assert not any(p["out_of_library"])
    stop = derived.named("stop")[0]
    assert stop["exit_status"] == "success" and f"classified {ramp.n_frames} of {ramp.n_frames}" in stop["reason"]
    assert classifier.counts()["classified"] == ramp.n_frames


class BrokenModel:
    """A phase model that fails at inference time, as a corrupted or mismatched model would."""

    def __init__(self, model):
        self.model = model
        self.phase_names, self.grid, self.fitted = model.phase_names, model.grid, True

    def predict_proba_prepared(self, prepared, return_inputs=False):
        raise RuntimeError("CUDA error: device-side assert triggered")


def test_a_model_failure_never_stops_the_scan(engine, ramp, run_scan):
    broken = InferenceEngine(BrokenModel(engine.phase_model), engine.gate, provenance=engine.provenance)
    uid, raw, derived, _ = run_scan(broken, ramp, batch_size=4)
    assert raw.named("stop")[0]["exit_status"] == "success"  # the raw run completed
    p = derived.page_data()
    assert sorted(p["raw_seq_num"]) == list(range(1, ramp.n_frames + 1))
    assert set(p["flag"]) == {"error"} and all("device-side assert" in e for e in p["error"])
    stop = derived.named("stop")[0]
    assert stop["exit_status"] == "fail" and f"model errors {ramp.n_frames}" in stop["reason"]


def test_a_full_queue_sheds_frames_and_reports_every_one(engine, ramp, ramp_detector, documents):
    release = threading.Event()

    class SlowSubscriber:  # holds the worker, as a stalled file system or plot would
        def __call__(self, name, doc):
            if name == "descriptor":
                release.wait(60)

    pressure = SynAxis(name="pressure")
    detector = ramp_detector(ramp, pressure)
    RE = RunEngine({})
    classifier = ClassifierCallback(engine, batch_size=1, max_queue=3)
    classifier.subscribe(SlowSubscriber())
    derived = documents()
    classifier.subscribe(derived)
    RE.subscribe(classifier)
    RE(bp.scan([detector], pressure, 5, 55, ramp.n_frames))
    release.set()
    assert classifier.flush(60)
    classifier.close()
    p = derived.page_data()
    assert sorted(p["raw_seq_num"]) == list(range(1, ramp.n_frames + 1))  # shed frames are still reported
    shed = [s for s, f in zip(p["raw_seq_num"], p["flag"]) if f == "not_classified"]
    counts = classifier.counts()
    assert len(shed) == counts["shed"] > 0 and counts["classified"] + counts["shed"] == ramp.n_frames
    assert "shed" in FLAGS["not_classified"]
    assert derived.named("stop")[0]["exit_status"] == "fail"


def compose_raw_run(ramp, frames, external=None):
    """Raw run documents as a detector with its axis in configuration would emit them."""
    bundle = event_model.compose_run(metadata={"sample": "fp"})
    key = {"source": "sim", "dtype": "array", "shape": [ramp.two_theta.size], "dtype_numpy": "<f8"}
    if external:
        key["external"] = external
    data_keys = {"detector_pattern": key, "pressure": {"source": "sim", "dtype": "number", "shape": [],
                                                       "units": "GPa"}}
    config = {"detector": {"data": {"detector_two_theta": ramp.two_theta, "detector_energy": ramp.energy_kev},
                           "timestamps": {"detector_two_theta": 0, "detector_energy": 0}, "data_keys": {}}}
    desc = bundle.compose_descriptor(name="primary", data_keys=data_keys, configuration=config,
                                     object_keys={"detector": ["detector_pattern"], "pressure": ["pressure"]})
    return bundle, desc


def test_event_pages_with_bad_frames_keep_the_sequence(engine, ramp, documents):
    bundle, desc = compose_raw_run(ramp, ramp.n_frames)
    frames = [row for row in ramp.intensity]
    frames[3] = np.full_like(frames[3], np.nan)
    frames[5] = np.zeros_like(frames[5])
    frames[7] = np.interp(np.linspace(0, 1, 3000), np.linspace(0, 1, frames[7].size), frames[7])  # wrong length
    classifier = ClassifierCallback(engine, batch_size=100)
    derived = documents()
    classifier.subscribe(derived)
    classifier("start", bundle.start_doc)
    classifier("descriptor", desc.descriptor_doc)
    n = ramp.n_frames
    page = desc.compose_event_page(data={"detector_pattern": frames, "pressure": list(ramp.pressures)},
                                   timestamps={"detector_pattern": [0.0] * n, "pressure": [0.0] * n},
                                   seq_num=list(range(1, n + 1)), time=[0.0] * n, validate=False)
    classifier("event_page", page)
    classifier("stop", bundle.compose_stop())
    assert classifier.flush(60)
    classifier.close()
    p = derived.page_data()
    assert len(p["raw_seq_num"]) == n
    assert p["flag"][3] == "nan" and p["flag"][5] == "zero" and p["flag"][7] == ""  # resampled, classified
    assert abs(p["transition_pressure"][-1] - TRANSITION) < 2.0


def test_external_frames_legacy_and_stream_are_filled(engine, ramp, tmp_path, documents):
    n = 8
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as h5:
        h5["/entry/data/data"] = ramp.intensity[:n]

    # legacy Resource/Datum
    bundle, desc = compose_raw_run(ramp, n, external="FILESTORE:")
    res = bundle.compose_resource(spec="AD_HDF5", root=str(tmp_path), resource_path="frames.h5",
                                  resource_kwargs={"frame_per_point": 1})
    datums = [res.compose_datum(datum_kwargs={"point_number": i}) for i in range(n)]
    classifier = ClassifierCallback(engine)
    derived = documents()
    classifier.subscribe(derived)
    classifier("start", bundle.start_doc)
    classifier("descriptor", desc.descriptor_doc)
    classifier("resource", res.resource_doc)
    for i, d in enumerate(datums):
        classifier("datum", d)
        classifier("event", desc.compose_event(data={"detector_pattern": d["datum_id"], "pressure": ramp.pressures[i]},
                                               timestamps={"detector_pattern": 0, "pressure": 0},
                                               filled={"detector_pattern": False}, seq_num=i + 1))
    classifier("stop", bundle.compose_stop())

    # StreamResource/StreamDatum (ophyd-async style: no event carries the frames)
    bundle2, desc2 = compose_raw_run(ramp, n, external="STREAM:")
    sres = bundle2.compose_stream_resource(mimetype="application/x-hdf5", uri=f"file://localhost{path}",
                                           data_key="detector_pattern", parameters={"dataset": "/entry/data/data"})
    classifier("start", bundle2.start_doc)
    classifier("descriptor", desc2.descriptor_doc)
    classifier("stream_resource", sres.stream_resource_doc)
    classifier("stream_datum", sres.compose_stream_datum(indices={"start": 0, "stop": n},
                                                         seq_nums={"start": 1, "stop": n + 1},
                                                         descriptor=desc2.descriptor_doc))
    classifier("stop", bundle2.compose_stop())
    assert classifier.flush(60)
    classifier.close()

    runs: dict[str, list] = {}
    for name, doc in derived.docs:
        if name == "start":
            current = runs.setdefault(doc["original_run_uid"], [])
        if name == "event_page":
            current.extend(zip(doc["data"]["raw_seq_num"], doc["data"]["phase"], doc["data"]["flag"]))
    legacy, stream = runs[bundle.start_doc["uid"]], runs[bundle2.start_doc["uid"]]
    assert [s for s, _, _ in legacy] == list(range(1, n + 1)) and [s for s, _, _ in stream] == list(range(1, n + 1))
    assert all(ph == "B1" for _, ph, _ in legacy + stream)  # the ramp's first, low-pressure frames
    assert {f for _, _, f in legacy} == {""}
    assert {f for _, _, f in stream} == {"pressure"}  # no event gave a pressure: classified, not in the estimate


def test_a_missing_external_file_becomes_error_records(engine, ramp, tmp_path, documents):
    bundle, desc = compose_raw_run(ramp, 2, external="STREAM:")
    sres = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=f"file://localhost{tmp_path}/gone.h5",
                                          data_key="detector_pattern", parameters={"dataset": "/entry/data/data"})
    classifier = ClassifierCallback(engine)
    derived = documents()
    classifier.subscribe(derived)
    for name, doc in [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc),
                      ("stream_resource", sres.stream_resource_doc),
                      ("stream_datum", sres.compose_stream_datum(indices={"start": 0, "stop": 2},
                                                                 seq_nums={"start": 1, "stop": 3},
                                                                 descriptor=desc.descriptor_doc)),
                      ("stop", bundle.compose_stop())]:
        classifier(name, doc)
    assert classifier.flush(60)
    classifier.close()
    p = derived.page_data()
    assert p["flag"] == ["error", "error"] and all("gone.h5" in e for e in p["error"])


def test_runs_that_never_stop_are_closed_not_kept(engine, ramp, documents):
    """A source that dies between start and stop: the callback keeps at most `max_open_runs` runs
    open; the oldest is closed with a stop that says why, so memory does not grow run after run."""
    classifier = ClassifierCallback(engine, max_open_runs=2)
    derived = documents()
    classifier.subscribe(derived)
    starts = []
    for _ in range(5):
        bundle, desc = compose_raw_run(ramp, 2)
        classifier("start", bundle.start_doc)
        classifier("descriptor", desc.descriptor_doc)
        starts.append(bundle.start_doc["uid"])
    assert classifier.flush(60)
    assert list(classifier._runs) == starts[-2:]  # only the two newest are open
    stops = derived.named("stop")
    assert len(stops) == 3 and all("abandoned (no stop document)" in s["reason"] for s in stops)
    closed = {s["run_start"] for s in stops}
    originals = {d["uid"]: d["original_run_uid"] for d in derived.named("start")}
    assert {originals[uid] for uid in closed} == set(starts[:3])
    classifier.close()
    with pytest.raises(ValueError, match="max_open_runs"):
        ClassifierCallback(engine, max_open_runs=0)

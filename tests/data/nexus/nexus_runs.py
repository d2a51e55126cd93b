"""Real Bluesky documents for the NeXus tests: a raw pressure-ramp run and its derived prediction run.

Built with `event_model.compose_run` (no mocks). Kept free of `xrd_nexus_ml.inference` (which
loads torch) so that the crash-test child process starts fast; `prediction_data` mirrors
`FramePrediction.to_event_data()` and a test checks that the keys agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import event_model
import numpy as np

PHASES = ["B1 (rock salt)", "B8 (NiAs)", "rhombohedral"]
TOP_K = 2
MODELS = [
    {"model_id": "phase_identification/end_to_end@0123456789ab", "task": "phase_identification",
     "kind": "end_to_end", "version": "0.1.0", "card": "", "device": "cpu"},
    {"model_id": "transition/end_to_end@ba9876543210", "task": "transition", "kind": "end_to_end",
     "version": "0.1.0", "card": "", "device": "cpu", "settings": '{"top_k": 2}'},
]
ENERGY = 25.6  # keV, PETRA III P02.2


def two_theta(n_points: int) -> np.ndarray:
    return np.linspace(8.0, 26.0, n_points)


def pressure_of(i: int) -> float:
    return 5.0 + 2.5 * i  # GPa


def pattern(i: int, n_points: int) -> np.ndarray:
    """Two Gaussian peaks that move to higher angle as the pressure rises, plus a background."""
    x = two_theta(n_points)
    shift = 0.02 * pressure_of(i)
    y = 1000 * np.exp(-0.5 * ((x - 12.0 - shift) / 0.08) ** 2) + 600 * np.exp(-0.5 * ((x - 17.3 - shift) / 0.08) ** 2)
    return y + 20.0


def prediction_data(i: int, raw_uid: str = "", n_phases: int = len(PHASES), top_k: int = TOP_K) -> dict:
    """What FramePrediction(...).to_event_data() gives for frame i (seq_num i + 1)."""
    high = i >= 4
    probs = np.full(n_phases, 0.05)
    probs[1 if high else 0] = 0.9
    order = np.argsort(-probs)[:top_k]
    return {
        "raw_seq_num": i + 1, "raw_uid": raw_uid, "pressure": pressure_of(i), "energy": ENERGY,
        "phase": PHASES[int(order[0])], "phase_probability": float(probs[order[0]]),
        "phase_probabilities": probs, "top_k_index": order.astype(np.int64),
        "top_k_probability": probs[order], "out_of_library": False, "library_similarity": 0.97,
        "space_group_number": 194 if high else 225, "space_group_probability": 0.8,
        "crystal_system": "hexagonal" if high else "cubic", "material": "FeO", "material_probability": 0.7,
        "material_out_of_library": False,
        "transition_probability": 0.95 if high else 0.05, "transition_pressure": 14.0 if i >= 2 else math.nan,
        "transition_pressure_uncertainty": 1.5 if i >= 2 else math.nan, "flag": "", "error": "",
        "latency": 1.6, "model_ids": ";".join(m["model_id"] for m in MODELS),
    }


def prediction_keys(n_phases: int = len(PHASES), top_k: int = TOP_K) -> dict:
    """Data keys of the derived run (as records.event_data_keys gives them)."""
    def key(dtype, shape, units=None):
        k = {"source": "xrd_nexus_ml.inference", "dtype": dtype, "shape": shape}
        if units:
            k["units"] = units
        return k

    return {
        "raw_seq_num": key("integer", []), "raw_uid": key("string", []), "pressure": key("number", [], "GPa"),
        "energy": key("number", [], "keV"), "phase": key("string", []), "phase_probability": key("number", []),
        "phase_probabilities": key("array", [n_phases]), "top_k_index": key("array", [top_k]),
        "top_k_probability": key("array", [top_k]), "out_of_library": key("boolean", []),
        "library_similarity": key("number", []), "space_group_number": key("integer", []),
        "space_group_probability": key("number", []), "crystal_system": key("string", []),
        "material": key("string", []), "material_probability": key("number", []),
        "material_out_of_library": key("boolean", []), "transition_probability": key("number", []),
        "transition_pressure": key("number", [], "GPa"), "transition_pressure_uncertainty": key("number", [], "GPa"),
        "flag": key("string", []), "error": key("string", []), "latency": key("number", [], "ms"),
        "model_ids": key("string", []),
    }


@dataclass
class Run:
    """Documents of one run: `start`, `head` (descriptor, resources), per-frame docs, `stop`."""

    start: tuple
    head: list = field(default_factory=list)
    frames: list = field(default_factory=list)  # frames[i] = [(name, doc), ...]
    stop: tuple | None = None

    @property
    def uid(self) -> str:
        return self.start[1]["uid"]

    def all(self) -> list:
        docs = [self.start, *self.head]
        for frame in self.frames:
            docs += frame
        return docs + [self.stop]


def raw_run(n_frames: int, *, n_points: int = 200, metadata: dict | None = None, paged: bool = False,
            external_dir: Path | None = None, point_offset: int = 0, t0: float | None = None,
            temperature: bool = False, energy_in_events: bool = True) -> Run:
    """A pressure ramp: frames of `detector_pattern` with pressure and energy per event.

    `temperature` adds a ``temperature`` key (K); without `energy_in_events` the wavelength sits
    in the detector's configuration instead (``detector_wavelength``, angstrom).
    """
    md = {"title": "(Mg,Fe)O pressure ramp", "sample": {"name": "Mg0.2Fe0.8O", "chemical_formula": "Mg0.2Fe0.8O"},
          "user": {"name": "Ada Lovelace", "email": "ada@example.org", "ORCID": "0000-0002-1825-0097",
                   "affiliation": "Analytical Engine Lab"},
          "proposal_id": "I-20240042", "instrument": "P02.2", "facility": "PETRA III", "license": "CC-BY-4.0",
          "plan_name": "count", "scan_id": 42, "exposure_time": 1.0}
    md.update(metadata or {})
    t0 = time.time() if t0 is None else t0
    bundle = event_model.compose_run(metadata=md, time=t0)
    run = Run(("start", bundle.start_doc))
    tth = two_theta(n_points)
    pattern_key = {"source": "SIM:detector", "dtype": "array", "shape": [n_points], "dtype_numpy": "<f8",
                   "object_name": "detector", "units": "a.u."}
    if external_dir is not None:
        pattern_key["external"] = "FILESTORE:"
    data_keys = {"detector_pattern": pattern_key,
                 "pressure": {"source": "SIM:dac", "dtype": "number", "shape": [], "units": "GPa"}}
    object_keys = {"detector": ["detector_pattern"], "dac": ["pressure"]}
    config = {"data": {"detector_two_theta": tth.tolist()}, "timestamps": {"detector_two_theta": t0},
              "data_keys": {"detector_two_theta": {"source": "SIM:detector", "dtype": "array", "shape": [n_points],
                                                   "units": "deg"}}}
    if energy_in_events:
        data_keys["energy"] = {"source": "SIM:mono", "dtype": "number", "shape": [], "units": "keV"}
        object_keys["mono"] = ["energy"]
    else:
        config["data"]["detector_wavelength"] = 12.398419843320026 / ENERGY
        config["timestamps"]["detector_wavelength"] = t0
        config["data_keys"]["detector_wavelength"] = {"source": "SIM:detector", "dtype": "number", "shape": [],
                                                      "units": "angstrom"}
    if temperature:
        data_keys["temperature"] = {"source": "SIM:heater", "dtype": "number", "shape": [], "units": "K"}
        object_keys["heater"] = ["temperature"]
    desc = bundle.compose_descriptor(name="primary", data_keys=data_keys, object_keys=object_keys,
                                     configuration={"detector": config})
    resource = None
    if external_dir is not None:
        external_dir = Path(external_dir)
        external_dir.mkdir(parents=True, exist_ok=True)
        import h5py

        with h5py.File(external_dir / "frames.h5", "w") as f:
            f.create_dataset("entry/data/data",
                             data=np.stack([pattern(i, n_points) for i in range(n_frames + point_offset)]))
        resource = bundle.compose_resource(spec="AD_HDF5", root=str(external_dir), resource_path="frames.h5",
                                           resource_kwargs={"frame_per_point": 1})
        run.head.append(("resource", resource.resource_doc))
    run.head.append(("descriptor", desc.descriptor_doc))
    for i in range(n_frames):
        docs = []
        t = t0 + 0.1 * (i + 1)
        value = pattern(i, n_points).tolist()
        filled = {}
        if resource is not None:
            datum = resource.compose_datum(datum_kwargs={"point_number": i + point_offset})
            docs.append(("datum", datum))
            value = datum["datum_id"]
            filled = {"detector_pattern": False}
        data = {"detector_pattern": value, "pressure": pressure_of(i)}
        if energy_in_events:
            data["energy"] = ENERGY
        if temperature:
            data["temperature"] = 300.0 + 10 * i
        ts = {k: t for k in data}
        if paged:
            page = desc.compose_event_page(data={k: [v] for k, v in data.items()},
                                           timestamps={k: [v] for k, v in ts.items()}, seq_num=[i + 1], time=[t],
                                           filled={k: [v] for k, v in filled.items()})
            docs.append(("event_page", page))
        else:
            docs.append(("event", desc.compose_event(data=data, timestamps=ts, seq_num=i + 1, time=t, filled=filled)))
        run.frames.append(docs)
    run.stop = ("stop", bundle.compose_stop(time=t0 + 0.1 * (n_frames + 1)))
    return run


def derived_run(raw: Run, n_frames: int, *, paged: bool = False) -> Run:
    """The prediction run of `raw`: one event per raw frame, with the start metadata NexusWriter needs."""
    raw_start = raw.start[1]
    bundle = event_model.compose_run(metadata={
        "original_run_uid": raw_start["uid"], "phase_names": PHASES, "top_k": TOP_K, "models": MODELS,
        "xrd_nexus_ml_version": "0.1.0"}, time=raw_start["time"] + 0.01)
    run = Run(("start", bundle.start_doc))
    desc = bundle.compose_descriptor(name="primary", data_keys=prediction_keys())
    run.head.append(("descriptor", desc.descriptor_doc))
    raw_uids = {}
    for frame in raw.frames:
        for name, doc in frame:
            if name == "event":
                raw_uids[doc["seq_num"]] = doc["uid"]
            elif name == "event_page":
                raw_uids[doc["seq_num"][0]] = doc["uid"][0]
    for i in range(n_frames):
        data = prediction_data(i, raw_uids.get(i + 1, ""))
        t = raw_start["time"] + 0.1 * (i + 1) + 0.05
        if paged:
            page = desc.compose_event_page(data={k: [v] for k, v in data.items()},
                                           timestamps={k: [t] for k in data}, seq_num=[i + 1], time=[t])
            run.frames.append([("event_page", page)])
        else:
            run.frames.append([("event", desc.compose_event(data=data, timestamps={k: t for k in data},
                                                            seq_num=i + 1, time=t))])
    run.stop = ("stop", bundle.compose_stop())
    return run


def interleaved(raw: Run, derived: Run | None, lag: int = 1) -> list:
    """Raw frames with each prediction `lag` frames later; the derived stop after the raw stop."""
    docs = [raw.start, *raw.head]
    if derived is not None:
        docs += [derived.start, *derived.head]
    n = len(raw.frames)
    for i in range(n + lag):
        if i < n:
            docs += raw.frames[i]
        if derived is not None and 0 <= i - lag < len(derived.frames):
            docs += derived.frames[i - lag]
        if i == n - 1:
            docs.append(raw.stop)
    if derived is not None:
        docs.append(derived.stop)
    return docs

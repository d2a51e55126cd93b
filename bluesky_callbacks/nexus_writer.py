"""`NexusWriter`: a Bluesky callback that writes one NXxrd_ml NeXus file per run, live.

It receives the documents of the raw run (frames, pressure, energy) and of the derived run
that carries the predictions (start document with ``original_run_uid``, ``phase_names``,
``top_k`` and ``models``; events of ``FramePrediction.to_event_data()``), in any order the two
streams interleave, and moves them into `nexus_definitions.writer.NexusRunFile`; it computes
no science. Frames are appended and flushed one event (page) at a time, so an HDF5 SWMR reader
sees them while the scan runs and a crash loses nothing already written.

File life cycle: created at the raw start document (so a name clash fails before the first
frame), frames defined at the first frame, closed when the raw run and every derived run linked
to it have stopped. A derived run that starts after the file was closed reopens it and adds its
prediction process. `close()` closes whatever is still open (for example at the end of a
session, or when a derived run never stops).

Frames whose data key is external (``external: "FILESTORE:"``, Resource spec ``AD_HDF5``) are
linked, not copied: an HDF5 external link to the detector's dataset, or a virtual dataset when
the frames are not its rows 0, 1, 2, ... in order.

Metadata a user typed never stops a scan: the start document is made storable first (NUL and
control characters removed, lone surrogates and invalid UTF-8 replaced, strings cut to 64 KiB;
`nexus_definitions.sanitise`), and what was changed is logged as a warning and recorded in the
file (NXnote ``/entry/metadata_sanitised``).

Errors are never swallowed, and never stop the scan: every failure is logged, kept in `errors`
(as a `NexusWriteError` that names the file and the document key) and the document's run goes
on; a run whose file could not be created is reported once and otherwise ignored. Check
`errors` after the scan. With ``raise_errors=True`` the error is also raised to the caller
(the RunEngine then aborts the scan; for offline conversion, where failing fast is wanted).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from event_model import DocumentRouter

from nexus_definitions import layout as L
from nexus_definitions.sanitise import sanitise_metadata
from nexus_definitions.writer import (
    ExternalFrames,
    NexusFileExistsError,
    NexusRunFile,
    NexusWriteError,
    RunMetadata,
)
from xrd_nexus_ml.pattern import HC_KEV_ANGSTROM

log = logging.getLogger(__name__)

__all__ = ["NexusFileExistsError", "NexusWriteError", "NexusWriter", "safe_file_name"]

_UNIT_SCALES = {
    "pressure": ({"gpa": 1.0, "mpa": 1e-3, "kpa": 1e-6, "pa": 1e-9, "bar": 1e-4, "kbar": 0.1}, "GPa"),
    "energy": ({"kev": 1.0, "ev": 1e-3}, "keV"),
    "wavelength": ({"angstrom": 1.0, "a": 1.0, "å": 1.0, "nm": 10.0}, "angstrom"),
    "temperature": ({"k": 1.0}, "K"),
    "two_theta": ({"deg": 1.0, "degree": 1.0, "degrees": 1.0}, "deg"),
}


def _scale(kind: str, units: str | None, where: str) -> float:
    """Factor from `units` to the file's unit for `kind`; no units means the file's unit."""
    table, target = _UNIT_SCALES[kind]
    if not units:
        return 1.0
    key = str(units).strip().lower().replace("angstroms", "angstrom")
    if key not in table:
        raise NexusWriteError(f"{where}: units {units!r} are not a known {kind} unit ({sorted(table)}); "
                              f"the file stores {target}")
    return table[key]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(value, max_length: int = 80) -> str:
    """A metadata value as a file-name component: letters, digits, '.', '_', '-' only, no leading dots."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii")
    text = _UNSAFE.sub("_", text).strip("._-")
    text = re.sub(r"\.{2,}", ".", text)[:max_length].strip("._-")
    return text or "unnamed"


class _Fields(dict):
    def __missing__(self, key):
        return "unknown"


@dataclass
class _Stream:
    """A raw descriptor that carries frames."""

    device: str
    two_theta: np.ndarray
    external: bool
    dtype: str
    intensity_units: str | None
    energy_key: str | None
    wavelength_key: str | None
    fixed_energy: float | None  # keV, from the configuration when no event key carries it
    scales: dict[str, float]


@dataclass
class _Raw:
    uid: str
    metadata: RunMetadata
    path: Path
    file: NexusRunFile | None = None
    streams: dict[str, _Stream] = field(default_factory=dict)
    resources: dict[str, dict] = field(default_factory=dict)
    datums: dict[str, dict] = field(default_factory=dict)
    derived: set[str] = field(default_factory=set)  # derived run uids still open
    stop: dict | None = None


@dataclass
class _Derived:
    uid: str
    raw_uid: str
    start: dict
    group: str | None = None
    file: NexusRunFile | None = None  # own handle when the raw file was already closed
    descriptors: set[str] = field(default_factory=set)


class NexusWriter(DocumentRouter):
    """Write each raw run, with the predictions of its derived runs, into ``out_dir/<file_name_template>``.

    `file_name_template` is a `str.format` template over the start document's fields plus
    ``uid8`` (first 8 characters of the uid), ``sample`` (its name), ``date`` and ``time`` of the
    start; each value is sanitised (`safe_file_name`), so metadata cannot climb out of
    `out_dir` or name a hidden file. An existing file is an error unless `overwrite`.

    A failure while handling a document is logged and appended to `errors`; it is raised as
    well only with `raise_errors` (a RunEngine aborts the scan on a raising callback).
    """

    def __init__(self, out_dir, *, file_name_template: str = "{scan_id}_{sample}_{uid8}.nxs",
                 overwrite: bool = False, pattern_key: str = "detector_pattern", pressure_key: str = "pressure",
                 energy_key: str | None = "energy", wavelength_key: str | None = None,
                 temperature_key: str | None = None, monitor_key: str | None = None,
                 stream_name: str | None = "primary", intensity_units: str | None = "counts",
                 license: str | None = None, instrument: str | None = None, facility: str | None = None,
                 source_type: str | None = None, swmr: bool = True, raise_errors: bool = False):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.file_name_template = file_name_template
        self.overwrite = overwrite
        self.pattern_key, self.pressure_key = pattern_key, pressure_key
        self.energy_key, self.wavelength_key = energy_key, wavelength_key
        self.temperature_key, self.monitor_key = temperature_key, monitor_key
        self.stream_name = stream_name
        self.intensity_units = intensity_units
        self.defaults = {"license": license, "instrument": instrument, "facility": facility,
                         "source_type": source_type}
        self.swmr = swmr
        self.raise_errors = raise_errors
        self.errors: list[Exception] = []
        self.paths: dict[str, Path] = {}  # raw run uid -> file written
        self._raw: dict[str, _Raw] = {}
        self._derived: dict[str, _Derived] = {}
        self._descriptor_run: dict[str, str] = {}  # descriptor uid -> run uid (raw or derived)
        self._waiting: dict[str, list[tuple[str, dict]]] = defaultdict(list)  # raw uid -> derived docs
        self._failed: set[str] = set()  # runs whose file could not be created (already reported)
        self._lock = threading.RLock()

    # ---- dispatch with locking and error reporting ----
    def __call__(self, name: str, doc: dict, validate: bool = False):
        """Handle one document; a failure is logged and kept in `errors`, raised only with `raise_errors`."""
        with self._lock:
            try:
                return super().__call__(name, doc, validate)
            except Exception as exc:
                if not isinstance(exc, NexusWriteError):
                    uid = doc.get("uid", "") if isinstance(doc, dict) else ""
                    exc = NexusWriteError(f"NexusWriter: {name} document {uid}: "
                                          f"{type(exc).__name__}: {exc}").with_traceback(exc.__traceback__)
                self.errors.append(exc)
                log.error("%s", exc, exc_info=exc)
                if self.raise_errors:
                    raise exc
                return None

    # ---- file names ----
    def file_path(self, start: dict) -> Path:
        """Where the run of this start document is written (sanitised, inside out_dir)."""
        start, _ = sanitise_metadata(start)  # the values the file holds: "Fe\x00O" is FeO, not Fe_O
        fields = _Fields()
        for key, value in start.items():
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                fields[key] = value if isinstance(value, (int, float)) else safe_file_name(value)
        uid = str(start.get("uid", ""))
        fields["uid"] = safe_file_name(uid)
        fields["uid8"] = safe_file_name(uid[:8])
        sample = start.get("sample")
        fields["sample"] = safe_file_name(sample.get("name", "unknown") if isinstance(sample, dict) else
                                          sample if sample else "unknown")
        moment = datetime.fromtimestamp(float(start.get("time", 0)))
        fields["date"], fields["time"] = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")
        try:
            name = self.file_name_template.format_map(fields)
        except (ValueError, KeyError, IndexError) as exc:
            raise NexusWriteError(f"file_name_template {self.file_name_template!r} cannot be filled from run "
                                  f"{uid}: {exc}") from None
        relative = Path(name)
        if relative.is_absolute() or any(part in ("..", "") for part in relative.parts) or not relative.parts:
            raise NexusWriteError(f"file_name_template {self.file_name_template!r} gives {name!r}, which is not "
                                  f"a relative path inside {self.out_dir}")
        root = self.out_dir.resolve()
        path = (root / relative).resolve()
        if root not in path.parents:
            raise NexusWriteError(f"file name {name!r} for run {uid} resolves outside {root}")
        return path

    # ---- documents ----
    def start(self, doc):
        if "original_run_uid" in doc:
            return self._derived_start(doc)
        uid = doc["uid"]
        if uid in self._raw or uid in self.paths:
            return  # the same start document twice
        try:
            metadata = RunMetadata.from_start(doc, **self.defaults)
            path = self.file_path(doc)
            raw = _Raw(uid, metadata, path)
            raw.file = NexusRunFile.create(path, metadata, overwrite=self.overwrite, swmr=self.swmr)
        except Exception:
            self._failed.add(uid)  # raised once here; the rest of the run is ignored, not half-written
            raise
        self._raw[uid] = raw
        self.paths[uid] = path
        log.info("run %s: writing %s", uid, path)
        for name, waiting in self._waiting.pop(uid, []):
            self(name, waiting)

    def descriptor(self, doc):
        run = doc["run_start"]
        self._descriptor_run[doc["uid"]] = run
        if run in self._failed:  # its error was raised once already
            return
        if run in self._derived:
            if doc.get("name", "primary") == "primary":
                self._derived[run].descriptors.add(doc["uid"])
            return
        raw = self._raw.get(run)
        if raw is None:
            derived_raw = self._derived_raw_waiting(run)
            if derived_raw is not None:
                self._waiting[derived_raw].append(("descriptor", doc))
                return
            self._failed.add(run)
            raise NexusWriteError(f"descriptor {doc['uid']}: its run {run} never started here (was the writer "
                                  "subscribed after the start document?); the run is not written")
        keys = doc.get("data_keys", {})
        if self.pattern_key not in keys or (self.stream_name and doc.get("name") != self.stream_name):
            return
        raw.streams[doc["uid"]] = self._stream(raw, doc)

    def _stream(self, raw: _Raw, doc: dict) -> _Stream:
        keys = doc["data_keys"]
        where = f"{raw.path}: descriptor {doc.get('name')!r}"
        device = next((obj for obj, names in doc.get("object_keys", {}).items() if self.pattern_key in names), None)
        if device is None:
            device = keys[self.pattern_key].get("object_name")
        config = ((doc.get("configuration") or {}).get(device) or {}).get("data", {}) if device else {}
        tth_key = f"{device}_two_theta"
        if tth_key not in config:
            raise NexusWriteError(f"{where}: the 2θ axis of {self.pattern_key!r} is expected in "
                                  f"configuration[{device!r}]['data'][{tth_key!r}] (degrees); it is not there")
        scales = {"two_theta": _scale("two_theta", ((doc.get("configuration") or {}).get(device, {})
                                                    .get("data_keys", {}).get(tth_key, {}).get("units")), where)}
        two_theta = np.asarray(config[tth_key], dtype=float).ravel() * scales["two_theta"]
        shape = keys[self.pattern_key].get("shape") or []
        if shape and int(np.prod(shape)) != two_theta.size:
            raise NexusWriteError(f"{where}: {self.pattern_key!r} has shape {shape} but the 2θ axis has "
                                  f"{two_theta.size} points")
        if self.pressure_key not in keys:
            raise NexusWriteError(f"{where}: no data key {self.pressure_key!r} (the sample pressure, GPa) next to "
                                  f"{self.pattern_key!r}; data keys are {sorted(keys)} (set pressure_key=)")
        scales["pressure"] = _scale("pressure", keys[self.pressure_key].get("units"),
                                    f"{where} key {self.pressure_key!r}")
        energy_key = self.energy_key if self.energy_key in keys else None
        wavelength_key = self.wavelength_key if self.wavelength_key and self.wavelength_key in keys else None
        fixed = None
        if energy_key:
            scales["energy"] = _scale("energy", keys[energy_key].get("units"), f"{where} key {energy_key!r}")
        elif wavelength_key:
            scales["wavelength"] = _scale("wavelength", keys[wavelength_key].get("units"),
                                          f"{where} key {wavelength_key!r}")
        else:
            start = raw.metadata.start_document
            for key, kind in ((f"{device}_energy", "energy"), (f"{device}_wavelength", "wavelength")):
                if key in config:
                    value = float(np.ravel(config[key])[0])
                    fixed = value if kind == "energy" else HC_KEV_ANGSTROM / value
                    break
            else:
                if isinstance(start.get("energy"), (int, float)):
                    fixed = float(start["energy"])
                elif isinstance(start.get("wavelength"), (int, float)):
                    fixed = HC_KEV_ANGSTROM / float(start["wavelength"])
            if fixed is None or not math.isfinite(fixed) or fixed <= 0:
                raise NexusWriteError(
                    f"{where}: no beam energy: expected data key {self.energy_key!r} (keV), or "
                    f"configuration[{device!r}]['data'] {device}_energy / {device}_wavelength, or 'energy' (keV) / "
                    "'wavelength' (angstrom) in the start document")
        for kind, key in (("temperature", self.temperature_key), ("monitor", self.monitor_key)):
            if key and key not in keys:
                raise NexusWriteError(f"{where}: no data key {key!r} ({kind}_key); data keys are {sorted(keys)}")
        if self.temperature_key:
            scales["temperature"] = _scale("temperature", keys[self.temperature_key].get("units"),
                                           f"{where} key {self.temperature_key!r}")
        info = keys[self.pattern_key]
        return _Stream(device=device or "", two_theta=two_theta, external=bool(info.get("external")),
                       dtype=info.get("dtype_numpy") or "<f8",
                       intensity_units=info.get("units") or self.intensity_units, energy_key=energy_key,
                       wavelength_key=wavelength_key, fixed_energy=fixed, scales=scales)

    def resource(self, doc):
        raw = self._raw.get(doc.get("run_start", ""))
        if raw is not None:
            raw.resources[doc["uid"]] = doc
        else:  # resources without run_start (old documents): keep them with every open run
            for raw in self._raw.values():
                raw.resources[doc["uid"]] = doc

    def datum_page(self, doc):
        raw = next((r for r in self._raw.values() if doc["resource"] in r.resources), None)
        if raw is None:
            raise NexusWriteError(f"datum_page for resource {doc['resource']}: no Resource document seen for it")
        kwargs = doc["datum_kwargs"]
        for i, datum_id in enumerate(doc["datum_id"]):
            raw.datums[datum_id] = {"resource": doc["resource"], "datum_kwargs": {k: v[i] for k, v in kwargs.items()}}

    def event_page(self, doc):
        run = self._descriptor_run.get(doc["descriptor"])
        if run is None:
            self._descriptor_run[doc["descriptor"]] = "unknown"
            self._failed.add("unknown")
            raise NexusWriteError(f"event_page {doc.get('uid')}: descriptor {doc['descriptor']} was never seen; "
                                  "its events are not written")
        if run in self._failed:
            return
        if run in self._derived:
            return self._derived_events(self._derived[run], doc)
        raw = self._raw.get(run)
        if raw is None:
            derived_raw = self._derived_raw_waiting(run)
            if derived_raw is not None:
                self._waiting[derived_raw].append(("event_page", doc))
            return
        stream = raw.streams.get(doc["descriptor"])
        if stream is None or raw.file is None:
            return
        self._frames(raw, stream, doc)

    def _frames(self, raw: _Raw, stream: _Stream, doc: dict) -> None:
        data = doc["data"]
        k = len(doc["seq_num"])
        where = f"{raw.path}"
        points = None
        patterns = None
        values = data[self.pattern_key]
        if stream.external and k and isinstance(values[0], str):
            points = [self._external_point(raw, datum_id) for datum_id in values]
        else:
            patterns = np.asarray([np.ravel(np.asarray(v)) for v in values])
        if not raw.file.frames_defined:
            external = None
            if points is not None:
                resource = raw.resources[raw.datums[values[0]]["resource"]]
                external = ExternalFrames(points[0][0], resource.get("resource_kwargs", {}).get(
                    "dataset", "/entry/data/data"))
            raw.file.define_frames(stream.two_theta, dtype=np.dtype(stream.dtype).str if patterns is None else
                                   patterns.dtype, intensity_units=stream.intensity_units,
                                   temperature=bool(self.temperature_key), monitor=bool(self.monitor_key),
                                   external=external, detector_name=stream.device)
        energy = wavelength = None
        if stream.energy_key:
            energy = np.asarray(data[stream.energy_key], dtype=float) * stream.scales["energy"]
        elif stream.wavelength_key:
            wavelength = np.asarray(data[stream.wavelength_key], dtype=float) * stream.scales["wavelength"]
        else:
            energy = np.full(k, stream.fixed_energy)
        temperature = monitor = None
        if self.temperature_key:
            temperature = np.asarray(data[self.temperature_key], dtype=float) * stream.scales["temperature"]
        if self.monitor_key:
            monitor = np.asarray(data[self.monitor_key], dtype=float)
        try:
            raw.file.append_frames(
                seq_num=doc["seq_num"], time=doc["time"],
                pressure=np.asarray(data[self.pressure_key], dtype=float) * stream.scales["pressure"],
                energy=energy, wavelength=wavelength, patterns=patterns, external_points=points,
                temperature=temperature, monitor=monitor)
        except L.NexusLayoutError as exc:
            raise NexusWriteError(f"{where}: event_page seq_num {doc['seq_num']}: {exc}") from exc

    def _external_point(self, raw: _Raw, datum_id: str) -> tuple[Path, int]:
        datum = raw.datums.get(datum_id)
        if datum is None:
            raise NexusWriteError(f"{raw.path}: frame datum {datum_id!r} of {self.pattern_key!r} has no Datum document")
        resource = raw.resources.get(datum["resource"])
        if resource is None:
            raise NexusWriteError(f"{raw.path}: Resource {datum['resource']} of datum {datum_id!r} was never seen")
        if resource.get("spec") not in ("AD_HDF5", "AD_HDF5_SWMR"):
            raise NexusWriteError(f"{raw.path}: Resource {resource['uid']} has spec {resource.get('spec')!r}; "
                                  "only AD_HDF5 frames can be linked")
        frames_per_point = int(resource.get("resource_kwargs", {}).get("frame_per_point", 1))
        if frames_per_point != 1:
            raise NexusWriteError(f"{raw.path}: Resource {resource['uid']} has frame_per_point={frames_per_point}; "
                                  "one pattern per event (frame_per_point=1) is expected")
        if "point_number" not in datum["datum_kwargs"]:
            raise NexusWriteError(f"{raw.path}: datum {datum_id!r} has no datum_kwargs['point_number']")
        file = Path(resource.get("root", "")) / resource["resource_path"]
        return file.resolve(), int(datum["datum_kwargs"]["point_number"])

    def stop(self, doc):
        run = doc["run_start"]
        if run in self._failed:
            self._raw.pop(run, None)
            return
        if run in self._derived:
            derived = self._derived.pop(run)
            raw = self._raw.get(derived.raw_uid)
            if derived.file is not None:
                derived.file.close()
            if raw is not None:
                raw.derived.discard(run)
                self._maybe_close(raw)
            return
        raw = self._raw.get(run)
        if raw is None:
            derived_raw = self._derived_raw_waiting(run)
            if derived_raw is not None:
                self._waiting[derived_raw].append(("stop", doc))
            return
        raw.stop = doc
        self._maybe_close(raw)

    def _maybe_close(self, raw: _Raw) -> None:
        if raw.stop is None or raw.derived:
            return
        self._raw.pop(raw.uid, None)
        if raw.file is not None and not raw.file.closed:
            raw.file.close(end_time=raw.stop.get("time"), exit_status=raw.stop.get("exit_status"),
                           stop_document=raw.stop)
            log.info("run %s: closed %s", raw.uid, raw.path)

    # ---- derived runs ----
    def _derived_raw_waiting(self, run_uid: str) -> str | None:
        for raw_uid, docs in self._waiting.items():
            if any(name == "start" and d["uid"] == run_uid for name, d in docs):
                return raw_uid
        return None

    def _derived_start(self, doc):
        raw_uid = doc["original_run_uid"]
        missing = [k for k in ("phase_names", "top_k", "models") if k not in doc]
        if missing:
            self._failed.add(doc["uid"])
            raise NexusWriteError(f"derived run {doc['uid']} (of {raw_uid}): start document lacks {missing}")
        raw = self._raw.get(raw_uid)
        derived = _Derived(doc["uid"], raw_uid, doc)
        kwargs = dict(date=L.iso_time(doc.get("time")), version=doc.get("xrd_nexus_ml_version"),
                      original_run_uid=raw_uid, derived_run_uid=doc["uid"])
        if raw_uid in self._failed or (raw is not None and raw.file is None):
            self._failed.add(doc["uid"])  # its raw run's file could not be created; that error was raised already
            return
        if raw is None and raw_uid not in self.paths:
            self._waiting[raw_uid].append(("start", doc))
            return
        try:
            if raw is not None:
                derived.group = raw.file.add_predictions(doc["phase_names"], doc["top_k"], doc["models"], **kwargs)
                raw.derived.add(doc["uid"])
            else:  # the raw run's file is closed already: reopen it for these predictions
                derived.file = NexusRunFile.open(self.paths[raw_uid])
                derived.group = derived.file.add_predictions(doc["phase_names"], doc["top_k"], doc["models"],
                                                             **kwargs)
        except Exception:
            self._failed.add(doc["uid"])  # raised once; the rest of this derived run is ignored
            if derived.file is not None:
                derived.file.close()
            raise
        self._derived[doc["uid"]] = derived

    def _derived_events(self, derived: _Derived, doc: dict) -> None:
        if doc["descriptor"] not in derived.descriptors:
            return
        data = doc["data"]
        n = len(doc["seq_num"])
        records = [{key: values[i] for key, values in data.items()} for i in range(n)]
        target = derived.file or self._raw[derived.raw_uid].file
        target.append_predictions(derived.group, records)

    # ---- end of session ----
    def close(self) -> list[Path]:
        """Close every file still open (runs without stop, derived runs that never stopped)."""
        with self._lock:
            closed = []
            for derived in list(self._derived.values()):
                if derived.file is not None and not derived.file.closed:
                    closed.append(derived.file.close())
            self._derived.clear()
            for raw in list(self._raw.values()):
                if raw.file is not None and not raw.file.closed:
                    stop = raw.stop or {}
                    closed.append(raw.file.close(end_time=stop.get("time"), exit_status=stop.get("exit_status"),
                                                 stop_document=raw.stop))
            self._raw.clear()
            if self._waiting:
                log.warning("NexusWriter.close: documents of derived runs whose raw run never started here "
                            "were not written (raw uids %s)", sorted(self._waiting))
            return closed

"""Write NXxrd_ml files: one NeXus/HDF5 file per run, appended frame by frame, safe to read live.

`NexusRunFile` is the low-level writer and knows nothing about Bluesky documents (the
callback `bluesky_callbacks.NexusWriter` moves documents into it):

1. `NexusRunFile.create(path, RunMetadata)` writes the run's metadata (title, times, sample,
   user, instrument, source, licence).
2. `define_frames(two_theta, ...)` creates the resizable per-frame datasets (pattern, or an
   external link to the detector's own file; pressure, energy, wavelength, temperature).
3. `add_predictions(phase_names, top_k, models)` adds an NXprocess group for one
   classification (any time; several are allowed).
4. `append_frames(...)` appends frames; the first call switches the file to HDF5 SWMR mode so
   that readers (``h5py.File(path, "r", swmr=True)``) see every frame flushed so far.
   `append_predictions(group, records)` fills prediction rows by ``seq_num`` (predictions for
   frames not written yet wait until their frame arrives); rows never predicted keep fill values.
5. `close(end_time=...)` writes the end of the run.

Every append is flushed, so a process killed mid-run leaves a file that holds every frame
written before: it opens at once with ``swmr=True``, and `clear_consistency_flags` (the
``h5clear -s`` of the HDF5 tools) marks it closed for readers that do not use SWMR.

SWMR forbids creating objects while it is on, so everything a live run needs exists before
the first frame: the per-frame datasets, a reserved ``predictions`` process that a
classification starting later fills in (resizes and writes only), and the end-of-run fields
that `close` overwrites. Two rare structural changes remain, a second prediction process
during the run and a virtual dataset for external frames that are not in order; for them the
file is closed and reopened without SWMR for a moment, which is refused (with an error, the
frames going on) while a reader holds the file open, since HDF5 would then not let the writer
reopen it.

`append_predictions(path, predictions, ...)` (module level) adds a new prediction process to
an existing file, for example one written by another beamline, without touching its data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from nexus_definitions import layout as L
from nexus_definitions.reader import frame_count
from nexus_definitions.sanitise import Change, sanitise_metadata
from xrd_nexus_ml.errors import XrdNexusMlError
from xrd_nexus_ml.pattern import HC_KEV_ANGSTROM

if TYPE_CHECKING:  # importing xrd_nexus_ml.inference loads the models (torch); the writer needs only records
    from xrd_nexus_ml.records import FramePrediction, ModelProvenance

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


class NexusWriteError(XrdNexusMlError, RuntimeError):
    """Writing a NeXus file failed; the message names the file and what was expected."""


class NexusFileExistsError(NexusWriteError, FileExistsError):
    """The output file exists and overwriting was not asked for."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("xrd-nexus-ml")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


def _nexus_version() -> str:
    try:
        return (L.definitions_dir() / "NXDL_VERSION").read_text().strip()
    except OSError:
        return "unknown"


# -- run metadata ---------------------------------------------------------------------------

SOURCE_TYPES = ("Synchrotron X-ray Source", "Rotating Anode X-ray", "Fixed Tube X-ray", "Free-Electron Laser",
                "Metal Jet X-ray")
_USER_FIELDS = {"name": "name", "affiliation": "affiliation", "email": "email", "orcid": "ORCID",
                "ORCID": "ORCID", "facility_user_id": "facility_user_id", "role": "role"}


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _users(value) -> tuple[dict, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    users = []
    for item in items:
        if isinstance(item, dict):
            user = {_USER_FIELDS[k]: str(v) for k, v in item.items() if k in _USER_FIELDS and _text(v)}
            if "name" in user:
                users.append(user)
        elif _text(item):
            users.append({"name": str(item).strip()})
    return tuple(users)


_TEXT_FIELDS = ("uid", "title", "sample_name", "chemical_formula", "sample_description", "proposal_id", "instrument",
                "facility", "source_name", "source_type", "license", "plan_name")


@dataclass
class RunMetadata:
    """What the file says about the run as a whole (from the Bluesky start document).

    Every text is made storable on construction (`nexus_definitions.sanitise`: no NUL or other
    control characters, no lone surrogates, at most 64 KiB); `sanitised` lists what was changed
    (key paths of the start document for `from_start`, field names otherwise), and the file
    records it in the NXnote ``metadata_sanitised``.
    """

    uid: str
    start_time: float  # seconds since the epoch
    title: str
    sample_name: str
    chemical_formula: str | None = None
    sample_description: str | None = None
    users: tuple[dict, ...] = ()
    proposal_id: str | None = None
    instrument: str | None = None
    facility: str | None = None
    source_name: str | None = None
    source_type: str = "Synchrotron X-ray Source"
    license: str | None = None
    exposure_time: float | None = None
    rotation_angle: float | None = None
    scan_id: int | None = None
    plan_name: str | None = None
    start_document: dict = field(default_factory=dict)
    sanitised: tuple[Change, ...] = ()

    def __post_init__(self):
        fields = {name: getattr(self, name) for name in _TEXT_FIELDS}
        fields["users"] = [dict(u) for u in self.users]
        clean, changes = sanitise_metadata(fields)
        document, document_changes = sanitise_metadata(dict(self.start_document))
        for name in _TEXT_FIELDS:
            setattr(self, name, clean[name])
        self.users = tuple(clean["users"])
        self.start_document = document
        self.sanitised = (*self.sanitised, *changes,
                          *(Change(f"start_document.{c.path}", c.action) for c in document_changes))

    @classmethod
    def from_start(cls, start: dict, *, license: str | None = None, instrument: str | None = None,
                   facility: str | None = None, source_type: str | None = None) -> RunMetadata:
        """Read the metadata conventions of a Bluesky start document; keyword arguments are defaults.

        The document is made storable first (`nexus_definitions.sanitise.sanitise_metadata`);
        its changes become `sanitised`.
        """
        start, sanitised = sanitise_metadata(dict(start))
        uid = _text(start.get("uid"))
        if uid is None or "time" not in start:
            raise NexusWriteError("the start document needs 'uid' and 'time'")
        sample = start.get("sample")
        sample_name = formula = description = None
        if isinstance(sample, dict):
            sample_name = _text(sample.get("name"))
            formula = _text(sample.get("chemical_formula") or sample.get("formula"))
            description = _text(sample.get("description"))
        else:
            sample_name = _text(sample)
        if sample_name is None:
            log.warning("run %s: the start document names no sample; writing sample name 'unknown'", uid)
            sample_name = "unknown"
        source = start.get("source")
        source_name, kind = (None, None)
        if isinstance(source, dict):
            source_name, kind = _text(source.get("name")), _text(source.get("type"))
        else:
            source_name = _text(source)
        facility_name = _text(start.get("facility")) or _text(facility)
        kind = kind or _text(source_type) or "Synchrotron X-ray Source"
        if kind not in SOURCE_TYPES:
            raise NexusWriteError(f"run {uid}: source type {kind!r} is not one of {list(SOURCE_TYPES)}")
        scan_id = start.get("scan_id")
        plan_name = _text(start.get("plan_name"))
        title = _text(start.get("title")) or " ".join(
            p for p in (plan_name, f"scan {scan_id}" if scan_id is not None else None) if p) or uid

        def number(*keys):
            for key in keys:
                value = start.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return float(value)
            return None

        return cls(
            uid=uid,
            start_time=float(start["time"]),
            title=title,
            sample_name=sample_name,
            chemical_formula=formula,
            sample_description=description,
            users=_users(start.get("user") or start.get("users") or start.get("owner")),
            proposal_id=_text(start.get("proposal_id") or start.get("proposal")),
            instrument=_text(start.get("instrument") or start.get("beamline_id")) or _text(instrument),
            facility=facility_name,
            source_name=source_name or facility_name,
            source_type=kind,
            license=_text(start.get("license") or start.get("licence")) or _text(license),
            exposure_time=number("exposure_time", "count_time"),
            rotation_angle=number("rotation_angle"),
            scan_id=scan_id if isinstance(scan_id, int) else None,
            plan_name=plan_name,
            start_document=start,
            sanitised=tuple(sanitised),
        )


@dataclass(frozen=True)
class ExternalFrames:
    """Frames that already live in another HDF5 file (e.g. an area-detector file, spec AD_HDF5)."""

    file: Path  # absolute path of the external file
    dataset: str = "/entry/data/data"  # frames along the first axis


# -- HDF5 helpers ---------------------------------------------------------------------------


def _h5py():
    import h5py

    return h5py


def _json(document: dict) -> str:
    return json.dumps(document, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o),
                      sort_keys=True)


def _group(parent, name: str, nx_class: str):
    g = parent.require_group(name)
    g.attrs["NX_class"] = nx_class
    return g


def _scalar(group, name: str, value, units: str | None = None, **attrs):
    if isinstance(value, str):
        ds = group.create_dataset(name, data=value, dtype=_h5py().string_dtype())
    else:
        ds = group.create_dataset(name, data=value)
    if units is not None:
        ds.attrs["units"] = units
    for key, val in attrs.items():
        ds.attrs[key] = val
    return ds


def _growing(group, name: str, dtype, width: int | None = None, units: str | None = None, rows_per_chunk=256,
             fillvalue=None):
    """A dataset of 0 rows that grows along its first axis (chunks of at most ~32 KiB, at least one row).

    New rows hold `fillvalue` without being written, which keeps appending one frame cheap.
    """
    itemsize = np.dtype(dtype).itemsize
    rows = max(1, min(rows_per_chunk, 32768 // max(1, itemsize * max(1, width or 1))))
    if width is None:
        ds = group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(rows,), dtype=dtype,
                                  fillvalue=fillvalue)
    else:
        chunks = (rows, width) if width > 0 else True
        ds = group.create_dataset(name, shape=(0, width), maxshape=(None, width), chunks=chunks, dtype=dtype,
                                  fillvalue=fillvalue)
    if units is not None:
        ds.attrs["units"] = units
    return ds


def _write_rows(ds, start: int, values) -> None:
    """ds[start:start + len(values)] = values through h5py's low-level API (a frame is many small writes).

    `values` has the dataset's row shape already (callers check shapes with named errors first).
    """
    h5py = _h5py()
    arr = np.ascontiguousarray(values, dtype=ds.dtype)
    if arr.size == 0:
        return
    fspace = ds.id.get_space()
    fspace.select_hyperslab((start,) + (0,) * (arr.ndim - 1), arr.shape)
    ds.id.write(h5py.h5s.create_simple(arr.shape), fspace, arr)


def _grow(ds, rows: int, row_shape: tuple = ()) -> None:
    """Resize the first axis of ds to `rows` (`row_shape`: the other axes, unchanged)."""
    ds.id.set_extent((rows,) + tuple(row_shape))


def _hard_link(entry, link_path: str, target_path: str, modify: bool = True) -> None:
    """A NeXus link: an HDF5 hard link whose object carries `target` (the original's absolute path).

    With `modify=False` (someone else's data) the original is left exactly as it is: a hard
    link if it already carries the right `target`, else an HDF5 soft link, which NeXus readers
    also follow.
    """
    h5py = _h5py()
    target = entry[target_path]
    current = target.attrs.get("target")
    if current is None and modify:
        target.attrs["target"] = target.name
        current = target.name
    if current is not None and L.decode(current) == target.name:
        entry[link_path] = target
    else:
        entry[link_path] = h5py.SoftLink(target.name)


def _runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Sorted unique rows as (start row, stop row, offset into rows) contiguous runs."""
    runs, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i] != rows[i - 1] + 1:
            runs.append((int(rows[start]), int(rows[i - 1]) + 1, start))
            start = i
    return runs


# -- prediction processes -------------------------------------------------------------------


class _Predictions:
    """One NXprocess group of per-frame predictions inside an open file.

    The group can be created before its classification is known (`create` without widths:
    phase and top-k dimensions of size 0 that can grow) and filled in later by `configure`
    with resizes and writes only, which SWMR mode allows; so the live classification of a
    run never needs the file reopened, even if its derived run starts after the first frame.
    """

    def __init__(self, group, lengths: dict[str, int], configured: bool):
        self.lengths = lengths
        self.configured = configured
        self.pending: dict[int, dict] = {}
        self.bind(group)

    def bind(self, group) -> None:
        """(Re)attach to the HDF5 group, e.g. after the file was reopened; handles are cached."""
        self.group = group
        self.name = group.name.rsplit("/", 1)[-1]
        self._fields: dict = {}

    @property
    def results(self):
        return self.group[L.PROCESS_RESULTS]

    def field(self, name: str):
        if name not in self._fields:
            self._fields[name] = self.group[L.PROCESS_RESULTS][name]
        return self._fields[name]

    @property
    def n_phases(self) -> int:
        return int(self.field("phase_probabilities").shape[1])

    @property
    def top_k(self) -> int:
        return int(self.field("top_k_index").shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.field("sequence_number").shape[0])

    @classmethod
    def create(cls, entry, name: str, n_rows: int, *, original_run_uid: str, sequence_index: int, date: str,
               widths: tuple[int, int] | None = None, modify: bool = True) -> _Predictions:
        """The group with every field, 0 prediction rows filled; `widths` (phases, top-k) if known."""
        h5py = _h5py()
        fixed = lambda n: h5py.string_dtype("utf-8", n)  # noqa: E731
        lengths = dict(L.STRING_LENGTHS)
        process = _group(entry, name, "NXprocess")
        _scalar(process, "program", L.PROGRAM)
        process.create_dataset("version", data=L.encode_fixed([""], 64, "version")[0], dtype=fixed(64))
        _scalar(process, "date", date)
        _scalar(process, "sequence_index", np.int64(sequence_index))
        params = _group(process, L.PROCESS_PARAMETERS, "NXparameters")
        _growing(params, "phase_names", fixed(lengths["phase"]), rows_per_chunk=64)
        _scalar(params, "top_k", np.int64(0))
        _scalar(params, "original_run_uid", original_run_uid or "")
        params.create_dataset("derived_run_uid", data=L.encode_fixed([""], 64, "uid")[0], dtype=fixed(64))
        models = _group(process, L.PROCESS_MODELS, "NXparameters")
        for key in L.MODEL_FIELDS:
            _growing(models, key, fixed(lengths["model_field"]), rows_per_chunk=16)
        _growing(models, "card_sha256", fixed(64), rows_per_chunk=16)
        results = _group(process, L.PROCESS_RESULTS, "NXdata")
        for spec in L.PREDICTION_FIELDS:
            if spec.kind == "str":
                dtype = fixed(lengths[spec.name])
                fill = L.encode_fixed([spec.fill], lengths[spec.name], spec.name)[0]
            else:
                dtype = {"float": "f8", "int": "i8", "bool": "?"}[spec.kind]
                fill = spec.fill
            if spec.per is None:
                _growing(results, spec.name, dtype, None, spec.units, fillvalue=fill)
            elif widths is not None:
                _growing(results, spec.name, dtype, widths[0] if spec.per == "phases" else widths[1], spec.units,
                         fillvalue=fill)
            else:
                chunk = (16, 256) if spec.per == "phases" else (64, 16)  # widths unknown until configure()
                ds = results.create_dataset(spec.name, shape=(0, 0), maxshape=(None, None), chunks=chunk, dtype=dtype,
                                            fillvalue=fill)
                if spec.units is not None:
                    ds.attrs["units"] = spec.units
        results.attrs["signal"] = "phase_probability"
        results.attrs["auxiliary_signals"] = ["transition_probability", "library_similarity"]
        results.attrs["axes"] = ["sequence_number"]
        self = cls(process, lengths, configured=False)
        self.link_pressure(entry, n_rows, modify=modify)
        self.extend(n_rows)
        return self

    def link_pressure(self, entry, n_rows: int, modify: bool = True) -> None:
        """Use the sample pressure as the plot's axis when the entry has one per frame."""
        h5py = _h5py()
        results = self.results
        pressure = entry.get(L.PRESSURE)
        if "pressure" in results or not isinstance(pressure, h5py.Dataset) or pressure.shape[0] != n_rows:
            return
        _hard_link(entry, f"{self.name}/{L.PROCESS_RESULTS}/pressure", L.PRESSURE, modify=modify)
        results.attrs["axes"] = ["pressure"]
        results.attrs["pressure_indices"] = 0
        results.attrs["sequence_number_indices"] = 0

    def configure(self, phase_names: Sequence[str], top_k: int, models: Sequence, *, date: str, version: str,
                  derived_run_uid: str | None) -> None:
        """Fill in what the classification is (resizes and writes only: allowed in SWMR mode)."""
        if self.configured:
            raise NexusWriteError(f"{self.group.name}: this prediction process is configured already")
        where = self.group.name
        phase_names = [str(p) for p in phase_names]
        top_k = int(top_k)
        if top_k < 0:
            raise L.NexusLayoutError(f"{where}: top_k must not be negative, got {top_k}")
        models = [_model(m) for m in models]
        ids = ";".join(m.model_id for m in models)
        if len(ids.encode()) > self.lengths["model_ids"]:
            raise L.NexusLayoutError(f"{where}: the models' ids joined by ';' take {len(ids.encode())} bytes, more "
                                     f"than the {self.lengths['model_ids']} of results/model_ids")
        params, group_models, results = (self.group[L.PROCESS_PARAMETERS], self.group[L.PROCESS_MODELS],
                                         self.results)

        def fill(ds, values, length, name):
            ds.resize((len(values),))
            if values:
                ds[:] = L.encode_fixed(values, length, f"{where}/{name}")

        fill(params["phase_names"], phase_names, self.lengths["phase"], "parameters/phase_names")
        params["top_k"][()] = top_k
        params["derived_run_uid"][()] = L.encode_fixed([derived_run_uid or ""], 64, f"{where}/derived_run_uid")[0]
        for key in L.MODEL_FIELDS:
            fill(group_models[key], [getattr(m, key) for m in models], self.lengths["model_field"], f"models/{key}")
        fill(group_models["card_sha256"], [_card_sha256(m.card) for m in models], 64, "models/card_sha256")
        self.group["version"][()] = L.encode_fixed([version], 64, f"{where}/version")[0]
        self.group["date"][()] = date
        for spec in L.PREDICTION_FIELDS:
            if spec.per is None:
                continue
            width = len(phase_names) if spec.per == "phases" else top_k
            ds = results[spec.name]
            if ds.shape[1] != width:
                if ds.maxshape[1] is not None and ds.maxshape[1] != width:
                    raise NexusWriteError(f"{where}/results/{spec.name}: has {ds.shape[1]} columns, "
                                          f"the run has {width}")
                ds.resize(width, axis=1)  # the new cells hold the fill value
        self.configured = True

    @classmethod
    def attach(cls, process) -> _Predictions:
        results = process[L.PROCESS_RESULTS]
        lengths = dict(L.STRING_LENGTHS)
        for name in ("raw_uid", "phase", "flag", "error", "model_ids"):
            lengths[name] = results[name].dtype.itemsize
        return cls(process, lengths, configured=True)

    def extend(self, n_rows: int) -> None:
        """Grow every field to n_rows; new rows hold the 'no prediction' values (HDF5 fill values)."""
        if n_rows <= self.n_rows:
            return
        widths = {"phases": self.n_phases, "top_k": self.top_k, None: None}
        for spec in L.PREDICTION_FIELDS:
            width = widths[spec.per]
            _grow(self.field(spec.name), n_rows, () if width is None else (width,))

    def write(self, rows: np.ndarray, records: list[dict], where: str) -> None:
        """Write records (FramePrediction.to_event_data() dicts) into rows (sorted, unique)."""
        if not len(rows):
            return
        if not self.configured:
            raise NexusWriteError(f"{where}: predictions arrived before the classification was described "
                                  "(add_predictions with phase names, top_k and models)")
        n_phases, top_k = self.n_phases, self.top_k
        for spec in L.PREDICTION_FIELDS:
            values = [r.get(spec.key, spec.fill) for r in records]
            if spec.kind == "str":
                array = L.encode_fixed(values, self.lengths[spec.name], f"{where}/{spec.name}",
                                       cut=spec.name == "error")
            else:
                dtype = {"float": np.float64, "int": np.int64, "bool": np.bool_}[spec.kind]
                if spec.per is None:
                    array = np.asarray(values, dtype=dtype)
                else:
                    width = n_phases if spec.per == "phases" else top_k
                    array = np.full((len(values), width), spec.fill, dtype=dtype)
                    for i, value in enumerate(values):
                        flat = np.ravel(np.asarray(value, dtype=dtype))
                        if flat.size != width:
                            raise L.NexusLayoutError(
                                f"{where}/{spec.name}: seq_num {records[i].get('raw_seq_num')} has {flat.size} values, "
                                f"expected {width} ({'phase_names' if spec.per == 'phases' else 'top_k'} of this run)")
                        array[i] = flat
                    if width == 0:
                        continue
            ds = self.field(spec.name)
            for start, stop, offset in _runs(rows):
                _write_rows(ds, start, array[offset:offset + stop - start])


def _model(model) -> SimpleNamespace:
    """A ModelProvenance (or its dict) with every provenance field present."""
    get = model.get if isinstance(model, dict) else (lambda key, default=None: getattr(model, key, default))
    if not get("model_id"):
        raise L.NexusLayoutError(f"model provenance {model!r} has no model_id")
    return SimpleNamespace(**{k: str(get(k, "") or "") for k in L.MODEL_FIELDS})


def _card_sha256(path: str) -> str:
    """SHA-256 of the model card file, or "" when it cannot be read (then the path is all there is)."""
    import hashlib

    try:
        p = Path(path)
        if path and p.is_file():
            return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        pass
    return ""


def _records(predictions: Iterable) -> list[dict]:
    out = []
    for p in predictions:
        if hasattr(p, "to_event_data"):  # a FramePrediction
            out.append(p.to_event_data())
        elif isinstance(p, dict):
            out.append(p)
        else:
            raise L.NexusLayoutError(f"a prediction must be a FramePrediction or its event data, "
                                     f"got {type(p).__name__}")
        if "raw_seq_num" not in out[-1]:
            raise L.NexusLayoutError("a prediction record has no 'raw_seq_num' to match it to a frame")
    return out


# -- the run file ---------------------------------------------------------------------------


class NexusRunFile:
    """One NXxrd_ml file being written (see the module docstring for the order of calls)."""

    def __init__(self, path: Path, h5file, entry: str, *, swmr: bool, created: bool):
        self.path = path
        self._f = h5file
        self.entry_name = entry
        self._swmr_wanted = swmr
        self._swmr_active = False
        self._created = created  # False: an existing file opened to add predictions
        self._frames_defined = False
        self._n_frames = 0
        self._rows: dict[int, int] = {}
        self._predictions: dict[str, _Predictions] = {}
        self._external: ExternalFrames | None = None
        self._external_in_order = True
        self._monitor = False
        self._temperature = False
        self._two_theta: np.ndarray | None = None
        self._datasets: dict = {}  # path -> h5py.Dataset, cleared when the file is reopened
        self._end_written = -math.inf
        self.closed = False

    # ---- construction ----
    @classmethod
    def create(cls, path: PathLike, metadata: RunMetadata, *, overwrite: bool = False, swmr: bool = True,
               entry: str = L.ENTRY) -> NexusRunFile:
        """Create the file and write the run's metadata; an existing file is an error unless `overwrite`."""
        h5py = _h5py()
        path = Path(path)
        if path.exists() and not overwrite:
            raise NexusFileExistsError(f"{path}: the file exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = h5py.File(path, "w" if overwrite else "w-", libver="latest")
        except FileExistsError:
            raise NexusFileExistsError(f"{path}: the file exists; pass overwrite=True to replace it") from None
        except OSError as exc:
            raise NexusWriteError(f"{path}: cannot create the NeXus file ({exc})") from exc
        self = cls(path, f, entry, swmr=swmr, created=True)
        try:
            self._write_metadata(metadata)
            f.flush()
        except Exception:
            f.close()
            with contextlib.suppress(OSError):  # a file with half its metadata is no run file: leave none
                path.unlink()
            raise
        return self

    @classmethod
    def open(cls, path: PathLike, *, entry: str | None = None) -> NexusRunFile:
        """Open an existing NeXus file (ours or another writer's) to add prediction processes."""
        h5py = _h5py()
        path = Path(path)
        if not path.is_file():
            raise NexusWriteError(f"{path}: no such file")
        try:
            f = h5py.File(path, "r+")
        except OSError as exc:
            raise NexusWriteError(f"{path}: cannot open the NeXus file for writing ({exc}); if a writer died "
                                  "while writing it, run `xrd-nexus-ml nexus recover` first") from exc
        try:
            name = _find_entry(f, entry, path)
            self = cls(path, f, name, swmr=False, created=False)
            self._attach_existing()
        except Exception:
            f.close()
            raise
        return self

    def _attach_existing(self) -> None:
        entry = self.entry
        if L.SEQUENCE_NUMBER in entry:
            seq = np.asarray(entry[L.SEQUENCE_NUMBER][()], dtype=np.int64)
            self._rows = {int(s): i for i, s in enumerate(seq)}
            self._n_frames = len(seq)
        else:  # another writer's file: frames are the rows of the default plot's signal

            self._n_frames = frame_count(self.path, self._f, self.entry_name)
            self._rows = {i + 1: i for i in range(self._n_frames)}
        for name, obj in entry.items():
            if L.decode(obj.attrs.get("NX_class", b"")) == "NXprocess" and L.PROCESS_RESULTS in obj:
                self._predictions[name] = _Predictions.attach(obj)

    @property
    def entry(self):
        return self._f[self.entry_name]

    @property
    def n_frames(self) -> int:
        return self._n_frames

    @property
    def frames_defined(self) -> bool:
        return self._frames_defined

    @property
    def prediction_groups(self) -> list[str]:
        return list(self._predictions)

    def __enter__(self) -> NexusRunFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep what was written; do not hide the original error behind a second one
            try:
                self.close()
            except Exception:
                log.exception("%s: closing after an error failed", self.path)

    def _where(self, relative: str = "") -> str:
        return f"{self.path}:/{self.entry_name}/{relative}".rstrip("/")

    def _check_open(self) -> None:
        if self.closed:
            raise NexusWriteError(f"{self.path}: the file is closed")

    # ---- metadata ----
    def _write_metadata(self, m: RunMetadata) -> None:
        h5py = _h5py()
        f = self._f
        f.attrs["NX_class"] = "NXroot"
        f.attrs["default"] = self.entry_name
        f.attrs["file_name"] = str(self.path)
        f.attrs["file_time"] = L.iso_time()
        f.attrs["creator"] = f"{L.PROGRAM} {_version()}"
        f.attrs["NeXus_version"] = _nexus_version()
        f.attrs["HDF5_Version"] = h5py.version.hdf5_version
        f.attrs["h5py_version"] = h5py.version.version
        entry = _group(f, self.entry_name, "NXentry")
        entry.attrs["default"] = L.DATA
        _scalar(entry, "definition", L.DEFINITION_NAME, version=L.DEFINITION_VERSION)
        _scalar(entry, "title", m.title)
        _scalar(entry, "start_time", L.iso_time(m.start_time))
        # end_time: the last frame's time while the run is written, the stop document's at the end.
        # Variable-length text (NX_DATE_TIME checkers want text, not fixed-length bytes): a live
        # SWMR reader sees its updates only after reopening the file.
        _scalar(entry, "end_time", L.iso_time(m.start_time))
        _scalar(entry, "duration", np.int64(0), units="s")
        _scalar(entry, "entry_identifier", m.uid)
        if m.proposal_id:
            _scalar(entry, "experiment_identifier", m.proposal_id)
        if m.facility:
            _scalar(entry, "experiment_facility", m.facility)
        _scalar(entry, "program_name", L.PROGRAM, version=_version())
        for i, user in enumerate(m.users):
            g = _group(entry, L.USER if i == 0 else f"{L.USER}_{i + 1}", "NXuser")
            for key, value in user.items():
                _scalar(g, key, value)
        if m.license:
            note = _group(entry, L.LICENSE, "NXnote")
            _scalar(note, "description", m.license)
            _scalar(note, "type", "text/plain")
        instrument = _group(entry, L.INSTRUMENT, "NXinstrument")
        if m.instrument:
            _scalar(instrument, "name", m.instrument)
        source = _group(entry, L.SOURCE, "NXsource")
        _scalar(source, "name", m.source_name or "unknown")
        _scalar(source, "type", m.source_type)
        _scalar(source, "probe", "x-ray")
        sample = _group(entry, L.SAMPLE, "NXsample")
        _scalar(sample, "name", m.sample_name)
        if m.chemical_formula:
            _scalar(sample, "chemical_formula", m.chemical_formula)
        if m.sample_description:
            _scalar(sample, "description", m.sample_description)
        _scalar(sample, "rotation_angle", float("nan") if m.rotation_angle is None else m.rotation_angle,
                units=L.FIELD_UNITS[f"{L.SAMPLE}/rotation_angle"])
        bluesky = _group(entry, L.BLUESKY, "NXcollection")
        if m.start_document:
            _scalar(bluesky, "start", _json(m.start_document))
        bluesky.create_dataset("stop", data=b"", dtype=h5py.string_dtype("utf-8", L.STOP_LENGTH))
        bluesky.create_dataset("exit_status", data=b"", dtype=h5py.string_dtype("utf-8", L.EXIT_STATUS_LENGTH))
        if m.sanitised:
            self._write_sanitised(entry, m)

    def _write_sanitised(self, entry, m: RunMetadata) -> None:
        """The NXnote saying how the metadata was changed to be storable (and the same as a log warning)."""
        changes = list(m.sanitised)
        listed = changes[: L.SANITISED_LISTED]
        more = f" (and {len(changes) - len(listed)} more, not listed)" if len(changes) > len(listed) else ""
        note = _group(entry, L.METADATA_SANITISED, "NXnote")
        _scalar(note, "author", L.PROGRAM)
        _scalar(note, "date", L.iso_time())
        _scalar(note, "type", "application/json")
        _scalar(note, "description", f"{len(changes)} metadata value(s) of the run were changed so that HDF5 can "
                                     "store them (NUL and control characters removed, lone surrogates and invalid "
                                     "UTF-8 replaced by U+FFFD, strings cut to 64 KiB). data: a JSON list of "
                                     "{path, action}; path is the key path in the start document (or the field of the "
                                     "run's metadata)." + more
                                     + "\n" + "\n".join(str(c) for c in listed))
        # NXnote/data is NX_BINARY: the JSON (ASCII: json escapes the rest) as one bytes value
        note.create_dataset("data", data=np.bytes_(json.dumps([c.to_dict() for c in listed]).encode("ascii")))
        shown = "; ".join(str(c) for c in changes[:20]) + (f"; ... ({len(changes)} in all)" if len(changes) > 20
                                                           else "")
        log.warning("%s: run %s: metadata changed so that HDF5 can store it (recorded in /%s/%s): %s", self.path,
                    m.uid, self.entry_name, L.METADATA_SANITISED, shown)

    # ---- frames ----
    def define_frames(self, two_theta, *, dtype="f8", intensity_units: str | None = None,
                      temperature: bool = False, monitor: bool = False, external: ExternalFrames | None = None,
                      detector_name: str | None = None, predictions: bool = True) -> None:
        """Create the per-frame datasets for patterns on the 2θ grid `two_theta` (degrees).

        With `predictions` (default), a ``predictions`` process is reserved if none exists yet,
        so that a classification starting after the first frame can fill it without reopening
        the file (which SWMR readers holding it open would block).
        """
        self._check_open()
        if self._frames_defined:
            raise NexusWriteError(f"{self._where(L.DETECTOR)}: frames are already defined")
        tth = np.asarray(two_theta, dtype=np.float64)
        if tth.ndim != 1 or tth.size < 2 or not np.all(np.isfinite(tth)):
            raise L.NexusLayoutError(f"{self._where(L.TWO_THETA)}: 2θ must be a finite 1-D array of at least 2 "
                                     f"points, got shape {tth.shape}")
        h5py = _h5py()
        with self._structure():
            entry = self.entry
            n = tth.size
            for path, nx_class in L.GROUP_CLASSES.items():
                if path in (L.FRAME_SOURCES, L.LICENSE, L.BLUESKY, L.METADATA_SANITISED):
                    continue
                _group(entry, path, nx_class)
            detector = entry[L.DETECTOR]
            if detector_name:
                _scalar(detector, "local_name", detector_name)
            _scalar(detector, "polar_angle", tth, units=L.UNITS["two_theta"])
            if external is None:
                ds = _growing(detector, "data", np.dtype(dtype), n, rows_per_chunk=1)
                if intensity_units is not None and intensity_units.strip().lower() in L.ARBITRARY_UNITS:
                    ds.attrs["long_name"] = f"intensity ({intensity_units})"
                    intensity_units = ""  # relative intensity: dimensionless, a units string NeXus accepts
                if intensity_units is not None:
                    ds.attrs["units"] = intensity_units
            else:
                rel = self._relative(external.file)
                detector["data"] = h5py.ExternalLink(rel, external.dataset)
                sources = _group(entry, L.FRAME_SOURCES, "NXcollection")
                _growing(sources, "file_name", h5py.string_dtype("utf-8", L.FILE_NAME_LENGTH))
                _scalar(sources, "dataset", external.dataset)
                _growing(sources, "point_number", "i8")
            _growing(detector, "sequence_number", "i8")
            _growing(detector, "start_time", "f8", units=L.UNITS["time"]).attrs["start"] = L.decode(
                entry["start_time"][()])
            sample = entry[L.SAMPLE]
            _growing(sample, "pressure", "f8", units=L.UNITS["pressure"])
            if temperature:
                _growing(sample, "temperature", "f8", units=L.UNITS["temperature"])
            mono = entry[L.MONOCHROMATOR]
            _growing(mono, "energy", "f8", units=L.UNITS["energy"])
            _growing(mono, "wavelength", "f8", units=L.UNITS["wavelength"])
            monitor_group = entry[L.MONITOR]
            _scalar(monitor_group, "mode", "monitor" if monitor else "timer")
            preset = self._metadata_number("exposure_time", "count_time")
            _scalar(monitor_group, "preset", math.nan if preset is None else preset, units=L.UNITS["time"])
            _scalar(monitor_group, "integral", math.nan, units="counts")
            if monitor:
                _growing(monitor_group, "data", "f8", units="counts")
            for link, target in L.LINKS.items():
                if link == f"{L.DATA}/data" and external is not None:
                    entry[link] = h5py.ExternalLink(self._relative(external.file), external.dataset)
                else:
                    _hard_link(entry, link, target)
            data = entry[L.DATA]
            _growing(data, "q", "f8", n, units=L.UNITS["q"], rows_per_chunk=1)
            data.attrs["signal"] = "data"
            data.attrs["axes"] = ["pressure", "polar_angle"]
            data.attrs["pressure_indices"] = 0
            data.attrs["sequence_number_indices"] = 0
            data.attrs["polar_angle_indices"] = 1
            data.attrs["q_indices"] = [0, 1]
            for process in self._predictions.values():  # processes added before the frames: link pressure now
                process.link_pressure(entry, 0)
            if predictions and not self._predictions:
                self._create_predictions(L.PREDICTIONS, widths=None)
        self._frames_defined = True
        self._external = external
        self._temperature = temperature
        self._monitor = monitor
        self._two_theta = tth
        self._f.flush()

    def _metadata_number(self, *keys) -> float | None:
        start = self.entry.get(f"{L.BLUESKY}/start")
        if start is None:
            return None
        document = json.loads(L.decode(start[()]))
        for key in keys:
            value = document.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        return None

    def _relative(self, target: Path) -> str:
        target = Path(target).resolve()
        try:
            return os.path.relpath(target, self.path.resolve().parent)
        except ValueError:  # another drive on Windows
            return str(target)

    def append_frames(self, *, seq_num: Sequence[int], pressure, energy=None, wavelength=None, patterns=None,
                      external_points: Sequence[tuple[PathLike, int]] | None = None, temperature=None,
                      monitor=None, time=None, flush: bool = True) -> None:
        """Append k frames. `energy` (keV) or `wavelength` (Å) or both; the missing one is computed."""
        self._check_open()
        if not self._frames_defined:
            raise NexusWriteError(f"{self._where(L.DETECTOR)}: define_frames() must come before append_frames()")
        seq = np.atleast_1d(np.asarray(seq_num, dtype=np.int64))
        k = seq.size
        where = self._where()

        def column(values, name, required=True):
            if values is None:
                if required:
                    raise L.NexusLayoutError(f"{where}: {name} is needed for every frame")
                return np.full(k, math.nan)
            arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
            if arr.shape != (k,):
                raise L.NexusLayoutError(f"{where}: {name} has shape {arr.shape}, expected ({k},) for {k} frame(s)")
            return arr

        duplicates = [int(s) for s in seq if int(s) in self._rows]
        if duplicates or len(set(seq.tolist())) != k:
            raise L.NexusLayoutError(f"{where}: frames with seq_num {duplicates or seq.tolist()} are already written")
        pressure = column(pressure, "pressure")
        if energy is None and wavelength is None:
            raise L.NexusLayoutError(f"{where}: each frame needs its beam energy (keV) or wavelength (angstrom)")
        energy = column(energy, "energy", required=False)
        wavelength = column(wavelength, "wavelength", required=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            energy = np.where(np.isfinite(energy), energy, HC_KEV_ANGSTROM / wavelength)
            wavelength = np.where(np.isfinite(wavelength), wavelength, HC_KEV_ANGSTROM / energy)
        times = column(time, "time", required=False)
        n_det = self._two_theta.size
        if self._external is None:
            if patterns is None:
                raise L.NexusLayoutError(f"{where}: patterns are needed (the frames are stored in this file)")
            pats = np.asarray(patterns)
            if pats.ndim == 1:
                pats = pats[None, :]
            if pats.shape != (k, n_det):
                raise L.NexusLayoutError(f"{self._where(L.PATTERN)}: patterns have shape {pats.shape}, expected "
                                         f"({k}, {n_det}) to match the {n_det}-point 2θ axis")
        else:
            if external_points is None or len(external_points) != k:
                raise L.NexusLayoutError(f"{where}: frames live in {self._external.file}; give external_points "
                                         f"(file, point_number) for each of the {k} frame(s)")
        if self._temperature:
            temps = column(temperature, "temperature", required=False)
        if self._monitor:
            mons = column(monitor, "monitor", required=False)

        old = self._n_frames
        new = old + k

        def put(path, values):
            ds = self._ds(path)
            values = np.asarray(values)
            _grow(ds, new, values.shape[1:])
            _write_rows(ds, old, values)

        put(L.PRESSURE, pressure)
        if self._temperature:
            put(L.TEMPERATURE, temps)
        put(L.ENERGY, energy)
        put(L.WAVELENGTH, wavelength)
        start = self._start_epoch()
        put(L.FRAME_TIME, times - start)
        if self._monitor:
            put(L.MONITOR_DATA, mons)
            self._ds(f"{L.MONITOR}/integral")[()] = float(np.nansum(self._ds(L.MONITOR_DATA)[()]))
        sin_theta = np.sin(np.radians(self._two_theta) / 2.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            put(L.Q, (4.0 * np.pi / wavelength)[:, None] * sin_theta[None, :])
        if self._external is None:
            put(L.PATTERN, pats)
        else:
            files, points = [], []
            for i, (file, point) in enumerate(external_points):
                file = Path(file)
                files.append(self._relative(file))
                points.append(int(point))
                if self._external_in_order and (file.resolve() != self._external.file.resolve() or point != old + i):
                    self._external_in_order = False
                    log.warning("%s: frame seq_num %d is point %d of %s, not row %d of %s; the external link will "
                                "be replaced by a virtual dataset when the run closes", self.path, int(seq[i]),
                                int(point), file, old + i, self._external.file)
            put(f"{L.FRAME_SOURCES}/file_name", L.encode_fixed(files, L.FILE_NAME_LENGTH, "frame_sources/file_name"))
            put(f"{L.FRAME_SOURCES}/point_number", np.asarray(points, dtype=np.int64))
        for process in self._predictions.values():
            process.extend(new)
        put(L.SEQUENCE_NUMBER, seq)  # last: its length is the number of complete frames
        if np.isfinite(times).any():
            last = float(np.nanmax(times))
            if last - self._end_written >= 1.0:  # at most once a second of run time: it is a text rewrite
                self._set_end(last)
                self._end_written = last
        self._n_frames = new
        for i, s in enumerate(seq):
            self._rows[int(s)] = old + i
        for process in self._predictions.values():
            ready = [process.pending.pop(int(s)) for s in seq if int(s) in process.pending]
            if ready:
                self._write_predictions(process, ready)
        if flush:
            self._f.flush()
        if self._swmr_wanted and not self._swmr_active:
            self._start_swmr()

    def _ds(self, path: str):
        if path not in self._datasets:
            self._datasets[path] = self.entry[path]
        return self._datasets[path]

    def _start_epoch(self) -> float:
        if not hasattr(self, "_epoch"):
            from datetime import datetime

            self._epoch = datetime.fromisoformat(L.decode(self.entry["start_time"][()])).timestamp()
        return self._epoch

    def _start_swmr(self) -> None:
        try:
            self._f.swmr_mode = True
        except Exception as exc:
            raise NexusWriteError(f"{self.path}: cannot switch to SWMR mode ({exc})") from exc
        self._swmr_active = True

    @contextlib.contextmanager
    def _structure(self, resume: bool = True):
        """Room to create objects: leaves SWMR mode (close + reopen) and resumes it afterwards."""
        if not self._swmr_active:
            yield
            return
        h5py = _h5py()
        if _locked_by_others(self.path):
            # closing now would lose the file: HDF5 would refuse to reopen it while a reader holds it
            raise NexusWriteError(f"{self.path}: a reader has the file open (SWMR), so no group can be added "
                                  "now; frames are still written. Add predictions after the run with "
                                  "append_predictions / `xrd-nexus-ml classify`")
        self._f.flush()
        self._f.close()
        self._swmr_active = False
        try:
            self._f = h5py.File(self.path, "r+", libver="latest")
        except OSError as exc:
            self.closed = True
            raise NexusWriteError(f"{self.path}: cannot reopen the file to add groups ({exc})") from exc
        self._datasets = {}
        for name, process in self._predictions.items():
            process.bind(self.entry[name])
        yield
        if resume:
            self._f.flush()
            self._start_swmr()

    # ---- predictions ----
    def add_predictions(self, phase_names: Sequence[str], top_k: int, models: Sequence, *,
                        date: str | None = None, version: str | None = None, original_run_uid: str | None = None,
                        derived_run_uid: str | None = None, name: str | None = None) -> str:
        """Describe one classification; returns the absolute HDF5 path of its NXprocess.

        A live file's reserved, not yet described process is used first (no new objects: works
        in SWMR mode); otherwise a new group is made (predictions, predictions_2, ...), which
        in a live file means closing and reopening it for a moment.
        """
        self._check_open()
        free = [p for p in self._predictions.values() if not p.configured and name in (None, p.name)]
        if free:
            process = free[0]
        else:
            with self._structure():
                name = name or L.prediction_group_name(self.entry.keys())
                if name in self.entry:
                    raise NexusWriteError(f"{self._where(name)}: exists already")
                process = self._create_predictions(name, widths=(len(phase_names), int(top_k)),
                                                   original_run_uid=original_run_uid)
        process.configure(phase_names, top_k, models, date=date or L.iso_time(), version=version or _version(),
                          derived_run_uid=derived_run_uid)
        self._f.flush()
        return process.group.name

    def _create_predictions(self, name: str, widths, original_run_uid: str | None = None) -> _Predictions:
        original = original_run_uid
        if original is None and "entry_identifier" in self.entry:
            original = L.decode(self.entry["entry_identifier"][()])
        date = L.decode(self.entry["start_time"][()]) if "start_time" in self.entry else L.iso_time()
        process = _Predictions.create(self.entry, name, self._n_frames, original_run_uid=original or "",
                                      sequence_index=len(self._predictions) + 1, date=date, widths=widths,
                                      modify=self._created)
        self._predictions[name] = process
        return process

    def append_predictions(self, group: str, predictions: Iterable[FramePrediction | dict], *,
                           flush: bool = True) -> int:
        """Write predictions into the rows of their seq_num; returns how many were written now.

        In a file being written, a prediction for a frame not written yet waits for its frame;
        in an existing file opened with `open`, a seq_num with no frame is an error.
        """
        self._check_open()
        name = group.rsplit("/", 1)[-1]
        if name not in self._predictions:
            raise NexusWriteError(f"{self._where(name)}: no such prediction process (have {self.prediction_groups})")
        process = self._predictions[name]
        records = _records(predictions)
        ready = []
        for r in records:
            if int(r["raw_seq_num"]) in self._rows:
                ready.append(r)
            elif self._created:
                process.pending[int(r["raw_seq_num"])] = r
            else:
                known = sorted(self._rows)
                span = f"{known[0]}..{known[-1]}" if known else "(none)"
                raise NexusWriteError(f"{self._where(name)}: a prediction has seq_num {r['raw_seq_num']}, "
                                      f"but the file's frames have seq_num {span}")
        self._write_predictions(process, ready)
        if flush:
            self._f.flush()
        return len(ready)

    def _write_predictions(self, process: _Predictions, records: list[dict]) -> None:
        by_row = {self._rows[int(r["raw_seq_num"])]: r for r in records}  # the last record of a seq_num wins
        rows = np.array(sorted(by_row), dtype=np.int64)
        process.write(rows, [by_row[r] for r in rows], self._where(process.name))

    # ---- end ----
    def flush(self) -> None:
        self._check_open()
        self._f.flush()

    def _set_end(self, end_time: float) -> None:
        self._ds("end_time")[()] = L.iso_time(end_time)
        self._ds("duration")[()] = np.int64(round(end_time - self._start_epoch()))

    def close(self, *, end_time: float | None = None, exit_status: str | None = None,
              stop_document: dict | None = None) -> Path:
        """Finish the file (end time, stop document, external frames) and close it.

        Only writes into existing datasets, so SWMR readers may keep the file open; the one
        exception is external frames out of order, whose virtual dataset needs the file
        reopened.
        """
        if self.closed:
            return self.path
        try:
            waiting = {name: sorted(p.pending) for name, p in self._predictions.items() if p.pending}
            for name, seqs in waiting.items():
                log.warning("%s: %d prediction(s) of %s are for frames never written (seq_num %s); not stored",
                            self.path, len(seqs), name, seqs[:10])
            if self._created:
                if end_time is not None:
                    self._set_end(float(end_time))
                bluesky = self.entry[L.BLUESKY]
                if stop_document is not None:
                    bluesky["stop"][()] = L.encode_fixed([_json(stop_document)], L.STOP_LENGTH, "stop", cut=True)[0]
                if exit_status is not None:
                    bluesky["exit_status"][()] = L.encode_fixed([exit_status], L.EXIT_STATUS_LENGTH, "exit_status",
                                                                cut=True)[0]
                if self._external is not None and not self._external_in_order:
                    with self._structure(resume=False):
                        self._external_to_virtual()
            self._f.flush()
        finally:
            self.closed = True
            self._f.close()
        return self.path

    def _external_to_virtual(self) -> None:
        """Frames that are not rows 0..n-1 of one file: map each row to its source by a virtual dataset."""
        h5py = _h5py()
        entry = self.entry
        files = [L.decode(v) for v in entry[f"{L.FRAME_SOURCES}/file_name"][()]]
        points = entry[f"{L.FRAME_SOURCES}/point_number"][()]
        dataset = self._external.dataset
        base = self.path.resolve().parent
        shapes, dtype = {}, None
        for name in sorted(set(files)):
            try:
                with h5py.File(base / name, "r", swmr=True) as src:
                    shapes[name] = src[dataset].shape
                    dtype = src[dataset].dtype
            except (OSError, KeyError) as exc:
                raise NexusWriteError(f"{self.path}: cannot read {dataset} in external frame file {name} to build "
                                      f"the virtual dataset ({exc})") from exc
        n_det = self._two_theta.size
        layout = h5py.VirtualLayout(shape=(len(files), n_det), dtype=dtype)
        for row, (name, point) in enumerate(zip(files, points)):
            source = h5py.VirtualSource(name, dataset, shape=shapes[name])
            layout[row] = source[int(point)]
        for path in (L.PATTERN, f"{L.DATA}/data"):
            del entry[path]
        entry[L.DETECTOR].create_virtual_dataset("data", layout, fillvalue=math.nan)
        _hard_link(entry, f"{L.DATA}/data", L.PATTERN)


def _locked_by_others(path: Path) -> bool:
    """Does another process hold an HDF5 file lock on `path` (a reader that would block reopening it)?"""
    try:
        import fcntl
    except ImportError:  # no POSIX locks: cannot tell, try
        return False
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return False


def _find_entry(f, entry: str | None, path: Path) -> str:
    if entry is not None:
        name = entry.strip("/")
        if name not in f or L.decode(f[name].attrs.get("NX_class", b"")) not in ("NXentry", "NXsubentry"):
            raise NexusWriteError(f"{path}: /{name} is not an NXentry group")
        return name
    default = L.decode(f.attrs.get("default", b"")) if "default" in f.attrs else ""
    if default and default in f:
        return default
    for name, obj in f.items():
        if L.decode(obj.attrs.get("NX_class", b"")) == "NXentry":
            return name
    raise NexusWriteError(f"{path}: no NXentry group at the top of the file")


def append_predictions(path: PathLike, predictions: Sequence[FramePrediction | dict], phase_names: Sequence[str],
                       top_k: int, models: Sequence[ModelProvenance | dict], entry: str | None = None, *,
                       date: str | None = None, version: str | None = None) -> str:
    """Add a new prediction NXprocess to an existing NeXus file; returns its HDF5 path.

    Nothing that exists is modified: the group is new (``predictions``, else ``predictions_2``,
    ...). Predictions are matched to frames by ``seq_num``: NXdetector/sequence_number in files
    written by this package, else 1, 2, ... for the rows of the default plot (the order in
    which `nexus_definitions.reader.read_patterns` returns them).
    """
    with NexusRunFile.open(path, entry=entry) as run:
        group = run.add_predictions(phase_names, top_k, models, date=date, version=version)
        run.append_predictions(group, predictions)
    return group


# -- crash recovery -------------------------------------------------------------------------

_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle, the checksum HDF5 puts on its metadata (H5_checksum_lookup3)."""
    m = 0xFFFFFFFF
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & m
    k = 0
    while length > 12:
        a = (a + int.from_bytes(data[k:k + 4], "little")) & m
        b = (b + int.from_bytes(data[k + 4:k + 8], "little")) & m
        c = (c + int.from_bytes(data[k + 8:k + 12], "little")) & m
        a = (a - c) & m; a ^= _rot(c, 4); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= _rot(a, 6); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 8); b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= _rot(c, 16); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= _rot(a, 19); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= _rot(b, 4); b = (b + a) & m  # noqa: E702
        length -= 12
        k += 12
    if length == 0:
        return c
    tail = data[k:k + length] + b"\0" * (12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c ^= b; c = (c - _rot(b, 14)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & m  # noqa: E702
    return c


def clear_consistency_flags(path: PathLike) -> bool:
    """Mark a file whose writer died as closed (what ``h5clear -s`` does); True if a flag was set.

    HDF5 sets "open for (SWMR) write" flags in the superblock while a writer has the file open.
    A writer killed mid-run leaves them set, and every reader that does not use SWMR then
    refuses the file. This clears them after checking the superblock's checksum, so a file that
    is not what we expect is never changed.
    """
    path = Path(path)
    with open(path, "r+b") as fh:
        for offset in [0] + [512 * 2 ** i for i in range(20)]:
            fh.seek(offset)
            head = fh.read(12)
            if len(head) < 12:
                break
            if head[:8] != _SIGNATURE:
                continue
            version, size_offsets = head[8], head[9]
            if version < 2:
                return False  # superblock v0/v1 has no consistency flags
            n = 12 + 4 * size_offsets
            fh.seek(offset)
            block = fh.read(n + 4)
            (stored,) = struct.unpack("<I", block[n:n + 4])
            if lookup3(block[:n]) != stored:
                raise NexusWriteError(f"{path}: superblock checksum does not match; not changing the file")
            if block[11] == 0:
                return False
            new = bytearray(block[:n])
            new[11] = 0
            fh.seek(offset)
            fh.write(bytes(new) + struct.pack("<I", lookup3(bytes(new))))
            return True
    raise NexusWriteError(f"{path}: not an HDF5 file (no superblock signature found)")

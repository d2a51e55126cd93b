"""FAIR export: the metadata record a photon and neutron data catalogue ingests for one run.

Conventions followed:

* **SciCat** (scicat-backend-next, the catalogue of ESS, PSI, MAX IV, ALS and others; Datasets
  API v3): a *raw* dataset with its required fields (owner, ownerGroup, contactEmail,
  sourceFolder, creationTime, creationLocation, principalInvestigator, type) and the usual
  optional ones (proposalId, startTime, endTime, license, keywords, techniques, dataFormat,
  size, numberOfFiles). ``pid`` is left null as the placeholder: SciCat assigns
  ``<prefix>/<uuid>`` when it ingests the record. ``ownerGroup`` is the proposal id, as SciCat
  sites map proposals to groups.
* **scientificMetadata** uses SciCat's ``{"value": ..., "unit": ...}`` convention, so the
  quantities are searchable with units: beam energy, wavelength, pressure range (GPa), 2θ
  range, number of frames, and a summary of every prediction process (models, frames
  predicted, out-of-library frames, phase counts, phase segments along the pressure ramp,
  last transition-pressure estimate, median latency).
* **Techniques** are PaNET (Photon and Neutron Experimental Techniques ontology) terms:
  PaNET01101 *x-ray powder diffraction* and PaNET01065 *versus sample pressure-based
  techniques*.
* Times are ISO 8601 with offset (RFC 3339), as SciCat asks.

The record is checked against the JSON schema shipped next to this module
(``scicat_dataset.schema.json``) before it is returned.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from nexus_definitions import layout as L
from nexus_definitions.reader import open_for_reading
from xrd_nexus_ml.errors import XrdNexusMlError

SCHEMA_PATH = Path(__file__).resolve().parent / "scicat_dataset.schema.json"

TECHNIQUES = [
    {"pid": "http://purl.org/pan-science/PaNET/PaNET01101", "name": "x-ray powder diffraction"},
    {"pid": "http://purl.org/pan-science/PaNET/PaNET01065", "name": "versus sample pressure-based techniques"},
]


class ExportError(XrdNexusMlError, ValueError):
    """The file cannot be exported, or the record does not match the schema."""


def _text(group, name: str) -> str | None:
    if group is None or name not in group:
        return None
    value = group[name][()]
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.ravel()[0]
    text = L.decode(value).strip()
    return text or None


def _texts(group, name: str) -> list[str]:
    if group is None or name not in group:
        return []
    return [L.decode(v) for v in np.ravel(group[name][()])]


def _finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def _number(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _range(values, unit: str) -> dict:
    a = _finite(values)
    return {"value": [_number(a.min()), _number(a.max())] if a.size else [None, None], "unit": unit}


def _child_of_class(group, nx_class: str):
    for obj in group.values():
        if L.decode(obj.attrs.get("NX_class", b"")) == nx_class:
            return obj
    return None


def _predictions_summary(entry, process, pressure: np.ndarray) -> dict:
    results = process[L.PROCESS_RESULTS]
    seq = np.asarray(results["sequence_number"][()], dtype=np.int64)
    predicted = seq >= 0
    flags = np.array(_texts(results, "flag"))
    phases = np.array(_texts(results, "phase"))
    classified = predicted & (flags == "")
    out_of_library = np.asarray(results["out_of_library"][()], dtype=bool) & predicted
    counts: dict[str, int] = {}
    for phase in phases[classified]:
        counts[str(phase)] = counts.get(str(phase), 0) + 1
    segments = []
    for i in np.flatnonzero(classified):
        p = float(pressure[i]) if i < len(pressure) else math.nan
        if segments and segments[-1]["phase"] == phases[i]:
            seg = segments[-1]
            seg["frames"] += 1
        else:
            seg = {"phase": str(phases[i]), "frames": 1, "pressure_min": None, "pressure_max": None, "unit": "GPa"}
            segments.append(seg)
        if math.isfinite(p):
            seg["pressure_min"] = p if seg["pressure_min"] is None else min(seg["pressure_min"], p)
            seg["pressure_max"] = p if seg["pressure_max"] is None else max(seg["pressure_max"], p)
    sg = np.asarray(results["space_group_number"][()], dtype=np.int64)
    sg_counts: dict[str, int] = {}
    for value in sg[classified & (sg > 0)]:
        sg_counts[str(int(value))] = sg_counts.get(str(int(value)), 0) + 1
    material_counts: dict[str, int] = {}
    material_out = 0
    if "material" in results:  # written since the identification model runs live (optional in NXxrd_ml)
        for value in np.array(_texts(results, "material"))[classified]:
            if value:
                material_counts[str(value)] = material_counts.get(str(value), 0) + 1
        material_out = int((np.asarray(results["material_out_of_library"][()], dtype=bool) & predicted).sum())
    tp = np.asarray(results["transition_pressure"][()], dtype=float)
    tpu = np.asarray(results["transition_pressure_uncertainty"][()], dtype=float)
    last = [i for i in np.flatnonzero(predicted) if math.isfinite(tp[i])]
    latency = _finite(np.asarray(results["latency"][()])[predicted])
    flagged: dict[str, int] = {}
    for flag in flags[predicted & (flags != "")]:
        flagged[str(flag)] = flagged.get(str(flag), 0) + 1
    models_group = process.get(L.PROCESS_MODELS)
    columns = {key: _texts(models_group, key) for key in (*L.MODEL_FIELDS, "card_sha256")}
    models = [{key: values[i] for key, values in columns.items() if i < len(values)}
              for i in range(len(columns["model_id"]))]
    return {
        "process": process.name,
        "date": _text(process, "date"),
        "phase_names": _texts(process.get(L.PROCESS_PARAMETERS), "phase_names"),
        "models": models,
        "frames_predicted": int(predicted.sum()),
        "frames_out_of_library": int(out_of_library.sum()),
        "frames_flagged": flagged,
        "phase_counts": counts,
        "phase_segments": segments,
        "space_group_counts": sg_counts,
        "material_counts": material_counts,
        "frames_material_out_of_library": material_out,
        "transition_pressure": {"value": _number(tp[last[-1]]) if last else None,
                                "uncertainty": _number(tpu[last[-1]]) if last else None, "unit": "GPa"},
        "latency_median": {"value": _number(np.median(latency)) if latency.size else None, "unit": "ms"},
    }


def _size_and_files(path: Path, entry) -> tuple[int, int]:
    size, files = path.stat().st_size, {path.resolve()}
    sources = entry.get(f"{L.FRAME_SOURCES}/file_name")
    if sources is not None:
        for name in set(_texts(entry[L.FRAME_SOURCES], "file_name")):
            target = (path.resolve().parent / name).resolve()
            if target.is_file() and target not in files:
                files.add(target)
                size += target.stat().st_size
    return size, len(files)


def export_record(path, entry: str | None = None, overrides: dict | None = None) -> dict:
    """The SciCat dataset record of an NXxrd_ml file (checked against the shipped schema).

    `overrides` replaces top-level fields (for example ``contactEmail``, ``ownerGroup``,
    ``accessGroups``, ``sourceFolderHost``) that the file cannot know.
    """
    path = Path(path)
    with open_for_reading(path) as f:
        name = entry.strip("/") if entry else None
        if name is None:
            default = L.decode(f.attrs["default"]) if "default" in f.attrs else None
            name = default if default in f else next(
                (k for k, g in f.items() if L.decode(g.attrs.get("NX_class", b"")) == "NXentry"), None)
        if name is None or name not in f:
            raise ExportError(f"{path}: no NXentry group to export")
        e = f[name]
        definition = _text(e, "definition")
        title = _text(e, "title") or path.stem
        start, end = _text(e, "start_time"), _text(e, "end_time")
        user = _child_of_class(e, "NXuser")
        sample = _child_of_class(e, "NXsample")
        instrument = _child_of_class(e, "NXinstrument")
        source = _child_of_class(instrument, "NXsource") if instrument is not None else None
        license_note = e.get(L.LICENSE)
        proposal = _text(e, "experiment_identifier")
        facility = _text(e, "experiment_facility") or _text(source, "name")
        beamline = _text(instrument, "name")
        n_frames = int(e[L.SEQUENCE_NUMBER].shape[0]) if L.SEQUENCE_NUMBER in e else None
        pressure = np.asarray(e[L.PRESSURE][()], dtype=float) if L.PRESSURE in e else np.array([])
        energy = np.asarray(e[L.ENERGY][()], dtype=float) if L.ENERGY in e else np.array([])
        wavelength = np.asarray(e[L.WAVELENGTH][()], dtype=float) if L.WAVELENGTH in e else np.array([])
        if n_frames is None:
            n_frames = int(pressure.size)
        pressure, energy, wavelength = pressure[:n_frames], energy[:n_frames], wavelength[:n_frames]
        two_theta = e[L.TWO_THETA][()] if L.TWO_THETA in e else np.array([])
        predictions = [_predictions_summary(e, obj, pressure) for key, obj in e.items()
                       if L.decode(obj.attrs.get("NX_class", b"")) == "NXprocess" and L.PROCESS_RESULTS in obj]
        size, n_files = _size_and_files(path, e)
        uid = _text(e, "entry_identifier")
        owner = _text(user, "name") or "unknown"
        energies = _finite(energy)
        sample_name = _text(sample, "name") or "unknown"
        phases = sorted({str(p) for summary in predictions for p in summary["phase_counts"]})
        pr = _range(pressure, "GPa")
        description = (f"{title}: {n_frames} powder patterns of {sample_name}"
                       + (f" from {pr['value'][0]:g} to {pr['value'][1]:g} GPa" if pr["value"][0] is not None else "")
                       + (f" at {np.median(energies):g} keV" if energies.size else "")
                       + (f"; phases predicted: {', '.join(phases)}" if phases else "") + ".")
        record = {
            "pid": None,
            "type": "raw",
            "datasetName": title,
            "description": description,
            "owner": owner,
            "ownerGroup": proposal or "unknown",
            "accessGroups": [g for g in (beamline,) if g],
            "contactEmail": _text(user, "email"),
            "principalInvestigator": owner,
            "creationLocation": " ".join(x for x in (facility, beamline) if x) or "unknown",
            "creationTime": end or start,
            "startTime": start,
            "endTime": end or start,
            "sourceFolder": str(path.resolve().parent),
            "size": int(size),
            "numberOfFiles": int(n_files),
            "dataFormat": f"NeXus/HDF5 ({definition})" if definition else "NeXus/HDF5",
            "proposalId": proposal,
            "sampleId": None,
            "instrumentId": beamline,
            "runNumber": uid,
            "license": _text(license_note, "description"),
            "keywords": ["powder diffraction", "high pressure", "NeXus", "machine learning"] + phases,
            "isPublished": False,
            "techniques": TECHNIQUES,
            "scientificMetadata": {
                "definition": {"value": definition},
                "run_uid": {"value": uid},
                "file": {"value": path.name},
                "sample": {"name": sample_name, "chemical_formula": _text(sample, "chemical_formula")},
                "number_of_frames": {"value": n_frames},
                "beam_energy": {"value": _number(np.median(energies)) if energies.size else None, "unit": "keV",
                                "min": _number(energies.min()) if energies.size else None,
                                "max": _number(energies.max()) if energies.size else None},
                "wavelength": {"value": _number(np.median(_finite(wavelength))) if _finite(wavelength).size else None,
                               "unit": "angstrom"},
                "pressure_range": pr,
                "two_theta_range": _range(two_theta, "deg"),
                "predictions": predictions,
            },
        }
        for key in ("ownerEmail", "orcidOfOwner"):
            value = _text(user, {"ownerEmail": "email", "orcidOfOwner": "ORCID"}[key])
            if value:
                record[key] = value
        if L.TEMPERATURE in e:
            record["scientificMetadata"]["temperature_range"] = _range(e[L.TEMPERATURE][()][:n_frames], "K")
    if record["creationTime"] is None:
        raise ExportError(f"{path}: the entry has no start_time or end_time; a catalogue record needs a creation time")
    record.update(overrides or {})
    problems = validate_record(record)
    if problems:
        raise ExportError(f"{path}: the exported record does not match {SCHEMA_PATH.name}: " + "; ".join(problems))
    return record


def validate_record(record: dict) -> list[str]:
    """Problems of `record` against the shipped JSON schema (empty when it is valid)."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(record)'}: {e.message}"
            for e in sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))]

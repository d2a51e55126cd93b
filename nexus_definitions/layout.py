"""The NXxrd_ml file layout in one place: names, paths, units, dtypes and fill values.

The writer (`writer.py`), the reader (`reader.py`), the checks (`validate.py`) and the portal
export (`export.py`) all take their paths and units from here, and `NXxrd_ml.nxdl.xml`
documents the same tree; a test checks that the two agree. Paths are relative to the NXentry
group (``/entry`` in the files this package writes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from xrd_nexus_ml.errors import XrdNexusMlError

#: Name of the application definition (value of NXentry/definition).
DEFINITION_NAME = "NXxrd_ml"
#: Version of this proposed definition, written as NXentry/definition@version.
DEFINITION_VERSION = "0.1"
#: The NXDL file shipped with the package.
NXDL_PATH = Path(__file__).resolve().parent / f"{DEFINITION_NAME}.nxdl.xml"
#: Program name written as NXentry/program_name and NXprocess/program.
PROGRAM = "xrd-nexus-ml"

ENTRY = "entry"

# -- groups: relative path -> NX_class ------------------------------------------------------
INSTRUMENT = "instrument"
SOURCE = "instrument/source"
MONOCHROMATOR = "instrument/monochromator"
CRYSTAL = "instrument/crystal"
BEAM = "instrument/beam"
DETECTOR = "instrument/detector"
FRAME_SOURCES = "instrument/detector/frame_sources"
SAMPLE = "sample"
MONITOR = "monitor"
DATA = "data"
USER = "user"
LICENSE = "license"
BLUESKY = "bluesky"
#: NXnote recording how run metadata was changed to be storable (`nexus_definitions.sanitise`);
#: only in files whose metadata needed it.
METADATA_SANITISED = "metadata_sanitised"
PREDICTIONS = "predictions"  # first prediction process; later ones are predictions_2, predictions_3, ...

GROUP_CLASSES: dict[str, str] = {
    INSTRUMENT: "NXinstrument",
    SOURCE: "NXsource",
    MONOCHROMATOR: "NXmonochromator",
    CRYSTAL: "NXcrystal",
    BEAM: "NXbeam",
    DETECTOR: "NXdetector",
    FRAME_SOURCES: "NXcollection",
    SAMPLE: "NXsample",
    MONITOR: "NXmonitor",
    DATA: "NXdata",
    LICENSE: "NXnote",
    BLUESKY: "NXcollection",
    METADATA_SANITISED: "NXnote",
}

# -- per-frame fields (each has nP rows) ----------------------------------------------------
PATTERN = f"{DETECTOR}/data"
TWO_THETA = f"{DETECTOR}/polar_angle"
SEQUENCE_NUMBER = f"{DETECTOR}/sequence_number"  # written last for each frame
FRAME_TIME = f"{DETECTOR}/start_time"
PRESSURE = f"{SAMPLE}/pressure"
TEMPERATURE = f"{SAMPLE}/temperature"
ENERGY = f"{MONOCHROMATOR}/energy"
WAVELENGTH = f"{MONOCHROMATOR}/wavelength"
MONITOR_DATA = f"{MONITOR}/data"
Q = f"{DATA}/q"

#: Hard links (NeXus convention: the link carries a ``target`` attribute naming the original).
LINKS: dict[str, str] = {
    f"{CRYSTAL}/wavelength": WAVELENGTH,
    f"{BEAM}/incident_energy": ENERGY,
    f"{BEAM}/incident_wavelength": WAVELENGTH,
    f"{DATA}/data": PATTERN,
    f"{DATA}/polar_angle": TWO_THETA,
    f"{DATA}/pressure": PRESSURE,
    f"{DATA}/sequence_number": SEQUENCE_NUMBER,
}

#: Units written by this package (all UDUNITS spellings NeXus accepts).
UNITS = {
    "pressure": "GPa",
    "temperature": "K",
    "energy": "keV",
    "wavelength": "angstrom",
    "two_theta": "deg",  # NXxrd enumerates "deg" for NXdetector/polar_angle
    "q": "1/angstrom",
    "time": "s",
    "latency": "ms",
    "probability": "",  # NX_DIMENSIONLESS: an empty unit string
}

#: Spellings of "arbitrary units" that are not UDUNITS strings (NeXus units are): intensities in
#: them are written as relative intensities, units "" (dimensionless), the spelling kept in
#: the dataset's ``long_name``.
ARBITRARY_UNITS = {"a.u.", "au", "a.u", "arb. units", "arb.units", "arb. u.", "arbitrary units", "arbitrary"}

FIELD_UNITS: dict[str, str] = {
    TWO_THETA: UNITS["two_theta"],
    FRAME_TIME: UNITS["time"],
    PRESSURE: UNITS["pressure"],
    TEMPERATURE: UNITS["temperature"],
    ENERGY: UNITS["energy"],
    WAVELENGTH: UNITS["wavelength"],
    Q: UNITS["q"],
    f"{SAMPLE}/rotation_angle": UNITS["two_theta"],
    f"{MONITOR}/preset": UNITS["time"],
    f"{MONITOR}/integral": "counts",
}

# -- prediction processes -----------------------------------------------------------------
PROCESS_PARAMETERS = "parameters"
PROCESS_MODELS = "models"
PROCESS_RESULTS = "results"
MODEL_FIELDS = ("model_id", "task", "kind", "version", "card", "device", "settings")

#: Fill of the `flag` field where no prediction record has arrived for a frame.
NO_PREDICTION = "no_prediction"
#: Fixed lengths (bytes, UTF-8) of string fields written while a run is live. Fixed-length
#: strings keep every dataset safe for SWMR readers (variable-length strings written in SWMR
#: mode break them); `error` and the stop document are cut (with "...") to their length, any
#: other value that does not fit is an error.
STRING_LENGTHS = {"raw_uid": 64, "flag": 32, "error": 1024, "phase": 256, "crystal_system": 16, "material": 256,
                  "model_ids": 1024, "model_field": 1024}
STOP_LENGTH = 16384
#: At most this many changes of `METADATA_SANITISED` are listed in the file (the count is always given).
SANITISED_LISTED = 1000
EXIT_STATUS_LENGTH = 32
FILE_NAME_LENGTH = 1024


@dataclass(frozen=True)
class PredictionField:
    """One per-frame field of NXprocess/results: where it comes from and how it is stored."""

    name: str  # dataset name in results/
    key: str  # key of FramePrediction.to_event_data()
    kind: str  # "float", "int", "bool", "str"
    fill: object  # value of rows without a prediction
    per: str | None = None  # second dimension: "phases", "top_k" or None
    units: str | None = None


#: The per-frame prediction fields, in the order they are written. Their units are those of
#: `xrd_nexus_ml.records.event_data_keys` (a test checks they agree); they are
#: spelled out here so that writing and checking files never imports the inference engine.
PREDICTION_FIELDS: tuple[PredictionField, ...] = (
    PredictionField("sequence_number", "raw_seq_num", "int", -1),
    PredictionField("raw_uid", "raw_uid", "str", ""),
    PredictionField("phase", "phase", "str", ""),
    PredictionField("phase_probability", "phase_probability", "float", math.nan, units=""),
    PredictionField("phase_probabilities", "phase_probabilities", "float", math.nan, per="phases", units=""),
    PredictionField("top_k_index", "top_k_index", "int", -1, per="top_k"),
    PredictionField("top_k_probability", "top_k_probability", "float", math.nan, per="top_k", units=""),
    PredictionField("out_of_library", "out_of_library", "bool", False),
    PredictionField("library_similarity", "library_similarity", "float", math.nan, units=""),
    PredictionField("space_group_number", "space_group_number", "int", 0),
    PredictionField("space_group_probability", "space_group_probability", "float", math.nan, units=""),
    PredictionField("crystal_system", "crystal_system", "str", ""),
    PredictionField("material", "material", "str", ""),
    PredictionField("material_probability", "material_probability", "float", math.nan, units=""),
    PredictionField("material_out_of_library", "material_out_of_library", "bool", False),
    PredictionField("transition_probability", "transition_probability", "float", math.nan, units=""),
    PredictionField("transition_pressure", "transition_pressure", "float", math.nan, units="GPa"),
    PredictionField("transition_pressure_uncertainty", "transition_pressure_uncertainty", "float", math.nan,
                    units="GPa"),
    PredictionField("flag", "flag", "str", NO_PREDICTION),
    PredictionField("error", "error", "str", ""),
    PredictionField("latency", "latency", "float", math.nan, units="ms"),
    PredictionField("model_ids", "model_ids", "str", ""),
)


class NexusLayoutError(XrdNexusMlError, ValueError):
    """A value does not fit the NXxrd_ml layout (wrong shape, string too long, unknown name)."""


def prediction_group_name(existing: set[str] | list[str] | tuple[str, ...]) -> str:
    """The first free name among predictions, predictions_2, predictions_3, ..."""
    names = set(existing)
    if PREDICTIONS not in names:
        return PREDICTIONS
    n = 2
    while f"{PREDICTIONS}_{n}" in names:
        n += 1
    return f"{PREDICTIONS}_{n}"


def iso_time(epoch: float | None = None) -> str:
    """Seconds since the epoch (default: now) as ISO 8601 local time with its UTC offset."""
    moment = datetime.now().astimezone() if epoch is None else datetime.fromtimestamp(float(epoch)).astimezone()
    return moment.isoformat(timespec="microseconds")


def definitions_dir() -> Path:
    """The NeXus definitions this package checks against: pynxtools' bundled copy, else nexusformat's."""
    override = os.environ.get("XRD_NEXUS_ML_DEFINITIONS")
    if override:
        return Path(override)
    try:
        import pynxtools

        path = Path(pynxtools.__file__).resolve().parent / "definitions"
        if (path / "base_classes").is_dir():
            return path
    except ImportError:
        pass
    import nexusformat

    return Path(nexusformat.__file__).resolve().parent / "definitions"


def encode_fixed(values, length: int, name: str, cut: bool = False) -> np.ndarray:
    """Strings as a fixed-length UTF-8 byte array; too long is an error unless `cut`."""
    out = []
    for value in values:
        raw = ("" if value is None else str(value)).encode("utf-8")
        if len(raw) > length:
            if not cut:
                raise NexusLayoutError(
                    f"{name}: value {raw[:60].decode('utf-8', 'replace')!r}... is {len(raw)} bytes long, "
                    f"the field holds at most {length}")
            raw = raw[: length - 3]
            while raw and (raw[-1] & 0xC0) == 0x80:  # do not cut inside a UTF-8 character
                raw = raw[:-1]
            if raw and raw[-1] >= 0xC0:
                raw = raw[:-1]
            raw += b"..."
        out.append(raw)
    import h5py

    return np.array(out, dtype=h5py.string_dtype("utf-8", length))


def decode(value) -> str:
    """An HDF5 string value (bytes, str, 0-d array) as str."""
    if isinstance(value, np.ndarray):
        value = value[()] if value.ndim == 0 else value.ravel()[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

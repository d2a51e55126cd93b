"""Prediction records: what the models say about one frame, as plain data.

Callbacks, the derived Bluesky run and the NeXus writer only move these records; they never
compute science. A record flattens to fixed-shape event data (`to_event_data`) described by
`event_data_keys`, so every consumer sees the same names, shapes and units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

#: Values of `FramePrediction.flag`: why a frame carries no (or only a partial) prediction.
FLAGS = {
    "": "classified",
    "nan": "the frame holds NaN or infinite intensities",
    "zero": "the frame holds no signal (all zero or constant)",
    "range": "the frame does not overlap the model's q range",
    "pressure": "the frame has no finite pressure, so it cannot enter the transition estimate",
    "error": "a model raised; the message is in `error`",
    "not_classified": "shed under load: the classifier queue was full",
}


@dataclass(frozen=True)
class ModelProvenance:
    """Which model produced a prediction: enough to find and rerun it."""

    model_id: str  # "<task>/<kind>@<first 12 hex of the weights' sha256>"
    task: str  # "phase_identification", "transition", "space_group", ...
    kind: str  # bundle kind, e.g. "end_to_end"
    version: str  # xrd-nexus-ml version that ran it
    card: str  # path of the model card it was loaded from
    device: str  # "cpu", "cuda:0", ...
    settings: str = ""  # JSON of the options it ran with when not its defaults (they change its answers)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FramePrediction:
    """One frame's predictions, in the order the frame arrived.

    phase_probabilities are over `phase_names` of the run (the derived run's start document
    carries them); top_k_index points into the same list. NaN marks "no value" for floats,
    0 "unknown" for the space-group number, "" "none" for strings. The space-group and
    material fields come from optional models: when one of those raises, its fields stay
    empty, `error` names it, and the phase and transition fields are kept (flag "").
    """

    seq_num: int
    raw_uid: str = ""
    pressure: float = math.nan  # GPa
    energy: float = math.nan  # keV
    phase: str = ""
    phase_probability: float = math.nan
    phase_probabilities: tuple[float, ...] = ()
    top_k_index: tuple[int, ...] = ()
    top_k_probability: tuple[float, ...] = ()
    out_of_library: bool = False
    library_similarity: float = math.nan
    space_group_number: int = 0
    space_group_probability: float = math.nan
    crystal_system: str = ""  # "undetermined" below the model's threshold; "" when no space-group prediction
    material: str = ""  # identified phases' formulas joined by "+" ("" when none was identified)
    material_probability: float = math.nan  # calibrated probability of the first identified phase
    material_out_of_library: bool = False  # no phase of the identification library explains the frame
    transition_probability: float = math.nan  # P(frame lies above the first transition)
    transition_pressure: float = math.nan  # running estimate after this frame's batch, GPa
    transition_pressure_uncertainty: float = math.nan  # 1 sigma, GPa
    flag: str = ""
    error: str = ""
    latency: float = math.nan  # ms from the frame reaching the classifier to its prediction
    model_ids: str = ""  # ";"-joined ModelProvenance.model_id of the models that ran
    extra: dict = field(default_factory=dict)  # per-boundary estimates when there are several

    @classmethod
    def unclassified(cls, seq_num: int, flag: str, error: str = "", n_phases: int = 0, top_k: int = 0,
                     **known) -> FramePrediction:
        """The record of a frame that got no prediction (shed, failed): shapes stay fixed."""
        if flag not in FLAGS or not flag:
            raise ValueError(f"flag must be one of {sorted(k for k in FLAGS if k)}, got {flag!r}")
        return cls(seq_num=seq_num, flag=flag, error=error, phase_probabilities=(math.nan,) * n_phases,
                   top_k_index=(-1,) * top_k, top_k_probability=(math.nan,) * top_k, **known)

    def to_event_data(self) -> dict:
        """The event `data` of the derived run (keys and shapes as `event_data_keys`)."""
        return {
            "raw_seq_num": int(self.seq_num),
            "raw_uid": self.raw_uid,
            "pressure": float(self.pressure),
            "energy": float(self.energy),
            "phase": self.phase,
            "phase_probability": float(self.phase_probability),
            "phase_probabilities": np.asarray(self.phase_probabilities, dtype=np.float64),
            "top_k_index": np.asarray(self.top_k_index, dtype=np.int64),
            "top_k_probability": np.asarray(self.top_k_probability, dtype=np.float64),
            "out_of_library": bool(self.out_of_library),
            "library_similarity": float(self.library_similarity),
            "space_group_number": int(self.space_group_number),
            "space_group_probability": float(self.space_group_probability),
            "crystal_system": self.crystal_system,
            "material": self.material,
            "material_probability": float(self.material_probability),
            "material_out_of_library": bool(self.material_out_of_library),
            "transition_probability": float(self.transition_probability),
            "transition_pressure": float(self.transition_pressure),
            "transition_pressure_uncertainty": float(self.transition_pressure_uncertainty),
            "flag": self.flag,
            "error": self.error,
            "latency": float(self.latency),
            "model_ids": self.model_ids,
        }

    @classmethod
    def from_event_data(cls, data: dict) -> FramePrediction:
        """Inverse of `to_event_data` (for readers of stored derived runs)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k not in ("extra", "seq_num")}
        known["seq_num"] = int(data["raw_seq_num"])
        for name in ("phase_probabilities", "top_k_probability"):
            if name in known:
                known[name] = tuple(float(v) for v in np.ravel(known[name]))
        if "top_k_index" in known:
            known["top_k_index"] = tuple(int(v) for v in np.ravel(known["top_k_index"]))
        return cls(**known)


def _key(dtype: str, dtype_numpy: str | None, shape: list[int], units: str | None, doc: str) -> dict:
    """A data key; strings carry no dtype_numpy (their length varies, event-model wants a size)."""
    key = {"source": "xrd_nexus_ml.inference", "dtype": dtype, "shape": shape, "description": doc}
    if dtype_numpy is not None:
        key["dtype_numpy"] = dtype_numpy
    if units is not None:
        key["units"] = units
    return key


def event_data_keys(n_phases: int, top_k: int) -> dict[str, dict]:
    """Event-model data keys of the derived run: the single description of a prediction's fields."""
    return {
        "raw_seq_num": _key("integer", "<i8", [], None, "seq_num of the raw event this prediction is for"),
        "raw_uid": _key("string", None, [], None, "uid of the raw event"),
        "pressure": _key("number", "<f8", [], "GPa", "sample pressure of the frame"),
        "energy": _key("number", "<f8", [], "keV", "beam energy of the frame"),
        "phase": _key("string", None, [], None, "most probable phase ('' when not classified)"),
        "phase_probability": _key("number", "<f8", [], None, "probability of `phase`"),
        "phase_probabilities": _key("array", "<f8", [n_phases], None, "probability of each of the run's phase_names"),
        "top_k_index": _key("array", "<i8", [top_k], None, "indices into phase_names, most probable first (-1: none)"),
        "top_k_probability": _key("array", "<f8", [top_k], None, "probabilities of top_k_index"),
        "out_of_library": _key("boolean", "|b1", [], None, "the frame matches none of the phases the model knows"),
        "library_similarity": _key("number", "<f8", [], None,
                                   "best cosine similarity to the model's reference patterns"),
        "space_group_number": _key("integer", "<i8", [], None,
                                   "predicted space group (0: undetermined, below the model's answer threshold; "
                                   "no model; or the frame does not look crystalline)"),
        "space_group_probability": _key("number", "<f8", [], None, "probability of space_group_number (NaN: none)"),
        "crystal_system": _key("string", None, [], None,
                               "crystal system; 'undetermined' below the model's answer threshold ('' when none)"),
        "material": _key("string", None, [], None, "identified phases (formulas joined by '+'; '' when none)"),
        "material_probability": _key("number", "<f8", [], None, "probability of the first identified phase"),
        "material_out_of_library": _key("boolean", "|b1", [], None,
                                        "no phase of the identification library explains the frame"),
        "transition_probability": _key("number", "<f8", [], None,
                                       "probability that the frame lies above the first transition"),
        "transition_pressure": _key("number", "<f8", [], "GPa",
                                    "running transition-pressure estimate after this frame"),
        "transition_pressure_uncertainty": _key("number", "<f8", [], "GPa",
                                                "1-sigma uncertainty of transition_pressure"),
        "flag": _key("string", None, [], None, "'' or why the frame was not (fully) classified: " + ", ".join(
            f"{k}: {v}" for k, v in FLAGS.items() if k)),
        "error": _key("string", None, [], None, "message of a model that raised (flag 'error' when the phase "
                      "model did; a space-group or identification error leaves only its own fields empty)"),
        "latency": _key("number", "<f8", [], "ms", "time from the frame reaching the classifier to its prediction"),
        "model_ids": _key("string", None, [], None, "';'-joined ids of the models that ran"),
    }

"""The inference engine: model bundles loaded once, frames in, `FramePrediction` records out.

`InferenceEngine` holds the models (phase classifier, open-set gate, and optionally the
space-group and material-identification models, `stages`) and their provenance;
`engine.new_run()` gives a `RunClassifier` that also holds what one scan has learnt so far
(the online transition estimate), so the same engine serves many runs. Bluesky is not needed
here: the callback, `classify FILE.nxs` and the evaluations all call `RunClassifier.classify`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from xrd_nexus_ml import __version__
from xrd_nexus_ml.bundle import resolve_bundle, weights_digest
from xrd_nexus_ml.device import resolve_device
from xrd_nexus_ml.errors import PatternError
from xrd_nexus_ml.identification.identifier import Identifier
from xrd_nexus_ml.identification.model import KIND as IDENTIFICATION_KIND
from xrd_nexus_ml.inference.library import DEFAULT_THRESHOLD, LibraryGate
from xrd_nexus_ml.inference.stages import IdentificationStage, SpaceGroupStage
from xrd_nexus_ml.pattern import Diffractogram
from xrd_nexus_ml.preprocess.frames import SNIP_WIDTH_Q, prepare_frames
from xrd_nexus_ml.records import FramePrediction, ModelProvenance
from xrd_nexus_ml.spacegroup.model import KIND as SPACEGROUP_KIND
from xrd_nexus_ml.spacegroup.model import load_model as load_spacegroup
from xrd_nexus_ml.transitions.changepoint import BoundaryEstimate, OnlineChangePoint, systematic_options
from xrd_nexus_ml.transitions.detector import ASSEMBLAGE_NAMES, AssemblageDetector, DetectorSettings
from xrd_nexus_ml.transitions.detector import KIND as DETECTOR_KIND
from xrd_nexus_ml.transitions.models import load_model

log = logging.getLogger(__name__)

DEFAULT_PHASE_MODEL = "transition/end_to_end"
DEFAULT_GATE_MODEL = "transition/cosine_baseline"
#: `--transition-model auto`: the training-free detector (`transitions.detector`), for any sample.
AUTO = "auto"
#: The phase names of a run classified with no transition model ("none").
NO_PHASE_NAMES = ("not classified",)


@dataclass
class Frame:
    """One detector frame as it reaches the classifier.

    intensity on `two_theta` (degrees) at `wavelength` (Å), or a `Diffractogram`, or a bare
    array already on the model's q grid (two_theta None). `received` (time.perf_counter) starts
    the latency clock.
    """

    seq_num: int
    intensity: np.ndarray | Diffractogram
    two_theta: np.ndarray | None = None
    wavelength: float | None = None
    pressure: float = math.nan
    energy: float = math.nan
    raw_uid: str = ""
    received: float = field(default_factory=time.perf_counter)

    def pattern(self):
        """A Diffractogram of this frame on its own axis, or the bare array when it has no axis
        (or an unusable one: `prepare_frames` then flags or resamples it, and says why)."""
        if isinstance(self.intensity, Diffractogram) or self.two_theta is None:
            return self.intensity
        y = np.asarray(self.intensity, dtype=float).ravel()
        axis = np.asarray(self.two_theta, dtype=float)
        if y.size != axis.size or self.wavelength is None or not np.all(np.isfinite(y)):
            return y
        try:
            return Diffractogram(x=axis, intensity=y, axis="two_theta", wavelength=float(self.wavelength))
        except PatternError:
            return y


def _provenance(task: str, kind: str, card: Path, device: torch.device,
                options: dict | None = None) -> ModelProvenance:
    digest = weights_digest(card.parent)
    return ModelProvenance(model_id=f"{task}/{kind}@{digest}", task=task, kind=kind,
                           version=__version__, card=str(card), device=str(device),
                           settings=json.dumps(options, sort_keys=True) if options else "")


class InferenceEngine:
    """Models loaded once and reused for every run.

    phase_model: a trained transition classifier (`xrd_nexus_ml.transitions`), phases in order
    of pressure. gate: the open-set check (None: never flags out of library). top_k: how many
    phases each record ranks. stages: optional models run on the same frames
    (`SpaceGroupStage`, `IdentificationStage`). The transition models are a few hundred kB of
    per-bin networks fed by NumPy preprocessing, and identification fits reference patterns in
    NumPy, so they run on the CPU whatever `device` says; `device` is where the space-group
    network runs, and what the provenance records for it.
    """

    def __init__(self, phase_model, gate: LibraryGate | None = None, top_k: int = 3, device="auto",
                 changepoint_options: dict | None = None, provenance: Sequence[ModelProvenance] = (),
                 stages: Sequence = ()):
        if phase_model is None or phase_model == AUTO:
            self.transition_model = "none" if phase_model is None else AUTO
            phase_model = None
            gate = None
            names = NO_PHASE_NAMES if self.transition_model == "none" else ASSEMBLAGE_NAMES
        else:
            if not getattr(phase_model, "fitted", False):
                raise ValueError(f"{type(phase_model).__name__} is not trained")
            self.transition_model = "trained"
            names = phase_model.phase_names
        self.phase_model = phase_model
        self.gate = gate
        self.phase_names = tuple(names)
        self.top_k = max(1, min(int(top_k), len(self.phase_names)))
        self.device = resolve_device(device)
        self.changepoint_options = dict(changepoint_options or {})
        self.provenance = tuple(provenance)
        self.model_ids = ";".join(p.model_id for p in self.provenance)
        self.stages = tuple(stages)

    @classmethod
    def from_bundles(cls, phase_model: str | Path = DEFAULT_PHASE_MODEL,
                     gate_model: str | Path | None = DEFAULT_GATE_MODEL,
                     threshold: float = DEFAULT_THRESHOLD, device="auto", spacegroup_model: str | Path | None = None,
                     identification_model: str | Path | None = None, identification_options: dict | None = None,
                     **kwargs) -> InferenceEngine:
        """Load bundles by folder, or by shipped name ("transition/end_to_end").

        phase_model: a trained transition bundle, "auto" (the training-free detector of
        `transitions.detector`: works on any sample, phases are the assemblages seen along the
        scan) or "none" (no transition classification: its record fields stay empty).
        spacegroup_model / identification_model: a bundle folder, "default" (the shipped
        model), or None / "none" (not run: their record fields stay empty).
        identification_options: keyword arguments of `Identifier` (e.g. {"screen": 0}, the
        network's proposals only: faster live); recorded in the model's provenance."""
        resolved = resolve_device(device)
        spacegroup_model, identification_model = (
            None if m is None or str(m).lower() == "none" else m for m in (spacegroup_model, identification_model))

        choice = str(phase_model).lower() if phase_model is not None else "none"
        if choice == "default":
            phase_model = DEFAULT_PHASE_MODEL
        provenance, gate = [], None
        if choice in (AUTO, "none"):  # the training-free detector, or no transition model at all
            model = AUTO if choice == AUTO else None
            if model == AUTO:
                provenance.append(ModelProvenance(
                    model_id=f"phase_classification/{DETECTOR_KIND}@training-free", task="phase_classification",
                    kind=DETECTOR_KIND, version=__version__, card="", device="cpu",
                    settings=json.dumps(DetectorSettings().to_dict(), sort_keys=True)))
            gate_model = None
        else:
            phase_dir = resolve_bundle(phase_model, task="transition")
            model = load_model(phase_dir)
            if gate_model == DEFAULT_GATE_MODEL and Path(str(phase_model)).is_dir():
                # a model of the user's phases (`train transition --phase`): its own open-set check
                sibling = phase_dir.parent / "cosine_baseline"
                gate_model = sibling if (sibling / "card.json").is_file() and sibling != phase_dir else None
            provenance.append(_provenance("phase_classification", model.kind, phase_dir / "card.json",
                                          torch.device("cpu")))
        if gate_model is not None:
            gate_dir = resolve_bundle(gate_model, task="transition")
            references = load_model(gate_dir)
            if tuple(references.phase_names) != tuple(model.phase_names):
                raise ValueError(f"{gate_dir / 'card.json'}: phases {references.phase_names} differ from the phase "
                                 f"model's {model.phase_names}")
            gate = LibraryGate.from_models(references, model, threshold)
            provenance.append(_provenance("open_set", references.kind, gate_dir / "card.json", torch.device("cpu")))
        stages = []
        if spacegroup_model is not None:
            symmetry = load_spacegroup(spacegroup_model, resolved)
            stages.append(SpaceGroupStage(symmetry))
            provenance.append(_provenance("space_group", SPACEGROUP_KIND, Path(symmetry.source) / "card.json",
                                          resolved))
        if identification_model is not None:
            identification_dir = resolve_bundle(str(identification_model), task="identification")
            stages.append(IdentificationStage(Identifier.from_bundle(identification_dir,
                                                                     **(identification_options or {}))))
            provenance.append(_provenance("material_identification", IDENTIFICATION_KIND,
                                          identification_dir / "card.json", torch.device("cpu"),
                                          identification_options))
        return cls(model, gate, device=resolved, provenance=provenance, stages=stages, **kwargs)

    def new_run(self, changepoint_options: dict | None = None, elements: Sequence[str] | None = None) -> RunClassifier:
        """A classifier for one scan: the transition estimate starts from nothing.
        changepoint_options: this run's `OnlineChangePoint` settings (a steered ramp fixes its θ
        grid, see `SteeringPolicy.changepoint_options`), else the engine's. elements: those
        that may be present in this sample (restricts material identification)."""
        return RunClassifier(self, changepoint_options=changepoint_options, elements=elements)

    def describe(self) -> dict:
        """What a derived run's start document says about the models."""
        return {"phase_names": list(self.phase_names), "top_k": self.top_k,
                "models": [p.to_dict() for p in self.provenance], "xrd_nexus_ml_version": __version__}


class RunClassifier:
    """Classifies one scan's frames in arrival order and keeps its transition estimate."""

    def __init__(self, engine: InferenceEngine, changepoint_options: dict | None = None,
                 elements: Sequence[str] | None = None):
        self.engine = engine
        self.elements = list(elements) if elements else None
        for stage in engine.stages:
            problem = stage.check_elements(self.elements)
            if problem:
                log.warning("%s: %s; every frame of this run will be out of its library", stage.task, problem)
        options = engine.changepoint_options if changepoint_options is None else changepoint_options
        self.changepoint = None
        self.detector = None
        if engine.transition_model == AUTO:
            self.detector = AssemblageDetector(changepoint_options=options)
        elif engine.transition_model == "trained":
            # the phase model's calibrated crossing-point error (from its card), unless set here
            self.changepoint = OnlineChangePoint(engine.phase_names, **{**systematic_options(engine.phase_model),
                                                                        **options})

    @property
    def estimates(self) -> list[BoundaryEstimate]:
        if self.detector is not None:
            return self.detector.estimates()
        return self.changepoint.estimates() if self.changepoint is not None else []

    def classify(self, frames: Sequence[Frame]) -> list[FramePrediction]:
        """One batch through the models (one call each) and the transition estimate (one update,
        frames in order). Frames that cannot be used get a flagged record; an error of the phase
        model propagates (the caller records it with `failed`); an error of a stage (space
        group, identification) is logged and named in the records' `error`, its fields empty.
        At frame rates where batches hold many frames, every record of a batch carries the
        estimate after the whole batch."""
        engine = self.engine
        if not frames:
            return []
        patterns, axis = self._model_inputs(frames)
        if engine.phase_model is None:
            records = self._untrained_records(frames, patterns, axis)
            records = self._add_stages(records, patterns, axis, {})
            now = time.perf_counter()
            return [replace(r, latency=(now - f.received) * 1e3) for r, f in zip(records, frames)]
        prepared = prepare_frames(patterns, engine.phase_model.grid, **axis)
        probs, inputs = engine.phase_model.predict_proba_prepared(prepared, return_inputs=True)
        if engine.gate is None:
            similarity = np.full(len(frames), np.nan)
        else:  # the gate reuses the model's aligned inputs when they are aligned its way
            shared = engine.gate.accepts_inputs_of(engine.phase_model)
            similarity = engine.gate.similarity(prepared, inputs=inputs if shared else None)
        usable = prepared.ok & np.isfinite(probs).all(1)
        evidence = np.where(usable[:, None], probs, np.nan)
        # one change-point update per batch: each record carries the estimate after its batch
        estimates = self.changepoint.update_many(evidence, [float(f.pressure) for f in frames])
        records = [self._record(frame, probs[i], bool(usable[i]), prepared.flags[i], float(similarity[i]), estimates)
                   for i, frame in enumerate(frames)]
        records = self._add_stages(records, patterns, axis, {(engine.phase_model.grid, SNIP_WIDTH_Q): prepared})
        now = time.perf_counter()  # the latency covers every model that ran
        return [replace(r, latency=(now - f.received) * 1e3) for r, f in zip(records, frames)]

    def _untrained_records(self, frames: Sequence[Frame], patterns, axis: dict) -> list[FramePrediction]:
        """Records of the training-free detector (phases: the assemblages seen along the scan), or
        of no transition model (phase fields empty)."""
        engine = self.engine
        if self.detector is None:
            return [FramePrediction(seq_num=f.seq_num, raw_uid=f.raw_uid, pressure=float(f.pressure),
                                    energy=float(f.energy), phase_probabilities=(math.nan,) * len(engine.phase_names),
                                    top_k_index=(-1,) * engine.top_k, top_k_probability=(math.nan,) * engine.top_k,
                                    model_ids=engine.model_ids) for f in frames]
        results = self.detector.update_many(patterns, [float(f.pressure) for f in frames], **axis)
        estimates = self.detector.estimates()
        records = []
        for frame, result in zip(frames, results):
            probs = np.asarray(result.probabilities, dtype=float)
            usable = result.flag is None and bool(np.isfinite(probs).all())
            flag = None if usable else {"nan": "nan", "zero": "zero", "flat": "zero", "out_of_range": "range",
                                        "unreadable": "nan", "control": "pressure"}.get(result.flag, "nan")
            records.append(self._record(frame, probs, usable, flag, math.nan, estimates))
        return records

    def _add_stages(self, records: list[FramePrediction], patterns, axis: dict,
                    prepared: dict) -> list[FramePrediction]:
        """Each stage's fields into the records; frames prepared once per (grid, SNIP window)."""
        errors: list[str] = []
        for stage in self.engine.stages:
            key = (stage.grid, stage.snip_width_q)
            try:
                if key not in prepared:
                    prepared[key] = prepare_frames(patterns, stage.grid, snip_width_q=stage.snip_width_q, **axis)
                fields = stage.fields(prepared[key], self.elements)
            except Exception as err:  # noqa: BLE001 - one model failing leaves the others' answers
                log.exception("%s model failed on %d frame(s)", stage.task, len(records))
                errors.append(f"{stage.task}: {type(err).__name__}: {err}")
                continue
            records = [replace(r, **f) if f else r for r, f in zip(records, fields)]
        if errors:
            message = "; ".join(errors)
            records = [replace(r, error="; ".join(filter(None, (r.error, message)))) for r in records]
        return records

    def failed(self, frames: Sequence[Frame], error: BaseException | str, flag: str = "error") -> list[FramePrediction]:
        """Records for frames a model failed on (or that were shed): shapes stay those of the run."""
        engine = self.engine
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        now = time.perf_counter()
        return [FramePrediction.unclassified(
            f.seq_num, flag, message, len(engine.phase_names), engine.top_k, raw_uid=f.raw_uid,
            pressure=float(f.pressure), energy=float(f.energy), latency=(now - f.received) * 1e3,
            model_ids=engine.model_ids) for f in frames]

    @staticmethod
    def _model_inputs(frames: Sequence[Frame]) -> tuple[list, dict]:
        """Frames of one detector (one 2θ axis and wavelength) go in as bare arrays with that axis,
        the batched path; anything else frame by frame as Diffractograms."""
        first = frames[0]
        shared = first.two_theta is not None and first.wavelength is not None and all(
            not isinstance(f.intensity, Diffractogram) and f.wavelength == first.wavelength
            and (f.two_theta is first.two_theta or np.array_equal(f.two_theta, first.two_theta)) for f in frames)
        if shared:
            return [np.asarray(f.intensity, dtype=float).ravel() for f in frames], {
                "two_theta": first.two_theta, "wavelength": first.wavelength}
        return [f.pattern() for f in frames], {}

    def _record(self, frame: Frame, probs: np.ndarray, usable: bool, prep_flag: str | None, similarity: float,
                estimates: list[BoundaryEstimate]) -> FramePrediction:
        engine = self.engine
        names, k = engine.phase_names, engine.top_k
        pressure = float(frame.pressure)
        flag = "" if usable else {"flat": "zero", "out_of_range": "range",
                                  "unreadable": "nan"}.get(prep_flag, prep_flag or "nan")
        if usable and not math.isfinite(pressure):
            flag = "pressure"
        first = estimates[0] if estimates else None
        order = np.argsort(-probs)[:k] if usable else np.full(k, -1)
        record = FramePrediction(
            seq_num=frame.seq_num,
            raw_uid=frame.raw_uid,
            pressure=pressure,
            energy=float(frame.energy),
            phase=names[int(order[0])] if usable else "",
            phase_probability=float(probs[order[0]]) if usable else math.nan,
            phase_probabilities=tuple(float(v) for v in probs) if usable else (math.nan,) * len(names),
            top_k_index=tuple(int(v) for v in order),
            top_k_probability=tuple(float(probs[j]) if j >= 0 else math.nan for j in order),
            out_of_library=bool(usable and engine.gate is not None and engine.gate.out_of_library(similarity)),
            library_similarity=similarity,
            transition_probability=float(1.0 - probs[0]) if usable else math.nan,
            transition_pressure=float(first.pressure) if first is not None else math.nan,
            transition_pressure_uncertainty=float(first.sigma) if first is not None else math.nan,
            flag=flag,
            model_ids=engine.model_ids,
            extra={"boundaries": [b.to_dict() for b in estimates]} if len(estimates) > 1 else {},
        )
        return record

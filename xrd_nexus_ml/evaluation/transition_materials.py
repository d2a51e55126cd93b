"""`xrd-nexus-ml evaluate transition --materials ...`: the transition detectors on many real materials.

Every material of `transitions.materials.MATERIALS` is simulated along ramps that vary as
beamlines do (`beamline_configs`: energy, 2θ range and point count, noise, background, texture,
frame count); the materials without a transition give the false alarms. The training-free
detector ("auto") was tuned (its thresholds, the confirmation count, the systematic term) on
`TUNING_MATERIALS` only: the scores that matter are those on `HELD_OUT`, which it never saw.
CIF-trained models (`--models auto,end_to_end,binned_vote`) are trained per material from its
phases in the seed's 4 + 40 regime, as `train transition --phase` does, at the beam energy and
detector range of the material's first ramp, and scored on ramps of that beamline (noise,
background, texture and frame count still vary).

Per model and material: `transition_error_steps` (|estimate - truth| in pressure steps of the
ramp; a transition that was not found counts as missed, not as an error), `within_one_step`
(share of true transitions found within one step), `coverage_2sigma`, `frames_to_settle`
(frames after the truth until the estimate settled), `false_alarms_per_ramp` (confirmed
transitions where there is none, on the compression-only ramps, plus extra transitions on the
others), `ms_per_frame`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from training.transition import train_transition_models
from xrd_nexus_ml.transitions.changepoint import TransitionTracker
from xrd_nexus_ml.transitions.detector import AssemblageDetector, DetectorSettings
from xrd_nexus_ml.transitions.materials import MATERIALS, beamline_configs, simulate_material_ramp

#: What the training-free detector's settings were chosen on (besides, during its development, the
#: schematic B1 -> B8 FeO of `ramp.PHASES` and compression-only ramps of the seed's B1 phase), on
#: ramps of other seeds than the ones scored: a reconstructive transition with a sharp and one
#: with a long coexistence, a ferroelastic split, and one sample without a transition.
TUNING_MATERIALS = ("KCl", "Fe", "(Mg0.2Fe0.8)O", "Au")
#: Everything else: scored only.
HELD_OUT = tuple(name for name in MATERIALS if name not in TUNING_MATERIALS)


def _match(truths: Sequence[float], estimates: list) -> tuple[list, int]:
    """Each true transition's nearest estimate (None when there is none left); extra estimates."""
    left = list(estimates)
    matched = []
    for t in truths:
        if not left:
            matched.append(None)
            continue
        j = int(np.argmin([abs(e.pressure - t) for e in left]))
        matched.append(left.pop(j))
    return matched, len(left)


def score_detector(ramp, settings=None) -> dict:
    """One ramp through the training-free detector, frame by frame as live (batches of 8)."""
    detector = AssemblageDetector(ramp.two_theta, ramp.wavelength, settings)
    started = time.perf_counter()
    settled_at: dict[int, int] = {}
    for i in range(0, ramp.n_frames, 8):
        detector.update_many(list(ramp.intensity[i: i + 8]), ramp.pressures[i: i + 8])
        for b in detector.transitions():
            if b.settled and b.boundary not in settled_at:
                settled_at[b.boundary] = min(i + 8, ramp.n_frames)
    seconds = time.perf_counter() - started
    return _score(ramp, detector.transitions(), settled_at, seconds)


def _score(ramp, estimates: list, settled_at: dict, seconds: float) -> dict:
    step = ramp.pressure_step
    truths = list(ramp.transition_pressures)
    matched, extra = _match(truths, [e for e in estimates if math.isfinite(e.pressure)])
    rows = []
    for _k, (truth, e) in enumerate(zip(truths, matched)):
        if e is None:
            rows.append({"truth": truth, "found": False})
            continue
        error = abs(e.pressure - truth) / step
        after = int(np.searchsorted(ramp.pressures, truth))
        settle = settled_at.get(e.boundary)
        rows.append({"truth": truth, "found": True, "estimate": e.pressure, "sigma": e.sigma,
                     "error_steps": error, "within_2sigma": abs(e.pressure - truth) <= 2 * e.sigma,
                     "frames_to_settle": None if settle is None else max(0, settle - after)})
    return {"transitions": rows, "false_alarms": extra, "n_frames": ramp.n_frames, "step": step,
            "ms_per_frame": 1e3 * seconds / max(ramp.n_frames, 1)}


def _summarise(results: list[dict]) -> dict:
    rows = [r for res in results for r in res["transitions"]]
    found = [r for r in rows if r["found"]]
    errors = [r["error_steps"] for r in found]
    settles = [r["frames_to_settle"] for r in found if r["frames_to_settle"] is not None]
    free = [res for res in results if not res["transitions"]]
    return {
        "n_ramps": len(results),
        "n_transitions": len(rows),
        "found": len(found),
        "within_one_step": (sum(e <= 1.0 for e in errors) / len(rows)) if rows else None,
        "transition_error_steps": {"mean": float(np.mean(errors)) if errors else None,
                                   "max": float(np.max(errors)) if errors else None},
        "coverage_2sigma": (sum(r["within_2sigma"] for r in found) / len(found)) if found else None,
        "frames_to_settle": float(np.mean(settles)) if settles else None,
        "false_alarms_per_ramp": (sum(res["false_alarms"] for res in free) / len(free)) if free else None,
        "extra_transitions_per_ramp": (sum(res["false_alarms"] for res in results if res["transitions"])
                                       / max(1, len(results) - len(free))),
        "ms_per_frame": float(np.median([res["ms_per_frame"] for res in results])) if results else None,
    }


def score_trained(material, configs: list[dict], kind: str, seed: int = 0, cache: dict | None = None) -> list[dict]:
    """A model trained from the material's phases (`train transition --phase`'s recipe) on ramps of
    the beamline it was trained for; compression-only materials have nothing to train: no ramps."""
    if not material.transition_pressures:
        return []
    cache = {} if cache is None else cache
    beamline = {"energy_kev": configs[0]["energy_kev"], "two_theta": configs[0]["two_theta"]}
    if material.name not in cache:
        cache[material.name] = train_transition_models(
            list(material.phases), transitions=list(material.transition_pressures),
            pressure_range=material.pressure_range, energy_kev=beamline["energy_kev"],
            two_theta=beamline["two_theta"], seed=seed)[0]
    model = cache[material.name][kind]
    results = []
    for config in configs:
        ramp = simulate_material_ramp(material, **{**config, **beamline})
        tracker = TransitionTracker(model, two_theta=ramp.two_theta, wavelength=ramp.wavelength)
        started = time.perf_counter()
        settled_at: dict[int, int] = {}
        for i in range(0, ramp.n_frames, 8):
            for r in tracker.run(list(ramp.intensity[i: i + 8]), ramp.pressures[i: i + 8])[-1:]:
                for b in r.boundaries:
                    if b.settled and b.boundary not in settled_at:
                        settled_at[b.boundary] = min(i + 8, ramp.n_frames)
        seconds = time.perf_counter() - started
        estimates = [b for b in tracker.estimates if math.isfinite(b.pressure) and b.observed >= 0.9]
        results.append(_score(ramp, estimates, settled_at, seconds))
    return results


def evaluate_materials(materials: Sequence[str] | str = "all", n_ramps: int = 4, seed: int = 0,
                       models: Sequence[str] = ("auto",)) -> dict:
    """Simulated ramps of each material through each model; the JSON of the command."""
    names = list(MATERIALS) if materials == "all" else list(materials)
    unknown = [n for n in names if n not in MATERIALS]
    if unknown:
        raise ValueError(f"unknown material(s) {', '.join(unknown)}; known: {', '.join(MATERIALS)}")
    started = time.perf_counter()
    per_model: dict[str, dict[str, list]] = {m: {} for m in models}
    configs = beamline_configs(n_ramps, seed)
    out = {"materials": {}}
    trained: dict = {}  # per material: the models trained from its phases (once)
    for name in names:
        material = MATERIALS[name]
        ramps = [simulate_material_ramp(material, **config) for config in configs]
        entry = {"kind": material.kind, "tuning": name in TUNING_MATERIALS,
                 "transition_pressures": list(material.transition_pressures), "models": {}}
        for model in models:
            if model == "auto":
                results = [score_detector(r) for r in ramps]
            else:
                results = score_trained(material, configs, model, seed=seed, cache=trained)
            per_model[model][name] = results
            entry["models"][model] = _summarise(results)
        out["materials"][name] = entry
    out["pooled"] = {"models": {m: _summarise([r for n in names for r in per_model[m][n]]) for m in models}}
    held = [n for n in names if n in HELD_OUT]
    out["held_out"] = {"materials": held,
                       "models": {m: _summarise([r for n in held for r in per_model[m][n]]) for m in models}}
    out["tuning_materials"] = list(TUNING_MATERIALS)
    out["n_ramps"] = len(names) * len(configs)
    out["beamlines"] = configs
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def calibrate_detector(n_ramps: int = 8, seed: int = 100) -> dict:
    """The systematic term of the training-free detector, from the tuning materials only (on
    ramps of `seed`, never the scored ones): the error of each found transition in pressure steps
    against the change point's statistical sigma; `systematic_steps` is the smallest extra sigma
    (in steps) with which 95 % of them lie within 2 sigma."""
    from dataclasses import replace

    settings = replace(DetectorSettings(), systematic_steps=0.0)
    errors, sigmas = [], []
    for name in TUNING_MATERIALS:
        for config in beamline_configs(n_ramps, seed):
            ramp = simulate_material_ramp(MATERIALS[name], **config)
            detector = AssemblageDetector(ramp.two_theta, ramp.wavelength, settings)
            detector.update_many(list(ramp.intensity), ramp.pressures)
            matched, _ = _match(list(ramp.transition_pressures), detector.transitions())
            for truth, e in zip(ramp.transition_pressures, matched):
                if e is not None:
                    errors.append(abs(e.pressure - truth) / ramp.pressure_step)
                    sigmas.append(e.sigma_statistical / ramp.pressure_step)
    errors, sigmas = np.asarray(errors), np.asarray(sigmas)
    needed = np.sqrt(np.clip((errors / 2.0) ** 2 - sigmas**2, 0.0, None))  # extra sigma each one needs
    return {"materials": list(TUNING_MATERIALS), "n_transitions": int(errors.size),
            "error_steps_median": float(np.median(errors)) if errors.size else None,
            "systematic_steps": float(np.quantile(needed, 0.95)) if errors.size else None}

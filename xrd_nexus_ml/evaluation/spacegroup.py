"""The space-group model scored: on the real structures (AFLOW prototypes + pyxtal CIFs,
simulated clean and with imperfections) or on a folder of measured patterns with labels."""

from __future__ import annotations

import time

import numpy as np

from xrd_nexus_ml.device import describe_device, resolve_device
from xrd_nexus_ml.evaluation.spacegroup_data import read_measured, real_structures, score, simulate_patterns
from xrd_nexus_ml.spacegroup.model import SpaceGroupModel, load_model, model_input


def _device_name(model: SpaceGroupModel) -> str:
    return describe_device(next(model.network.parameters()).device)


def _timed_probabilities(model: SpaceGroupModel, intensity, mask) -> tuple[dict, float]:
    inputs = model_input(intensity, mask)
    model.probabilities(inputs[:8])  # warm-up: the first call pays for lazy initialisation
    t0 = time.perf_counter()
    probs = model.probabilities(inputs)
    return probs, (time.perf_counter() - t0) / max(len(inputs), 1)


def evaluate_real_structures(model: SpaceGroupModel, seed: int = 0) -> dict:
    """Scores on the AFLOW prototypes + pyxtal CIFs, simulated clean and with imperfections."""
    structures = real_structures()
    truth = np.array([s.space_group for s in structures])
    out: dict = {"n_aflow": sum(s.source == "aflow" for s in structures),
                 "n_pyxtal": sum(s.source == "pyxtal" for s in structures)}
    for name, imperfect in (("clean", False), ("imperfect", True)):
        intensity, mask = simulate_patterns([s.structure for s in structures], imperfections=imperfect, seed=seed)
        probs, per_pattern = _timed_probabilities(model, intensity, mask)
        result = score(probs, truth)
        crystalline = probs["crystal_system"].max(axis=1) >= model.crystalline_threshold
        result["called_not_crystalline"] = round(float(np.mean(~crystalline)), 4)
        result["seconds_per_pattern"] = per_pattern
        out[name] = result
    return out


def evaluate_spacegroup(model_path=None, patterns=None, labels=None, wavelength=None, device: str = "cpu",
                        seed: int = 0) -> dict:
    """Without patterns: the real-structure scores; with a folder and CSV: scores on those files."""
    model = load_model(model_path, device=resolve_device(device))
    if patterns is None:
        result = evaluate_real_structures(model, seed)
        main = result["imperfect"]
        summary = {k: main[k] for k in ("n_patterns", "top1", "top5", "extinction_top1", "crystal_system_top1",
                                        "seconds_per_pattern")}
        return {**summary, "scored_on": "real structures (AFLOW prototypes + pyxtal CIFs), simulated with "
                "experimental imperfections; 'clean' without", **result, "device": _device_name(model),
                "model": model.source, "model_id": model.model_id}
    measured = read_measured(patterns, labels, wavelength)
    probs, per_pattern = _timed_probabilities(model, measured.intensity, measured.mask)
    result = score(probs, np.asarray(measured.space_group))
    predictions = model.predictions(probs, top_k=5)
    result["patterns"] = [{"file": name, "space_group": int(sg), "predicted": p.space_groups[0][0],
                           "top5": [n for n, _, _ in p.space_groups], "crystalline": p.crystalline}
                          for name, sg, p in zip(measured.names, measured.space_group, predictions)]
    return {**result, "seconds_per_pattern": per_pattern, "device": _device_name(model), "model": model.source,
            "model_id": model.model_id}

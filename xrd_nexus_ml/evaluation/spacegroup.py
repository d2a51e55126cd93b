"""The space-group model scored: on the real structures (AFLOW prototypes + pyxtal CIFs,
simulated clean and with imperfections) or on a folder of measured patterns with labels.

Each head answers only where its probability reaches the model's answer threshold, and says
"undetermined" elsewhere. `tune_answer_thresholds` sets the thresholds on the AFLOW prototypes
(simulated with imperfections) so that at least 90 % of the answers there are right, and reports
what they give on the pyxtal structures it never saw; the evaluations report accuracy against
coverage (the fraction answered), so a user sees what a threshold buys."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from xrd_nexus_ml.bundle import CARD_FILE
from xrd_nexus_ml.device import describe_device, resolve_device
from xrd_nexus_ml.evaluation.spacegroup_data import read_measured, real_structures, score, simulate_patterns
from xrd_nexus_ml.physics.symmetry import crystal_system_index, extinction_group
from xrd_nexus_ml.spacegroup.model import SpaceGroupModel, load_model, model_input

HEADS = ("space_group", "extinction_group", "crystal_system")
#: The share of right answers the thresholds are tuned for, and the fewest answers a threshold needs.
TARGET_PRECISION = 0.9
MIN_ANSWERS = 5
#: A threshold no probability reaches: the head never answers (its target precision is met nowhere).
NEVER = 1.01


def _device_name(model: SpaceGroupModel) -> str:
    return describe_device(next(model.network.parameters()).device)


def _timed_probabilities(model: SpaceGroupModel, intensity, mask) -> tuple[dict, float]:
    inputs = model_input(intensity, mask)
    model.probabilities(inputs[:8])  # warm-up: the first call pays for lazy initialisation
    t0 = time.perf_counter()
    probs = model.probabilities(inputs)
    return probs, (time.perf_counter() - t0) / max(len(inputs), 1)


def head_truth(space_groups) -> dict[str, np.ndarray]:
    """The true class of each head (space group - 1, extinction group, crystal system index)."""
    sg = np.asarray(space_groups, dtype=np.int64)
    return {"space_group": sg - 1, "extinction_group": np.array([extinction_group(int(v)) for v in sg]),
            "crystal_system": np.array([crystal_system_index(int(v)) for v in sg])}


def accuracy_at_coverage(probabilities: np.ndarray, truth: np.ndarray,
                         coverages=(0.1, 0.25, 0.5, 0.75, 1.0)) -> dict[str, float]:
    """Accuracy of the answers when only the most confident fraction of the patterns is answered."""
    top, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == truth
    order = np.argsort(-top, kind="stable")
    out = {}
    for c in coverages:
        k = max(1, int(round(c * len(order))))
        out[f"{c:g}"] = round(float(right[order[:k]].mean()), 4)
    return out


def answered_accuracy(probabilities: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """Coverage (fraction answered) and accuracy of the answers at `threshold`."""
    answered = probabilities.max(axis=1) >= threshold
    right = probabilities.argmax(axis=1) == truth
    return {"threshold": threshold, "coverage": round(float(answered.mean()), 4),
            "n_answered": int(answered.sum()),
            "accuracy": round(float(right[answered].mean()), 4) if answered.any() else None}


def answer_threshold(probabilities: np.ndarray, truth: np.ndarray, target: float = TARGET_PRECISION,
                     min_answers: int = MIN_ANSWERS) -> float:
    """The lowest probability at which the answers at or above it are right at least `target` of the
    time, with at least `min_answers` of them (the widest coverage that keeps the precision);
    `NEVER` where no threshold does."""
    top, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == truth
    order = np.argsort(-top, kind="stable")
    ranked = top[order]
    count = np.arange(1, len(order) + 1)
    precision = np.cumsum(right[order]) / count
    # a cut must not split patterns of equal probability: the threshold answers all of them or none
    cut = np.append(ranked[1:] < ranked[:-1], True)
    ok = np.flatnonzero((precision >= target) & (count >= min_answers) & cut)
    return float(ranked[ok[-1]]) if ok.size else NEVER


def abstention(model: SpaceGroupModel, probs: dict, truth: dict) -> dict:
    """Per head: coverage and accuracy of the answers at the model's thresholds, accuracy at coverage."""
    return {head: {**answered_accuracy(probs[head], truth[head], model.answer_thresholds[head]),
                   "accuracy_at_coverage": accuracy_at_coverage(probs[head], truth[head])} for head in HEADS}


def tune_answer_thresholds(model: SpaceGroupModel, seed: int = 0, target: float = TARGET_PRECISION) -> dict:
    """Answer thresholds tuned on the AFLOW prototypes (simulated with imperfections, `seed`), and
    what they give on the pyxtal structures the tuning never saw."""
    structures = real_structures()
    source = np.array([s.source for s in structures])
    intensity, mask = simulate_patterns([s.structure for s in structures], imperfections=True, seed=seed)
    probs = model.probabilities(model_input(intensity, mask))
    truth = head_truth([s.space_group for s in structures])
    tuning, held_out = source == "aflow", source == "pyxtal"
    thresholds = {head: answer_threshold(probs[head][tuning], truth[head][tuning], target) for head in HEADS}
    return {"thresholds": thresholds, "target_precision": target, "min_answers": MIN_ANSWERS,
            "tuned_on": f"{int(tuning.sum())} AFLOW prototypes simulated with imperfections (seed {seed})",
            "tuning": {h: answered_accuracy(probs[h][tuning], truth[h][tuning], thresholds[h]) for h in HEADS},
            "held_out_on": f"{int(held_out.sum())} pyxtal structures, never used to tune",
            "held_out": {h: answered_accuracy(probs[h][held_out], truth[h][held_out], thresholds[h])
                         for h in HEADS}}


def write_answer_thresholds(model_dir, tuned: dict) -> Path:
    """Record tuned thresholds in a bundle's card (the weights and their digest are untouched)."""
    card_path = Path(model_dir) / CARD_FILE
    card = json.loads(card_path.read_text())
    card["calibration"]["answer_thresholds"] = tuned["thresholds"]
    card["calibration"]["answer_thresholds_source"] = (
        f"tuned for {tuned['target_precision']:.0%} right answers on {tuned['tuned_on']}; held out: "
        f"{tuned['held_out_on']} (`xrd-nexus-ml evaluate spacegroup --tune-thresholds --write`)")
    card["metrics"]["answer_thresholds"] = {k: tuned[k] for k in ("tuning", "held_out", "tuned_on", "held_out_on")}
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    return card_path


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
        result["answers"] = abstention(model, probs, head_truth(truth))
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
        answers = main["answers"]["space_group"]
        summary.update(coverage=answers["coverage"], accuracy_at_coverage=answers["accuracy_at_coverage"],
                       answer_thresholds=model.answer_thresholds,
                       answer_thresholds_source=model.answer_thresholds_source)
        return {**summary, "scored_on": "real structures (AFLOW prototypes + pyxtal CIFs), simulated with "
                "experimental imperfections; 'clean' without", **result, "device": _device_name(model),
                "model": model.source, "model_id": model.model_id}
    measured = read_measured(patterns, labels, wavelength)
    probs, per_pattern = _timed_probabilities(model, measured.intensity, measured.mask)
    result = score(probs, np.asarray(measured.space_group))
    result["answers"] = abstention(model, probs, head_truth(measured.space_group))
    answers = result["answers"]["space_group"]
    result.update(coverage=answers["coverage"], accuracy_at_coverage=answers["accuracy_at_coverage"])
    predictions = model.predictions(probs, top_k=5)
    result["patterns"] = [{"file": name, "space_group": int(sg), "predicted": p.space_groups[0][0],
                           "top5": [n for n, _, _ in p.space_groups], "crystalline": p.crystalline,
                           "answer": p.answer()}
                          for name, sg, p in zip(measured.names, measured.space_group, predictions)]
    return {**result, "seconds_per_pattern": per_pattern, "device": _device_name(model), "model": model.source,
            "model_id": model.model_id}

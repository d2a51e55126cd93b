"""Command-line verbs of space-group classification: train, evaluate, and the classify section.

    xrd-nexus-ml train spacegroup [--config FILE] [--out DIR] [--steps N] [--ray-address ADDR] [--device ...]
    xrd-nexus-ml evaluate spacegroup [--model PATH] [--patterns DIR --labels CSV --wavelength Å] [--json]
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from xrd_nexus_ml.spacegroup.model import SpaceGroupModel, load_model, model_input, shipped_model_dir


def _device_name(model: SpaceGroupModel) -> str:
    device = next(model.network.parameters()).device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _timed_probabilities(model: SpaceGroupModel, intensity, mask) -> tuple[dict, float]:
    inputs = model_input(intensity, mask)
    model.probabilities(inputs[:8])  # warm-up: the first call pays for lazy initialisation
    t0 = time.perf_counter()
    probs = model.probabilities(inputs)
    return probs, (time.perf_counter() - t0) / max(len(inputs), 1)


def predict_patterns(patterns, model: SpaceGroupModel, top_k: int = 5):
    """One `SpaceGroupPrediction` per measured `Diffractogram`, resampled onto the model's grid."""
    grid = [p.resample(model.grid) for p in patterns]
    intensity = np.stack([g.intensity for g in grid]) if grid else np.zeros((0, model.grid.n_points), np.float32)
    mask = np.stack([g.mask for g in grid]) if grid else np.zeros((0, model.grid.n_points), bool)
    return model.predict(intensity, mask, top_k=top_k)


def describe(symmetry: dict) -> str:
    """One line for the terminal from `SpaceGroupPrediction.to_dict()`."""
    if not symmetry["crystalline"]:
        return f"not a crystal pattern (confidence {symmetry['confidence']:.2f}, below the model's threshold)"
    best, ext, system = symmetry["space_group"][0], symmetry["extinction_group"][0], symmetry["crystal_system"][0]
    top5 = ", ".join(str(s["number"]) for s in symmetry["space_group"])
    return (f"space group {best['symbol']} ({best['number']}, p={best['probability']:.2f}; top-5 {top5}); "
            f"extinction group {ext['name'].split(' [')[0]} (p={ext['probability']:.2f}); "
            f"{system['name']} (p={system['probability']:.2f})")


def evaluate_real_structures(model: SpaceGroupModel, seed: int = 0) -> dict:
    """Scores on the AFLOW prototypes + pyxtal CIFs, simulated clean and with imperfections."""
    from xrd_nexus_ml.spacegroup.evaluation import real_structures, score, simulate_patterns

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
    model = load_model(model_path, device=_resolve_device(device))
    if patterns is None:
        result = evaluate_real_structures(model, seed)
        main = result["imperfect"]
        summary = {k: main[k] for k in ("n_patterns", "top1", "top5", "extinction_top1", "crystal_system_top1",
                                        "seconds_per_pattern")}
        return {**summary, "scored_on": "real structures (AFLOW prototypes + pyxtal CIFs), simulated with "
                "experimental imperfections; 'clean' without", **result, "device": _device_name(model),
                "model": model.source, "model_id": model.model_id}
    from xrd_nexus_ml.spacegroup.evaluation import read_measured, score

    measured = read_measured(patterns, labels, wavelength)
    probs, per_pattern = _timed_probabilities(model, measured.intensity, measured.mask)
    result = score(probs, np.asarray(measured.space_group))
    predictions = model.predictions(probs, top_k=5)
    result["patterns"] = [{"file": name, "space_group": int(sg), "predicted": p.space_groups[0][0],
                           "top5": [n for n, _, _ in p.space_groups], "crystalline": p.crystalline}
                          for name, sg, p in zip(measured.names, measured.space_group, predictions)]
    return {**result, "seconds_per_pattern": per_pattern, "device": _device_name(model), "model": model.source,
            "model_id": model.model_id}


def _resolve_device(name: str) -> str:
    if name == "auto":
        from xrd_nexus_ml.physics.simulator import default_device

        return str(default_device())
    return name


def cmd_evaluate_spacegroup(args) -> int:
    result = evaluate_spacegroup(args.model, args.patterns, args.labels, args.wavelength, args.device, args.seed)
    if args.json:
        print(json.dumps(result, indent=2, default=float))
        return 0
    print(f"{result['n_patterns']} patterns: space group top-1 {result['top1']:.3f}, top-5 {result['top5']:.3f}; "
          f"extinction group top-1 {result['extinction_top1']:.3f}; crystal system top-1 "
          f"{result['crystal_system_top1']:.3f}; {1000 * result['seconds_per_pattern']:.2f} ms/pattern on "
          f"{result['device']}")
    if "clean" in result:
        c = result["clean"]
        print(f"  without imperfections: top-1 {c['top1']:.3f}, top-5 {c['top5']:.3f}, extinction "
              f"{c['extinction_top1']:.3f}, crystal system {c['crystal_system_top1']:.3f}")
    return 0


def cmd_train_spacegroup(args) -> int:
    from training.spacegroup import load_config, train_model

    config = load_config(args.config, steps=args.steps, seed=args.seed, ray_address=args.ray_address,
                         device=args.device, workers=args.workers)
    model = train_model(args.out, config, progress=not args.json, resume=not args.no_resume,
                        stop_after=args.stop_after)
    if model is None:  # a non-zero rank under torchrun, or --stop-after reached
        if args.stop_after is not None and int(os.environ.get("RANK", "0")) == 0:
            print(f"stopped after {args.stop_after} steps; checkpoint in {args.out}, run again to resume")
        return 0
    summary = {"out": str(args.out), "n_parameters": model.n_parameters, "metrics": model.metrics,
               "seconds": model.training["seconds"], "device": model.training["device"],
               "world_size": model.training["world_size"]}
    if args.json:
        print(json.dumps(summary, indent=2, default=float))
    else:
        synthetic = model.metrics["synthetic"]
        print(f"space-group model: {model.n_parameters} parameters, synthetic top-1 {synthetic['space_group_top1']:.3f}"
              f", {summary['seconds']['total']} s on {summary['device']} -> {args.out}")
    return 0


def add_parsers(evaluate, train) -> None:
    """Register `spacegroup` under the `evaluate` and `train` subcommands."""
    t = train.add_parser("spacegroup", help="the space-group classifier, on synthetic crystals generated on the fly")
    t.add_argument("--config", default=None, help="JSON or TOML file with any TrainConfig keys")
    t.add_argument("--out", default=str(shipped_model_dir()), help="bundle folder (default: the package's own)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--workers", type=int, default=None, help="DataLoader processes generating crystals")
    t.add_argument("--ray-address", default=None,
                   help="generate crystals in Ray actors: 'local' starts a local Ray, or a cluster address")
    t.add_argument("--device", default=None, help="auto (default: GPU when present), cpu, cuda")
    t.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint is there")
    t.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="train N steps in this call, checkpoint and exit (jobs with a wall-time limit)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_spacegroup)

    e = evaluate.add_parser("spacegroup", help="score the space-group model on real structures or measured files")
    e.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    e.add_argument("--patterns", default=None, help="folder of measured patterns (with --labels)")
    e.add_argument("--labels", default=None, help="CSV file,space_group")
    e.add_argument("--wavelength", default=None, help="Å or anode name for two-column 2θ files")
    e.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate_spacegroup)

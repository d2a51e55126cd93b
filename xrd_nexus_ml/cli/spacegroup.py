"""Space-group commands: `train spacegroup`, `evaluate spacegroup`."""

from __future__ import annotations

import os

from xrd_nexus_ml.cli.common import print_json


def cmd_tune_thresholds(args) -> int:
    from xrd_nexus_ml.bundle import resolve_bundle  # local: start-up time
    from xrd_nexus_ml.device import resolve_device
    from xrd_nexus_ml.evaluation.spacegroup import tune_answer_thresholds, write_answer_thresholds
    from xrd_nexus_ml.spacegroup.model import load_model

    folder = resolve_bundle(args.model, task="spacegroup")
    tuned = tune_answer_thresholds(load_model(folder, device=resolve_device(args.device)), seed=args.seed)
    if args.write:
        tuned["card"] = str(write_answer_thresholds(folder, tuned))
    print_json(tuned)
    return 0


def cmd_evaluate_spacegroup(args) -> int:
    from xrd_nexus_ml.evaluation.spacegroup import evaluate_spacegroup  # local: start-up time

    if args.tune_thresholds:
        return cmd_tune_thresholds(args)
    result = evaluate_spacegroup(args.model, patterns=args.patterns, labels=args.labels, wavelength=args.wavelength,
                                 device=args.device, seed=args.seed)
    if args.json:
        print_json(result)
        return 0
    at = result["accuracy_at_coverage"]
    print(f"space group answered for {result['coverage']:.1%} of the patterns (threshold "
          f"{result['answers']['space_group']['threshold']:.2f}); accuracy when answering the most confident "
          f"50 %: {at['0.5']:.3f}, all: {at['1']:.3f}")
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
    from training.spacegroup import load_config, train_model  # local: start-up time
    from xrd_nexus_ml.bundle import SHIPPED_MODELS_DIR
    from xrd_nexus_ml.evaluation.spacegroup import evaluate_real_structures

    out = args.out or SHIPPED_MODELS_DIR / "spacegroup" / "default"
    config = load_config(args.config, steps=args.steps, seed=args.seed, ray_address=args.ray_address,
                         device=args.device, workers=args.workers)
    model = train_model(out, config, progress=not args.json, resume=not args.no_resume, stop_after=args.stop_after,
                        final_evaluation=evaluate_real_structures)
    if model is None:  # a non-zero rank under torchrun, or --stop-after reached
        if args.stop_after is not None and int(os.environ.get("RANK", "0")) == 0:
            print(f"stopped after {args.stop_after} steps; checkpoint in {out}, run again to resume")
        return 0
    summary = {"out": str(out), "n_parameters": model.n_parameters, "metrics": model.metrics,
               "seconds": model.training["seconds"], "device": model.training["device"],
               "world_size": model.training["world_size"]}
    if args.json:
        print_json(summary)
    else:
        synthetic = model.metrics["synthetic"]
        print(f"space-group model: {model.n_parameters} parameters, synthetic top-1 {synthetic['space_group_top1']:.3f}"
              f", {summary['seconds']['total']} s on {summary['device']} -> {out}")
    return 0


def add_parsers(evaluate, train) -> None:
    """`spacegroup` under the `evaluate` and `train` commands."""
    t = train.add_parser("spacegroup", help="the space-group classifier, on synthetic crystals generated on the fly")
    t.add_argument("--config", default=None, help="JSON or TOML file with any TrainConfig keys")
    t.add_argument("--out", default=None, help="bundle folder (default: the package's own)")
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
    e.add_argument("--tune-thresholds", action="store_true",
                   help="set each head's answer threshold (90 %% right answers) on the AFLOW prototypes and report "
                        "it on the pyxtal structures it never saw (JSON)")
    e.add_argument("--write", action="store_true", help="with --tune-thresholds: record them in the model's card")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate_spacegroup)

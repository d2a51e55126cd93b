"""Train the phase-transition models in the seed's regime and write their bundles: one command.

    xrd-nexus-ml train transition --out DIR [--seed N] [--fast]
    python -m training.transition --out DIR

Simulates the training set of `xrd_nexus_ml.transitions.ramp.simulate_training_set` (4
"measured" frames from the ends of a reference (Mg0.2Fe0.8)O ramp + 40 simulated patterns: 16
per phase over 5-55 GPa and 8 coexistence mixtures), trains the binned vote, the end-to-end
network and the cosine baseline (`models.train_models`), and writes one bundle per model
(`DIR/<kind>/weights.safetensors` + `card.json`) and `DIR/summary.json` (sizes, seconds,
training-set recipe, per-model training metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from xrd_nexus_ml.transitions.models import train_models
from xrd_nexus_ml.transitions.ramp import simulate_training_set


def train_transition(out: Path, seed: int = 0, fast: bool = False) -> dict:
    """Train all transition models and write their bundles under `out`; returns the summary."""
    started = time.perf_counter()
    training_set = simulate_training_set(seed=seed)
    models = train_models(training_set, seed=seed, fast=fast)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, model in models.items():
        folder = model.save(out / name)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        written[name] = {"path": str(folder), "bytes": size, "metrics": model.metrics}
    summary = {
        "out": str(out),
        "phases": list(training_set.phase_names),
        "training_set": {"n_patterns": len(training_set),
                         "kinds": {k: training_set.kinds.count(k) for k in sorted(set(training_set.kinds))},
                         "recipe": training_set.recipe},
        "models": written,
        "total_bytes": sum(v["bytes"] for v in written.values()),
        "seed": seed,
        "fast": fast,
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def cmd_train_transition(args) -> int:
    """The CLI command (`xrd-nexus-ml train transition`)."""
    summary = train_transition(Path(args.out), seed=args.seed, fast=args.fast)
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2, default=float))
        return 0
    for name, info in summary["models"].items():
        print(f"{name:<16} {info['bytes'] / 1024:7.1f} KB  {info['path']}")
    print(f"trained on {summary['training_set']['n_patterns']} patterns {summary['training_set']['kinds']} "
          f"in {summary['seconds']} s; summary: {Path(summary['out']) / 'summary.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the phase-transition models and write their bundles")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--json", action="store_true")
    return cmd_train_transition(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

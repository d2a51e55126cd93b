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

import json
import time
from pathlib import Path

import numpy as np

from xrd_nexus_ml.transitions.materials import Material, simulate_material_ramp
from xrd_nexus_ml.transitions.models import train_models
from xrd_nexus_ml.transitions.ramp import Instrument, RampError, simulate_training_set


def train_transition(out: Path, seed: int = 0, fast: bool = False) -> dict:
    """Train all transition models and write their bundles under `out`; returns the summary."""
    started = time.perf_counter()
    training_set = simulate_training_set(seed=seed)
    models = train_models(training_set, seed=seed, fast=fast)
    summary = _write(out, models, training_set, seed, fast, started)
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _write(out, models: dict, training_set, seed: int, fast: bool, started: float) -> dict:
    """Each model's bundle under `out` and the summary of the run."""
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
    return summary


def train_transition_models(phases: list, transitions: list[float] | None = None,
                            pressure_range: tuple[float, float] | None = None, energy_kev: float = 25.6,
                            two_theta: tuple[float, float, int] = (10.0, 26.0, 4023), coexistence: float = 1.0,
                            seed: int = 0, fast: bool = False) -> tuple[dict, object]:
    """The models (binned vote, end-to-end, cosine baseline) of a user's phases and their training set."""
    if len(phases) < 2:
        raise RampError("a transition model needs at least two --phase")
    n_b = len(phases) - 1
    if transitions is not None and len(transitions) != n_b:
        raise RampError(f"{len(phases)} phases need {n_b} --transition value(s), got {len(transitions)}")
    if pressure_range is None:
        top = 2.0 * max(transitions) if transitions else 50.0
        pressure_range = (0.0, max(top, 5.0))
    lo, hi = pressure_range
    if transitions is None:  # evenly spaced inside the range: the scan is what finds them
        transitions = [lo + (hi - lo) * (k + 1) / (n_b + 1) for k in range(n_b)]
    material = Material(name="+".join(p.name for p in phases), phases=tuple(phases),
                        transition_pressures=tuple(float(t) for t in transitions),
                        coexistence_widths=(float(coexistence),) * n_b, pressure_range=(float(lo), float(hi)),
                        kind="reconstructive", description="user phases (train transition --phase)")
    instrument = Instrument(energy_kev=energy_kev, two_theta=tuple(two_theta))
    training_set = simulate_training_set(phases=phases, pressure_range=(lo, hi), reference_transition=transitions,
                                         instrument=instrument, seed=seed)
    rng = np.random.default_rng(seed + 1)

    def calibration_ramp(k: int, ramp_seed: int):
        jitter = rng.uniform(-0.1, 0.1) * (hi - lo)  # the transition moves: the model must not learn where
        shifted = [min(max(t + jitter, lo + 0.1 * (hi - lo)), hi - 0.1 * (hi - lo)) for t in transitions]
        return simulate_material_ramp(material, pressures=np.linspace(lo, hi, 120), seed=ramp_seed,
                                      noise=float(rng.uniform(0.005, 0.02)), background=float(rng.uniform(0, 0.2)),
                                      energy_kev=energy_kev, two_theta=tuple(two_theta),
                                      transition_pressures=shifted)

    return train_models(training_set, seed=seed, fast=fast, ramp_factory=calibration_ramp), training_set


def train_transition_from_cifs(out: Path, phases: list, transitions: list[float] | None = None,
                               pressure_range: tuple[float, float] | None = None, energy_kev: float = 25.6,
                               two_theta: tuple[float, float, int] = (10.0, 26.0, 4023), coexistence: float = 1.0,
                               seed: int = 0, fast: bool = False) -> dict:
    """The seed's models for a user's own phases (`materials.StructurePhase`, e.g. from
    `phase_from_cif`, in pressure order): their ramp simulated with the package's simulator at the
    user's beam energy and detector range, 4 + 40 training patterns, calibration ramps of the same
    phases (transitions drawn around the expected ones), bundles written under `out`."""
    started = time.perf_counter()
    models, training_set = train_transition_models(phases, transitions, pressure_range, energy_kev, two_theta,
                                                   coexistence, seed, fast)
    summary = _write(out, models, training_set, seed, fast, started)
    summary["phases_source"] = [getattr(p, "eos_source", "") for p in phases]
    summary["bulk_modulus_gpa"] = [{"k0": p.eos.k0, "k0_prime": p.eos.k0_prime,
                                    "relative_uncertainty": getattr(p, "k0_uncertainty", 0.0)} for p in phases]
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


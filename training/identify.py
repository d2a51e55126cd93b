"""Build an identification model for a library of reference phases: one command.

    xrd-nexus-ml library build CIF_DIR --out MODEL_DIR [--steps N] [--seed N]

1. The CIFs are read and de-duplicated (`identification.library`); classes are compositions.
2. Each reference's peaks are computed once (`identification.stream.PeakCache`); training
   patterns are drawn from them on the fly with the identification augmentations, in a
   DataLoader worker while the network trains, and every fresh batch is trained on together
   with as many patterns replayed from the last few hundred (halves the simulation cost).
3. Split by structure, never by augmented copy: some polymorphs (of compositions with more
   than one) are held out for the first `1 - final_fraction` of the steps; their top-1 at that
   point is the card's `unseen_polymorph_top1`. The remaining steps train on every reference,
   so the shipped model knows them all.
4. Calibration on fresh draws of every reference (a stream with its own seed, never trained
   on): the softmax temperature minimising the negative log-likelihood, and the open-set
   threshold (the `open_set_quantile` quantile of the cosine between in-library patterns and
   their predicted class prototype).
5. Checkpoints every `checkpoint_every` steps (`MODEL_DIR/checkpoint.pt`: tensors and numbers
   only, read back with `weights_only=True`); an interrupted build resumes from the last one
   when called again with the same library and recipe.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from training.loop import ReplayBuffer
from training.moe_recipe import make_recipe
from xrd_nexus_ml.identification.library import PhaseLibrary, default_library, load_cif_library, split_by_structure
from xrd_nexus_ml.identification.model import IdentificationModel, phase_record
from xrd_nexus_ml.identification.stream import PeakCache, library_stream
from xrd_nexus_ml.models import RegNetConfig, build_moe
from xrd_nexus_ml.models.moe import default_expert_config, default_trunk_config
from xrd_nexus_ml.pattern import CANONICAL_GRID
from xrd_nexus_ml.physics import PowderSimulator


@dataclass
class BuildConfig:
    """The training recipe (goes into the model card)."""

    steps: int = 1500
    batch_size: int = 64
    replay: int = 1024  # patterns kept for replay; 0: every step trains on fresh patterns only
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    final_fraction: float = 0.3
    seed: int = 0
    k: int = 2
    embedding_dim: int = 64
    gate_bins: int = 8
    gate_hidden: int = 256  # hidden layer of the gate (0: linear gate)
    inference_k: int = 4  # experts run per pattern at inference (training routes by the target's elements)
    expert_bins: int = 16  # position bins of each expert's summary (1: global average pooling)
    expert_bin_channels: int = 8
    trunk: dict = field(default_factory=lambda: default_trunk_config().to_dict())
    expert: dict = field(default_factory=lambda: default_expert_config().to_dict())
    calibration_patterns: int = 768
    open_set_quantile: float = 0.01
    checkpoint_every: int = 250
    wavelength: str = "CuKa1"
    workers: int = 1
    recipe: str = "joint"  # or "expert_first": experts, then gate, then joint (`training.moe_recipe`)
    router: bool = False  # route through class prototypes (`models.moe.PrototypeRouter`), not the element gate


class _StreamDataset(IterableDataset):
    """The library stream as a DataLoader source (one worker: generation beside training)."""

    def __init__(self, cache, references, batch_size, seed, wavelength):
        self.cache, self.references, self.batch_size, self.seed, self.wavelength = (
            cache, list(references), batch_size, seed, wavelength)

    def __iter__(self):
        torch.set_num_threads(1)
        for draw in library_stream(self.cache, self.references, self.batch_size, self.seed, self.wavelength):
            yield draw.inputs, torch.from_numpy(draw.reference)


def _loader(cache, references, config: BuildConfig, seed: int):
    dataset = _StreamDataset(cache, references, config.batch_size, seed, config.wavelength)
    return iter(DataLoader(dataset, batch_size=None, num_workers=config.workers,
                           persistent_workers=False, prefetch_factor=4 if config.workers else None))


def _top1(network, inputs, classes_true) -> float:
    network.eval()
    with torch.inference_mode():
        pred = network(inputs).probs.argmax(1).numpy()
    network.train()
    return float(np.mean(pred == classes_true))


def _fixed_draws(cache, references, n, seed, wavelength, batch_size=128):
    """(inputs, reference index) of n fresh patterns of `references` (a stream of its own seed)."""
    stream = library_stream(cache, references, batch_size, seed, wavelength)
    xs, ys = [], []
    refs = np.resize(np.asarray(references), n)  # every reference equally often
    for start in range(0, n, batch_size):
        draw = stream.draw(refs[start:start + batch_size])
        xs.append(draw.inputs)
        ys.append(draw.reference)
    return torch.cat(xs), np.concatenate(ys)


def _calibrate(network, inputs, true_class, quantile):
    """(temperature, open-set threshold, metrics) from held-out draws of every reference."""
    network.eval()
    temperatures = np.exp(np.linspace(np.log(0.25), np.log(8.0), 16))
    nll = []
    with torch.inference_mode():
        for t in temperatures:
            probs = network(inputs, temperature=float(t)).probs.numpy()
            nll.append(float(-np.mean(np.log(np.clip(probs[np.arange(len(true_class)), true_class], 1e-12, None)))))
        best = float(temperatures[int(np.argmin(nll))])
        out = network(inputs, temperature=best)
    probs, sims = out.probs.numpy(), out.similarity.numpy()
    pred = probs.argmax(1)
    top_sim = sims[np.arange(len(pred)), pred]
    threshold = float(np.quantile(top_sim, quantile))
    conf = probs.max(1)
    correct = pred == true_class
    bins = np.clip((conf * 10).astype(int), 0, 9)
    ece = float(sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * np.mean(bins == b)
                    for b in range(10) if np.any(bins == b)))
    metrics = {"calibration_top1": float(correct.mean()), "calibration_nll": float(min(nll)),
               "nll_at_temperature_1": float(np.interp(0.0, np.log(temperatures), nll)),
               "expected_calibration_error": ece, "n_calibration_patterns": int(len(pred))}
    network.train()
    return best, threshold, metrics


def _checkpoint_path(out: Path) -> Path:
    return out / "checkpoint.pt"


def build_model(library: PhaseLibrary, out, config: BuildConfig | None = None, progress: bool = True,
                resume: bool = True) -> IdentificationModel:
    """Train, calibrate and save an identification model for `library` under `out`."""
    config = config or BuildConfig()
    if config.workers:  # the worker simulates on one core; more threads here would only contend with it
        import os

        torch.set_num_threads(max(1, (os.cpu_count() or 2) - config.workers))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    simulator = PowderSimulator(wavelength=config.wavelength, device="cpu")
    structures = [p.structure for p in library.phases]
    cache = PeakCache.build(structures, simulator)
    cache_seconds = time.perf_counter() - started
    classes = library.classes
    phase_class = library.phase_classes
    plan = library.experts()
    network = build_moe(plan.expert_classes, plan.expert_coarse, len(classes),
                        _config(config.trunk), _config(config.expert), config.embedding_dim, config.k,
                        gate_bins=config.gate_bins, gate_hidden=config.gate_hidden, expert_bins=config.expert_bins,
                        expert_bin_channels=config.expert_bin_channels, router=config.router)
    train_idx, val_idx = split_by_structure(library, config.val_fraction, config.seed)
    recipe_runner = make_recipe(config.recipe, network, config.steps, lr=config.lr, weight_decay=config.weight_decay)
    recipe = json.dumps(asdict(config), sort_keys=True)
    library_hash = library.content_hash()
    step, history, metrics = 0, [], {}
    ckpt = _checkpoint_path(out)
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        if state.get("recipe") == recipe and state.get("library_hash") == library_hash:
            network.load_state_dict(state["network"])
            recipe_runner.load_state_dict(state["recipe_state"])
            step, metrics = int(state["step"]), json.loads(state["metrics"])
            history = json.loads(state["history"])
    switch = int(round(config.steps * (1.0 - config.final_fraction))) if len(val_idx) else 0
    val_inputs = None
    if len(val_idx):
        val_inputs, val_refs = _fixed_draws(cache, val_idx, max(128, 8 * len(val_idx)), config.seed + 7919,
                                            config.wavelength)
    replay = ReplayBuffer(config.replay, (2, simulator.grid.n_points), torch.Generator().manual_seed(config.seed + 1))
    seed = config.seed * 1_000_003 + step
    loader = _loader(cache, train_idx if step < switch else np.arange(len(library)), config, seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=step, desc="training", unit="step")
    network.train()
    try:
        while step < config.steps:
            if step == switch and len(val_idx) and "unseen_polymorph_top1" not in metrics:
                metrics["unseen_polymorph_top1"] = _top1(network, val_inputs, phase_class[val_refs])
                metrics["n_unseen_polymorphs"] = int(len(val_idx))
                loader = _loader(cache, np.arange(len(library)), config, seed + 17)
            x, refs = next(loader)
            y = torch.as_tensor(phase_class[refs.numpy()], dtype=torch.long)
            replayed = replay.sample(x.shape[0])
            replay.add(x, y)
            if replayed is not None:
                x, y = torch.cat([x, replayed[0]]), torch.cat([y, replayed[1]])
            loss = recipe_runner.step(x, y)
            step += 1
            if step % 25 == 0 or step == config.steps:
                history.append([step, round(float(loss.detach()), 4)])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                torch.save({"step": step, "network": network.state_dict(), "recipe_state": recipe_runner.state_dict(),
                            "recipe": recipe, "library_hash": library_hash,
                            "metrics": json.dumps(metrics), "history": json.dumps(history)}, ckpt)
    finally:
        if bar is not None:
            bar.close()
        del loader
    train_seconds = time.perf_counter() - started
    network.gate.k = min(config.inference_k, network.n_experts)
    cal_inputs, cal_refs = _fixed_draws(cache, np.arange(len(library)), config.calibration_patterns,
                                        config.seed + 104729, config.wavelength)
    temperature, threshold, cal_metrics = _calibrate(network, cal_inputs, phase_class[cal_refs],
                                                     config.open_set_quantile)
    metrics.update(cal_metrics)
    metrics["final_loss"] = history[-1][1] if history else None
    sticks = []
    for q, inten in zip(cache.q, cache.intensity):
        top = float(inten.max()) if len(inten) else 1.0
        sticks.append((q.numpy().astype(np.float32), (inten / top).numpy().astype(np.float32)))
    model = IdentificationModel(
        network=network.eval(), classes=list(classes),
        phases=[phase_record(p, int(c)) for p, c in zip(library.phases, phase_class)], plan=plan,
        grid=CANONICAL_GRID,
        architecture={"trunk": config.trunk, "expert": config.expert, "embedding_dim": config.embedding_dim,
                      "k": config.k, "inference_k": config.inference_k, "gate_bins": config.gate_bins,
                      "gate_hidden": config.gate_hidden, "expert_bins": config.expert_bins,
                      "expert_bin_channels": config.expert_bin_channels, "experts_by": "element",
                      "heads": "AdaCos (chemical system) + CosFace (composition)", "router": config.router,
                      "gate": "class prototypes" if config.router else "noisy top-k"},
        sticks=sticks, temperature=temperature, open_set_threshold=threshold, library_hash=library_hash,
        training={
            "recipe": asdict(config),
            "augmentation": library_stream(cache, [0], config.batch_size, 0, config.wavelength).config(),
            "library": {"n_phases": len(library), "n_classes": len(classes), "n_experts": len(plan.elements),
                        "duplicates_removed": [list(d) for d in library.duplicates],
                        "train_phases": int(len(train_idx)),
                        "held_out_phases": [library.phases[i].name for i in val_idx]},
            "loss_history": history,
            "seconds": {"peak_cache": round(cache_seconds, 1), "total": round(time.perf_counter() - started, 1),
                        "training": round(train_seconds, 1)},
            "device": "cpu", "torch_threads": torch.get_num_threads()},
        metrics=metrics)
    model.save(out)
    ckpt.unlink(missing_ok=True)
    return model


def _config(d: dict):
    return RegNetConfig.from_dict(d)


def build_library_model(cif_dir, out, steps: int = 1500, seed: int = 0, progress: bool = True,
                        resume: bool = True) -> dict:
    """`library build`: a model for every CIF in `cif_dir`, saved under `out`; its summary."""
    library = load_cif_library(cif_dir)
    model = build_model(library, out, BuildConfig(steps=steps, seed=seed), progress=progress, resume=resume)
    return {"out": str(out), "n_phases": len(library), "n_classes": len(model.classes),
            "n_experts": len(model.plan.elements), "experts": list(model.plan.elements),
            "duplicates_removed": library.duplicates, "n_parameters": model.n_parameters, "metrics": model.metrics,
            "seconds": model.training["seconds"]}


def train_default_model(out, steps: int = 6000, seed: int = 0, progress: bool = True, resume: bool = True) -> dict:
    """The shipped default: pyFAI's calibrants, the common phases, pymatgen's AFLOW prototypes (`default_library`)."""
    library = default_library()
    model = build_model(library, out, BuildConfig(steps=steps, seed=seed), progress=progress, resume=resume)
    return {"out": str(out), "n_phases": len(library), "n_classes": len(model.classes),
            "n_experts": len(model.plan.elements), "n_parameters": model.n_parameters, "metrics": model.metrics,
            "seconds": model.training["seconds"]}

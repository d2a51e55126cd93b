"""Train the space-group classifier on an endless stream of synthetic crystals: one command.

    xrd-nexus-ml train spacegroup [--config FILE.json|toml] [--out DIR] [--steps N] [--ray-address ADDR]
    torchrun --nproc-per-node 4 -m xrd_nexus_ml.cli train spacegroup ...     # several GPUs (DDP)

Recipe (Schopmans, Reiser, Friederich, Digital Discovery 2023): random crystals of all 230
space groups are generated and simulated on the fly (`training.streams.PatternStream` with
`SyntheticSource` and the "measured" augmentations), so no pattern is seen twice and there is
no fixed dataset to overfit. Generation runs in DataLoader worker processes beside the
trainer, or, with `--ray-address`, in Ray actors on other nodes feeding a bounded queue
(`training.ray_feed`). Under `torchrun` every rank trains on its own stream (seeded by rank)
and DistributedDataParallel averages the gradients; rank 0 writes progress, checkpoints and
the bundle.

Each step trains on `batch_size` fresh crystals, a few non-crystal patterns (flat, noise,
amorphous; uniform target: outlier exposure) and as many patterns replayed from the last
`replay` ones (simulation is the bottleneck on a CPU; replay doubles what each costly pattern
teaches). Losses: cross-entropy of the space-group, extinction-group and crystal-system heads.
Calibration on fresh draws of a stream with its own seed: one softmax temperature per head
(NLL), and the crystallinity threshold. Checkpoints every `checkpoint_every` steps
(`OUT/checkpoint.pt`, tensors and numbers only, read back with `weights_only=True`); a run
called again with the same recipe resumes from it.
"""

from __future__ import annotations

import functools
import json
import os
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.loop import ReplayBuffer, gradient_step, warmup_cosine, warmup_cosine_by
from training.ray_feed import RayBatchFeed
from training.streams import PatternStream, SyntheticSource
from xrd_nexus_ml.device import describe_device, resolve_device
from xrd_nexus_ml.errors import XrdNexusMlError
from xrd_nexus_ml.models.resnet1d import ResNetConfig, SymmetryClassifier
from xrd_nexus_ml.pattern import CANONICAL_GRID
from xrd_nexus_ml.physics.augment import default_pipeline
from xrd_nexus_ml.spacegroup.model import (
    SpaceGroupModel,
    head_sizes,
    model_input,
    targets_from_space_groups,
    true_class_ranks,
)
from xrd_nexus_ml.spacegroup.negatives import non_crystal_patterns

HEADS = ("space_group", "extinction_group", "crystal_system")


class TrainingConfigError(XrdNexusMlError, ValueError):
    """A training configuration file or value is not usable; names the file and key."""


@dataclass
class TrainConfig:
    """The training recipe (goes into the model card). A config file may set any of these."""

    steps: int = 3000
    batch_size: int = 64  # fresh synthetic crystals per step (per rank)
    replay: int = 2048  # patterns kept for replay; 0: fresh patterns only
    non_crystal_fraction: float = 0.0625  # non-crystal patterns per fresh crystal
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss_weights: dict = field(default_factory=lambda: {"space_group": 1.0, "extinction_group": 0.5,
                                                        "crystal_system": 0.25})
    size: str = "resnet10"
    widths: list = field(default_factory=lambda: [32, 64, 128, 256])
    dropout: float = 0.1
    position_bins: int = 32  # position-binned summary of the final map beside global pooling (0: none)
    max_atoms: int = 48  # conventional-cell atoms of the synthetic crystals (the CPU budget)
    max_orbits: int = 8
    wavelength: str = "CuKa1"
    seed: int = 0
    workers: int = 1  # DataLoader worker processes generating crystals (0: in the training process)
    ray_address: str | None = None  # "local" or a cluster address: generate in Ray actors instead
    ray_actors: int = 2
    device: str = "auto"
    checkpoint_every: int = 250
    calibration_patterns: int = 1024
    crystalline_quantile: float = 0.01
    evaluate_real: bool = True  # score the AFLOW prototypes + pyxtal CIFs into the card at the end
    # train for this many seconds instead (steps is then only a cap): the learning rate follows the
    # clock, so a device lent for minutes ends with a fully decayed model whatever its throughput
    max_seconds: float | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2 or self.replay < 0 or self.workers < 0 or self.ray_actors < 1:
            raise TrainingConfigError("steps >= 1, batch_size >= 2, replay >= 0, workers >= 0, ray_actors >= 1 needed")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise TrainingConfigError(f"max_seconds must be positive, got {self.max_seconds}")
        if not 0.0 <= self.non_crystal_fraction < 1.0:
            raise TrainingConfigError(f"non_crystal_fraction must be in [0, 1), got {self.non_crystal_fraction}")
        if set(self.loss_weights) != set(HEADS):
            raise TrainingConfigError(f"loss_weights must have the keys {HEADS}, got {sorted(self.loss_weights)}")

    def resnet(self) -> ResNetConfig:
        try:
            return ResNetConfig.named(self.size, widths=tuple(self.widths), dropout=self.dropout,
                                      position_bins=self.position_bins)
        except ValueError as err:
            raise TrainingConfigError(str(err)) from None

    def generator_options(self) -> dict:
        return {"max_atoms": self.max_atoms, "max_orbits": self.max_orbits}


def load_config(path=None, **overrides) -> TrainConfig:
    """A TrainConfig from a JSON or TOML file (any subset of the keys), then the overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrainingConfigError(f"{path}: training config file not found")
        try:
            values = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise TrainingConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({err})") \
                from None
        if not isinstance(values, dict):
            raise TrainingConfigError(f"{path}: expected a table of recipe keys")
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except TypeError as err:
        raise TrainingConfigError(f"{path or 'config'}: {err}") from None


# -- data ------------------------------------------------------------------------------------
def synthetic_stream(generator_options: dict, batch_size: int, wavelength: str, seed: int):
    """The endless `PatternStream` of augmented synthetic crystals every path trains on."""
    return PatternStream(SyntheticSource(generator_options), batch_size=batch_size,
                         augment=default_pipeline("measured"), wavelength=wavelength, seed=seed)


def synthetic_batches(generator_options: dict, batch_size: int, wavelength: str, seed: int, actor_index: int = 0):
    """Batches of `synthetic_stream` seeded per Ray actor (module level: Ray ships it to actors)."""
    yield from synthetic_stream(generator_options, batch_size, wavelength, seed * 1009 + actor_index)


class _Source:
    """The fresh-crystal batches: DataLoader workers, or Ray actors when an address is given."""

    def __init__(self, config: TrainConfig, seed: int):
        self.feed = None
        if config.ray_address:
            make = functools.partial(synthetic_batches, config.generator_options(), config.batch_size,
                                     config.wavelength, seed)
            self.feed = RayBatchFeed(make, n_actors=config.ray_actors, address=config.ray_address)
            self.iterator = iter(self.feed)
        else:
            from torch.utils.data import DataLoader

            stream = synthetic_stream(config.generator_options(), config.batch_size, config.wavelength, seed)
            self.iterator = iter(DataLoader(stream, batch_size=None, num_workers=config.workers,
                                            prefetch_factor=4 if config.workers else None))

    def __next__(self) -> dict:
        return next(self.iterator)

    def close(self):
        if self.feed is not None:
            self.feed.close()
        self.iterator = None


def _fresh_rows(batch: dict, non_crystal_fraction: float,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (n, 2, G), labels (n, 3); -1 rows are non-crystal patterns) of one fresh batch."""
    targets = targets_from_space_groups(batch["space_group"].tolist())
    x = model_input(batch["intensity"], batch["mask"])
    y = torch.stack([targets[h] for h in HEADS], dim=1)
    n_neg = int(round(non_crystal_fraction * x.shape[0]))
    if n_neg:
        inten, mask = non_crystal_patterns(n_neg, CANONICAL_GRID, rng)
        x = torch.cat([x, model_input(inten, mask)])
        y = torch.cat([y, torch.full((n_neg, len(HEADS)), -1, dtype=torch.long)])
    return x, y


def symmetry_loss(logits: dict[str, torch.Tensor], y: torch.Tensor, weights: dict[str, float]) -> torch.Tensor:
    """Weighted cross-entropy per head; rows labelled -1 are pulled to the uniform distribution."""
    crystal = y[:, 0] >= 0
    n = y.shape[0]
    total = logits[HEADS[0]].new_zeros(())
    for j, head in enumerate(HEADS):
        log_p = F.log_softmax(logits[head].float(), dim=1)
        if crystal.any():
            total = total + weights[head] * F.nll_loss(log_p[crystal], y[crystal, j], reduction="sum") / n
        if (~crystal).any():
            total = total + weights[head] * (-log_p[~crystal].mean(dim=1)).sum() / n
    return total


# -- calibration -----------------------------------------------------------------------------
def _draw_fixed(config: TrainConfig, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n fresh crystal patterns plus n/8 non-crystal ones of a stream with its own seed."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for batch in synthetic_batches(config.generator_options(), min(128, n), config.wavelength, seed):
        x, y = _fresh_rows(batch, 0.125, rng)
        xs.append(x)
        ys.append(y)
        if sum(len(v) for v in ys) >= n * 1.125:
            break
    return torch.cat(xs), torch.cat(ys)


def _topk(probs: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Top-k accuracy by the evaluation's rule (a tie counts against the model)."""
    return float(np.mean(true_class_ranks(probs, truth) < k)) if len(truth) else float("nan")


def calibrate(model: SpaceGroupModel, inputs: torch.Tensor, labels: torch.Tensor, quantile: float) -> dict:
    """Set per-head temperatures (NLL on crystals) and the crystallinity threshold; metrics."""
    model.temperatures = {h: 1.0 for h in HEADS}
    raw = model.probabilities(inputs)  # at T = 1: recover logits up to a constant per row
    crystal = labels[:, 0].numpy() >= 0
    temperatures = np.exp(np.linspace(np.log(0.3), np.log(5.0), 25))
    metrics: dict = {}
    for j, head in enumerate(HEADS):
        log_p = np.log(np.clip(raw[head][crystal], 1e-30, None))
        truth = labels[crystal, j].numpy()
        nll = []
        for t in temperatures:
            z = log_p / t
            z = z - z.max(axis=1, keepdims=True)
            lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            nll.append(float(-np.mean(lp[np.arange(len(truth)), truth])))
        model.temperatures[head] = float(temperatures[int(np.argmin(nll))])
        metrics[f"{head}_nll"] = round(min(nll), 4)
    probs = model.probabilities(inputs)
    for j, head in enumerate(HEADS):
        truth = labels[crystal, j].numpy()
        metrics[f"{head}_top1"] = round(_topk(probs[head][crystal], truth, 1), 4)
        metrics[f"{head}_top5"] = round(_topk(probs[head][crystal], truth, 5), 4)
    confidence = probs["crystal_system"].max(axis=1)
    model.crystalline_threshold = float(np.quantile(confidence[crystal], quantile))
    metrics["non_crystal_flagged"] = round(float(np.mean(confidence[~crystal] < model.crystalline_threshold)), 4) \
        if (~crystal).any() else None
    metrics["non_crystal_max_space_group_probability"] = round(float(probs["space_group"][~crystal].max()), 4) \
        if (~crystal).any() else None
    metrics["n_calibration_patterns"] = int(crystal.sum())
    return {"synthetic": metrics}


# -- the run ---------------------------------------------------------------------------------
def _distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun (WORLD_SIZE set); (0, 1, device) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def train_model(out, config: TrainConfig | None = None, progress: bool = True, resume: bool = True,
                stop_after: int | None = None, final_evaluation=None):
    """Train, calibrate and (on rank 0) save a space-group model under `out`; returns it on rank 0.

    stop_after: train at most this many steps in this call, checkpoint and return None (a job
    with a wall-time limit calls again to resume). final_evaluation: `f(model, seed=...) -> dict`
    stored as the card's `real_structures` metrics when `config.evaluate_real` (the command line
    passes `evaluation.spacegroup.evaluate_real_structures`; training does not import evaluations)."""
    config = config or TrainConfig()
    started = time.perf_counter()
    device = resolve_device(config.device)
    rank, world, device = _distributed(device)
    if config.workers and device.type == "cpu" and not config.ray_address:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world - config.workers))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    resnet = config.resnet()
    network = SymmetryClassifier(resnet, head_sizes()).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    clock = time.perf_counter()

    def time_spent() -> float:
        return (time.perf_counter() - clock) / config.max_seconds

    timed = config.max_seconds is not None
    schedule = warmup_cosine_by(optimizer, time_spent) if timed else warmup_cosine(optimizer, config.steps)
    recipe = json.dumps({k: v for k, v in asdict(config).items() if k not in ("device", "evaluate_real")},
                        sort_keys=True)
    step, history = 0, []
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
        if state.get("recipe") == recipe and int(state.get("world", 1)) == world:
            network.load_state_dict(state["network"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            step, history = int(state["step"]), json.loads(state["history"])
    resumed_from = step
    last_step = config.steps if stop_after is None else min(config.steps, step + stop_after)
    trained = network
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    # a resumed run draws new crystals: the stream's seed moves on with the step
    seed = (config.seed * 1_000_003 + step) * 64 + rank
    source = _Source(config, seed)
    rng = np.random.default_rng([config.seed, step, rank, 17])
    replay = ReplayBuffer(config.replay, (2, CANONICAL_GRID.n_points), torch.Generator().manual_seed(seed + 1),
                          y_shape=(len(HEADS),))
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=step, desc="training spacegroup", unit="step")
    network.train()
    correct = seen = 0
    try:
        while step < last_step and not (timed and time_spent() >= 1.0):
            x, y = _fresh_rows(next(source), config.non_crystal_fraction, rng)
            n_fresh = x.shape[0]
            replayed = replay.sample(n_fresh)
            replay.add(x, y)
            if replayed is not None:
                x, y = torch.cat([x, replayed[0]]), torch.cat([y, replayed[1]])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = trained(x)
            loss = symmetry_loss(logits, y, config.loss_weights)
            gradient_step(loss, network, optimizer, schedule)
            step += 1
            with torch.no_grad():  # running top-1 on the fresh crystals (before this step's update)
                fresh = y[:n_fresh, 0] >= 0
                correct += int((logits["space_group"][:n_fresh][fresh].argmax(1) == y[:n_fresh, 0][fresh]).sum())
                seen += int(fresh.sum())
            if step % 25 == 0 or step == config.steps:
                history.append([step, round(float(loss.detach()), 4), round(correct / max(seen, 1), 4)])
                correct = seen = 0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", top1=history[-1][2] if history else None)
            if rank == 0 and (step % config.checkpoint_every == 0 or step == last_step):
                torch.save({"step": step, "network": network.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "recipe": recipe, "world": world,
                            "history": json.dumps(history)}, ckpt)
    finally:
        if bar is not None:
            bar.close()
        source.close()
    train_seconds = time.perf_counter() - started
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0 or (step < config.steps and not timed):
            dist.destroy_process_group()
            return None
    if step < config.steps and not timed:  # stopped early on purpose: the checkpoint holds the run
        return None
    model = SpaceGroupModel(network=network.eval(), grid=CANONICAL_GRID, architecture=resnet)
    inputs, labels = _draw_fixed(config, config.calibration_patterns, config.seed + 104729)
    model.metrics = calibrate(model, inputs, labels, config.crystalline_quantile)
    model.training = {
        "recipe": asdict(config),
        "data": "synthetic crystals of all 230 space groups, generated and simulated on the fly "
                "(xrd_nexus_ml.physics.synthetic + 'measured' augmentations) plus non-crystal patterns",
        "fresh_crystals_seen": int(step * config.batch_size * world), "resumed_from_step": resumed_from,
        "steps_done": step,
        "loss_history": history,
        "seconds": {"training": round(train_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "device": describe_device(device),
        "world_size": world, "torch_threads": torch.get_num_threads(),
    }
    model.save(out)
    ckpt.unlink(missing_ok=True)
    if config.evaluate_real and final_evaluation is not None:
        # after the first save: the trained model is never lost to an evaluation error
        model.metrics["real_structures"] = final_evaluation(model, seed=config.seed)
        model.save(out)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return model

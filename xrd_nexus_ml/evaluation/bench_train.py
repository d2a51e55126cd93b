"""`xrd-nexus-ml bench train-identify`: is the data or the network the bottleneck of training?

Side by side in one run, on an element-substituted AFLOW library of N classes (one reference per
class, as `evaluate scaling` uses):
- generated: patterns per second the training stream draws flat out (`library_stream`, FFT
  renderer), in this process and in DataLoader workers on every core; and the old windowed
  renderer on the same library (a few batches), for the speed-up;
- trained: patterns per second the mixture of experts of `training/identify.py` (its recipe,
  `training.moe_recipe`, from `BuildConfig`) trains on pre-generated batches;
- together: patterns per second trained while one DataLoader worker draws them, as
  `training/identify.py` runs (the network on the other cores).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from training.identify import BuildConfig
from training.moe_recipe import make_recipe
from xrd_nexus_ml.device import cpu_name
from xrd_nexus_ml.evaluation.scaling import substituted_library
from xrd_nexus_ml.identification.stream import PeakCache, ReferenceStream, identification_pipeline
from xrd_nexus_ml.models import RegNetConfig, build_moe
from xrd_nexus_ml.physics import PowderSimulator


class _Batches(IterableDataset):
    """The stream as a DataLoader source; each worker draws with its own seed on one thread. The
    stream has drawn once in this process, so workers inherit its flat cache and impurity pool."""

    def __init__(self, stream: ReferenceStream, seed: int):
        self.stream, self.seed = stream, seed

    def __iter__(self):
        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        seed = self.seed + 7919 * (info.id if info is not None else 0)
        stream = self.stream  # this worker's own copy
        stream.rng, stream.generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
        for draw in stream:
            yield draw.inputs, torch.from_numpy(draw.reference)


def _rate(batches, batch_size: int, seconds: float) -> float:
    return batches * batch_size / seconds if seconds > 0 else float("nan")


def _draw_rate(stream: ReferenceStream, batches: int) -> float:
    stream.draw()  # first call builds the flat cache
    started = time.perf_counter()
    for _ in range(batches):
        stream.draw()
    return _rate(batches, stream.batch_size, time.perf_counter() - started)


def _loader_rate(stream: ReferenceStream, workers: int, batches: int, seed: int, step=None) -> float:
    """Patterns/s from DataLoader workers, timed from the first batch's arrival (start-up left out);
    `step(x, refs)` runs on each batch in this process when given."""
    stream.draw()  # the flat cache and pool are built here, once, before the workers fork
    loader = iter(DataLoader(_Batches(stream, seed), batch_size=None, num_workers=workers, prefetch_factor=4))
    try:
        x, refs = next(loader)
        if step is not None:
            step(x, refs)
        started = time.perf_counter()
        for _ in range(batches):
            x, refs = next(loader)
            if step is not None:
                step(x, refs)
        return _rate(batches, stream.batch_size, time.perf_counter() - started)
    finally:
        del loader


def bench_train_identify(classes: int = 1000, batch_size: int = 256, batches: int = 20, seed: int = 0,
                         old_batches: int = 2, workers: int | None = None) -> dict:
    """Generation, training and both together, in patterns per second (see the module doc).
    workers: DataLoader workers for the flat-out generation figure (default: one per core)."""
    threads = torch.get_num_threads()
    cpus = os.cpu_count() or 1
    workers = cpus if workers is None else workers
    started = time.perf_counter()
    library = substituted_library(int(classes), seed)
    library_seconds = time.perf_counter() - started
    simulator = PowderSimulator(wavelength="CuKa1", device="cpu")
    cache = PeakCache.build([p.structure for p in library.phases], simulator)
    cache_seconds = time.perf_counter() - started - library_seconds
    pool = cache.peaks(range(len(cache))) if len(cache) > 1 else None
    references = np.arange(len(cache))

    def stream(renderer: str, s: int = seed) -> ReferenceStream:
        return ReferenceStream(cache, simulator, references, batch_size, s, identification_pipeline(pool),
                               renderer=renderer)

    generated = _draw_rate(stream("fft"), batches)
    generated_workers = _loader_rate(stream("fft"), workers, 2 * batches, seed + 1) if workers else None
    old = _draw_rate(stream("windowed"), old_batches) if old_batches else None

    config = BuildConfig()
    plan = library.experts()
    torch.manual_seed(seed)
    network = build_moe(plan.expert_classes, plan.expert_coarse, len(library.classes),
                        RegNetConfig.from_dict(config.trunk), RegNetConfig.from_dict(config.expert),
                        config.embedding_dim, config.k, gate_bins=config.gate_bins, gate_hidden=config.gate_hidden,
                        expert_bins=config.expert_bins, expert_bin_channels=config.expert_bin_channels)
    recipe = make_recipe(config.recipe, network, 10 * (batches + 1), lr=config.lr, weight_decay=config.weight_decay)
    phase_class = library.phase_classes

    def step(x: torch.Tensor, refs: torch.Tensor) -> None:
        recipe.step(x, torch.as_tensor(phase_class[np.asarray(refs)], dtype=torch.long))

    ready = [stream("fft", seed + 2).draw() for _ in range(min(4, batches))]
    step(ready[0].inputs, ready[0].reference)  # first call pays for lazy set-up
    t0 = time.perf_counter()
    for i in range(batches):
        step(ready[i % len(ready)].inputs, ready[i % len(ready)].reference)
    trained = _rate(batches, batch_size, time.perf_counter() - t0)

    # as training/identify.py runs: one worker draws, the network takes the other cores
    torch.set_num_threads(max(1, cpus - 1))
    try:
        together = _loader_rate(stream("fft"), 1, batches, seed + 3, step)
    finally:
        torch.set_num_threads(threads)
    return {
        "what": "patterns per second: generated by the identification training stream (FFT renderer) in this "
                "process and in DataLoader workers on every core, and by the old windowed renderer; trained by "
                "the mixture of experts of training/identify.py on pre-generated batches; and both together "
                "(one DataLoader worker generating while the network trains)",
        "cpu": cpu_name(),
        "cpu_count": cpus,
        "torch_threads": threads,
        "torch_threads_training_together": max(1, cpus - 1),
        "classes": len(library.classes),
        "n_experts": len(plan.elements),
        "n_parameters": int(sum(p.numel() for p in network.parameters())),
        "batch_size": batch_size,
        "batches": batches,
        "library_seconds": round(library_seconds, 2),
        "peak_cache_seconds": round(cache_seconds, 2),
        "generated_patterns_per_s": generated,
        "generated_patterns_per_s_workers": generated_workers,
        "generator_workers": workers,
        "old_generated_patterns_per_s": old,
        "speedup_over_old": generated / old if old else None,
        "trained_patterns_per_s": trained,
        "together_patterns_per_s": together,
        "bottleneck": "network" if generated > trained else "data",
    }

"""`xrd-nexus-ml bench infer`: latency and throughput of an identification model, as JSON.

Two things are timed, side by side in one run, on the same patterns:
- the network alone (prepared input -> calibrated probabilities and prototype cosines), one
  pattern per call (latency) and in batches (throughput): what the live callback pays per frame;
- the whole identification (`Identifier.identify`: preparation, network, reference fit and
  subtraction for every phase found), one pattern per call and all at once.
Test patterns are the model's own reference sticks rendered with random peak widths, a
lattice mismatch and Poisson noise, so the benchmark needs nothing but the bundle.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import torch

from xrd_nexus_ml.bundle import resolve_bundle
from xrd_nexus_ml.device import describe_device, resolve_device
from xrd_nexus_ml.identification.identifier import Identifier, _gaussian_sum
from xrd_nexus_ml.identification.model import IdentificationModel
from xrd_nexus_ml.preprocess.background import model_input
from xrd_nexus_ml.preprocess.frames import prepare_frames


def test_patterns(model: IdentificationModel, n: int, seed: int = 0) -> np.ndarray:
    """(n, G) noisy patterns of the model's references on its grid (max ~1000 counts + background)."""
    rng = np.random.default_rng(seed)
    grid = model.grid.values
    out = np.empty((n, grid.size))
    for i in range(n):
        q, inten = model.sticks[i % len(model.sticks)]
        clean = _gaussian_sum(grid, q * (1 + rng.uniform(-0.01, 0.01)), inten, rng.uniform(0.006, 0.02))
        clean = 1000 * clean / max(clean.max(), 1e-12) + 50 + 20 * grid
        out[i] = rng.poisson(clean)
    return out


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = 1000 * np.asarray(seconds)
    return float(np.median(ms)), float(np.percentile(ms, 99))


def bench_infer(model: str | Path | None = None, n: int = 512, batch_size: int = 256, single: int = 200,
                device: str = "cpu") -> dict:
    """Latency and throughput of an identification model (a bundle folder or shipped name; None: the
    default), its network alone and end to end."""
    model_dir = resolve_bundle(model, task="identification")
    model = IdentificationModel.load(model_dir)
    identifier = Identifier(model)
    patterns = test_patterns(model, n)
    prepared = prepare_frames(patterns, grid=model.grid)
    inputs = torch.from_numpy(model_input(prepared.x, prepared.mask))
    dev = resolve_device(device)
    model.network.to(dev)
    x = inputs.to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    model.predict(x[:batch_size])  # warm-up
    latencies = []
    for i in range(single):
        t = time.perf_counter()
        model.predict(x[i % n:i % n + 1])
        sync()
        latencies.append(time.perf_counter() - t)
    t = time.perf_counter()
    model.predict(x, batch_size=batch_size)
    sync()
    batched = time.perf_counter() - t
    median, p99 = _percentiles(latencies)
    model.network.to("cpu")
    e2e_single = []
    for i in range(min(single, 100)):
        t = time.perf_counter()
        identifier.identify(patterns[i:i + 1])
        e2e_single.append(time.perf_counter() - t)
    t = time.perf_counter()
    identifier.identify(patterns)
    e2e_batched = time.perf_counter() - t
    e2e_median, e2e_p99 = _percentiles(e2e_single)
    size = sum(f.stat().st_size for f in Path(model_dir).iterdir() if f.is_file())
    return {
        "what": "network: prepared pattern -> calibrated probabilities + prototype cosines; end_to_end: "
                "Identifier.identify (preparation, network, fit and subtraction of every phase found)",
        "device": describe_device(dev),
        "throughput_patterns_per_s": n / batched,
        "latency_median_ms": median,
        "latency_p99_ms": p99,
        "end_to_end": {"throughput_patterns_per_s": n / e2e_batched, "latency_median_ms": e2e_median,
                       "latency_p99_ms": e2e_p99, "device": describe_device("cpu")},
        "batch_size": batch_size,
        "n_patterns": n,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_mb": size / 2**20,
        "n_parameters": model.n_parameters,
        "n_classes": len(model.classes),
        "n_experts": len(model.plan.elements),
        "model": str(model_dir),
    }

"""`xrd-nexus-ml bench callback`: what live classification costs a RunEngine, measured side by side.

The same fly plan and the same flyer (1D patterns as event pages, the way kHz detectors reach
callbacks) run with and without the `ClassifierCallback` subscribed:

- unpaced: the RunEngine pushes frames as fast as it can; events/s with and without;
- paced at `rate_hz` (pages released on a fixed clock, as a detector would): the extra wall
  time of the run with the callback (`overhead`), the time the RunEngine spent inside the
  callback per document (`max_wait_ms`, `re_ms_per_frame`), frames lost, and the latency of
  each prediction from the frame reaching the callback;
- long: `n_frames` paced frames with the callback, resident memory sampled along the way
  (`rss_growth_mb`: last sample minus the one after the first tenth).
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time

import numpy as np

from bluesky_callbacks.classifier import ClassifierCallback
from bluesky_callbacks.sim import PatternFlyer
from xrd_nexus_ml.device import describe_device
from xrd_nexus_ml.inference import InferenceEngine
from xrd_nexus_ml.transitions import simulate_ramp


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Timed:
    """Wraps a callback and records how long the RunEngine waited on each call."""

    def __init__(self, callback):
        self.callback = callback
        self.waits: list[float] = []

    def __call__(self, name, doc):
        t = time.perf_counter()
        try:
            return self.callback(name, doc)
        finally:
            self.waits.append(time.perf_counter() - t)


class _Predictions:
    """Counts what the derived run says, keeping only the latencies (bounded by the run length)."""

    def __init__(self):
        self.latency: list[float] = []
        self.flags: dict[str, int] = {}
        self.seq_nums = 0

    def __call__(self, name, doc):
        if name == "event_page":
            self.latency.extend(doc["data"]["latency"])
            self.seq_nums += len(doc["seq_num"])
            for f in doc["data"]["flag"]:
                self.flags[f] = self.flags.get(f, 0) + 1


def _fly_plan(flyer, repeats: int, rate_hz: float | None, page: int):
    """One run: `repeats` × (kickoff, complete, collect) of the flyer; paced pages when rate_hz."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    @bpp.run_decorator(md={"plan_name": "bench_callback", "rate_hz": rate_hz})
    def inner():
        t0 = time.monotonic()
        sent = 0
        for _ in range(repeats):
            yield from bps.kickoff(flyer, wait=True)
            yield from bps.complete(flyer, wait=True)
            if rate_hz:  # release the frames no earlier than a detector at rate_hz would
                due = t0 + (sent + flyer.frames.shape[0]) / rate_hz
                if due > time.monotonic():
                    yield from bps.sleep(due - time.monotonic())
            yield from bps.collect(flyer)
            sent += flyer.frames.shape[0]

    return inner()


def bench_callback(n_frames: int = 100_000, rate_hz: float = 1000.0, page_size: int = 100,
                   compare_frames: int = 5000, batch_size: int = 256, max_queue: int = 8192,
                   device: str = "auto", spacegroup_model: str | None = None,
                   identification_model: str | None = None, identification_options: dict | None = None,
                   transition_model: str = "default") -> dict:
    """Measure the callback's cost on the RunEngine; returns the JSON record.
    spacegroup_model / identification_model: also run these live models (default: only the
    phase-transition model and its open-set check); identification_options: see
    `InferenceEngine.from_bundles`; transition_model: "default", a bundle folder or "auto"."""
    from bluesky import RunEngine

    engine = InferenceEngine.from_bundles(transition_model, device=device, spacegroup_model=spacegroup_model,
                                          identification_model=identification_model,
                                          identification_options=identification_options)
    ramp = simulate_ramp(np.linspace(5, 55, page_size), transition_pressure=30.0, noise=0.02, seed=0)
    flyer = PatternFlyer.from_ramp(ramp, frame_rate_hz=rate_hz, page_size=page_size)

    def run(with_callback: bool, frames: int, paced: bool, sample_rss: bool = False) -> dict:
        RE = RunEngine({})
        classifier, timed, predictions = None, None, _Predictions()
        if with_callback:
            classifier = ClassifierCallback(engine, batch_size=batch_size, max_queue=max_queue)
            classifier.subscribe(predictions)
            timed = _Timed(classifier)
            RE.subscribe(timed)
        repeats = max(1, math.ceil(frames / page_size))
        rss = []
        if sample_rss:
            every = max(1, repeats // 20)
            RE.subscribe(lambda name, doc: rss.append(_rss_mb()) if name == "event_page" and
                         doc["seq_num"][0] // page_size % every == 0 else None)
        gc.collect()
        t = time.perf_counter()
        RE(_fly_plan(flyer, repeats, rate_hz if paced else None, page_size))
        wall = time.perf_counter() - t
        out = {"frames": repeats * page_size, "wall_s": wall, "events_per_s": repeats * page_size / wall}
        if classifier is not None:
            classifier.flush(600)
            drained = time.perf_counter() - t
            counts = classifier.counts()
            classifier.close()
            waits = np.asarray(timed.waits) * 1e3
            lat = np.asarray(predictions.latency)
            out.update(
                max_wait_ms=float(waits.max()), re_ms_per_frame=float(waits.sum() / out["frames"]),
                latency_median_ms=float(np.median(lat)) if lat.size else math.nan,
                latency_p99_ms=float(np.percentile(lat, 99)) if lat.size else math.nan,
                frames_lost=int(out["frames"] - counts["classified"]), frames_shed=counts["shed"],
                frames_without_record=int(out["frames"] - predictions.seq_nums),
                seconds_until_all_classified=drained, flags=predictions.flags,
                drain_frames_per_s=counts["classified"] / drained if drained > 0 else math.nan)
        if rss:
            start = rss[max(1, len(rss) // 10)]
            out.update(rss_start_mb=start, rss_end_mb=rss[-1], rss_growth_mb=rss[-1] - start, rss_samples=len(rss))
        return out

    run(True, page_size * 4, False)  # warm up: imports, first model call, caches
    unpaced_without = run(False, compare_frames, False)
    unpaced_with = run(True, compare_frames, False)
    paced_without = run(False, compare_frames, True)
    paced_with = run(True, compare_frames, True)
    long = run(True, n_frames, True, sample_rss=True)
    return {
        "events_per_s_without": unpaced_without["events_per_s"],
        "events_per_s_with": unpaced_with["events_per_s"],
        "overhead_unpaced": 1.0 - unpaced_with["events_per_s"] / unpaced_without["events_per_s"],
        "rate_hz": rate_hz,
        "overhead": paced_with["wall_s"] / paced_without["wall_s"] - 1.0,
        "drain_frames_per_s": unpaced_with["drain_frames_per_s"],  # frames classified a second, flat out
        "drain_frames_per_s_paced": long["drain_frames_per_s"],
        "frames_shed": long["frames_shed"],
        "latency_median_ms": long["latency_median_ms"],
        "latency_p99_ms": long["latency_p99_ms"],
        "max_wait_ms": max(paced_with["max_wait_ms"], long["max_wait_ms"]),
        "re_ms_per_frame": long["re_ms_per_frame"],
        "frames_lost": long["frames_lost"],
        "rss_growth_mb": long["rss_growth_mb"],
        "n_frames": long["frames"],
        "device": str(engine.device),
        "hardware": describe_device(engine.device),
        "models": [p.model_id for p in engine.provenance],
        "runs": {"unpaced_without": unpaced_without, "unpaced_with": unpaced_with, "paced_without": paced_without,
                 "paced_with": paced_with, "long": long},
        "settings": {"page_size": page_size, "batch_size": batch_size, "max_queue": max_queue,
                     "compare_frames": compare_frames, "python": platform.python_version()},
    }

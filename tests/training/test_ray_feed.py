"""Ray feed: real Ray actors simulating patterns into a bounded queue, read as torch batches."""

import sys
import time
from functools import partial

import pytest
import torch
from pymatgen.core import Lattice, Structure

from training.ray_feed import RayBatchFeed
from training.streams import ListSource, PatternStream
from xrd_nexus_ml.pattern import CANONICAL_GRID

ray = pytest.importorskip("ray")
# the Ray workers cannot import this test module (pytest puts tests/ on the path of this process only),
# so the batch functions below travel to the actors by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

BATCH = 4


def structures():
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5] * 3])
    cscl = Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3])
    return [rocksalt, cscl]


def pattern_batches(actor_index, max_batches=None):
    """Simulated batches seeded by the actor index, each tagged with the actor that made it."""
    source = ListSource(structures(), labels={"space_group": [225, 221]})
    for batch in PatternStream(source, batch_size=BATCH, seed=actor_index, max_batches=max_batches):
        batch["actor"] = torch.full((BATCH,), actor_index)
        yield batch


def counted_batches(actor_index, n=2, fail_actor=None):
    """Cheap batches (actor, k); actor `fail_actor` raises after its first batch."""
    k = 0
    while n is None or k < n:
        if actor_index == fail_actor and k == 1:
            raise ValueError(f"simulated generator failure in actor {actor_index}")
        yield {"value": torch.tensor([actor_index, k])}
        k += 1


@pytest.fixture(scope="module")
def local_ray():
    # a small object store: the batches are tiny, and the default (30% of RAM) is wasteful on a CI machine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)
    yield
    ray.shutdown()


@pytest.mark.timeout(120)
def test_two_actors_feed_simulated_batches(local_ray):
    with RayBatchFeed(pattern_batches, n_actors=2, queue_size=4) as feed:
        by_actor = {}
        deadline = time.monotonic() + 60
        while len(by_actor) < 2 and time.monotonic() < deadline:
            batch = next(feed)
            assert batch["intensity"].shape == (BATCH, CANONICAL_GRID.n_points)
            assert batch["intensity"].dtype == torch.float32 and torch.isfinite(batch["intensity"]).all()
            assert batch["mask"].shape == (BATCH, CANONICAL_GRID.n_points) and batch["mask"].dtype == torch.bool
            assert batch["space_group"].dtype == torch.long and set(batch["space_group"].tolist()) <= {221, 225}
            by_actor.setdefault(int(batch["actor"][0]), batch)
    assert set(by_actor) == {0, 1}  # both actors contributed
    assert not torch.equal(by_actor[0]["intensity"], by_actor[1]["intensity"])  # seeded apart


@pytest.mark.timeout(120)
def test_failing_actor_raises_instead_of_hanging(local_ray):
    # actor 0 keeps producing (and blocks on the full queue); actor 1 fails after one batch
    with RayBatchFeed(partial(counted_batches, n=None, fail_actor=1), n_actors=2, queue_size=2) as feed:
        deadline = time.monotonic() + 60
        with pytest.raises(RuntimeError, match="actor 1 .*simulated generator failure in actor 1"):
            while time.monotonic() < deadline:
                next(feed)


@pytest.mark.timeout(120)
def test_finite_generators_end_and_close_is_idempotent(local_ray):
    feed = RayBatchFeed(partial(counted_batches, n=2), n_actors=2, queue_size=8)
    actors = [*feed._actors, feed._queue.actor]  # (the state API needs the dashboard, which is off)
    assert sorted(tuple(b["value"].tolist()) for b in feed) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    feed.close()
    feed.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(feed)
    assert ray.is_initialized()  # the feed reused the fixture's Ray, so it leaves it running
    for actor in actors:  # ray.kill is asynchronous: a call may still be answered just after close()
        assert _dies_within(actor, seconds=30)
    deadline = time.monotonic() + 30  # the producers' CPUs go back to the pool
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def _dies_within(actor, seconds: float) -> bool:
    """True once a call to `actor` fails with RayActorError (polled until `seconds` have passed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=seconds)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.2)
    return False


def test_missing_ray_asks_for_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match="pip install 'ray>=2.9'"):
        RayBatchFeed(counted_batches)

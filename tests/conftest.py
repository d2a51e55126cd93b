"""Fixtures shared by the whole suite: test data, document collection, NeXus runs and checksums,
crystal structures, torch threads; and two guards on every test: no thread may outlive it, and
a test marked `gpu` is skipped without CUDA.

The tree mirrors the packages (tests/xrd_nexus_ml/<subpackage>/test_*.py, tests/bluesky_callbacks/,
tests/nexus_definitions/, tests/training/). setup.cfg imports test modules with
``--import-mode=importlib``: no test folder is ever put on sys.path, so tests/xrd_nexus_ml cannot
shadow the real package, and two test modules may share a name in different folders. Helpers are
therefore fixtures (here, or in a folder's conftest.py), never imported from another test module;
the one helper module, ``nexus_runs`` (tests/data/nexus, also run by the crash-test child process),
is importable through ``pythonpath`` in setup.cfg.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

pytest_plugins = ["pytester"]  # the tests of the guards below run pytest on small test files

TESTS = Path(__file__).parent
DATA = TESTS / "data"
EXAMPLES = TESTS.parent / "xrd_nexus_ml" / "data" / "examples"
#: The 56 reference CIFs of the Li-Mn-Ti-O-F example (shipped with the package for the demo).
LMTOF_REFERENCES = EXAMPLES / "references"
_LMTOF_SPECTRA = [
    *(EXAMPLES / n for n in ("MnO.xy", "TiO2.xy", "Mn2O3.xy")),
    DATA / "measured" / "Li2MnO3+MnO+TiO2.xy",
    *sorted((DATA / "autoanalyzer" / "li-mn-ti-o-f" / "Spectra").glob("*.xy")),
]


def pytest_addoption(parser):
    parser.addini("thread_leak_timeout", "seconds a test's threads get to end after the test (default 5)",
                  default="5")


# -- test data ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: measured patterns, the XRD-AutoAnalyzer examples, the NeXus test helpers."""
    return DATA


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The examples shipped with the package: MnO.xy, TiO2.xy, Mn2O3.xy and references/."""
    return EXAMPLES


@pytest.fixture(scope="session")
def lmtof_references() -> Path:
    """The folder of the 56 Li-Mn-Ti-O-F reference CIFs."""
    return LMTOF_REFERENCES


@pytest.fixture(scope="session")
def lmtof_spectra(tmp_path_factory) -> Path:
    """A folder holding all 8 measured patterns of the Li-Mn-Ti-O-F example (names carry the truth);
    the example's files lie in three places."""
    folder = tmp_path_factory.mktemp("lmtof_spectra")
    for path in _LMTOF_SPECTRA:
        shutil.copy(path, folder / path.name)
    assert len(list(folder.glob("*.xy"))) == 8
    return folder


# -- crystal structures ------------------------------------------------------------------------------


@functools.cache  # building a pymatgen structure from its space group takes ~1 s
def _rocksalt(a: float, species: tuple[str, str]):
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="session")
def rocksalt():
    """rocksalt(a=5.64, species=("Na", "Cl")): a rock-salt structure (NaCl by default), a fresh copy
    each call (built once per cell and species)."""

    def build(a: float = 5.64, species=("Na", "Cl")):
        return _rocksalt(float(a), tuple(species)).copy()

    return build


# -- torch -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch intra-op thread for a module of tiny models: fastest for small ops, and it avoids
    OpenMP threads spin-waiting on each other when the suite shares its cores with other work
    (which slows small ops by 10-100x). Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- Bluesky documents and NeXus files ---------------------------------------------------------------


class Documents:
    """A callback that keeps every (name, doc) it receives, in order."""

    def __init__(self):
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name, doc):
        self.docs.append((name, doc))

    def clear(self):
        self.docs.clear()

    def named(self, name) -> list[dict]:
        """The documents of one kind ("start", "event", ...), in order."""
        return [d for n, d in self.docs if n == name]

    def page_data(self) -> dict[str, list]:
        """The data of every event page, concatenated key by key (a derived run's predictions)."""
        out: dict[str, list] = {}
        for page in self.named("event_page"):
            for key, values in page["data"].items():
                out.setdefault(key, []).extend(values)
        return out


@pytest.fixture(scope="session")
def documents():
    """``documents()`` makes a new `Documents` collector: subscribe it to a RunEngine or a callback."""
    return Documents


@pytest.fixture(scope="session")
def write_nexus_run():
    """``write_nexus_run(folder, n_frames=4)``: a NeXus file written by NexusWriter from real Bluesky
    documents (a raw pressure ramp in event pages and its live predictions, one frame late); returns
    its path."""
    import nexus_runs as runs

    from bluesky_callbacks.nexus_writer import NexusWriter

    def write(folder: Path, n_frames: int = 4) -> Path:
        raw = runs.raw_run(n_frames, paged=True)
        derived = runs.derived_run(raw, n_frames)
        writer = NexusWriter(folder)
        for name, doc in runs.interleaved(raw, derived, lag=1):
            writer(name, doc)
        return Path(writer.paths[raw.uid])

    return write


def _checksums(path: Path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        def visit(name):  # every link, so a dataset linked from a new group is still checked at its old path
            obj = f[name]
            attrs = {k: repr(v) for k, v in obj.attrs.items()}
            body = obj[()].tobytes() if isinstance(obj, h5py.Dataset) and obj.dtype.kind != "O" else repr(
                obj[()]).encode() if isinstance(obj, h5py.Dataset) else b""
            out[name] = hashlib.sha256(body + repr(sorted(attrs.items())).encode()).hexdigest()
        f.visit_links(visit)
        out["/"] = repr(sorted((k, repr(v)) for k, v in f.attrs.items()))
    return out


@pytest.fixture(scope="session")
def checksums():
    """``checksums(path)``: a digest of every dataset's bytes and every attribute of an HDF5 file,
    to prove that appending to it changed nothing that was there."""
    return _checksums


# -- every test: no leaked threads ---------------------------------------------------------------------

#: Threads that libraries keep for the rest of the process by design, idle between uses; by name.
#: - "bluesky-run-engine": bluesky starts one event-loop thread per RunEngine and never stops it
#:   (a RunEngine has no close()); run_demo and bench_callback make RunEngines of their own.
#: - "tqdm_monitor": tqdm's single monitor thread (tqdm.tqdm.monitor_interval).
#: - "zarr_io": zarr's process-wide I/O event loop (tiled's zarr storage, behind RunStore).
LIBRARY_THREAD_NAMES = frozenset({"bluesky-run-engine", "tqdm_monitor", "zarr_io"})


def library_threads() -> set[threading.Thread]:
    """The threads of LIBRARY_THREAD_NAMES, plus two pools whose threads have generic names:
    the default executor of zarr's I/O loop ("asyncio_N": zarr reads files through
    asyncio.to_thread) and dask's process-wide default pool ("ThreadPoolExecutor-N_M": tiled's
    client reads arrays through dask)."""
    keep = {t for t in threading.enumerate() if t.name in LIBRARY_THREAD_NAMES}
    zarr_sync = sys.modules.get("zarr.core.sync")
    loop = getattr(zarr_sync, "loop", [None])[0]
    executor = getattr(loop, "_default_executor", None)
    keep |= set(getattr(executor, "_threads", ()))
    dask_threaded = sys.modules.get("dask.threaded")
    keep |= set(getattr(getattr(dask_threaded, "default_pool", None), "_threads", ()))
    return keep


def leaked_threads(before: set[threading.Thread], timeout: float) -> list[threading.Thread]:
    """Threads started since `before` that are still alive after up to `timeout` seconds (all of
    them together) to end, library threads (see `library_threads`) aside."""
    keep = library_threads()
    started = [t for t in threading.enumerate() if t not in before and t not in keep]
    deadline = time.monotonic() + timeout
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in started if t.is_alive()]


@pytest.fixture(scope="session")
def thread_leak_check():
    """The guard's check, ``thread_leak_check(before, timeout)``, for tests of the guard itself."""
    return leaked_threads


@pytest.fixture(autouse=True)
def no_thread_leaks(request):
    """Every thread a test starts (RunEngine plans' timers, ClassifierCallback workers, 0MQ proxies
    and listeners, tiled servers, Ray drivers, DataLoader feeders, ...) must end with it: a thread
    still running a few seconds after the test fails it. Threads of module- or session-scoped
    fixtures are set up before this snapshot and are not counted."""
    before = set(threading.enumerate())
    yield
    leaked = leaked_threads(before, float(request.config.getini("thread_leak_timeout")))
    if leaked:
        names = ", ".join(f"{t.name} ({getattr(t, '_target', None)!r})" for t in leaked)
        pytest.fail(f"{len(leaked)} thread(s) started by the test still running after it: {names}", pytrace=False)


# -- every test: `gpu` needs CUDA ----------------------------------------------------------------------


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped when torch sees no CUDA device; nothing else may need one."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked gpu: needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu:
        item.add_marker(skip)


class BeamlineFile(NamedTuple):
    path: Path
    pressures: np.ndarray  # GPa, one per frame
    transition: float  # GPa, the simulated B1 -> rB1 transition


@pytest.fixture(scope="session")
def beamline_file():
    """``beamline_file(path)``: a compression measured elsewhere, as a NeXus file: frames on 2θ
    (degrees), pressure in GPa, energy in keV; 12 frames from 8 to 52 GPa across a transition at 30 GPa.
    ``pressures=``: other frames, in acquisition order (a steered scan's); ``start_document=``: kept
    in ``entry/bluesky/start`` as a live writer keeps it."""
    import h5py

    from xrd_nexus_ml.transitions import simulate_ramp

    def write(path: Path, transition: float = 30.0, pressures=None, start_document: dict | None = None,
              noise: float = 0.02, seed: int = 21) -> BeamlineFile:
        pressures = np.linspace(8, 52, 12) if pressures is None else np.asarray(pressures, dtype=float)
        ramp = simulate_ramp(pressures, transition_pressure=transition, noise=noise, seed=seed)
        with h5py.File(path, "w") as f:
            entry = f.create_group("entry")
            entry.attrs.update(NX_class="NXentry", default="data")
            mono = entry.create_group("instrument/monochromator")
            entry["instrument"].attrs["NX_class"] = "NXinstrument"
            mono.attrs["NX_class"] = "NXmonochromator"
            mono.create_dataset("energy", data=ramp.energy_kev).attrs["units"] = "keV"
            sample = entry.create_group("sample")
            sample.attrs["NX_class"] = "NXsample"
            sample.create_dataset("pressure", data=ramp.pressures).attrs["units"] = "GPa"
            data = entry.create_group("data")
            data.attrs.update(NX_class="NXdata", signal="counts", axes=[".", "two_theta"])
            data.create_dataset("counts", data=ramp.intensity * 1e4)
            data.create_dataset("two_theta", data=ramp.two_theta).attrs["units"] = "degrees"
            if start_document is not None:
                bluesky = entry.create_group("bluesky")
                bluesky.attrs["NX_class"] = "NXcollection"
                bluesky.create_dataset("start", data=json.dumps(start_document), dtype=h5py.string_dtype("utf-8"))
        return BeamlineFile(path, ramp.pressures, transition)

    return write

"""Fixtures shared by the whole suite: test data and HDF5 checksums.

The tree mirrors the packages (tests/xrd_nexus_ml/<subpackage>/test_*.py, tests/bluesky_callbacks/,
tests/nexus_definitions/, tests/training/). setup.cfg imports test modules with
``--import-mode=importlib``: no test folder is ever put on sys.path, so tests/xrd_nexus_ml cannot
shadow the real package, and two test modules may share a name in different folders. Helpers are
therefore fixtures (here, or in a folder's conftest.py), never imported from another test module;
the one helper module, ``nexus_runs`` (tests/data/nexus, also run by the crash-test child process),
is importable through ``pythonpath`` in setup.cfg.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

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

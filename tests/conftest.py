"""Shared test data: the XRD-AutoAnalyzer Li-Mn-Ti-O-F example, whose files lie in three places."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
EXAMPLES = TESTS.parent / "xrd_nexus_ml" / "data" / "examples"
#: The 56 reference CIFs of the Li-Mn-Ti-O-F example (shipped with the package for the demo).
LMTOF_REFERENCES = EXAMPLES / "references"
_LMTOF_SPECTRA = [
    *(EXAMPLES / n for n in ("MnO.xy", "TiO2.xy", "Mn2O3.xy")),
    TESTS / "data" / "measured" / "Li2MnO3+MnO+TiO2.xy",
    *sorted((TESTS / "data" / "autoanalyzer" / "li-mn-ti-o-f" / "Spectra").glob("*.xy")),
]


@pytest.fixture(scope="session")
def lmtof_spectra(tmp_path_factory) -> Path:
    """A folder holding all 8 measured patterns of the Li-Mn-Ti-O-F example (names carry the truth)."""
    folder = tmp_path_factory.mktemp("lmtof_spectra")
    for path in _LMTOF_SPECTRA:
        shutil.copy(path, folder / path.name)
    assert len(list(folder.glob("*.xy"))) == 8
    return folder

"""Fixtures of the identification tests: the second XRD-AutoAnalyzer example (Li-La-Zr-O)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def llzo_dir(data_dir) -> Path:
    """tests/data/autoanalyzer/li-la-zr-o: References/ (28 CIFs) and Spectra/ (one lab pattern)."""
    return data_dir / "autoanalyzer" / "li-la-zr-o"

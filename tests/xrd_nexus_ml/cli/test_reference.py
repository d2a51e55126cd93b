"""docs/cli.md is what the parsers say today (regenerate: python -m xrd_nexus_ml.cli.reference > docs/cli.md)."""

from __future__ import annotations

from pathlib import Path

from xrd_nexus_ml.cli.reference import reference

DOC = Path(__file__).resolve().parents[3] / "docs" / "cli.md"


def test_the_cli_reference_matches_the_parsers():
    text = reference()
    assert "## `xrd-nexus-ml classify`" in text and "--spacegroup-model" in text
    assert DOC.read_text() == text, "docs/cli.md is stale: python -m xrd_nexus_ml.cli.reference > docs/cli.md"

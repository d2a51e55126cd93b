"""The README's front-door example runs as printed (from the repository root)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_front_door_example_runs_and_finds_mno():
    block = next(b for b in python_blocks((ROOT / "README.md").read_text()) if "import xrd_nexus_ml as xnm" in b)
    out = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "identification/default" in lines[0]
    assert lines[1].split()[0] == "MnO"  # the example pattern is MnO, and the model says so
    assert 0.0 < float(lines[1].split()[1]) <= 1.0


def test_the_readme_stays_short_and_links_only_to_files_that_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(((?:docs|xrd_nexus_ml)/[^)#]+)", text):
        assert (ROOT / target).exists(), target

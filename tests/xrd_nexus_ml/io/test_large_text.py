"""A long text pattern is read in memory proportional to its size (a 10^7-line file took 22 times its
size; now about 2.4 times: `python -c` figures in docs/benchmarks.md)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from xrd_nexus_ml.io import read_pattern


def test_a_long_text_pattern_needs_a_few_times_its_size(tmp_path):
    n = 300_000
    x = np.linspace(5.0, 120.0, n)
    path = tmp_path / "long.xy"
    with open(path, "w") as fh:
        fh.write("# wavelength = 1.5406 A\n# 2theta counts\n")
        np.savetxt(fh, np.column_stack([x, 100 + 50 * np.sin(x)]), fmt="%.6f %.3f")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        pattern = read_pattern(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pattern.n_points == n and pattern.wavelength == 1.5406
    assert np.allclose(pattern.x, x, atol=1e-6)
    assert peak < 8 * size, f"peak {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


def test_a_latin1_header_is_still_read(tmp_path):
    path = tmp_path / "latin.xy"
    path.write_bytes("# wavelength 1.5406 \xc5\n10 1\n20 2\n30 1\n".encode("latin-1"))
    pattern = read_pattern(path)
    assert pattern.n_points == 3 and pattern.wavelength == 1.5406

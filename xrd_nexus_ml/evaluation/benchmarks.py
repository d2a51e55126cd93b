"""Benchmarks that print JSON: ours and the reference measured side by side in one run.

`bench_simulate`: pymatgen's XRDCalculator (stick pattern, then the same Gaussian Caglioti
broadening in numpy, drawn on a window around each peak as ours is) against the batched
simulator, on the same structures and the same 2θ grid. Timings exclude loading the
structures; ours includes converting pymatgen Structures to arrays.
"""

from __future__ import annotations

import math
import resource
import time

import numpy as np
import torch

from xrd_nexus_ml.device import describe_device
from xrd_nexus_ml.physics.crystal import as_crystal_arrays
from xrd_nexus_ml.physics.profiles import PeakProfile, RenderGrid
from xrd_nexus_ml.physics.simulator import PowderSimulator
from xrd_nexus_ml.physics.synthetic import RandomCrystalGenerator


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def broaden_sticks_numpy(two_theta, intensity, grid: np.ndarray, uvw, window_fwhm: float = 2.5) -> np.ndarray:
    """Reference broadening: area-normalised Gaussians with Caglioti widths, windowed like ours."""
    u, v, w = uvw
    step = grid[1] - grid[0]
    tan = np.tan(np.radians(np.asarray(two_theta) / 2))
    fwhm = np.sqrt(np.clip(u * tan**2 + v * tan + w, 1e-10, None))
    half = int(math.ceil(window_fwhm * fwhm.max() / step)) if fwhm.size else 0
    centre = np.rint((np.asarray(two_theta) - grid[0]) / step).astype(int)
    index = centre[:, None] + np.arange(-half, half + 1)[None, :]
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    values = np.exp(-0.5 * ((grid[0] + index * step - np.asarray(two_theta)[:, None]) / sigma[:, None]) ** 2)
    values *= (np.asarray(intensity) / (sigma * math.sqrt(2 * math.pi)))[:, None]
    index = np.where((index >= 0) & (index < grid.size), index, grid.size)
    return np.bincount(index.ravel(), weights=values.ravel(), minlength=grid.size + 1)[:-1]


def bench_simulate(
    structures: list,
    wavelength: float = 1.54184,
    two_theta: tuple[float, float, float] = (5.0, 90.0, 0.01),
    caglioti_uvw: tuple[float, float, float] = (0.01, -0.005, 0.005),
    device: str | None = None,
    batch_size: int = 64,
    repeats: int = 3,
) -> dict:
    """Patterns per second of pymatgen+numpy and of ours on the same structures and grid."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    grid = RenderGrid.two_theta(*two_theta)
    grid_values = grid.values.numpy()
    calculator = XRDCalculator(wavelength=wavelength)
    start = time.perf_counter()
    reference = []
    for structure in structures:
        sticks = calculator.get_pattern(structure, scaled=False, two_theta_range=two_theta[:2])
        reference.append(broaden_sticks_numpy(sticks.x, sticks.y, grid_values, caglioti_uvw))
    pymatgen_seconds = time.perf_counter() - start

    sim = PowderSimulator(
        wavelength=wavelength,
        grid=grid,
        profile=PeakProfile(shape="gaussian", caglioti_uvw=caglioti_uvw),
        device=device,
        batch_size=batch_size,
    )
    ours = sim.simulate_all(structures)  # warm-up (allocator, caches); also the result we compare
    if sim.device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sim.simulate_all(structures)
        if sim.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    ours_seconds = float(np.median(times))

    cosine = [
        float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)) for a, b in zip(reference, ours)
    ]
    n = len(structures)
    return {
        "n_structures": n,
        "grid": {"two_theta_start": two_theta[0], "two_theta_stop": two_theta[1], "step": two_theta[2],
                 "n_points": grid.n_points},
        "wavelength_angstrom": wavelength,
        "profile": {"shape": "gaussian", "caglioti_uvw_deg2": list(caglioti_uvw)},
        "pymatgen_patterns_per_s": n / pymatgen_seconds,
        "ours_patterns_per_s": n / ours_seconds,
        "speedup": pymatgen_seconds / ours_seconds,
        "batch_size": batch_size,
        "pattern_cosine_min": min(cosine),
        "pattern_cosine_median": float(np.median(cosine)),
        "peak_rss_mb": peak_rss_mb(),
        "device": describe_device(sim.device),
        "torch": torch.__version__,
    }


def bench_stream(structures: list, n_patterns: int, batch_size: int = 64, device: str | None = None) -> dict:
    """Stream `n_patterns` simulations (cycling through `structures`) and watch resident memory.

    Shows that memory is bounded by the batch size, not by the number of patterns: RSS is
    sampled after the first batches and at the end.
    """
    import itertools

    import psutil

    arrays = [as_crystal_arrays(s) for s in structures]
    source = itertools.islice(itertools.cycle(arrays), n_patterns)
    sim = PowderSimulator(device=device, batch_size=batch_size)
    process = psutil.Process()
    done, rss_start = 0, None
    start = time.perf_counter()
    for indices, _patterns in sim.stream(source):
        done += len(indices)
        if rss_start is None and done >= 8 * batch_size:
            rss_start = process.memory_info().rss / 2**20
    seconds = time.perf_counter() - start
    rss_end = process.memory_info().rss / 2**20
    return {
        "n_patterns": done,
        "batch_size": batch_size,
        "patterns_per_s": done / seconds,
        "rss_after_first_window_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_growth_mb": rss_end - (rss_start or rss_end),
        "output_if_held_mb": done * sim.grid.n_points * 4 / 2**20,
        "device": describe_device(sim.device),
    }


def bench_synthetic(n_crystals: int = 1000, batch_size: int = 64, seed: int = 0, use_symmetry: bool = True) -> dict:
    """Crystals/s of the random Wyckoff generator, and patterns/s of generation + simulation.

    The simulation starts cold (its per-Laue-group tables are built while it runs), as a
    training stream does. use_symmetry=False: every Friedel pair, the path before orbits."""
    generator = RandomCrystalGenerator(seed=seed)
    for _ in range(200):  # first use of each space group builds its Wyckoff tables
        generator.sample()
    start = time.perf_counter()
    crystals = [generator.sample() for _ in range(n_crystals)]
    generate_seconds = time.perf_counter() - start
    sim = PowderSimulator(device="cpu", batch_size=batch_size, use_symmetry=use_symmetry)
    start = time.perf_counter()
    for _ in sim.stream(crystals):
        pass
    simulate_seconds = time.perf_counter() - start
    return {
        "n_crystals": n_crystals,
        "crystals_per_s": n_crystals / generate_seconds,
        "mean_atoms": float(np.mean([len(c.atomic_numbers) for c in crystals])),
        "simulated_patterns_per_s": n_crystals / simulate_seconds,
        "end_to_end_patterns_per_s": n_crystals / (generate_seconds + simulate_seconds),
        "one_reflection_per_orbit": use_symmetry,
        "device": describe_device(sim.device),
    }

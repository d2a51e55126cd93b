"""Checks of the simulator against its references: pymatgen's XRDCalculator and pyFAI calibrants.

pymatgen is the reference the simulator is checked against, never a second code path: these
functions run both and report the differences (used by the tests and `xrd-nexus-ml check`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from xrd_nexus_ml.physics.simulator import PowderSimulator
from xrd_nexus_ml.references import CALIBRANTS, calibrant_structure

#: Peaks closer than this (degrees 2θ) are one peak for comparison: no instrument resolves them.
RESOLUTION_DEG = 0.005


@dataclass(frozen=True)
class StickComparison:
    """Worst differences between two stick patterns (intensities scaled to max 100)."""

    name: str
    n_peaks_reference: int
    n_peaks_ours: int
    max_position_error_deg: float  # over matched peaks above the threshold
    max_intensity_error: float  # in % of the strongest peak
    unmatched: int  # peaks above the threshold with no partner within the position tolerance

    def passes(self, position_tol: float = 0.01, intensity_tol: float = 1.0) -> bool:
        return (
            self.unmatched == 0
            and self.max_position_error_deg <= position_tol
            and self.max_intensity_error <= intensity_tol
        )


def _cluster(two_theta: np.ndarray, intensity: np.ndarray, resolution: float):
    order = np.argsort(two_theta)
    tt, ii = two_theta[order], intensity[order]
    if tt.size == 0:
        return tt, ii
    group = np.concatenate([[0], np.cumsum(np.diff(tt) > resolution)])
    sums = np.bincount(group, weights=ii)
    centres = np.bincount(group, weights=tt * ii) / np.where(sums > 0, sums, 1)
    return centres, sums


def compare_sticks(
    name: str,
    reference: tuple[np.ndarray, np.ndarray],
    ours: tuple[np.ndarray, np.ndarray],
    threshold: float = 1.0,
    position_tol: float = 0.01,
) -> StickComparison:
    """Match peaks above `threshold` % in either list to the nearest peak of the other."""
    ref_tt, ref_i = _cluster(*reference, RESOLUTION_DEG)
    our_tt, our_i = _cluster(*ours, RESOLUTION_DEG)
    ref_i = 100 * ref_i / ref_i.max()
    our_i = 100 * our_i / our_i.max()
    pos_err, int_err, unmatched = 0.0, 0.0, 0
    for src_tt, src_i, dst_tt, dst_i in ((ref_tt, ref_i, our_tt, our_i), (our_tt, our_i, ref_tt, ref_i)):
        for tt, ii in zip(src_tt[src_i > threshold], src_i[src_i > threshold]):
            j = int(np.argmin(np.abs(dst_tt - tt)))
            err = abs(dst_tt[j] - tt)
            if err > position_tol:
                unmatched += 1
                continue
            pos_err = max(pos_err, float(err))
            int_err = max(int_err, float(abs(dst_i[j] - ii)))
    return StickComparison(name, int(ref_tt.size), int(our_tt.size), pos_err, int_err, unmatched)


def pymatgen_sticks(structure, wavelength: float, two_theta_range=(5.0, 90.0), debye_waller_factors=None):
    """pymatgen's stick pattern (2θ, intensity scaled to 100)."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    calculator = XRDCalculator(wavelength=wavelength, debye_waller_factors=debye_waller_factors)
    pattern = calculator.get_pattern(structure, two_theta_range=two_theta_range)
    return np.asarray(pattern.x), np.asarray(pattern.y)


def compare_with_pymatgen(
    named_structures: Sequence[tuple[str, object]],
    wavelength: float = 1.54184,
    two_theta_range: tuple[float, float] = (5.0, 90.0),
    batch_size: int = 64,
) -> list[StickComparison]:
    """Run pymatgen and our simulator on the same structures and compare their stick patterns."""
    sim = PowderSimulator(wavelength=wavelength, device="cpu", batch_size=batch_size)
    results = []
    for start in range(0, len(named_structures), batch_size):
        chunk = named_structures[start : start + batch_size]
        ours = sim.sticks([s for _, s in chunk], two_theta_range=two_theta_range)
        for (name, structure), sticks in zip(chunk, ours):
            reference = pymatgen_sticks(structure, wavelength, two_theta_range)
            results.append(compare_sticks(name, reference, sticks))
    return results


def parity_summary(results: Sequence[StickComparison]) -> dict:
    """JSON-ready summary: pass count and the worst structure for position and intensity."""
    worst_pos = max(results, key=lambda r: r.max_position_error_deg)
    worst_int = max(results, key=lambda r: r.max_intensity_error)
    return {
        "n_structures": len(results),
        "n_pass": sum(r.passes() for r in results),
        "criteria": "peaks above 1% matched within 0.01 deg 2theta, intensities within 1% of the strongest",
        "worst_position": asdict(worst_pos),
        "worst_intensity": asdict(worst_int),
        "failures": [asdict(r) for r in results if not r.passes()],
    }


def compare_with_calibrant(name: str, wavelength: float = 1.54056, two_theta_max: float = 120.0) -> dict:
    """Simulated d-spacings of a calibrant vs pyFAI's reference list, both ways.

    Every simulated peak above 0.5 % must be a line of pyFAI's list, and every listed line in
    range must be an allowed (non-zero) reflection of the simulation, down to the smallest d
    that the list or `two_theta_max` reaches. Returns the worst
    relative d mismatch and the lines without partner.
    """
    from pyFAI.calibrant import get_calibrant

    listed = np.asarray(get_calibrant(CALIBRANTS[name].pyfai_name).dspacing, dtype=float)
    d_min = wavelength / (2 * math.sin(math.radians(two_theta_max / 2)))
    listed = listed[listed >= d_min * 1.0001]
    d_min = max(d_min, listed.min() * (1 - 1e-4))  # pyFAI's lists stop at some d; compare above it
    sim = PowderSimulator(wavelength=wavelength, device="cpu", dtype=__import__("torch").float64)
    peaks = sim.reflections(sim.batch([calibrant_structure(name)])).merged().without_weak(1e-8)
    d_sim = peaks.d_spacing[0].numpy()
    inten = peaks.intensity[0].numpy()
    keep = (inten > 0) & (d_sim >= d_min)
    d_sim, inten = d_sim[keep], inten[keep] / inten[keep].max()
    strong = d_sim[inten > 0.005]
    rel = lambda a, b: np.abs(a[:, None] - b[None, :]) / a[:, None]  # noqa: E731
    strong_err = rel(strong, listed).min(1)
    listed_err = rel(listed, d_sim).min(1)
    tol = 2e-4
    return {
        "calibrant": name,
        "n_listed": int(listed.size),
        "n_simulated_strong": int(strong.size),
        "max_relative_d_error": float(max(strong_err.max(initial=0), listed_err.max(initial=0))),
        "simulated_not_listed": [float(d) for d, e in zip(strong, strong_err) if e > tol],
        "listed_not_simulated": [float(d) for d, e in zip(listed, listed_err) if e > tol],
    }

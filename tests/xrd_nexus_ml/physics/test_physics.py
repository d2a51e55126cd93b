"""The batched simulator against pymatgen, pyFAI's calibrants and its own invariants."""

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from xrd_nexus_ml.errors import StructureError
from xrd_nexus_ml.pattern import CANONICAL_GRID, two_theta_to_q
from xrd_nexus_ml.physics import CrystalArrays, PeakProfile, PowderSimulator, RenderGrid
from xrd_nexus_ml.physics.parity import compare_with_calibrant, compare_with_pymatgen, parity_summary
from xrd_nexus_ml.references import CALIBRANTS, aflow_prototypes, calibrant_structure

CU_KA1 = 1.54056


def two_theta_simulator(**profile):
    return PowderSimulator(
        wavelength=CU_KA1, grid=RenderGrid.two_theta(10, 80, 0.005), profile=PeakProfile(**profile), device="cpu"
    )


@pytest.fixture(scope="module")
def aflow():
    return list(aflow_prototypes())


def test_parity_with_pymatgen_on_a_sample_of_aflow_prototypes(aflow):
    sample = aflow[::12]  # 24 structures across the library; `xrd-nexus-ml check` runs all 288
    results = compare_with_pymatgen(sample, wavelength=1.54184)
    summary = parity_summary(results)
    assert summary["failures"] == []
    assert summary["worst_position"]["max_position_error_deg"] <= 0.01
    assert summary["worst_intensity"]["max_intensity_error"] <= 1.0


def test_parity_includes_disordered_and_debye_waller():
    from xrd_nexus_ml.physics.parity import compare_sticks, pymatgen_sticks

    disordered = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.2), [{"Mg": 0.2, "Fe": 0.8}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    dw = {"Mg": 0.5, "Fe": 0.4, "O": 0.8}
    sim = PowderSimulator(wavelength=1.54184, device="cpu")
    ours = sim.sticks([CrystalArrays.from_structure(disordered, b_factors=dw)], two_theta_range=(5, 120))[0]
    reference = pymatgen_sticks(disordered, 1.54184, (5, 120), debye_waller_factors=dw)
    comparison = compare_sticks("ferropericlase", reference, ours)
    assert comparison.passes() and comparison.n_peaks_ours == comparison.n_peaks_reference >= 6
    without_dw = sim.sticks([disordered], two_theta_range=(5, 120))[0]
    assert without_dw[1][-1] > ours[1][-1] * 1.05  # Debye-Waller damps the high-angle peaks


@pytest.mark.parametrize("name", list(CALIBRANTS))
def test_calibrant_d_spacings_match_pyfai(name):
    result = compare_with_calibrant(name)
    assert result["simulated_not_listed"] == [] and result["listed_not_simulated"] == []
    assert result["n_listed"] >= 5
    assert result["max_relative_d_error"] < 2e-4


def test_systematic_absences_of_diamond_silicon():
    sim = PowderSimulator(wavelength=CU_KA1, device="cpu")
    peaks = sim.reflections(sim.batch([calibrant_structure("Si")])).merged().without_weak(1e-6)
    hkl = peaks.hkl[0][peaks.intensity[0] > 0].abs().sort(dim=-1, descending=True).values.tolist()
    assert [4, 0, 0] in hkl and [1, 1, 1] in hkl
    assert [2, 0, 0] not in hkl and [2, 2, 2] not in hkl  # d-glide extinctions


def test_batch_equals_one_by_one():
    structures = [s for _, s in list(aflow_prototypes())[:40:5]]
    sim = PowderSimulator(wavelength="CuKa", device="cpu", batch_size=8)
    together = sim.simulate(structures)
    alone = torch.cat([sim.simulate([s]) for s in structures])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-3 * float(alone.max()))


def test_rendering_keeps_integrated_intensity(rocksalt):
    sim = two_theta_simulator(shape="gaussian", caglioti_uvw=(0.0, 0.0, 0.01))
    nacl = rocksalt()
    sticks = sim.reflections(sim.batch([nacl])).merged()
    two_theta = sticks.two_theta(CU_KA1)[0]
    inside = (two_theta > 11) & (two_theta < 79)
    pattern = sim.simulate([nacl])[0]
    area = float(pattern.sum()) * 0.005
    assert area == pytest.approx(float(sticks.intensity[0][inside].sum()), rel=1e-3)


@pytest.mark.parametrize("shape", ["gaussian", "lorentzian", "pseudo_voigt"])
def test_peak_fwhm_follows_caglioti(shape, rocksalt):
    w = 0.04  # FWHM² in deg² -> FWHM 0.2°
    sim = two_theta_simulator(shape=shape, caglioti_uvw=(0.0, 0.0, w), eta=0.5)
    pattern = sim.simulate([rocksalt()])[0].numpy()
    x = sim.grid.values.numpy()
    peak = int(np.argmax(pattern))  # NaCl 200 near 31.7°
    half = pattern[peak] / 2
    left = peak - np.argmax(pattern[peak::-1] < half)
    right = peak + np.argmax(pattern[peak:] < half)
    assert x[right] - x[left] == pytest.approx(math.sqrt(w), abs=0.011)


def test_scherrer_width(rocksalt):
    size_nm = 20.0
    sim = two_theta_simulator(caglioti_uvw=None, crystallite_size_nm=size_nm)
    pattern = sim.simulate([rocksalt()])[0].numpy()
    x = sim.grid.values.numpy()
    peak = int(np.argmax(pattern))
    above = np.flatnonzero(pattern > pattern[peak] / 2)
    above = above[(above > peak - 200) & (above < peak + 200)]
    fwhm = x[above[-1]] - x[above[0]]
    theta = math.radians(x[peak] / 2)
    expected = math.degrees(0.9 * CU_KA1 / (size_nm * 10 * math.cos(theta)))
    assert fwhm == pytest.approx(expected, rel=0.05)


def test_kalpha2_doublet_at_its_own_wavelength(rocksalt):
    sim = two_theta_simulator(caglioti_uvw=(0, 0, 0.0004), kalpha2_ratio=0.5, kalpha2_wavelength=1.54439)
    pattern = sim.simulate([rocksalt()])[0].numpy()
    x = sim.grid.values.numpy()
    d200 = 5.64 / 2
    tt1 = 2 * math.degrees(math.asin(CU_KA1 / (2 * d200)))
    tt2 = 2 * math.degrees(math.asin(1.54439 / (2 * d200)))
    i1 = pattern[np.argmin(abs(x - tt1))]
    i2 = pattern[np.argmin(abs(x - tt2))]
    assert i2 / i1 == pytest.approx(0.5, rel=0.05)


def test_canonical_q_grid_places_peaks_at_two_pi_over_d(rocksalt):
    sim = PowderSimulator(wavelength=CU_KA1, grid=CANONICAL_GRID, device="cpu")
    pattern = sim.simulate([rocksalt()])[0].numpy()
    q = CANONICAL_GRID.values
    peak_q = q[np.argmax(pattern)]
    assert peak_q == pytest.approx(2 * math.pi / (5.64 / 2), abs=CANONICAL_GRID.step)
    # the same peak in 2θ converts to the same q
    tt = 2 * math.degrees(math.asin(CU_KA1 / (2 * 5.64 / 2)))
    assert two_theta_to_q(np.array([tt]), CU_KA1)[0] == pytest.approx(peak_q, abs=CANONICAL_GRID.step)


def test_stream_bounds_batches_and_keeps_every_structure(rocksalt):
    base = rocksalt()
    structures = [Structure(Lattice.cubic(a), base.species, base.frac_coords) for a in np.linspace(4.0, 6.5, 23)]
    sim = PowderSimulator(wavelength=CU_KA1, device="cpu", batch_size=5)
    seen = []
    for indices, patterns in sim.stream(iter(structures), sort_window=2):
        assert len(indices) <= 5 and patterns.shape == (len(indices), CANONICAL_GRID.n_points)
        seen.extend(indices)
    assert sorted(seen) == list(range(23))
    ordered = sim.simulate_all(structures)
    # rows come back in input order although batches were formed by cell size
    for i in (0, 7, 22):
        alone = sim.simulate([structures[i]])[0].numpy()
        np.testing.assert_allclose(ordered[i], alone, rtol=1e-4, atol=1e-6 * alone.max())


def test_unknown_element_is_named():
    bad = CrystalArrays.from_arrays(np.eye(3) * 4, [[0, 0, 0]], [115])
    with pytest.raises(StructureError, match="Mc"):
        PowderSimulator(device="cpu").simulate([bad])


def test_degenerate_lattice_is_refused():
    flat = CrystalArrays.from_arrays([[1, 0, 0], [0, 1, 0], [1, 1, 0]], [[0, 0, 0]], [14], name="flat.cif")
    with pytest.raises(StructureError, match="flat.cif"):
        PowderSimulator(device="cpu").simulate([flat])


@pytest.mark.gpu
def test_gpu_matches_cpu():
    structures = [s for _, s in list(aflow_prototypes())[:32]]
    cpu = PowderSimulator(device="cpu").simulate(structures)
    gpu = PowderSimulator(device="cuda").simulate(structures).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3 * float(cpu.max()))


def test_stream_reads_ahead_by_at_most_one_window(rocksalt):
    """Memory is bounded by batch_size x sort_window structures, however long the input is."""
    base = rocksalt()
    pulled = []

    def endless():
        for i in range(10_000):
            pulled.append(i)
            yield Structure(Lattice.cubic(5.0 + 0.001 * (i % 100)), base.species, base.frac_coords)

    sim = PowderSimulator(wavelength=CU_KA1, device="cpu", batch_size=4)
    stream = sim.stream(endless(), sort_window=3)
    yielded = 0
    for _ in range(5):
        indices, _patterns = next(stream)
        yielded += len(indices)
        assert len(pulled) - yielded <= 4 * 3

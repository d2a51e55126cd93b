"""Evaluation data of the space-group classifier: real labelled structures, simulation, measured folders, scores.

Everything runs on the real bundled structures and the real simulator (no mocks), on at most 16
structures at a time so the module stays quick.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import spglib

from xrd_nexus_ml.errors import PatternFileError, WavelengthError
from xrd_nexus_ml.evaluation.spacegroup_data import (
    EvaluationDataError,
    LabelledStructure,
    parse_space_group,
    pyxtal_cif_folder,
    read_measured,
    real_structures,
    score,
    simulate_patterns,
    skipped_pyxtal_files,
)
from xrd_nexus_ml.pattern import CANONICAL_GRID, q_to_two_theta, two_theta_to_q
from xrd_nexus_ml.physics import symmetry

CU_KA1 = 1.5406

#: AFLOW prototypes whose space group every crystallographer knows.
SPOT_CHECKS = {
    "AB_cF8_225_a_b": 225,  # rock salt
    "A_cF4_225_a": 225,  # copper
    "A_cI2_229_a": 229,  # tungsten
    "A_cF8_227_a": 227,  # diamond
    "AB_cF8_216_c_a": 216,  # zincblende
    "AB_hP4_186_b_b": 186,  # wurtzite
    "A2B_tP6_136_f_a": 136,  # rutile
    "A_hP2_194_c": 194,  # magnesium
}


@pytest.fixture(scope="module")
def structures() -> list[LabelledStructure]:
    return real_structures()


@pytest.fixture(scope="module")
def by_name(structures) -> dict[str, LabelledStructure]:
    return {s.name: s for s in structures}


@pytest.fixture(scope="module")
def sample(structures) -> list[LabelledStructure]:
    """16 structures of up to 40 atoms from both sources, of many space groups (small cells: quick)."""
    aflow = [s for s in structures if s.source == "aflow" and len(s.structure) <= 40]
    pyxtal = [s for s in structures if s.source == "pyxtal" and len(s.structure) <= 40]
    chosen = aflow[::34][:8] + pyxtal[::4][:8]
    assert len(chosen) == 16
    return chosen


def _spglib_number(structure, symprec: float = 0.01) -> int:
    cell = (structure.lattice.matrix, structure.frac_coords, [site.specie.Z for site in structure])
    with symmetry.quiet_spglib():
        return int(spglib.get_symmetry_dataset(cell, symprec=symprec).number)


# -- real structures ------------------------------------------------------------------------------


def test_real_structures_hold_all_aflow_prototypes_and_pyxtal_cifs(structures):
    aflow = [s for s in structures if s.source == "aflow"]
    pyxtal = [s for s in structures if s.source == "pyxtal"]
    assert len(aflow) == 288
    assert len(pyxtal) >= 60
    assert {s.source for s in structures} == {"aflow", "pyxtal"}
    assert len({s.name for s in structures}) == len(structures), "names must tell structures apart"
    assert structures[287].source == "aflow" and structures[288].source == "pyxtal", "AFLOW first, then pyxtal"
    cif_stems = {p.stem for p in pyxtal_cif_folder().glob("*.cif")}
    assert {s.name for s in pyxtal} <= cif_stems


def test_labels_are_spglibs_and_consistent(structures, by_name):
    for name, expected in SPOT_CHECKS.items():
        item = by_name[name]
        assert item.space_group == expected == _spglib_number(item.structure), name
    for item in structures:
        assert 1 <= item.space_group <= 230
        assert item.extinction_group == symmetry.extinction_group(item.space_group)
        assert item.crystal_system == symmetry.crystal_system_index(item.space_group)
    for item in structures[::25]:  # spglib directly, without pymatgen in between
        assert item.space_group == _spglib_number(item.structure), item.name
    disagree = [s.name for s in structures if s.source == "aflow" and s.space_group != int(s.name.split("_")[2])]
    assert set(disagree) == {"AB3_tI16_140_b_ah", "AB_oP8_33_a_a", "A2B_oC12_38_de_ab"}


def test_pyxtal_duplicates_skipped_but_polymorphs_kept(by_name):
    skipped = dict(skipped_pyxtal_files())
    assert skipped["NaCl.cif"] == "duplicate of aflow AB_cF8_225_a_b"
    assert skipped["MPWO.cif"] == "duplicate of pyxtal 0-G62"
    assert all(why.startswith("duplicate of") for why in skipped.values())
    assert "NaCl" not in by_name and "MPWO" not in by_name and "0-G62" in by_name
    # aspirin forms I and II: same formula, space group and atom count, different structures
    assert by_name["aspirin"].space_group == by_name["aspirin-c"].space_group == 14


def test_real_structures_returns_a_fresh_list():
    first = real_structures()
    first.clear()
    assert len(real_structures()) > 288


# -- simulation -----------------------------------------------------------------------------------


def test_simulate_patterns_shapes_masks_and_normalisation(sample):
    for imperfections in (False, True):
        intensity, mask = simulate_patterns(sample, imperfections=imperfections, seed=3)
        assert intensity.shape == mask.shape == (len(sample), CANONICAL_GRID.n_points)
        assert intensity.dtype == np.float32 and mask.dtype == bool
        assert np.isfinite(intensity).all()
        assert mask.any(axis=1).all()
        peak = np.array([row[m].max() for row, m in zip(intensity, mask)])
        np.testing.assert_allclose(peak, 1.0, rtol=1e-5)
        assert (intensity[~mask] == 0).all()
        if imperfections:
            assert (~mask).any(axis=1).sum() >= 4, "RangeMask cuts 80 % of patterns"
            assert intensity.min() >= 0
        else:
            assert mask.all()


def test_simulate_patterns_clean_and_imperfect_differ_and_are_seeded(sample):
    clean, _ = simulate_patterns(sample, imperfections=False, seed=0)
    noisy, noisy_mask = simulate_patterns(sample, imperfections=True, seed=0)
    again, again_mask = simulate_patterns(sample, imperfections=True, seed=0)
    other, _ = simulate_patterns(sample, imperfections=True, seed=1)
    assert np.array_equal(noisy, again) and np.array_equal(noisy_mask, again_mask)
    assert not np.allclose(noisy, other)
    assert (np.abs(clean - noisy).max(axis=1) > 0.05).all()
    # imperfections disturb, they do not replace: a noisy pattern resembles its own clean one far more than
    # another structure's (shifted narrow peaks keep the pointwise correlation with its own near 0.4)
    corr = np.array([[np.corrcoef(n[m], c[m])[0, 1] for c in clean] for n, m in zip(noisy, noisy_mask)])
    own, others = np.diag(corr), corr[~np.eye(len(sample), dtype=bool)]
    assert np.median(own) > 0.2 and np.median(own) > 2 * np.percentile(others, 90)
    assert (corr.argmax(axis=1) == np.arange(len(sample))).mean() >= 0.6


def test_simulate_patterns_keeps_input_order(by_name):
    """The simulator batches by cell size; rows must still come back in input order."""
    big, small = by_name["A2BC4_cF56_227_d_a_e"], by_name["A_cF4_225_a"]  # spinel first: reordered inside
    pair, _ = simulate_patterns([big, small], imperfections=False)
    alone_big, _ = simulate_patterns([big.structure], imperfections=False, seed=5)
    alone_small, _ = simulate_patterns([small.structure], imperfections=False, seed=5)
    assert np.corrcoef(pair[0], alone_big[0])[0, 1] > 0.9
    assert np.corrcoef(pair[1], alone_small[0])[0, 1] > 0.9
    assert np.corrcoef(pair[0], alone_small[0])[0, 1] < 0.5


# -- measured folders -----------------------------------------------------------------------------

MEASURED = {"halite.xy": ("AB_cF8_225_a_b", "225"), "tungsten.xy": ("A_cI2_229_a", "Im-3m"),
            "wurtzite.xy": ("AB_hP4_186_b_b", "P6_3mc")}
TWO_THETA_RANGE = (10.0, 80.0)


@pytest.fixture(scope="module")
def measured_folder(tmp_path_factory, by_name):
    """Two-column 2θ files (Cu Kα1) cut from simulated patterns, a labels CSV and one unlisted file."""
    folder = tmp_path_factory.mktemp("measured")
    items = [by_name[proto] for proto, _ in MEASURED.values()]
    intensity, _ = simulate_patterns(items, imperfections=False, seed=2)
    q = CANONICAL_GRID.values
    two_theta = q_to_two_theta(q, CU_KA1)
    keep = (two_theta >= TWO_THETA_RANGE[0]) & (two_theta <= TWO_THETA_RANGE[1])
    for (file, _), row in zip(MEASURED.items(), intensity):
        counts = 1000.0 * row[keep] + 50.0
        np.savetxt(folder / file, np.column_stack([two_theta[keep], counts]), fmt="%.6f",
                   header=f"wavelength = {CU_KA1} A\n2theta intensity")
    np.savetxt(folder / "unlisted.xy", np.column_stack([two_theta[keep], intensity[0][keep]]), fmt="%.6f")
    rows = "".join(f"{file},{sg}\n" for file, (_, sg) in MEASURED.items())
    (folder / "labels.csv").write_text("file,space_group\n" + rows)
    return folder, intensity, keep


def test_read_measured_reads_every_listed_file_onto_the_grid(measured_folder, caplog):
    folder, simulated, keep = measured_folder
    with caplog.at_level(logging.WARNING):
        data = read_measured(folder, "labels.csv")  # CSV found in the folder, wavelength from the header
    assert "unlisted.xy" in caplog.text
    assert data.names == tuple(MEASURED)
    assert data.space_group.tolist() == [225, 229, 186]
    assert data.intensity.shape == data.mask.shape == (3, CANONICAL_GRID.n_points)
    assert data.intensity.dtype == np.float32 and data.mask.dtype == bool
    q = CANONICAL_GRID.values
    q_lo, q_hi = two_theta_to_q(np.array(TWO_THETA_RANGE), CU_KA1)
    for i in range(3):
        measured_q = q[data.mask[i]]
        assert abs(measured_q.min() - q_lo) < 0.01 and abs(measured_q.max() - q_hi) < 0.01
        assert data.intensity[i][data.mask[i]].max() == pytest.approx(1.0)
        assert (data.intensity[i][~data.mask[i]] == 0).all()
        inside = data.mask[i] & keep
        assert np.corrcoef(data.intensity[i][inside], simulated[i][inside])[0, 1] > 0.999
    explicit = read_measured(folder, folder / "labels.csv", wavelength=CU_KA1)
    np.testing.assert_allclose(explicit.intensity, data.intensity, atol=1e-6)


def _write_csv(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("file,sg\nhalite.xy,225\n", r"line 1: no column 'space_group'"),
        ("name,space_group\nhalite.xy,225\n", r"line 1: no column 'file'"),
        ("file,space_group\nhalite.xy,225\ntungsten.xy,231\n", r"line 3: space group '231' for 'tungsten.xy'"),
        ("file,space_group\nhalite.xy,0\n", r"line 2: space group '0'"),
        ("file,space_group\nhalite.xy,Xy-9\n", r"line 2: space group 'Xy-9'.*Hermann"),
        ("file,space_group\n\nmissing.xy,225\n", r"line 3: pattern file 'missing.xy' not found"),
        ("file,space_group\n", r"no CSV row for any file"),
        ("", r"empty; expected a header row 'file,space_group'"),
        ("file,space_group\nhalite.xy,225\nhalite.xy,225\n",
         r"line 3: 'halite.xy' is listed again \(first on line 2\)"),
        ("file,space_group\nhalite.xy\n", r"line 2: 1 column\(s\)"),
    ],
)
def test_read_measured_errors_name_csv_and_line(measured_folder, tmp_path, text, expected):
    folder, _, _ = measured_folder
    csv_path = _write_csv(tmp_path, "bad.csv", text)
    with pytest.raises(EvaluationDataError, match=expected) as info:
        read_measured(folder, csv_path)
    assert str(info.value).startswith(str(csv_path))


def test_read_measured_missing_csv_and_folder(measured_folder, tmp_path):
    folder, _, _ = measured_folder
    with pytest.raises(EvaluationDataError, match=r"nope\.csv: labels CSV not found.*file,space_group"):
        read_measured(folder, "nope.csv")
    with pytest.raises(EvaluationDataError, match=r"no labels CSV given"):
        read_measured(folder, None)
    with pytest.raises(EvaluationDataError, match=r"pattern folder not found"):
        read_measured(tmp_path / "absent", folder / "labels.csv")


def test_read_measured_pattern_errors_name_the_pattern_file(tmp_path):
    (tmp_path / "garbage.xy").write_text("10 5\n11 abc\n12 5\n")
    _write_csv(tmp_path, "labels.csv", "file,space_group\ngarbage.xy,225\n")
    with pytest.raises(PatternFileError, match=r"garbage\.xy: not a number on line 2"):
        read_measured(tmp_path, "labels.csv")
    np.savetxt(tmp_path / "bare.xy", np.column_stack([np.linspace(10, 80, 50), np.ones(50)]))
    _write_csv(tmp_path, "labels.csv", "file,space_group\nbare.xy,225\n")
    with pytest.raises(WavelengthError, match=r"bare\.xy: a wavelength is needed"):
        read_measured(tmp_path, "labels.csv")
    assert read_measured(tmp_path, "labels.csv", wavelength="CuKa1").space_group.tolist() == [225]


def test_parse_space_group():
    assert parse_space_group("225") == 225
    assert parse_space_group(" 14 ") == 14
    assert parse_space_group("Fm-3m") == 225
    assert parse_space_group("P2_1/c") == parse_space_group("P 21/c") == parse_space_group("P21/n") == 14
    assert parse_space_group("Pnma") == parse_space_group("Pbnm") == 62
    assert parse_space_group("P6_3/mmc") == 194
    assert parse_space_group("Ia-3d") == 230
    for bad in ("0", "231", "-5", "2.5", "Fm3x", ""):
        assert parse_space_group(bad) is None, bad


# -- scores ---------------------------------------------------------------------------------------


def _one_hot_heads(sg: list[int]) -> dict[str, np.ndarray]:
    n = len(sg)
    heads = {"space_group": np.zeros((n, 230)), "extinction_group": np.zeros((n, symmetry.N_EXTINCTION_GROUPS)),
             "crystal_system": np.zeros((n, 7))}
    for i, g in enumerate(sg):
        heads["space_group"][i, g - 1] = 1.0
        heads["extinction_group"][i, symmetry.extinction_group(g)] = 1.0
        heads["crystal_system"][i, symmetry.crystal_system_index(g)] = 1.0
    return heads


def test_score_perfect_predictions():
    truth = np.array([225, 14, 62, 1, 194])
    result = score(_one_hot_heads(truth.tolist()), truth)
    assert result["n_patterns"] == 5
    for key in ("top1", "top5", "extinction_top1", "extinction_top5", "crystal_system_top1"):
        assert result[key] == 1.0, key


def test_score_top1_wrong_top5_right_and_ties_count_against():
    truth = np.array([225, 14, 62, 1])
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 0.1, (4, 230))
    p[0, 224] = 0.9  # pattern 0: right
    p[1, [20, 30, 13]] = [0.9, 0.8, 0.7]  # pattern 1: truth (14 -> column 13) third: top-5 only
    p[2, 100:110] = 0.5  # pattern 2: ten classes above the truth -> neither
    p[2, 61] = 0.2
    p[3] = 1.0 / 230  # pattern 3: flat output ties everything -> not a hit
    # other heads: pattern 0 predicts Fd-3m's extinction group (not Fm-3m's), pattern 3 P-1 (same group as P1)
    assert symmetry.extinction_group(227) != symmetry.extinction_group(225)
    assert symmetry.extinction_group(2) == symmetry.extinction_group(1)
    heads = _one_hot_heads([227, 14, 62, 2])
    heads["space_group"] = p
    heads["extinction_group"][0, symmetry.extinction_group(225)] = 0.5  # second: top-5, not top-1
    result = score(heads, truth)
    assert result["n_patterns"] == 4
    assert result["top1"] == pytest.approx(0.25)
    assert result["top5"] == pytest.approx(0.5)
    assert result["extinction_top1"] == pytest.approx(0.75)
    assert result["extinction_top5"] == pytest.approx(1.0)
    assert result["crystal_system_top1"] == pytest.approx(1.0)  # 227 is cubic, 2 triclinic: systems right
    assert result["per_crystal_system"] == {
        "triclinic": {"n": 1, "top1": 0.0},
        "monoclinic": {"n": 1, "top1": 0.0},
        "orthorhombic": {"n": 1, "top1": 0.0},
        "cubic": {"n": 1, "top1": 1.0},
    }


def test_score_rejects_bad_input():
    truth = np.array([225, 14])
    heads = _one_hot_heads([225, 14])
    with pytest.raises(ValueError, match=r"probabilities\['space_group'\] has shape \(2, 229\)"):
        score({**heads, "space_group": heads["space_group"][:, :229]}, truth)
    with pytest.raises(ValueError, match="no 'crystal_system' head"):
        score({k: v for k, v in heads.items() if k != "crystal_system"}, truth)
    with pytest.raises(ValueError, match="pattern 1 has"):
        score(heads, np.array([225, 231]))
    with pytest.raises(ValueError, match="non-empty"):
        score(heads, np.array([], dtype=int))

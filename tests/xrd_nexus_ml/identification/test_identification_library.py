"""Reference libraries, class labels, element experts, truth labels and scores for identification."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from xrd_nexus_ml.errors import XrdNexusMlError
from xrd_nexus_ml.identification import (
    ExpertPlan,
    LibraryError,
    PhaseLibrary,
    canonical_formula,
    default_library,
    labels_from_filename,
    library_from_structures,
    load_cif_library,
    name_mismatches,
    read_truth,
    score,
    split_by_structure,
)


@pytest.fixture(scope="module")
def lmtof(lmtof_references) -> PhaseLibrary:
    return load_cif_library(lmtof_references)


@pytest.fixture(scope="module")
def llzo(llzo_dir) -> PhaseLibrary:
    return load_cif_library(llzo_dir / "References")


# -- class labels ------------------------------------------------------------------------------


def test_peroxides_and_molecules_keep_pymatgen_names_whatever_the_input():
    assert canonical_formula("Li2O2") == canonical_formula("LiO") == "Li2O2"
    assert canonical_formula(Composition({"Li": 4, "O": 4})) == "Li2O2"
    assert canonical_formula("LiO2") == "LiO2"  # superoxide: another composition, another class
    assert canonical_formula("O") == canonical_formula("O2") == "O2"
    assert canonical_formula("Mn2O4") == canonical_formula({"Mn": 1, "O": 2}) == "MnO2"


def test_hydrates_polyanions_and_oxidation_states_give_one_label():
    hydrate = canonical_formula("LiOH-H2O")
    assert hydrate == "LiH3O2"
    assert canonical_formula("LiOH·H2O") == canonical_formula("LiOH.H2O") == canonical_formula("LiOH(H2O)") == hydrate
    assert canonical_formula("CuSO4·5H2O") == canonical_formula("CuS O9 H10")
    assert canonical_formula("Li2TiO2F6") == canonical_formula("Li2Ti(OF3)2") == "Li2Ti(OF3)2"
    assert canonical_formula("LiOH") == "LiHO" and canonical_formula("La(OH)3") == "La(HO)3"
    assert canonical_formula(Composition({"Mn4+": 1, "O2-": 2})) == "MnO2"
    assert canonical_formula("Li0.5CoO2") == canonical_formula("LiCo2O4") == "Li(CoO2)2"  # '.5' is a decimal
    assert canonical_formula("LiMn2O4") == "LiMn2O4"  # pymatgen brackets a polyanion by electronegativity


def test_partial_occupancy_amounts_are_rounded_to_fractions():
    assert canonical_formula(Composition({"Li": 55.992, "La": 24, "Zr": 16, "O": 96})) == "Li7La3Zr2O12"
    assert canonical_formula(Composition({"Mn": 1.333, "O": 2})) == "Mn2O3"


@pytest.mark.parametrize("bad", ["", "Xx2O", "MnO2_scan", "Li++O"])
def test_not_a_formula_is_a_library_error_naming_it(bad):
    with pytest.raises(LibraryError) as info:
        canonical_formula(bad)
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, XrdNexusMlError)


# -- loading CIF folders -----------------------------------------------------------------------


def test_lmtof_library_names_classes_and_space_groups(lmtof, lmtof_references):
    stems = sorted(p.stem for p in lmtof_references.glob("*.cif"))
    assert len(stems) == 56 and lmtof.names == stems and len(lmtof) == 56
    assert lmtof.duplicates == []
    assert len(lmtof.classes) == 39 and lmtof.classes == sorted(lmtof.classes)
    mno2 = [p for p in lmtof.phases if p.formula == "MnO2"]
    assert sorted(p.space_group_number for p in mno2) == [10, 12, 14, 62, 84, 87, 136, 164, 227]
    assert {p.formula for p in lmtof.phases if p.name.startswith("Li2O2_")} == {"Li2O2"}
    # every file is named Formula_SG: both agree with the structure for all 56
    for p in lmtof.phases:
        formula, number = p.name.rsplit("_", 1)
        assert (p.formula, p.space_group_number) == (canonical_formula(formula), int(number)), p.name
    assert name_mismatches(lmtof) == []
    ids = lmtof.phase_classes
    assert ids.shape == (56,) and [lmtof.classes[i] for i in ids] == [p.formula for p in lmtof.phases]
    assert lmtof.class_index("Mn2O4") == lmtof.classes.index("MnO2")
    rutile = lmtof.phases[lmtof.names.index("TiO2_136")]
    assert rutile.space_group_symbol == "P4_2/mnm" and rutile.elements == ("O", "Ti")
    assert rutile.source.endswith("TiO2_136.cif")
    with pytest.raises(LibraryError, match="ZrO2"):
        lmtof.class_index("ZrO2")


def test_llzo_library_reports_cifs_whose_name_and_structure_disagree(llzo):
    assert len(llzo) == 28 and len(llzo.classes) == 19
    # LaOOH's CIF has no H atoms; spglib at symprec 0.1 finds Pnma for 'ZrO2_19'
    assert name_mismatches(llzo) == [("LaOOH_11", "formula", "LaHO2", "LaO2"), ("ZrO2_19", "space group", "19", "62")]
    garnets = [p for p in llzo.phases if p.name.startswith("Li7La3Zr2O12")]
    assert [p.is_ordered for p in garnets] == [True, False]  # cubic LLZO has partial Li occupancy
    assert {p.formula for p in garnets} == {"Li7La3Zr2O12"}
    assert llzo.phases[llzo.names.index("LiOH-H2O_12")].formula == canonical_formula("LiOH-H2O")


def test_reference_phase_identity_ignores_the_structure_object(lmtof, lmtof_references):
    a = lmtof.phases[0]
    b = load_cif_library(lmtof_references, deduplicate=False).phases[0]
    assert a == b and hash(a) == hash(b) and a.structure is not b.structure
    assert "structure" not in repr(a) and "Lattice" not in repr(a)


def test_duplicate_structures_are_dropped_keeping_the_first_name(tmp_path, lmtof_references):
    shutil.copy(lmtof_references / "MnO2_136.cif", tmp_path / "MnO2_136.cif")
    shutil.copy(lmtof_references / "MnO2_136.cif", tmp_path / "rutile_MnO2.CIF")  # upper-case suffix is read too
    shutil.copy(lmtof_references / "TiO2_136.cif", tmp_path / "TiO2_136.cif")  # same structure type, other formula
    shutil.copy(lmtof_references / "MnO2_62.cif", tmp_path / "MnO2_62.cif")
    (tmp_path / "notes.txt").write_text("not a CIF")
    library = load_cif_library(tmp_path)
    assert library.names == ["MnO2_136", "MnO2_62", "TiO2_136"]
    assert library.duplicates == [("MnO2_136", "rutile_MnO2")]
    assert load_cif_library(tmp_path, deduplicate=False).names == ["MnO2_136", "MnO2_62", "TiO2_136", "rutile_MnO2"]
    assert len(library.subset([0]).duplicates) == 1 and library.subset([1, 2]).duplicates == []


def test_folder_errors_name_the_folder_or_file(tmp_path, lmtof_references):
    with pytest.raises(LibraryError, match="not found"):
        load_cif_library(tmp_path / "missing")
    with pytest.raises(LibraryError, match=r"no \*\.cif files"):
        load_cif_library(tmp_path)
    (tmp_path / "readme.txt").write_text("references go here")
    with pytest.raises(LibraryError) as info:
        load_cif_library(tmp_path)
    assert str(tmp_path) in str(info.value)
    shutil.copy(lmtof_references / "MnO_225.cif", tmp_path / "MnO_225.cif")
    (tmp_path / "broken.cif").write_text("data_broken\n_cell_length_a 4.0\nthis is not a CIF loop\n")
    with pytest.raises(LibraryError) as info:
        load_cif_library(tmp_path)
    assert "broken.cif" in str(info.value) and "expected a CIF" in str(info.value)


def test_library_from_structures_refuses_a_repeated_name():
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(LibraryError, match="'NaCl'"):
        library_from_structures([("NaCl", nacl, "a"), ("NaCl", nacl.copy(), "b")])


# -- experts -----------------------------------------------------------------------------------


def test_expert_plan_of_the_lmtof_library(lmtof):
    plan = lmtof.experts()
    assert plan.elements == ("F", "Li", "Mn", "Ti")  # no O expert: every oxide has a metal
    classes = lmtof.classes
    li = plan.elements.index("Li")
    li2o = classes.index("Li2O")
    assert li2o in plan.expert_classes[li] and plan.class_experts(li2o) == (li,)
    assert plan.class_experts(classes.index("LiTiMnF6")) == (0, 1, 2, 3)
    for ids, coarse, names in zip(plan.expert_classes, plan.expert_coarse, plan.coarse_names):
        assert list(ids) == sorted(ids) and len(coarse) == len(ids)
        assert list(names) == sorted(set(names)) and set(coarse) == set(range(len(names)))
        assert [names[c] for c in coarse] == [lmtof.chemical_system(i) for i in ids]
    assert plan.coarse_names[li][plan.expert_coarse[li][plan.expert_classes[li].index(li2o)]] == "Li-O"
    assert set().union(*map(set, plan.expert_classes)) == set(range(len(classes)))  # every class has an expert
    within = lmtof.classes_within({"Mn", "O"})
    assert {classes[i] for i in np.flatnonzero(within)} == {"MnO", "MnO2", "Mn2O3", "Mn3O4"}
    assert not within[classes.index("LiMnO2")]
    assert plan.experts_for_elements(["Li", "O"]).tolist() == [False, True, False, False]
    assert not plan.experts_for_elements({"O"}).any()
    assert lmtof.chemical_system(classes.index("LiMnO2")) == "Li-Mn-O"


def test_classes_of_excluded_elements_only_get_their_own_experts():
    box = Lattice.cubic(6.0)
    oxygen = Structure(box, ["O", "O"], [[0, 0, 0], [0.2, 0, 0]])
    water = Structure(box, ["O", "H", "H"], [[0.5, 0.5, 0.5], [0.6, 0.5, 0.5], [0.5, 0.6, 0.5]])
    lithia = Structure(Lattice.cubic(4.6), ["Li", "Li", "O"], [[0.25] * 3, [0.75] * 3, [0, 0, 0]])
    library = library_from_structures([("O2", oxygen, "t"), ("H2O", water, "t"), ("Li2O", lithia, "t")])
    plan = library.experts()
    assert library.classes == ["H2O", "Li2O", "O2"]
    assert plan.elements == ("H", "Li", "O")
    assert plan.expert_classes == ((0,), (1,), (0, 2))
    assert plan.experts_for_elements({"O"}).tolist() == [False, False, True]
    assert library.experts(exclude=()).elements == ("H", "Li", "O")
    assert library.experts(exclude=()).expert_classes[2] == (0, 1, 2)


def test_expert_plan_json_round_trip_and_element_checks(lmtof):
    plan = lmtof.experts()
    again = ExpertPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.classes == tuple(lmtof.classes)
    with pytest.raises(LibraryError, match="'Xx'"):
        plan.experts_for_elements(["Li", "Xx"])
    with pytest.raises(LibraryError, match="'Qq'"):
        lmtof.classes_within({"Mn", "Qq"})
    broken = plan.to_dict()
    broken["expert_coarse"][0] = broken["expert_coarse"][0][:-1]
    with pytest.raises(LibraryError, match="'F'"):
        ExpertPlan.from_dict(broken)
    del broken["elements"]
    with pytest.raises(LibraryError, match="'elements'"):
        ExpertPlan.from_dict(broken)


# -- split and hash ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["lmtof", "llzo"])
def test_split_by_structure_keeps_every_class_in_training(which, request):
    library: PhaseLibrary = request.getfixturevalue(which)
    train, val = split_by_structure(library, val_fraction=0.2, seed=0)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(library)))
    assert len(val) == round(0.2 * len(library))
    ids = library.phase_classes
    counts = np.bincount(ids)
    assert set(ids[train]) == set(range(len(library.classes)))
    assert (counts[ids[val]] >= 2).all()
    again = split_by_structure(library, val_fraction=0.2, seed=0)
    assert np.array_equal(again[1], val) and np.array_equal(again[0], train)
    assert not np.array_equal(split_by_structure(library, 0.2, seed=1)[1], val)
    assert split_by_structure(library, 0.0)[1].size == 0
    # more than the polymorphs can give: all but one phase of each class
    assert len(split_by_structure(library, 0.9)[1]) == len(library) - len(library.classes)
    with pytest.raises(LibraryError, match="val_fraction"):
        split_by_structure(library, 1.0)


def test_content_hash_is_stable_order_free_and_sees_structure_changes(lmtof, lmtof_references):
    digest = lmtof.content_hash()
    assert len(digest) == 64 and load_cif_library(lmtof_references).content_hash() == digest
    assert lmtof.subset(np.arange(len(lmtof))[::-1]).content_hash() == digest
    renamed = library_from_structures((f"x{i}", p.structure, "elsewhere") for i, p in enumerate(lmtof.phases))
    assert renamed.content_hash() == digest
    moved = [p.structure.copy() for p in lmtof.phases]
    moved[5].translate_sites([0], [0.01, 0.0, 0.0])
    changed = library_from_structures((p.name, s, p.source) for p, s in zip(lmtof.phases, moved))
    assert changed.content_hash() != digest
    assert lmtof.subset(np.arange(1, len(lmtof))).content_hash() != digest
    mask = np.zeros(len(lmtof), bool)
    mask[[3, 7]] = True
    assert lmtof.subset(mask).names == [lmtof.names[3], lmtof.names[7]]


# -- truth and scores --------------------------------------------------------------------------


SPECTRA_TRUTH = {
    "Li2MnO3+MnO+TiO2.xy": {"Li2MnO3", "MnO", "TiO2"},
    "LiMnO2.xy": {"LiMnO2"},
    "Mn2O3+LiF.xy": {"Mn2O3", "LiF"},
    "Mn2O3.xy": {"Mn2O3"},
    "MnO.xy": {"MnO"},
    "MnO2.xy": {"MnO2"},
    "TiO2+MnO.xy": {"TiO2", "MnO"},
    "TiO2.xy": {"TiO2"},
    "Li2CO3-ZrO2.xy": {"Li2CO3", "ZrO2"},
}


def test_labels_of_all_nine_spectra_names_are_library_classes(lmtof, llzo, lmtof_spectra, llzo_dir):
    names = sorted(p.name for p in lmtof_spectra.iterdir()) + sorted(p.name for p in (llzo_dir / "Spectra").iterdir())
    assert sorted(names) == sorted(SPECTRA_TRUTH)
    for name in names:
        labels = labels_from_filename(name)
        assert labels == SPECTRA_TRUTH[name], name
        library = llzo if name.startswith("Li2CO3") else lmtof
        assert labels <= set(library.classes), name
    assert labels_from_filename("/some/dir/Li2O2_129.xy") == {"Li2O2"}
    assert labels_from_filename("Li0.5CoO2") == {"Li(CoO2)2"}  # no pattern suffix: the dot stays


def test_dash_splits_mixtures_unless_the_library_knows_the_hydrate(llzo):
    assert labels_from_filename("LiOH-H2O.xy") == {"LiHO", "H2O"}
    assert labels_from_filename("LiOH-H2O.xy", known=llzo.classes) == {"LiH3O2"}
    assert labels_from_filename("Li2CO3-ZrO2.xy", known=llzo.classes) == {"Li2CO3", "ZrO2"}
    assert labels_from_filename("LiOH-H2O+ZrO2.xy") == {"LiH3O2", "ZrO2"}
    with pytest.raises(LibraryError, match="sample7.xy"):
        labels_from_filename("sample7.xy")
    with pytest.raises(LibraryError, match="MnO\\+\\+TiO2.xy"):
        labels_from_filename("MnO++TiO2.xy")


def test_read_truth_from_names_and_from_a_csv(tmp_path, lmtof_spectra):
    assert read_truth(lmtof_spectra) == {k: v for k, v in SPECTRA_TRUTH.items() if "Li2CO3" not in k}
    for name in ("scan1.xy", "scan2.xye", "scan3.npy", "extra.dat", "notes.md"):
        (tmp_path / name).write_text("")
    (tmp_path / "labels.csv").write_text(
        "file,phases\nscan1.xy,Li2MnO3 + MnO\nscan2.xye,LiOH-H2O\nsub/scan3.npy,Li2O2_129+LiO2\n"
    )
    truth = read_truth(tmp_path, "labels.csv")
    assert truth == {"scan1.xy": {"Li2MnO3", "MnO"}, "scan2.xye": {"LiH3O2"}, "scan3.npy": {"Li2O2", "LiO2"}}
    (tmp_path / "noheader.csv").write_text("scan1.xy,MnO\n")
    assert read_truth(tmp_path, tmp_path / "noheader.csv") == {"scan1.xy": {"MnO"}}
    (tmp_path / "bad.csv").write_text("file,phases\nscan1.xy,MnO\nscan9.xy,TiO2\n")
    with pytest.raises(LibraryError, match=r"bad\.csv, row 3: .*'scan9\.xy'"):
        read_truth(tmp_path, "bad.csv")
    (tmp_path / "bad.csv").write_text("scan1.xy,MnO,TiO2\n")
    with pytest.raises(LibraryError, match="row 1: 3 columns"):
        read_truth(tmp_path, "bad.csv")
    (tmp_path / "bad.csv").write_text("scan1.xy,MnO\nscan2.xye,Foo+MnO\n")
    with pytest.raises(LibraryError, match="row 2: phase 'Foo'"):
        read_truth(tmp_path, "bad.csv")
    with pytest.raises(LibraryError, match="not found"):
        read_truth(tmp_path / "nowhere")


def test_score_arithmetic_on_canonical_labels():
    truth = {"a.xy": frozenset({"MnO2", "LiF"}), "b.xy": frozenset({"TiO2"}), "c.xy": frozenset({"MnO"})}
    predicted = {"a.xy": ["Mn2O4", "LiF"], "b.xy": {"TiO2", "MnO"}, "other.xy": ["MnO"]}
    result = score(predicted, truth)
    a, b, c = result["patterns"]
    assert (a.true_positives, a.recall, a.precision, a.exact) == (2, 1.0, 1.0, True)  # Mn2O4 is MnO2
    assert (b.true_positives, b.recall, b.precision, b.exact) == (1, 1.0, 0.5, False)
    assert c.predicted == frozenset() and c.recall == 0.0 and math.isnan(c.precision) and not c.exact
    assert (result["true_positives"], result["n_true"], result["n_predicted"]) == (3, 4, 4)
    assert result["recall"] == 0.75 and result["precision"] == 0.75 and result["f1"] == pytest.approx(0.75)
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["unscored"] == ["other.xy"]
    with pytest.raises(LibraryError, match="b.xy"):
        score({"b.xy": ["Unobtainium"]}, truth)


# -- the built-in library ----------------------------------------------------------------------


@pytest.mark.slow
def test_default_library_of_calibrants_common_phases_and_prototypes():
    library = default_library()
    assert len(set(library.names)) == len(library) == 388 and len(library.classes) == 331
    assert library.names[:5] == ["Si", "CeO2", "LaB6", "Al2O3", "Al"]  # calibrants first, all kept; then common phases
    assert ("Al2O3", "aflow:A2B3_hR10_167_c_e:Al2O3") in library.duplicates
    plan = library.experts()
    assert len(plan) == 73 and "O" in plan.elements and "H" not in plan.elements
    assert plan.expert_classes[plan.elements.index("O")] == (library.class_index("O2"),)

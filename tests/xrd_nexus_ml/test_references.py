"""The common phases: every entry loads, has the symmetry, formula and density the literature gives,
no impossible distances, and a malformed entry is named in the error."""

from __future__ import annotations

import copy
import fnmatch
import json
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Composition
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from xrd_nexus_ml.physics.symmetry import quiet_spglib
from xrd_nexus_ml.references import (
    CATEGORIES,
    COMMON_PHASES_FILE,
    ReferenceDataError,
    calibrant_structure,
    common_phases,
    load_common_phases,
)

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = json.loads(COMMON_PHASES_FILE.read_text(encoding="utf-8"))["phases"]

#: Literature densities (g/cm3) kept here, apart from the data file, so a wrong cell there fails.
DENSITIES = {"NaCl halite": 2.165, "MgO": 3.58, "Au": 19.32, "C diamond": 3.515, "ZnO": 5.61, "TiO2 rutile": 4.25,
             "TiO2 anatase": 3.89, "CaCO3 calcite": 2.71, "SiO2 alpha-quartz": 2.65, "Cu": 8.96, "W": 19.25,
             "Fe": 7.874, "Al": 2.70, "CaF2 fluorite": 3.18}


@pytest.fixture(scope="module")
def phases():
    return {p.name: p for p in load_common_phases()}


def test_every_entry_loads_with_the_stated_space_group_and_formula(phases):
    assert len(phases) == len(ENTRIES) >= 100
    wrong = []
    for entry in ENTRIES:
        structure = phases[entry["name"]].structure
        with quiet_spglib():
            found = SpacegroupAnalyzer(structure, symprec=1e-3).get_space_group_number()
        if found != entry["space_group_number"]:  # a wrong Wyckoff position lowers or raises it
            wrong.append((entry["name"], "space group", found, entry["space_group_number"]))
        if structure.composition.reduced_formula != Composition(entry["formula"]).reduced_formula:
            wrong.append((entry["name"], "formula", structure.composition.reduced_formula, entry["formula"]))
    assert not wrong


def test_every_entry_names_a_source_a_category_and_its_conditions(phases):
    assert all(p.source.strip() and p.conditions.strip() and p.category in CATEGORIES for p in phases.values())
    counts = Counter(p.category for p in phases.values())
    assert counts["element"] >= 30 and counts["oxide"] >= 25 and counts["halide"] >= 15
    assert {"nist-srm", "carbonate", "hydroxide", "chalcogenide", "sample-environment"} <= set(counts)
    assert all(source.startswith("literature:") for _, _, source in common_phases())


def test_densities_agree_with_the_literature(phases):
    for name, density in DENSITIES.items():
        assert phases[name].structure.density == pytest.approx(density, rel=0.02), name
    assert calibrant_structure("Si").density == pytest.approx(2.329, rel=0.02)
    assert calibrant_structure("Al2O3").density == pytest.approx(3.987, rel=0.02)
    recorded = [p for p in phases.values() if p.density is not None]
    assert len(recorded) > 100
    off = [(p.name, round(p.structure.density, 3), p.density) for p in recorded
           if abs(p.structure.density / p.density - 1) > 0.02]
    assert not off


def test_no_two_atoms_are_impossibly_close(phases):
    for p in phases.values():
        s = p.structure
        d = s.distance_matrix + np.eye(len(s)) * 100.0
        assert d.min() > 0.7, p.name
        heavy = [i for i, site in enumerate(s) if site.specie.symbol != "H"]
        assert d[np.ix_(heavy, heavy)].min() > 1.2, p.name  # the shortest bond without H: C-O, 1.28 Å


#: (cation, anion): (n, shortest, longest): the n nearest anions of every such cation lie in that range (Å),
#: the textbook bond lengths of the building blocks. Catches positions with the right symmetry, formula and
#: density but the wrong geometry: an origin shift between the atoms, a coordinate on the wrong axis.
POLYHEDRA = {("C", "O"): (3, 1.25, 1.32), ("Si", "O"): (4, 1.57, 1.65), ("P", "O"): (4, 1.49, 1.58),
             ("Ti", "O"): (6, 1.85, 2.10), ("Zr", "O"): (7, 2.0, 2.3), ("Y", "O"): (6, 2.2, 2.4),
             ("In", "O"): (6, 2.1, 2.25), ("Fe", "O"): (4, 1.85, 2.3), ("Al", "O"): (6, 1.85, 2.0),
             ("Mg", "O"): (4, 1.9, 2.15), ("Ca", "O"): (6, 2.3, 2.6), ("Cu", "O"): (2, 1.8, 2.0),
             ("Li", "O"): (4, 1.85, 2.25), ("Fe", "S"): (6, 2.2, 2.3)}


def test_the_coordination_polyhedra_have_textbook_bond_lengths(phases):
    wrong, checked = [], Counter()
    for p in phases.values():
        s = p.structure
        elements = {e.symbol for e in s.composition.elements}
        for (cation, anion), (n, shortest, longest) in POLYHEDRA.items():
            if not {cation, anion} <= elements:
                continue
            checked[cation, anion] += 1
            for site in (site for site in s if site.specie.symbol == cation):
                d = sorted(nb.nn_distance for nb in s.get_neighbors(site, 3.0) if nb.specie.symbol == anion)[:n]
                if len(d) < n or d[0] < shortest or d[-1] > longest:
                    wrong.append((p.name, cation, anion, np.round(d, 3).tolist()))
                    break
    assert not wrong
    assert checked["C", "O"] == 6 and checked["Si", "O"] == 2 and checked["Ti", "O"] >= 4


def _write(tmp_path, entries) -> Path:
    path = tmp_path / "phases.json"
    path.write_text(json.dumps({"phases": entries}), encoding="utf-8")
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda e: e.update(space_group_number=221), "number 225"),
    (lambda e: e.update(formula="NaCl2"), "the sites make NaCl"),
    (lambda e: e.pop("source"), "missing keys \\['source'\\]"),
    (lambda e: e.update(category="salt"), "category 'salt'"),
    (lambda e: e.update(colour="white"), "unknown keys \\['colour'\\]"),
    (lambda e: e["sites"][0].update(xyz=[0, 0]), "site 0"),
    (lambda e: e["sites"][1].update(species="Xx"), "Xx"),
    (lambda e: e["lattice"].update(a=-5.64), "lattice lengths"),
    (lambda e: e["sites"][0].update(occupancy=1.5), "occupancy"),
])
def test_a_malformed_entry_is_named_in_the_error(tmp_path, change, message):
    good = next(e for e in ENTRIES if e["name"] == "NaCl halite")
    bad = copy.deepcopy(good)
    bad["name"] = "bad salt"
    change(bad)
    path = _write(tmp_path, [good, bad])
    with pytest.raises(ReferenceDataError, match=f"{path.name}: phase 1 \\('bad salt'\\): .*{message}"):
        load_common_phases(path)
    assert [p.name for p in load_common_phases(_write(tmp_path, [good]))] == ["NaCl halite"]


def test_a_repeated_name_and_an_unreadable_file_are_errors(tmp_path):
    good = next(e for e in ENTRIES if e["name"] == "MgO")
    with pytest.raises(ReferenceDataError, match="phase 1 \\('MgO'\\): the name is used"):
        load_common_phases(_write(tmp_path, [good, good]))
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ReferenceDataError, match="broken.json: cannot read"):
        load_common_phases(tmp_path / "broken.json")


def test_partial_occupancy_and_fraction_strings(tmp_path):
    entry = {"name": "wustite", "formula": "Fe0.9O", "category": "oxide", "space_group": "Fm-3m",
             "space_group_number": 225, "lattice": dict(a=4.3, b=4.3, c=4.3, alpha=90, beta=90, gamma=90),
             "sites": [{"species": "Fe", "xyz": [0, 0, 0], "occupancy": 0.9},
                       {"species": "O", "xyz": ["1/2", "1/2", "1/2"]}],
             "conditions": "test", "source": "test"}
    (phase,) = load_common_phases(_write(tmp_path, [entry]))
    assert phase.structure.composition["Fe"] == pytest.approx(3.6) and len(phase.structure) == 8


def test_the_data_file_ships_with_the_package():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["xrd_nexus_ml"]
    relative = COMMON_PHASES_FILE.relative_to(ROOT / "xrd_nexus_ml").as_posix()
    assert any(fnmatch.fnmatch(relative, g) for g in globs)


@pytest.mark.slow
def test_the_default_library_holds_the_common_phases_as_their_own_phases():
    from xrd_nexus_ml.identification.library import default_library

    library = default_library()
    names = set(library.names)
    wanted = {"NaCl halite", "MgO", "Au", "Pt", "C diamond", "ZnO", "TiO2 rutile", "TiO2 anatase", "CaCO3 calcite"}
    assert wanted <= names
    rutile, anatase = (library.phases[library.names.index(n)] for n in ("TiO2 rutile", "TiO2 anatase"))
    assert rutile.formula == anatase.formula == "TiO2" and rutile.space_group_number != anatase.space_group_number
    assert rutile.source.startswith("literature:")
    # a common phase is kept over the AFLOW prototype of the same structure, never the other way round
    assert ("NaCl halite", "aflow:AB_cF8_225_a_b:NaCl") in library.duplicates
    assert not any(dropped in {n for n, _, _ in common_phases()} for _, dropped in library.duplicates)

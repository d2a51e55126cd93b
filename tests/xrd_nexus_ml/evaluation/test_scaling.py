"""The scaling benchmark: a large library by element substitution, and flat vs hierarchical vs MoE."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Element

from xrd_nexus_ml.cli import build_parser
from xrd_nexus_ml.evaluation.scaling import (
    ARMS,
    FAMILIES,
    SUBSTITUTION_POOL,
    ScalingModels,
    budget_steps,
    evaluate_scaling,
    evaluate_size,
    structure_types,
    substituted_library,
    substitution_family,
)
from xrd_nexus_ml.identification.library import canonical_formula
from xrd_nexus_ml.models import RegNetConfig
from xrd_nexus_ml.physics.form_factors import check_supported
from xrd_nexus_ml.references import aflow_prototypes

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # the suite may share its cores with other work

#: Models small enough to train in seconds, big enough to learn a dozen classes in 60 steps.
SMALL = ScalingModels(
    trunk=RegNetConfig(stem_width=16, widths=(16, 24), depths=(1, 1), group_width=8, position_channels=8),
    expert=RegNetConfig(stem_width=24, widths=(32,), depths=(1,), group_width=8),
    embedding_dim=32, expert_bins=8, expert_bin_channels=4, gate_bins=4,
)
KEYS = {"n_classes", "model", "top1", "top5", "train_seconds", "ms_per_pattern", "n_parameters"}


@pytest.fixture(scope="module")
def library():
    return substituted_library(300, seed=0)


@pytest.fixture(scope="module")
def scaling():
    return evaluate_scaling(sizes=(12,), steps=60, batch_size=16, seed=0, test_patterns=48, models=SMALL)


# -- the substituted library ---------------------------------------------------------------------


def test_every_phase_is_its_own_composition_class(library):
    assert len(library) == 300 and len(library.classes) == 300
    assert [p.formula for p in library.phases] == [canonical_formula(p.structure) for p in library.phases]
    assert np.array_equal(np.sort(library.phase_classes), np.arange(300))


def test_only_pool_elements_that_the_simulator_supports(library):
    used = {e for p in library.phases for e in p.elements}
    assert used <= set(SUBSTITUTION_POOL)
    assert len(used) > 30  # the families are really drawn from, not one element each
    check_supported(np.array([Element(e).Z for e in used]))  # raises on an element without form factors
    for p in library.phases:
        assert {str(e) for e in p.structure.composition.elements} == set(p.elements)


def test_seeded_deterministic_and_prefix_of_a_larger_library(library):
    again = substituted_library(300, seed=0)
    assert [p.name for p in again.phases] == [p.name for p in library.phases]
    a, b = again.phases[7].structure, library.phases[7].structure
    assert np.allclose(a.lattice.matrix, b.lattice.matrix) and np.allclose(a.frac_coords, b.frac_coords)
    assert [p.name for p in substituted_library(50, seed=0).phases] == [p.name for p in library.phases[:50]]
    assert [p.name for p in substituted_library(50, seed=1).phases] != [p.name for p in library.phases[:50]]


def test_substitution_keeps_the_structure_type_and_rescales_the_cell(library):
    for phase in library.phases[:40]:
        label = phase.source.removeprefix("aflow:")
        assert phase.name == f"sub:{label}:{phase.formula}"
        same_label = [s for name, s in aflow_prototypes() if name == label]  # a label may repeat

        def same_families(proto, phase=phase) -> bool:  # site by site, each element replaced within its family
            return all(substitution_family(str(a.specie)) == substitution_family(str(b.specie))
                       for a, b in zip(proto, phase.structure))

        twins = [s for s in same_label if len(s) == len(phase.structure) and same_families(s)
                 and np.allclose(s.frac_coords, phase.structure.frac_coords)]  # only species and scale change
        assert twins, phase.name
        ratio = np.array(phase.structure.lattice.abc) / np.array(twins[0].lattice.abc)
        assert np.allclose(ratio, ratio[0], rtol=1e-6) and 0.3 < ratio[0] < 3.0  # isotropic, plausible


def test_families_are_disjoint_and_unknown_elements_find_one():
    members = [e for f in FAMILIES.values() for e in f]
    assert len(members) == len(set(members)) == len(SUBSTITUTION_POOL)
    assert substitution_family("Po") == "chalcogen" and substitution_family("Pu") == "rare_earth"
    assert substitution_family("O") == "chalcogen" and substitution_family("Li") == "alkali"


def test_structure_types_are_coarse_labels_of_the_classes(library):
    coarse, names = structure_types(library)
    assert coarse.shape == (300,) and coarse.max() == len(names) - 1
    sources = {p.formula: p.source for p in library.phases}
    assert [names[c] for c in coarse] == [sources[f] for f in library.classes]
    assert len(names) < 300  # 300 classes outnumber the prototypes: some types hold several classes


def test_a_size_below_one_is_refused():
    from xrd_nexus_ml.identification.library import LibraryError

    with pytest.raises(LibraryError, match="positive"):
        substituted_library(0)


# -- the benchmark -------------------------------------------------------------------------------


def test_four_models_measured_on_one_budget(scaling):
    assert scaling["sizes"] == [12] and scaling["steps"] == 60 and scaling["batch_size"] == 16
    assert scaling["device"] == "cpu" and scaling["hardware"]["torch_threads"] >= 1 and scaling["complete"]
    rows = scaling["results"]
    assert [r["model"] for r in rows] == list(ARMS) == ["flat", "hierarchical", "moe", "moe_expert_first"]
    for r in rows:
        assert KEYS <= set(r)
        assert r["n_classes"] == 12
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
        assert r["n_test_patterns"] == 48  # every class four times
        assert r["train_seconds"] > 0 and r["ms_per_pattern"] > 0 and r["n_parameters"] > 0
    for moe in rows[2:]:
        assert moe["n_experts"] == len(substituted_library(12, seed=0).experts())
        assert moe["n_parameters"] > rows[0]["n_parameters"]  # one tail per element expert
        # the gate's share of the error and the experts' share, apart
        assert 0.0 <= moe["routing_recall"] <= 1.0 and 0.0 <= moe["top1_perfect_routing"] <= 1.0
    assert rows[2]["recipe"]["recipe"] == "joint" and rows[3]["recipe"]["recipe"] == "expert_first"
    assert [stage for stage, _ in rows[3]["recipe"]["plan"]] == ["experts", "gate", "joint"]
    lib = scaling["libraries"][0]
    assert lib["n_classes"] == 12 and lib["simulation_seconds"] > 0
    assert lib["steps_done"] == 60 and lib["patterns_per_class"] == pytest.approx(60 * 16 / 12)
    json.dumps(scaling)  # the CLI prints it as it is


def test_training_learns_something(scaling):
    """Top-1 of 12 classes by chance is 1/12; a broken label or stream would stay there."""
    best = max(r["top1"] for r in scaling["results"])
    assert best >= 2 / 12


def test_command_line_prints_json(capsys):
    parser = build_parser()
    args = parser.parse_args(["evaluate", "scaling", "--sizes", "6", "--steps", "2", "--batch-size", "4",
                              "--test-patterns", "6", "--json"])
    assert args.sizes == [6]
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in out["results"]] == list(ARMS)
    assert all(r["n_classes"] == 6 for r in out["results"])
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "scaling", "--sizes", "ten"])



def test_budget_in_patterns_per_class():
    assert budget_steps(10_000, 64, patterns_per_class=100) == 15_625  # each class 100 times on average
    assert budget_steps(100, 64, steps=7) == 7
    with pytest.raises(ValueError, match="either"):
        budget_steps(100, 64, steps=7, patterns_per_class=3)
    with pytest.raises(ValueError, match="positive"):
        budget_steps(100, 64, patterns_per_class=0)


def test_an_interrupted_run_is_tested_as_it_is_and_resumes_to_the_same_end(tmp_path):
    """stop_after=0 stops after one step: the result says so, the checkpoint holds the step, and
    the same call resumes from it."""
    library = substituted_library(6, seed=0)
    kwargs = dict(steps=4, batch_size=4, seed=0, test_patterns=6, models=SMALL,
                  arms=("hierarchical", "moe_expert_first"), checkpoint_dir=tmp_path)
    first = evaluate_size(library, stop_after=0.0, **kwargs)
    assert not first["complete"] and first["steps_done"] == 1 and first["steps"] == 4
    assert first["resumed_from_step"] == 0
    assert first["checkpoint"] and (tmp_path / first["checkpoint"].rsplit("/", 1)[-1]).is_file()
    assert [r["model"] for r in first["results"]] == ["hierarchical", "moe_expert_first"]  # tested as they are
    other_gate = evaluate_size(library, stop_after=0.0, **{**kwargs, "models": replace(SMALL, router=False)})
    assert other_gate["resumed_from_step"] == 0  # another architecture never loads this run's checkpoint
    assert other_gate["checkpoint"] != first["checkpoint"]
    second = evaluate_size(library, **kwargs)
    assert second["complete"] and second["steps_done"] == 4 and second["checkpoint"] is None
    assert second["resumed_from_step"] == 1
    assert not Path(first["checkpoint"]).exists()  # a finished run leaves no checkpoint behind
    moe_first = next(r for r in first["results"] if r["model"] == "moe_expert_first")
    moe_second = next(r for r in second["results"] if r["model"] == "moe_expert_first")
    assert moe_second["final_loss"] is not None and moe_first["final_loss"] is not None


def test_unknown_models_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        evaluate_size(substituted_library(6, seed=0), steps=1, batch_size=4, models=SMALL, arms=("moe", "resnet"))

"""The space-group and material-identification models in the live engine, beside the phase model."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch

from bluesky_callbacks.classifier import _sample_elements
from xrd_nexus_ml.inference import Frame, InferenceEngine
from xrd_nexus_ml.inference.stages import SpaceGroupStage
from xrd_nexus_ml.preprocess import prepare_frames
from xrd_nexus_ml.spacegroup.model import CRYSTAL_SYSTEMS
from xrd_nexus_ml.transitions import simulate_ramp

TRANSITION = 31.3


@pytest.fixture(scope="module")
def engine():
    return InferenceEngine.from_bundles(device="cpu", spacegroup_model="default", identification_model="default")


@pytest.fixture(scope="module")
def frames():
    ramp = simulate_ramp(np.linspace(5, 55, 6), transition_pressure=TRANSITION, noise=0.02, seed=3)
    good = [Frame(i + 1, ramp.intensity[i], two_theta=ramp.two_theta, wavelength=ramp.wavelength, pressure=p)
            for i, p in enumerate(ramp.pressures)]
    flat = Frame(7, np.ones_like(ramp.two_theta), two_theta=ramp.two_theta, wavelength=ramp.wavelength, pressure=60.0)
    return [*good, flat]


def test_every_usable_frame_gets_a_space_group_answer_or_undetermined_and_an_identification(engine, frames):
    assert [p.task for p in engine.provenance] == ["phase_classification", "open_set", "space_group",
                                                   "material_identification"]
    records = engine.new_run().classify(frames)
    for r in records[:-1]:
        assert r.flag == "" and r.error == "" and r.phase in ("B1", "rB1")
        # the shipped model's space-group head reaches 90 % right answers on no tuning structure: it
        # never answers (the card's answer threshold), and says so instead of guessing
        assert r.space_group_number == 0 and math.isnan(r.space_group_probability)
        assert r.crystal_system in (*CRYSTAL_SYSTEMS, "undetermined")
        assert r.material or r.material_out_of_library  # a phase named, or none of the library fits
        assert "space_group/spacegroup-resnet@" in r.model_ids and "material_identification/" in r.model_ids
    flat = records[-1]  # no signal: no model answers for it
    assert flat.flag == "zero" and flat.space_group_number == 0 and math.isnan(flat.space_group_probability)
    assert flat.crystal_system == "" and flat.material == "" and not flat.material_out_of_library


def test_a_head_answers_where_its_probability_reaches_its_threshold(engine, frames):
    model = copy.copy(engine.stages[0].model)
    model.answer_thresholds = {"space_group": 0.0, "extinction_group": 0.0, "crystal_system": 0.0}
    stage = SpaceGroupStage(model)
    prepared = prepare_frames([f.intensity for f in frames], grid=model.grid, two_theta=frames[0].two_theta,
                              wavelength=frames[0].wavelength, snip_width_q=None)
    answered = stage.fields(prepared)
    for fields in answered[:-1]:  # every threshold 0: every crystalline frame is answered
        assert 1 <= fields["space_group_number"] <= 230 and 0 < fields["space_group_probability"] <= 1
        assert fields["crystal_system"] in CRYSTAL_SYSTEMS
    # with these thresholds the shipped model calls the rock-salt (B1) frames cubic
    assert [f["crystal_system"] for f, fr in zip(answered[:3], frames[:3])] == ["cubic"] * 3
    model.answer_thresholds = {"space_group": 1.01, "extinction_group": 1.01, "crystal_system": 1.01}
    withheld = stage.fields(prepared)
    assert all(f["space_group_number"] == 0 and math.isnan(f["space_group_probability"])
               and f["crystal_system"] == "undetermined" for f in withheld[:-1])
    assert answered[-1] == withheld[-1] == {}  # the flat frame: no prediction at all


def test_the_sample_elements_restrict_identification(engine, frames):
    # no Mg, Fe or O phase of the default library explains a rock-salt pattern: out of library, none named
    records = engine.new_run(elements=["Mg", "Fe", "O"]).classify(frames[:-1])
    assert all(r.material == "" and r.material_out_of_library for r in records)
    assert all(math.isnan(r.material_probability) for r in records)


def test_elements_no_library_phase_lies_within_flag_every_frame(engine, frames, caplog):
    with caplog.at_level(logging.WARNING):
        run = engine.new_run(elements=["Xe"])
    assert "no phase of the model's library lies within the elements Xe" in caplog.text
    records = run.classify(frames)
    assert [r.material_out_of_library for r in records] == [True] * 6 + [False]  # the flat frame is not judged
    assert all(r.error == "" for r in records)


def test_a_failing_space_group_model_leaves_the_other_answers(engine, frames):
    symmetry, identification = engine.stages
    broken = copy.deepcopy(symmetry.model)
    first_conv = next(m for m in broken.network.modules() if isinstance(m, torch.nn.Conv1d))
    first_conv.weight = torch.nn.Parameter(torch.zeros(first_conv.out_channels, 5, first_conv.kernel_size[0]))
    engine_with_broken = InferenceEngine(engine.phase_model, engine.gate, device="cpu",
                                         provenance=engine.provenance, stages=[SpaceGroupStage(broken), identification])
    records = engine_with_broken.new_run().classify(frames[:-1])
    for r in records:
        assert r.flag == "" and r.phase in ("B1", "rB1") and math.isfinite(r.transition_probability)
        assert r.error.startswith("space_group: RuntimeError")
        assert r.space_group_number == 0 and r.crystal_system == ""
        assert r.material or r.material_out_of_library  # identification still ran
    assert math.isfinite(records[-1].transition_pressure)


def test_frames_for_the_space_group_model_keep_their_background():
    two_theta = np.linspace(10, 26, 2000)
    y = 0.5 + np.exp(-0.5 * ((two_theta - 17.0) / 0.05) ** 2)
    kept = prepare_frames([y], two_theta=two_theta, wavelength=0.4843, snip_width_q=None)
    removed = prepare_frames([y], two_theta=two_theta, wavelength=0.4843)
    inside = kept.mask[0]
    assert kept.x[0][inside].min() == pytest.approx(0.5 / 1.5, rel=1e-2)  # the peak top falls between points
    assert removed.x[0][inside].min() < 1e-3
    # the frame-by-frame path agrees with the batched one
    single = prepare_frames([y], two_theta=two_theta, wavelength=0.4843, snip_width_q=None, batched=False)
    np.testing.assert_allclose(single.x, kept.x, atol=1e-6)


@pytest.mark.parametrize("start, expected", [
    ({"sample": {"elements": ["Mg", "Fe", "O"]}}, ["Mg", "Fe", "O"]),
    ({"elements": "Li, Mn,O"}, ["Li", "Mn", "O"]),
    ({"sample": "ferropericlase"}, None),
    ({}, None),
])
def test_the_sample_elements_come_from_the_start_document(start, expected):
    assert _sample_elements(start) == expected


def test_identification_options_reach_the_identifier_and_its_provenance(engine, frames):
    assert engine.provenance[-1].settings == ""  # the defaults
    fast = InferenceEngine.from_bundles(device="cpu", identification_model="default",
                                        identification_options={"screen": 0})
    (stage,) = fast.stages
    assert stage.identifier.screen == 0
    assert fast.provenance[-1].task == "material_identification" and fast.provenance[-1].settings == '{"screen": 0}'
    assert fast.provenance[-1].to_dict()["settings"] == '{"screen": 0}'  # what the derived run's start carries
    records = fast.new_run().classify(frames[:-1])
    assert all(r.material or r.material_out_of_library for r in records)

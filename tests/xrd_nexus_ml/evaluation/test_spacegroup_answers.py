"""Answer thresholds: a head answers only where its probability keeps the answers right often enough."""

from __future__ import annotations

import numpy as np
import pytest

from xrd_nexus_ml.evaluation.spacegroup import (
    NEVER,
    accuracy_at_coverage,
    answer_threshold,
    answered_accuracy,
    head_truth,
)
from xrd_nexus_ml.spacegroup.model import UNDETERMINED, SpaceGroupPrediction

# six patterns, two classes; the four most confident are right, the two least confident wrong
P = np.array([[0.9, 0.1], [0.8, 0.2], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
T = np.array([0, 0, 0, 0, 1, 1])


def test_the_threshold_is_the_widest_that_keeps_the_precision():
    assert answer_threshold(P, T, target=0.9, min_answers=2) == pytest.approx(0.7)
    assert answer_threshold(P, T, target=0.8, min_answers=2) == pytest.approx(0.6)  # 4 of 5 right
    assert answer_threshold(P, T, target=0.9, min_answers=5) == NEVER  # 5 answers are 80 % right
    assert answer_threshold(P, 1 - T, target=0.9, min_answers=1) == NEVER  # all wrong: never answer


def test_a_threshold_never_splits_equal_probabilities():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.8, 0.2]])
    # the top two are right, the third (tied with the second) wrong: cutting between the 0.8s is not allowed
    assert answer_threshold(p, np.array([0, 0, 1]), target=0.9, min_answers=1) == pytest.approx(0.9)


def test_coverage_and_accuracy_of_the_answers():
    assert answered_accuracy(P, T, 0.7) == {"threshold": 0.7, "coverage": pytest.approx(4 / 6, abs=1e-4),
                                            "n_answered": 4, "accuracy": 1.0}
    assert answered_accuracy(P, T, NEVER)["accuracy"] is None
    curve = accuracy_at_coverage(P, T, coverages=(0.5, 1.0))
    assert curve == {"0.5": 1.0, "1": pytest.approx(4 / 6, abs=1e-4)}


def test_head_truth_follows_the_space_group():
    truth = head_truth([225, 1])
    assert list(truth["space_group"]) == [224, 0]
    assert truth["crystal_system"][0] != truth["crystal_system"][1]


def test_a_prediction_below_its_threshold_says_undetermined():
    prediction = SpaceGroupPrediction(space_groups=[(225, "Fm-3m", 0.3)], extinction_groups=[(5, "F - - -", 0.6)],
                                      crystal_systems=[("cubic", 0.95)], crystalline=True, confidence=0.95,
                                      answered={"space_group": False, "extinction_group": True,
                                                "crystal_system": True})
    answer = prediction.answer()
    assert answer["space_group"] == UNDETERMINED and prediction.space_group is None
    assert answer["crystal_system"] == {"name": "cubic", "probability": 0.95}
    assert answer["extinction_group"]["probability"] == 0.6
    assert prediction.to_dict()["space_group"][0]["number"] == 225  # the ranking stays in the record
    not_crystal = SpaceGroupPrediction([(1, "P1", 0.9)], [(0, "P - - -", 0.9)], [("triclinic", 0.9)],
                                       crystalline=False, confidence=0.9,
                                       answered=dict.fromkeys(("space_group", "extinction_group", "crystal_system"),
                                                              True))
    assert set(not_crystal.answer().values()) == {UNDETERMINED}

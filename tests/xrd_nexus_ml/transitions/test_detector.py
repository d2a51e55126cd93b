"""The training-free transition detector: changes found, compression and bad frames not taken for one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrd_nexus_ml.transitions.detector import (
    ASSEMBLAGE_NAMES,
    AssemblageDetector,
    DetectorError,
    DetectorSettings,
    detect_series,
    scan_legs,
)
from xrd_nexus_ml.transitions.ramp import simulate_ramp

PRESSURES = np.linspace(5.0, 55.0, 81)  # 0.625 GPa steps
STEP = float(PRESSURES[1] - PRESSURES[0])


def _ramp(transition: float, phases=("B1", "rB1"), noise: float = 0.01, seed: int = 0, pressures=PRESSURES):
    return simulate_ramp(pressures, transition, 2.0, noise=noise, seed=seed, phases=phases)


def _run(ramp, pressures=None):
    detector = AssemblageDetector(ramp.two_theta, ramp.wavelength)
    records = detector.update_many(list(ramp.intensity), ramp.pressures if pressures is None else pressures)
    return detector, records


def test_compression_alone_is_not_a_change():
    detector, records = _run(_ramp(200.0))  # the transition lies far beyond the ramp: B1 compressed 5-55 GPa
    assert detector.transitions() == []
    assert detector.n_assemblages == 1
    assert all(r.assemblage == 0 for r in records)
    assert sum(r.status == "changed" for r in records) <= 1  # at most a lone candidate, never confirmed
    # the shift follows compression: peaks move to higher q all along
    assert records[-1].probabilities[0] == 1.0


@pytest.mark.parametrize("phases, truth", [(("B1", "B8"), 30.0), (("B1", "rB1"), 31.0)])
def test_a_transition_is_found_near_the_truth_with_an_honest_sigma(phases, truth):
    detector, records = _run(_ramp(truth, phases=phases))
    found = detector.transitions()
    assert len(found) == 1
    estimate = found[0]
    assert abs(estimate.pressure - truth) <= 2.5 * STEP
    assert 0 < estimate.sigma < 3 * STEP
    assert estimate.lower == ASSEMBLAGE_NAMES[0] and estimate.upper == ASSEMBLAGE_NAMES[1]
    first_changed = next(r for r in records if r.status == "changed")
    assert abs(first_changed.control - truth) <= 2.5  # within the coexistence region (2 GPa wide) and a step
    assert records[-1].assemblage == 1


def test_bad_frames_are_flagged_and_a_lone_odd_frame_is_not_a_transition():
    ramp = _ramp(200.0)
    frames = list(ramp.intensity)
    frames[10] = np.full_like(frames[10], np.nan)
    frames[20] = np.zeros_like(frames[20])
    odd = _ramp(10.0, phases=("B1", "B8"))  # one frame of another phase in the middle: a bad frame
    frames[40] = odd.intensity[60]
    controls = ramp.pressures.copy()
    controls[30] = math.nan
    detector = AssemblageDetector(ramp.two_theta, ramp.wavelength)
    records = detector.update_many(frames, controls)
    assert records[10].status == "flagged" and records[10].flag == "nan"
    assert records[20].status == "flagged" and records[20].flag == "zero"
    assert records[30].status == "flagged" and records[30].flag == "control"
    assert records[40].status == "changed"  # a candidate...
    assert detector.transitions() == []  # ...that the next frames did not confirm
    assert records[41].status == "same"


def test_frames_inside_the_scanned_range_only_add_evidence():
    ramp = _ramp(30.0, phases=("B1", "B8"), pressures=np.array([5.0, 10, 15, 20, 25, 35, 40, 45, 50, 55, 32.5, 27.5,
                                                                 52.5]))
    detector, records = _run(ramp)
    assert detector.n_assemblages == 2
    inside = {round(r.control, 1): r for r in records[-3:]}
    assert inside[52.5].assemblage == 1 and inside[52.5].status == "same"  # back inside the second one
    assert inside[32.5].probabilities[1] > 0.5 > inside[27.5].probabilities[1]
    estimate = detector.transitions()[0]
    assert 27.5 <= estimate.map_pressure <= 35.0  # the bracket the frames inside it narrowed
    assert estimate.interval[0] <= 30.0 <= estimate.interval[1]  # few frames: a wide but honest interval


def test_a_series_that_turns_back_is_read_leg_by_leg():
    up = np.linspace(5.0, 55.0, 41)
    down = up[::-1][1:]
    pressures = np.concatenate([up, down])
    ramp = _ramp(30.0, phases=("B1", "B8"), pressures=pressures)
    legs = scan_legs(pressures)
    assert len(legs) == 2 and legs[1][0] == len(up) - 1
    records, transitions = detect_series(list(ramp.intensity), pressures, ramp.two_theta, ramp.wavelength)
    assert len(records) == len(pressures)
    assert [t.direction for t in transitions] == ["increasing", "decreasing"]
    for t in transitions:
        assert abs(t.value - 30.0) < 3.0 and t.interval[0] <= t.value <= t.interval[1]


def test_settings_are_checked():
    with pytest.raises(DetectorError, match="threshold"):
        DetectorSettings(threshold=1.5)
    with pytest.raises(DetectorError, match="confirm"):
        DetectorSettings(confirm=0)
    detector = AssemblageDetector()
    with pytest.raises(DetectorError, match="control values"):
        detector.update_many([np.ones(10)], [1.0, 2.0])
    # bare arrays without an axis cannot be placed on q: flagged, not raised
    assert detector.update_many([np.ones(10)], [1.0])[0].status == "flagged"


def test_the_engine_runs_the_detector_or_no_transition_model():
    from xrd_nexus_ml.inference.engine import Frame, InferenceEngine

    ramp = _ramp(30.0, phases=("B1", "B8"), pressures=np.linspace(5.0, 55.0, 41))
    for choice, names in (("auto", ("assemblage 1", "assemblage 2")), ("none", ("not classified",))):
        engine = InferenceEngine.from_bundles(choice, spacegroup_model=None, identification_model=None)
        run = engine.new_run()
        records = []
        for start in range(0, 41, 10):
            records += run.classify([Frame(i, ramp.intensity[i], ramp.two_theta, ramp.wavelength,
                                           pressure=float(ramp.pressures[i]))
                                     for i in range(start, min(start + 10, 41))])
        assert len(records) == 41 and all(r.flag == "" for r in records)
        if choice == "auto":
            assert engine.phase_names[:2] == names
            assert records[0].phase == "assemblage 1" and records[-1].phase == "assemblage 2"
            assert abs(records[-1].transition_pressure - 30.0) < 2.5 and records[-1].transition_pressure_uncertainty > 0
            assert "assemblage_tracking" in engine.model_ids
        else:
            assert engine.phase_names == names and engine.model_ids == ""
            assert all(r.phase == "" and np.isnan(r.transition_pressure) for r in records)

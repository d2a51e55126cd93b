"""LiveView: the scan drawn while it runs, headless, at a bounded rate, never in the RunEngine's way."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.sim import SynAxis

from bluesky_callbacks import ClassifierCallback, LiveView
from xrd_nexus_ml.inference import InferenceEngine
from xrd_nexus_ml.transitions import simulate_ramp

TRANSITION = 31.3


@pytest.fixture(scope="module")
def ramp():
    return simulate_ramp(np.linspace(5, 55, 12), transition_pressure=TRANSITION, noise=0.02, seed=7)


def scan_with_view(ramp, ramp_detector, view):
    pressure = SynAxis(name="pressure")
    classifier = ClassifierCallback(InferenceEngine.from_bundles(), batch_size=4)
    classifier.subscribe(view)
    RE = RunEngine({})
    RE.subscribe(view)
    RE.subscribe(classifier)
    RE(bp.scan([ramp_detector(ramp, pressure)], pressure, 5, 55, ramp.n_frames))
    assert classifier.flush(60)
    classifier.close()


def test_the_view_draws_every_frame_its_phase_and_the_estimate(tmp_path, ramp, ramp_detector):
    view = LiveView(path=tmp_path / "live.png", min_interval=0.0, points=500)
    scan_with_view(ramp, ramp_detector, view)
    assert not view.errors and view.draws >= 2 and (tmp_path / "live.png").stat().st_size > 10_000
    waterfall, estimate = view.figure.axes
    assert len(waterfall.lines) == ramp.n_frames  # one row per frame
    assert waterfall.get_xlabel() == "2θ (°)"  # the detector's axis, from its configuration
    ticks = [float(t.get_text()) for t in waterfall.get_yticklabels()]
    assert ticks == sorted(ticks) and ticks[0] == pytest.approx(5.0) and ticks[-1] == pytest.approx(55.0)
    colours = {line.get_color() for line in waterfall.lines}
    assert colours == {"tab:blue", "tab:red"}  # B1 below the transition, rB1 above
    assert {t.get_text() for t in waterfall.get_legend().get_texts()} == {"predicted B1", "predicted rB1"}
    title = waterfall.get_title()
    assert f"{ramp.n_frames} frames" in title and "transition" in title and "material" in title
    shown = float(title.split("transition ")[1].split(" ±")[0])
    assert abs(shown - TRANSITION) < 5.0  # 4.5 GPa steps
    assert {t.get_text() for t in estimate.get_legend().get_texts()} == {"transition estimate", "± 2σ"}


def test_the_view_draws_at_a_bounded_rate_and_once_more_at_the_end(ramp, ramp_detector):
    ticks = iter(range(10**6))
    view = LiveView(min_interval=1e9, clock=lambda: float(next(ticks)))
    scan_with_view(ramp, ramp_detector, view)
    assert view.draws == 2  # the first batch, then the stop; nothing in between


def test_a_failing_draw_is_kept_not_raised(ramp, ramp_detector, monkeypatch):
    view = LiveView(min_interval=0.0)
    monkeypatch.setattr(view, "_draw", lambda: 1 / 0)
    scan_with_view(ramp, ramp_detector, view)  # the scan completes
    assert view.errors and "ZeroDivisionError" in view.errors[0]
    with pytest.raises(ValueError, match="max_frames"):
        LiveView(max_frames=0)

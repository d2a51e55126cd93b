"""The simulated high-pressure beamline: a real RunEngine driving real ophyd devices, real HDF5
files read back through the AD_HDF5 handler, and pyFAI integrating the area detector's rings."""

import logging
import math

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from event_model import Filler
from ophyd.utils import LimitError
from scipy.signal import find_peaks

from bluesky_callbacks.handlers import FRAMES_DATASET, HANDLERS, FrameNotWrittenError, HDF5FrameHandler
from bluesky_callbacks.sim import (
    BeamEnergy,
    PatternFlyer,
    PatternSource,
    PowderAreaDetector,
    PowderDetector1D,
    PressureCell,
    PressureLimitError,
    PressureMoveError,
    SampleModel,
    SimulatedBeamlineError,
    make_beamline,
)
from xrd_nexus_ml.errors import WavelengthError
from xrd_nexus_ml.pattern import HC_KEV_ANGSTROM, energy_to_wavelength
from xrd_nexus_ml.transitions import simulate_ramp

N_POINTS = 4023
STEP = 16.0 / (N_POINTS - 1)  # the 1D detector's 2θ step, degrees


@pytest.fixture(scope="module")
def RE():
    return RunEngine({}, context_managers=[])


def run(RE, plan, *callbacks):
    """Run `plan`, returning every (name, doc) it emitted; `callbacks` see them live."""
    docs = []

    def collect(name, doc):
        docs.append((name, doc))
        for callback in callbacks:
            callback(name, doc)

    RE(plan, collect)
    return docs


def only(docs, name):
    return [doc for n, doc in docs if n == name]


def peaks_2theta(two_theta, intensity, prominence):
    index, _ = find_peaks(intensity, prominence=prominence * np.max(intensity))
    return two_theta[index]


def assert_data_matches_keys(data_keys, data):
    """Each value has the shape and numpy dtype its data key announces."""
    for key, value in data.items():
        value = np.asarray(value)
        assert list(value.shape) == data_keys[key]["shape"], key
        assert value.dtype.str == data_keys[key]["dtype_numpy"], key


# -- movables ---------------------------------------------------------------------------------------


def test_pressure_cell_settles_on_a_timer_thread(RE):
    cell = PressureCell(settle_time=0.05)
    status = cell.set(12.5)
    assert not status.done  # a timer thread finishes it settle_time later
    assert cell.setpoint.get() == 12.5 and cell.position == 0.0
    status.wait(timeout=10)
    assert status.success and cell.position == 12.5

    run(RE, bps.mv(cell, 40.0))
    assert cell.position == cell.setpoint.get() == 40.0
    keys = cell.describe()
    assert keys["pressure"]["units"] == "GPa" and keys["pressure"]["dtype"] == "number"
    assert cell.hints == {"fields": ["pressure"]}
    assert cell.describe_configuration()["pressure_settle_time"]["units"] == "s"


def test_pressure_limits_raise_before_anything_moves(RE):
    cell = PressureCell(settle_time=0.0, initial=5.0)
    with pytest.raises(PressureLimitError, match=r"151 GPa is outside the cell's limits 0-150 GPa") as info:
        cell.set(151)
    assert isinstance(info.value, LimitError)
    with pytest.raises(PressureLimitError, match="outside"):
        RE(bps.mv(cell, -1.0))
    with pytest.raises(PressureLimitError, match="must be a number"):
        cell.set("high")
    assert cell.position == cell.setpoint.get() == 5.0


def test_a_stopped_or_superseded_move_fails_its_status():
    cell = PressureCell(settle_time=30.0)
    first = cell.set(20.0)
    second = cell.set(25.0)
    with pytest.raises(PressureMoveError, match="move to 20 GPa superseded by a move to 25 GPa"):
        first.wait(timeout=10)
    cell.stop()
    with pytest.raises(PressureMoveError, match="move to 25 GPa was stopped"):
        second.wait(timeout=10)
    assert cell.position == 0.0


def test_beam_energy_reads_kev_and_configures_the_wavelength():
    beam = BeamEnergy()
    assert beam.read()["energy"]["value"] == 25.6
    assert beam.describe()["energy"]["units"] == "keV"
    beam.set(30.0).wait(timeout=10)
    config = beam.read_configuration()["energy_wavelength"]["value"]
    assert config == pytest.approx(HC_KEV_ANGSTROM / 30.0)
    assert beam.describe_configuration()["energy_wavelength"]["units"] == "angstrom"
    with pytest.raises(WavelengthError, match="positive number of keV"):
        beam.set(-1.0)
    assert beam.position == 30.0


# -- the 1D detector --------------------------------------------------------------------------------


def test_step_scan_documents_describe_their_data(RE):
    bl = make_beamline(SampleModel(seed=1), lookup_pressures=np.arange(10.0, 50.5, 0.5))
    docs = run(RE, bp.scan([bl.detector, bl.energy], bl.pressure, 10, 50, 5))

    (descriptor,) = only(docs, "descriptor")
    keys = descriptor["data_keys"]
    assert keys["detector_pattern"] | {"object_name": None} == {
        "source": "SIM:detector_pattern", "dtype": "array", "shape": [N_POINTS], "dtype_numpy": "<f4",
        "units": "a.u.", "object_name": None}
    assert "external" not in keys["detector_pattern"]
    assert (keys["pressure"]["units"], keys["pressure"]["dtype"]) == ("GPa", "number")
    assert (keys["energy"]["units"], keys["energy"]["dtype_numpy"]) == ("keV", "<f8")
    events = only(docs, "event")
    assert [e["data"]["pressure"] for e in events] == [10.0, 20.0, 30.0, 40.0, 50.0]
    for event in events:
        assert_data_matches_keys(keys, event["data"])
        assert event["data"]["detector_pattern"].max() == pytest.approx(1.0)

    config = descriptor["configuration"]["detector"]
    two_theta = config["data"]["detector_two_theta"]
    assert two_theta.shape == (N_POINTS,) and (two_theta[0], two_theta[-1]) == pytest.approx((10.0, 26.0))
    assert config["data_keys"]["detector_two_theta"]["units"] == "deg"
    assert config["data_keys"]["detector_two_theta"]["shape"] == [N_POINTS]
    assert config["data"]["detector_wavelength"] == pytest.approx(energy_to_wavelength(25.6))
    assert config["data_keys"]["detector_wavelength"]["units"] == "angstrom"
    assert "pressure" in descriptor["hints"]["pressure"]["fields"]


def test_pattern_splits_where_the_sample_turns_rhombohedral():
    """111 and 220 split in rB1, 200 does not: one peak each at 10 GPa, two at 50 GPa."""
    cell, beam = PressureCell(settle_time=0.0), BeamEnergy()
    detector = PowderDetector1D(cell, beam, SampleModel(noise=0.002, seed=2))
    two_theta = detector.two_theta.get()
    counts = {}
    for pressure in (10.0, 50.0):
        cell.set(pressure).wait(timeout=10)
        detector.trigger().wait(timeout=10)
        found = peaks_2theta(two_theta, detector.pattern.get(), prominence=0.05)
        counts[pressure] = [int(np.sum((found > lo) & (found < hi))) for lo, hi in
                            ((10.5, 12.5), (12.8, 14.5), (17.5, 20.5))]  # 111, 200, 220
    assert counts[10.0] == [1, 1, 1]
    assert counts[50.0] == [2, 1, 2]


def test_beam_energy_moves_peaks_as_braggs_law_says():
    cell, beam = PressureCell(settle_time=0.0, initial=20.0), BeamEnergy()
    detector = PowderDetector1D(cell, beam, SampleModel(noise=0.002, seed=3))
    two_theta = detector.two_theta.get()
    patterns = {}
    for energy in (25.6, 30.0):
        beam.set(energy).wait(timeout=10)
        detector.trigger().wait(timeout=10)
        patterns[energy] = detector.pattern.get()
        assert detector.read_configuration()["detector_wavelength"]["value"] == pytest.approx(HC_KEV_ANGSTROM / energy)
    low = peaks_2theta(two_theta, patterns[25.6], prominence=0.05)
    high = peaks_2theta(two_theta, patterns[30.0], prominence=0.05)
    # λ = 2 d sin θ: at fixed d, sin θ scales with λ, i.e. with 1/E
    predicted = np.degrees(2 * np.arcsin(np.sin(np.radians(low / 2)) * 25.6 / 30.0))
    predicted = predicted[predicted > 10.0]
    assert predicted.size >= 3
    assert np.abs(high[:, None] - predicted[None, :]).min(axis=0).max() <= 2 * STEP
    strongest = {energy: two_theta[np.argmax(pattern)] for energy, pattern in patterns.items()}
    assert strongest[25.6] - strongest[30.0] > 1.0  # the strongest peak (200) moved to lower angle...
    assert abs(np.degrees(2 * np.arcsin(np.sin(np.radians(strongest[25.6] / 2)) * 25.6 / 30.0))
               - strongest[30.0]) <= 2 * STEP  # ...to where Bragg's law puts it


def test_frames_draw_fresh_noise_reproducibly_around_the_noiseless_pattern():
    sample = SampleModel(seed=4)
    cell, beam = PressureCell(settle_time=0.0, initial=20.0), BeamEnergy()
    first, second = PowderDetector1D(cell, beam, sample), PowderDetector1D(cell, beam, sample)
    frames = []
    for detector in (first, first, second):
        detector.trigger().wait(timeout=10)
        frames.append(detector.pattern.get())
    assert not np.array_equal(frames[0], frames[1])  # a fresh draw per frame
    np.testing.assert_array_equal(frames[0], frames[2])  # frame 0 of the same sample is frame 0
    expected = first.source.expected(20.0, 25.6)
    residual = frames[0] / frames[0].max() - expected / expected.max()
    assert 0.2 * sample.noise < residual.std() < 3 * sample.noise


def test_lookup_table_serves_the_simulated_patterns():
    sample = SampleModel(seed=5)
    reference = simulate_ramp([20.0, 20.5, 40.0], noise=0.0, background=0.0, seed=5).intensity
    nearest = PatternSource(sample)
    nearest.precompute([20.0, 20.5], 25.6)
    np.testing.assert_allclose(nearest.clean(20.2, 25.6), reference[0], atol=1e-6)
    np.testing.assert_allclose(nearest.clean(20.3, 25.6), reference[1], atol=1e-6)
    np.testing.assert_allclose(nearest.clean(40.0, 25.6), reference[2], atol=1e-6)  # outside: simulated
    linear = PatternSource(sample, interpolation="linear")
    linear.precompute([20.5, 20.0], 25.6)
    np.testing.assert_allclose(linear.clean(20.25, 25.6), 0.5 * (reference[0] + reference[1]), atol=1e-6)
    assert not np.allclose(linear.clean(20.0, 26.0), reference[0], atol=1e-3)  # another energy: not the table


def test_bad_samples_and_settings_are_refused_with_what_was_expected():
    with pytest.raises(SimulatedBeamlineError, match="phases must name at least two"):
        SampleModel(phases=("B1", "B2"))
    with pytest.raises(SimulatedBeamlineError, match="noise must be a number >= 0"):
        SampleModel(noise=-0.1)
    with pytest.raises(SimulatedBeamlineError, match="give write_dir"):
        make_beamline(external=True)
    with pytest.raises(SimulatedBeamlineError, match="interpolation must be"):
        PatternSource(interpolation="cubic")


# -- external frames --------------------------------------------------------------------------------


def test_external_frames_read_back_through_the_filler(RE, tmp_path):
    sample = SampleModel(seed=6)
    external = make_beamline(sample, external=True, write_dir=tmp_path)
    inline = make_beamline(sample)
    handlers = {}
    filled = []
    with Filler(HANDLERS, inplace=False, handler_cache=handlers) as filler:
        docs = run(RE, bp.scan([external.detector], external.pressure, 10, 50, 5),
                   lambda name, doc: filled.append(filler(name, doc)))  # live: reads the file as it is written
    reference = [e["data"]["detector_pattern"] for e in only(run(RE, bp.scan([inline.detector], inline.pressure,
                                                                                10, 50, 5)), "event")]

    (start,) = only(docs, "start")
    (resource,) = only(docs, "resource")
    assert (resource["spec"], resource["resource_kwargs"]) == ("AD_HDF5", {"frame_per_point": 1})
    assert resource["run_start"] == start["uid"] and resource["root"] == str(tmp_path)
    datums = only(docs, "datum")
    assert [d["datum_kwargs"] for d in datums] == [{"point_number": i} for i in range(5)]
    (descriptor,) = only(docs, "descriptor")
    key = descriptor["data_keys"]["detector_pattern"]
    assert (key["external"], key["shape"], key["dtype_numpy"]) == ("FILESTORE:", [N_POINTS], "<f4")
    events = only(docs, "event")
    assert [e["data"]["detector_pattern"] for e in events] == [d["datum_id"] for d in datums]

    frames = [e["data"]["detector_pattern"] for e in only(filled, "event")]
    for frame, expected in zip(frames, reference, strict=True):
        assert frame.dtype == np.float32 and frame.shape == (N_POINTS,)
        np.testing.assert_array_equal(frame, expected)
    for handler in handlers.values():
        handler.close()

    path = external.detector.file_path
    assert path.parent == tmp_path
    with h5py.File(path, "r") as f:  # closed by unstage: readable without SWMR
        np.testing.assert_array_equal(f[FRAMES_DATASET][()], np.stack(reference))

    run(RE, bp.count([external.detector], 1))
    assert external.detector.file_path != path and len(list(tmp_path.glob("*.h5"))) == 2  # one file per run


def test_external_detector_refuses_to_trigger_unstaged(tmp_path):
    bl = make_beamline(external=True, write_dir=tmp_path)
    with pytest.raises(SimulatedBeamlineError, match="stage the detector"):
        bl.detector.trigger()


def test_handler_loads_points_and_says_which_frame_is_missing(tmp_path):
    path = tmp_path / "frames.h5"
    frames = np.arange(12, dtype=np.float32).reshape(4, 3)
    with h5py.File(path, "w", libver="latest") as f:
        f[FRAMES_DATASET] = frames
    with HDF5FrameHandler(str(path), frame_per_point=2) as handler:
        np.testing.assert_array_equal(handler(1), frames[2:4])
        with pytest.raises(FrameNotWrittenError, match="point 2 needs frames 4-5, the file holds 4") as info:
            handler(2)
    assert isinstance(info.value, OSError)  # so that the Filler retries while a writer catches up
    with pytest.raises(FrameNotWrittenError, match="no such HDF5 file"):
        HDF5FrameHandler(str(tmp_path / "missing.h5"))(0)


# -- the area detector ------------------------------------------------------------------------------


def test_area_detector_integrates_back_to_the_1d_pattern(RE, caplog):
    bl = make_beamline(SampleModel(noise=0.005, seed=7), area_detector=True, settle_time=0.0)
    area = bl.area_detector
    run(RE, bps.mv(bl.pressure, 20.0))
    with caplog.at_level(logging.INFO, logger="bluesky_callbacks.sim"):
        docs = run(RE, bp.count([area, bl.pressure], 3))
        assert area.integrator_builds == 1  # one integrator for three frames
        run(RE, bps.mv(bl.energy, 30.0))
        run(RE, bp.count([area], 2))
    assert area.integrator_builds == 2  # rebuilt once, for the new energy
    assert "beam energy changed from 25.6 to 30 keV" in caplog.text

    (descriptor,) = only(docs, "descriptor")
    keys = descriptor["data_keys"]
    assert (keys["area_detector_image"]["shape"], keys["area_detector_image"]["dtype_numpy"]) == ([512, 512], "<u4")
    assert (keys["area_detector_integrated"]["shape"], keys["area_detector_integrated"]["units"]) == ([1000], "counts")
    for event in only(docs, "event"):
        assert_data_matches_keys(keys, event["data"])
    config = descriptor["configuration"]["area_detector"]["data"]
    bins = config["area_detector_two_theta"]
    assert config["area_detector_distance"] == pytest.approx(area.geometry.distance)

    integrated = only(docs, "event")[-1]["data"]["area_detector_integrated"]
    pattern = bl.detector.source.expected(20.0, 25.6)
    two_theta = bl.detector.source.two_theta
    bin_width = bins[1] - bins[0]
    assert abs(bins[np.argmax(integrated)] - two_theta[np.argmax(pattern)]) <= 2 * bin_width
    reference = peaks_2theta(two_theta, pattern, prominence=0.1)
    found = peaks_2theta(bins, integrated, prominence=0.1)
    assert reference.size >= 4
    assert np.abs(found[:, None] - reference[None, :]).min(axis=0).max() <= 2 * bin_width


def test_area_detector_geometry_puts_the_2theta_range_on_the_panel():
    area = PowderAreaDetector(PressureCell(), BeamEnergy(), SampleModel(), shape=(64, 96), pixel_size=172e-6)
    integrator = area.integrator(25.6)
    pixel_two_theta = integrator.center_array((64, 96), unit="2th_deg")
    assert (pixel_two_theta.min(), pixel_two_theta.max()) == pytest.approx((10.0, 26.0), abs=1e-3)
    assert math.isclose(area.integrator(25.6).wavelength, energy_to_wavelength(25.6) * 1e-10)
    assert area.integrator_builds == 1


def test_area_detector_writes_images_the_filler_reads_back(RE, tmp_path):
    sample = SampleModel(seed=8)
    cell, beam = PressureCell(settle_time=0.0, initial=30.0), BeamEnergy()
    external = PowderAreaDetector(cell, beam, sample, shape=(96, 96), external=True, write_dir=tmp_path)
    inline = PowderAreaDetector(cell, beam, sample, shape=(96, 96), name="inline")
    handlers = {}
    with Filler(HANDLERS, inplace=False, handler_cache=handlers) as filler:
        filled = [filler(name, doc) for name, doc in run(RE, bp.count([external], 2))]
    for handler in handlers.values():
        handler.close()
    reference = [e["data"]["inline_image"] for e in only(run(RE, bp.count([inline], 2)), "event")]
    (descriptor,) = only(filled, "descriptor")
    assert descriptor["data_keys"]["area_detector_image"]["external"] == "FILESTORE:"
    assert "external" not in descriptor["data_keys"]["area_detector_integrated"]
    images = [e["data"]["area_detector_image"] for e in only(filled, "event")]
    for image, expected in zip(images, reference, strict=True):
        assert image.dtype == np.uint32 and image.shape == (96, 96)
        np.testing.assert_array_equal(image, expected)


# -- fly scans --------------------------------------------------------------------------------------


def test_flyer_delivers_frames_as_event_pages(RE):
    ramp = simulate_ramp(np.linspace(10.0, 50.0, 9), noise=0.01, seed=9)
    n = 2500
    frames = np.resize(ramp.intensity, (n, N_POINTS))
    pressures = np.resize(ramp.pressures, n)
    flyer = PatternFlyer(frames, pressures, ramp.two_theta, ramp.energy_kev, page_size=1000, frame_rate_hz=2000.0)
    docs = run(RE, bp.fly([flyer]))

    (descriptor,) = only(docs, "descriptor")
    assert descriptor["name"] == "primary"
    announced = flyer.describe_collect()["primary"]
    assert {k: {f: v[f] for f in announced[k]} for k, v in descriptor["data_keys"].items()} == announced
    assert announced["detector_pattern"]["shape"] == [N_POINTS]
    np.testing.assert_array_equal(descriptor["configuration"]["detector"]["data"]["detector_two_theta"],
                                  ramp.two_theta)
    pages = only(docs, "event_page")
    assert [len(p["seq_num"]) for p in pages] == [1000, 1000, 500]
    assert [s for p in pages for s in p["seq_num"]] == list(range(1, n + 1))
    for page in pages:
        assert_data_matches_keys(announced, {k: v[0] for k, v in page["data"].items()})
    np.testing.assert_array_equal(np.stack([f for p in pages for f in p["data"]["detector_pattern"]]), frames)
    np.testing.assert_array_equal([x for p in pages for x in p["data"]["pressure"]], pressures)
    stamps = np.array([t for p in pages for t in p["timestamps"]["detector_pattern"]])
    np.testing.assert_allclose(np.diff(stamps), 1 / 2000.0, atol=1e-6)  # epoch seconds: ~0.2 µs resolution
    with pytest.raises(SimulatedBeamlineError, match="kickoff"):
        next(flyer.collect_pages())  # collected: a new fly needs a new kickoff


def test_flyer_refuses_frames_that_do_not_fit_the_axis():
    ramp = simulate_ramp([10.0, 20.0], noise=0.0, seed=10)
    assert PatternFlyer.from_ramp(ramp).frames.shape == (2, N_POINTS)
    with pytest.raises(SimulatedBeamlineError, match=r"frames must be \(n, 4023\)"):
        PatternFlyer(ramp.intensity[:, :100], ramp.pressures, ramp.two_theta)
    with pytest.raises(SimulatedBeamlineError, match="one pressure per frame"):
        PatternFlyer(ramp.intensity, ramp.pressures[:1], ramp.two_theta)

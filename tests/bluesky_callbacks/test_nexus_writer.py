"""NexusWriter: real Bluesky documents (event_model.compose_run, a RunEngine) into NXxrd_ml files, read back."""

import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import nexus_runs as runs
import numpy as np
import pytest

from bluesky_callbacks.nexus_writer import NexusWriter, safe_file_name
from nexus_definitions import layout as L
from nexus_definitions.writer import NexusFileExistsError, NexusWriteError, clear_consistency_flags


def feed(writer, docs):
    for name, doc in docs:
        writer(name, doc)


def strings(ds):
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(ds[()])]


def test_raw_events_and_paged_predictions_make_one_file(tmp_path):
    raw = runs.raw_run(6, paged=False)
    derived = runs.derived_run(raw, 6, paged=True)
    writer = NexusWriter(tmp_path)
    feed(writer, runs.interleaved(raw, derived, lag=2))  # predictions arrive two frames late, after the raw stop
    path = writer.paths[raw.uid]
    assert path.parent == tmp_path.resolve() and not writer.errors
    with h5py.File(path, "r") as f:
        e = f["entry"]
        assert strings(e["definition"]) == ["NXxrd_ml"]
        assert e["instrument/detector/data"].shape == (6, 200)
        np.testing.assert_allclose(e["instrument/detector/data"][3], runs.pattern(3, 200))
        detector_data = e["instrument/detector/data"]  # "a.u." is no NeXus (UDUNITS) unit: relative intensity
        assert detector_data.attrs["units"] == "" and detector_data.attrs["long_name"] == "intensity (a.u.)"
        np.testing.assert_allclose(e["instrument/detector/polar_angle"][()], runs.two_theta(200))
        assert e["instrument/detector/polar_angle"].attrs["units"] == "deg"
        np.testing.assert_allclose(e["sample/pressure"][()], [runs.pressure_of(i) for i in range(6)])
        assert e["sample/pressure"].attrs["units"] == "GPa"
        np.testing.assert_allclose(e["instrument/monochromator/energy"][()], runs.ENERGY)
        np.testing.assert_allclose(e["instrument/monochromator/wavelength"][()], 12.398419843320026 / runs.ENERGY)
        q = e["data/q"][()]
        assert e["data/q"].attrs["units"] == "1/angstrom"
        np.testing.assert_allclose(q[0], 4 * np.pi * np.sin(np.radians(runs.two_theta(200)) / 2) * runs.ENERGY
                                   / 12.398419843320026)
        assert list(e["instrument/detector/sequence_number"][()]) == [1, 2, 3, 4, 5, 6]
        assert e["data/pressure"].attrs["target"] == "/entry/sample/pressure"  # a NeXus link, not a copy
        assert e["data/data"].id == e["instrument/detector/data"].id
        assert list(e["data"].attrs["axes"]) == ["pressure", "polar_angle"] and e["data"].attrs["signal"] == "data"
        assert f.attrs["default"] == "entry" and e.attrs["default"] == "data"
        r = e["predictions/results"]
        assert list(r["sequence_number"][()]) == [1, 2, 3, 4, 5, 6]
        assert strings(r["phase"])[:2] == ["B1 (rock salt)", "B1 (rock salt)"]
        assert strings(r["phase"])[5] == "B8 (NiAs)"
        assert r["phase_probabilities"].shape == (6, 3) and r["top_k_index"].shape == (6, 2)
        assert r["transition_pressure"].attrs["units"] == "GPa" and r["latency"].attrs["units"] == "ms"
        assert math.isnan(r["transition_pressure"][0]) and r["transition_pressure"][3] == 14.0
        assert strings(r["raw_uid"])[0] == raw.frames[0][0][1]["uid"]
        assert strings(e["predictions/models/model_id"]) == [m["model_id"] for m in runs.MODELS]
        assert strings(e["predictions/models/settings"]) == ["", '{"top_k": 2}']  # an older record has none
        assert strings(e["predictions/parameters/phase_names"]) == runs.PHASES
        assert strings(e["predictions/parameters/original_run_uid"]) == [raw.uid]
        assert strings(e["predictions/parameters/derived_run_uid"]) == [derived.uid]
        assert strings(e["user/name"]) == ["Ada Lovelace"] and strings(e["license/description"]) == ["CC-BY-4.0"]
        assert strings(e["bluesky/exit_status"]) == ["success"]
        from datetime import datetime

        start = datetime.fromisoformat(strings(e["start_time"])[0])
        end = datetime.fromisoformat(strings(e["end_time"])[0])
        assert end > start and start.tzinfo is not None

    from nexusformat.nexus import nxload

    root = nxload(str(path))
    plot = root.entry.data
    assert plot.nxsignal.nxname == "data" and plot.nxsignal.shape == (6, 200)
    assert [a.nxname for a in plot.nxaxes] == ["pressure", "polar_angle"]


def test_predictions_that_arrive_before_their_frame_wait_for_it(tmp_path):
    raw = runs.raw_run(3)
    derived = runs.derived_run(raw, 3)
    writer = NexusWriter(tmp_path)
    docs = [raw.start, *raw.head, derived.start, *derived.head]
    docs += derived.frames[0] + raw.frames[0] + derived.frames[2] + raw.frames[1] + derived.frames[1] + raw.frames[2]
    feed(writer, docs + [raw.stop, derived.stop])
    with h5py.File(writer.paths[raw.uid], "r") as f:
        assert list(f["entry/predictions/results/sequence_number"][()]) == [1, 2, 3]


def test_frames_without_predictions_keep_fill_values(tmp_path):
    raw = runs.raw_run(3)
    derived = runs.derived_run(raw, 3)
    writer = NexusWriter(tmp_path)
    # the derived run starts after the first frame (the file is in SWMR mode by then) and predicts only frame 2
    feed(writer, [raw.start, *raw.head, *raw.frames[0], derived.start, *derived.head, *raw.frames[1],
                  *derived.frames[1], *raw.frames[2], raw.stop, derived.stop])
    with h5py.File(writer.paths[raw.uid], "r") as f:
        r = f["entry/predictions/results"]
        assert list(r["sequence_number"][()]) == [-1, 2, -1]
        assert strings(r["flag"]) == [L.NO_PREDICTION, "", L.NO_PREDICTION]
        assert np.isnan(r["phase_probabilities"][0]).all() and list(r["top_k_index"][2]) == [-1, -1]
        assert strings(f["entry/predictions/parameters/phase_names"]) == runs.PHASES  # filled in after SWMR began


def test_a_derived_run_after_the_file_closed_adds_a_new_process(tmp_path):
    raw = runs.raw_run(2)
    first, second = runs.derived_run(raw, 2), runs.derived_run(raw, 2)
    writer = NexusWriter(tmp_path)
    feed(writer, runs.interleaved(raw, first, lag=0))
    feed(writer, second.all())  # e.g. the run classified again later with another model
    with h5py.File(writer.paths[raw.uid], "r") as f:
        assert {"predictions", "predictions_2"} <= set(f["entry"])
        assert list(f["entry/predictions/results/sequence_number"][()]) == [1, 2]
        assert list(f["entry/predictions_2/results/sequence_number"][()]) == [1, 2]
        assert strings(f["entry/predictions_2/parameters/derived_run_uid"]) == [second.uid]
        assert f["entry/predictions_2/sequence_index"][()] == 2


def test_a_reader_holding_the_file_never_costs_frames(tmp_path):
    """A second live classification cannot add its group while a SWMR reader holds the file: it is refused
    loudly, and the frames keep coming."""
    raw = runs.raw_run(3)
    first, second = runs.derived_run(raw, 3), runs.derived_run(raw, 3)
    writer = NexusWriter(tmp_path)
    feed(writer, [raw.start, *raw.head, first.start, *first.head, *raw.frames[0]])
    path = writer.paths[raw.uid]
    reader = subprocess.Popen([sys.executable, "-c", "import h5py, sys\n"
                               f"f = h5py.File({str(path)!r}, 'r', swmr=True)\nprint('open', flush=True)\n"
                               "sys.stdin.readline()\n"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        writer(*second.start)  # recorded, not raised: the scan goes on
        assert len(writer.errors) == 1 and isinstance(writer.errors[0], NexusWriteError)
        assert "a reader has the file open" in str(writer.errors[0])
        feed(writer, [*second.head, *second.frames[0]])  # the refused run's documents are ignored, not re-reported
        feed(writer, [*first.frames[0], *raw.frames[1], *first.frames[1], *raw.frames[2], *first.frames[2]])
    finally:
        reader.stdin.write("\n")
        reader.stdin.close()
        reader.wait()
    feed(writer, [raw.stop, second.stop, first.stop])
    assert len(writer.errors) == 1
    with h5py.File(path, "r") as f:
        assert list(f["entry/instrument/detector/sequence_number"][()]) == [1, 2, 3]
        assert list(f["entry/predictions/results/sequence_number"][()]) == [1, 2, 3]
        assert "predictions_2" not in f["entry"]


def test_external_ad_hdf5_frames_are_linked_not_copied(tmp_path):
    raw = runs.raw_run(4, paged=True, external_dir=tmp_path / "detector")
    writer = NexusWriter(tmp_path / "nexus")
    feed(writer, raw.all())
    path = writer.paths[raw.uid]
    with h5py.File(path, "r") as f:
        link = f["entry/instrument/detector"].get("data", getlink=True)
        assert isinstance(link, h5py.ExternalLink) and link.path == "/entry/data/data"
        assert not Path(link.filename).is_absolute()  # relative: the two folders can move together
        np.testing.assert_allclose(f["entry/data/data"][2], runs.pattern(2, 200))
        assert list(f["entry/instrument/detector/frame_sources/point_number"][()]) == [0, 1, 2, 3]
        in_file = []
        f.visititems(lambda name, obj: in_file.append(name) if isinstance(obj, h5py.Dataset)
                     and obj.shape == (4, 200) else None)
        assert in_file == ["entry/data/q"]  # no copy of the frames, only q computed per frame


def test_external_frames_out_of_order_become_a_virtual_dataset(tmp_path):
    raw = runs.raw_run(3, external_dir=tmp_path / "detector", point_offset=2)  # points 2, 3, 4 of the file
    writer = NexusWriter(tmp_path / "nexus")
    feed(writer, raw.all())
    with h5py.File(writer.paths[raw.uid], "r") as f:
        data = f["entry/instrument/detector/data"]
        assert data.is_virtual and data.shape == (3, 200)
        np.testing.assert_allclose(data[0], runs.pattern(2, 200))
        np.testing.assert_allclose(f["entry/data/data"][2], runs.pattern(4, 200))


def test_file_names_from_metadata_are_sanitised(tmp_path):
    raw = runs.raw_run(1, metadata={"sample": "../../etc/passwd", "title": "a/b\\c", "scan_id": 7})
    writer = NexusWriter(tmp_path / "out", file_name_template="{title}_{sample}_{uid8}.nxs")
    feed(writer, raw.all())
    path = writer.paths[raw.uid]
    assert path.parent == (tmp_path / "out").resolve()
    assert ".." not in path.name and "/" not in path.name and not path.name.startswith(".")
    assert path.name.startswith("a_b_c_etc_passwd_")
    assert safe_file_name("..") == "unnamed" and safe_file_name(".hidden") == "hidden"
    assert safe_file_name("Fe\u2082O\u2083 (hématite)") == "Fe2O3_hematite"
    with pytest.raises(NexusWriteError, match="not a relative path"):
        NexusWriter(tmp_path, file_name_template="../{uid}.nxs").file_path(raw.start[1])


def test_an_existing_file_is_not_overwritten_unless_asked(tmp_path):
    raw = runs.raw_run(1, metadata={"scan_id": 1})
    first = NexusWriter(tmp_path, file_name_template="run_{scan_id}.nxs")
    feed(first, raw.all())
    again = runs.raw_run(1, metadata={"scan_id": 1})
    second = NexusWriter(tmp_path, file_name_template="run_{scan_id}.nxs")
    second(*again.start)  # recorded, not raised
    assert len(second.errors) == 1 and isinstance(second.errors[0], NexusFileExistsError)
    assert re.search("run_1.nxs.*overwrite", str(second.errors[0]))
    feed(second, [*again.head, *again.frames[0], again.stop])  # the rest of that run is ignored, not half-written
    assert len(second.errors) == 1
    with h5py.File(tmp_path / "run_1.nxs", "r") as f:
        assert strings(f["entry/entry_identifier"]) == [raw.uid]
    third = NexusWriter(tmp_path, file_name_template="run_{scan_id}.nxs", overwrite=True)
    feed(third, again.all())
    with h5py.File(tmp_path / "run_1.nxs", "r") as f:
        assert strings(f["entry/entry_identifier"]) == [again.uid]


def test_writer_errors_name_the_key_and_are_recorded_or_raised(tmp_path):
    raw = runs.raw_run(1)
    writer = NexusWriter(tmp_path, pressure_key="dac_pressure")
    writer(*raw.start)
    writer(*raw.head[0])  # recorded and logged, not raised: a RunEngine would abort the scan
    assert len(writer.errors) == 1 and isinstance(writer.errors[0], NexusWriteError)
    assert "no data key 'dac_pressure'" in str(writer.errors[0])
    strict = NexusWriter(tmp_path / "strict", pressure_key="dac_pressure", raise_errors=True)
    strict(*raw.start)
    with pytest.raises(NexusWriteError, match="no data key 'dac_pressure'"):
        strict(*raw.head[0])
    assert len(strict.errors) == 1
    broken = runs.raw_run(2)
    writer = NexusWriter(tmp_path / "b")
    feed(writer, [broken.start, *broken.head, *broken.frames[0]])
    name, event = broken.frames[1][0]
    event = dict(event, data=dict(event["data"], detector_pattern=[1.0, 2.0]))  # a frame of the wrong length
    writer(name, event)
    assert len(writer.errors) == 1 and re.search(r"shape \(1, 2\), expected \(1, 200\)", str(writer.errors[0]))
    writer.close()


def test_a_killed_writer_leaves_every_flushed_frame_readable(tmp_path, data_dir):
    """A child writes 3 frames; a SWMR reader sees them mid-run, then 4 more; SIGKILL; all 7 remain."""
    crash_writer = data_dir / "nexus" / "crash_writer.py"
    child = subprocess.Popen([sys.executable, str(crash_writer), str(tmp_path), "3", "4"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        ready, n, path = child.stdout.readline().split()
        assert (ready, n) == ("ready", "3")
        with h5py.File(path, "r", swmr=True) as live:
            seq = live["entry/instrument/detector/sequence_number"]
            assert list(seq[()]) == [1, 2, 3]
            assert live["entry/instrument/detector/data"].shape == (3, 300)
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().split()[:2] == ["ready", "7"]
            seq.refresh()
            assert seq.shape == (7,)
            results = live["entry/predictions/results/sequence_number"]
            results.refresh()
            assert list(results[()]) == [1, 2, 3, 4, 5, 6, 7]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")  # HDF5 still marks it open: SWMR readers are fine, others need the flag cleared
    with h5py.File(path, "r", swmr=True) as f:
        data = f["entry/instrument/detector/data"][()]
        assert data.shape == (7, 300)
        np.testing.assert_allclose(data[6], runs.pattern(6, 300))
    from nexus_definitions.validate import validate_file

    report = validate_file(path, pynxtools=False)  # checks a copy marked closed; the file is untouched
    assert report.ok, report.format()
    assert any("writer died" in w for w in report.warnings)
    assert clear_consistency_flags(path) is True
    assert clear_consistency_flags(path) is False
    from nexusformat.nexus import nxload

    root = nxload(path)
    assert root["entry/sample/pressure"].shape == (7,)
    assert root["entry/end_time"].nxvalue > root["entry/start_time"].nxvalue  # the last frame's time


def test_prediction_records_match_the_derived_runs_event_keys():
    from xrd_nexus_ml.records import FramePrediction, event_data_keys

    keys = event_data_keys(len(runs.PHASES), runs.TOP_K)
    assert set(runs.prediction_data(0)) == set(keys) == set(FramePrediction(seq_num=1).to_event_data())
    stored = {spec.key for spec in L.PREDICTION_FIELDS}
    assert stored == set(keys) - {"pressure", "energy"}  # those two are the frame's, in NXsample/NXmonochromator
    for spec in L.PREDICTION_FIELDS:
        if keys[spec.key].get("units"):
            assert spec.units == keys[spec.key]["units"], spec.name


def test_a_run_without_classification_with_temperature_and_configured_wavelength_validates(tmp_path):
    from nexus_definitions.validate import validate_file

    raw = runs.raw_run(3, temperature=True, energy_in_events=False)
    writer = NexusWriter(tmp_path, temperature_key="temperature")
    feed(writer, raw.all())
    path = writer.paths[raw.uid]
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(f["entry/sample/temperature"][()], [300.0, 310.0, 320.0])
        assert f["entry/sample/temperature"].attrs["units"] == "K"
        np.testing.assert_allclose(f["entry/instrument/monochromator/energy"][()], runs.ENERGY)
        r = f["entry/predictions/results"]  # reserved for a classification that never came
        assert r["phase_probabilities"].shape == (3, 0) and strings(r["flag"]) == [L.NO_PREDICTION] * 3
    report = validate_file(path)
    assert report.ok, report.format()


def test_subscribed_to_a_real_run_engine(tmp_path):
    from bluesky import RunEngine
    from bluesky.plans import list_scan
    from ophyd import Component as Cpt
    from ophyd import Device, Signal
    from ophyd.sim import SynAxis

    class PowderDetector(Device):  # data key detector_pattern, its 2θ axis in the configuration
        pattern = Cpt(Signal, value=runs.pattern(0, 120), kind="hinted")
        two_theta = Cpt(Signal, value=runs.two_theta(120), kind="config")

    detector = PowderDetector(name="detector")
    pressure = SynAxis(name="pressure")  # the pressure "motor" of a gas-membrane DAC
    energy = Signal(name="energy", value=runs.ENERGY)
    engine = RunEngine({})
    writer = NexusWriter(tmp_path)
    engine.subscribe(writer)
    (uid,) = engine(list_scan([detector, energy], pressure, [2.0, 4.0, 6.0]), sample="MgO", title="ramp")
    assert not writer.errors
    with h5py.File(writer.paths[uid], "r") as f:
        np.testing.assert_allclose(f["entry/sample/pressure"][()], [2.0, 4.0, 6.0])
        assert f["entry/data/data"].shape == (3, 120)
        assert strings(f["entry/bluesky/exit_status"]) == ["success"]

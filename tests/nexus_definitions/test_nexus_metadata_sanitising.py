"""Metadata a user typed never stops a scan: NULs, lone surrogates, control characters, odd keys, huge strings.

A real RunEngine drives the simulated beamline (`bluesky_callbacks.sim.make_beamline`) into a
`NexusWriter`; the start document carries metadata h5py cannot store as it is. The scan must
complete, the file must hold the cleaned values and a record of every change, and it must
validate against NXxrd_ml.
"""

from __future__ import annotations

import json
import logging

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_callbacks.nexus_writer import NexusWriter
from bluesky_callbacks.sim import SampleModel, make_beamline
from nexus_definitions.validate import validate_file
from nexus_definitions.writer import NexusWriteError

N_FRAMES = 3
HUGE = 70_000  # characters; over the 64 KiB a metadata string may take in the file


def text(ds) -> str:
    value = ds[()]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="module")
def beamline():
    return make_beamline(SampleModel(seed=3, noise=0.0), settle_time=0.0,
                         lookup_pressures=np.arange(10.0, 30.5, 0.5))


@pytest.fixture
def scan(beamline, documents):
    """``scan(writer, **md)``: a scan of the simulated beamline written by `writer`; returns the uid
    and the documents."""

    def run(writer, **md):
        engine = RunEngine({})
        docs = documents()
        engine.subscribe(docs)
        engine.subscribe(writer)
        (uid,) = engine(bp.scan([beamline.detector, beamline.energy], beamline.pressure, 10, 30, N_FRAMES), **md)
        return uid, docs

    return run


def test_metadata_with_nul_surrogate_and_control_characters_is_cleaned_and_recorded(scan, tmp_path, caplog):
    writer = NexusWriter(tmp_path, pattern_key="detector_pattern", license="CC-BY-4.0")
    md = {
        "sample": {"name": "Fe\x00O", "chemical_formula": "FeO", "description": "line 1\nline\t2\x1b[31m"},
        "title": "ramp \ud800of\x07 FeO",
        "custom": {"bad\x00key": "value", "nested": ["a\x00b", {"c\x01": "d\ud83d"}]},
        "note": "x" * HUGE,
        "user": {"name": "Ada\x00 Lovelace"},
    }
    with caplog.at_level(logging.WARNING):
        uid, docs = scan(writer, **md)

    # the scan ran to its end with every frame
    assert docs.named("stop")[0]["exit_status"] == "success"
    assert len(docs.named("event")) == N_FRAMES
    assert writer.errors == []
    path = writer.paths[uid]
    with h5py.File(path, "r") as f:
        e = f["entry"]
        assert text(e["sample/name"]) == "FeO"
        assert text(e["sample/description"]) == "line 1\nline\t2[31m"  # tab and newline stay
        assert text(e["title"]) == "ramp \ufffdof FeO"
        assert text(e["user/name"]) == "Ada Lovelace"
        assert e["instrument/detector/data"].shape[0] == N_FRAMES
        assert list(e["instrument/detector/sequence_number"][()]) == [1, 2, 3]
        assert text(e["bluesky/exit_status"]) == "success"
        start = json.loads(text(e["bluesky/start"]))  # what the file says the start document was: the clean one
        assert start["sample"]["name"] == "FeO"
        assert start["custom"]["badkey"] == "value" and "bad\x00key" not in start["custom"]
        assert start["custom"]["nested"] == ["ab", {"c": "d\ufffd"}]
        assert len(start["note"].encode()) <= 65536
        # the record of every change: key path in the original document and what was done
        note = e["metadata_sanitised"]
        assert note.attrs["NX_class"] == "NXnote"
        record = json.loads(text(note["data"]))
        changes = {(r["path"], r["action"]) for r in record}
        assert ("sample.name", "removed 1 NUL byte") in changes
        assert ("sample.description", "removed 1 control character") in changes
        assert ("title", "replaced 1 lone surrogate with U+FFFD; removed 1 control character") in changes
        assert ("custom.bad\\x00key", "key: removed 1 NUL byte (now 'badkey')") in changes
        assert ("custom.nested[0]", "removed 1 NUL byte") in changes
        assert ("custom.nested[1].c\\x01", "key: removed 1 control character (now 'c')") in changes
        assert ("custom.nested[1].c\\x01", "replaced 1 lone surrogate with U+FFFD") in changes  # original path
        assert ("note", f"cut from {HUGE} to 65536 bytes") in changes
        assert ("user.name", "removed 1 NUL byte") in changes
        description = text(note["description"])
        assert "sample.name: removed 1 NUL byte" in description
    report = validate_file(path)
    assert report.ok, report.format()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("sample.name: removed 1 NUL byte" in m and uid in m for m in warnings), warnings


def test_a_sample_name_with_a_nul_no_longer_stops_the_scan(scan, tmp_path):
    """The defect as reported: ``md={"sample": "bad\\x00name"}`` aborted the RunEngine from the writer."""
    writer = NexusWriter(tmp_path, pattern_key="detector_pattern")
    uid, docs = scan(writer, sample="bad\x00name")
    assert docs.named("stop")[0]["exit_status"] == "success" and len(docs.named("event")) == N_FRAMES
    assert writer.errors == []
    with h5py.File(writer.paths[uid], "r") as f:
        assert text(f["entry/sample/name"]) == "badname"
        assert list(f["entry/instrument/detector/sequence_number"][()]) == [1, 2, 3]
    assert "_badname_" in writer.paths[uid].name  # the file name follows the stored value


def test_clean_metadata_writes_no_record(scan, tmp_path):
    writer = NexusWriter(tmp_path, pattern_key="detector_pattern")
    uid, _ = scan(writer, sample={"name": "MgO"}, title="ramp")
    with h5py.File(writer.paths[uid], "r") as f:
        assert "metadata_sanitised" not in f["entry"]
        assert text(f["entry/sample/name"]) == "MgO"


def test_any_other_writer_failure_is_recorded_and_logged_and_the_scan_goes_on(scan, tmp_path, caplog):
    writer = NexusWriter(tmp_path, pattern_key="detector_pattern", pressure_key="dac_pressure")
    with caplog.at_level(logging.ERROR):
        uid, docs = scan(writer, sample="MgO")
    assert docs.named("stop")[0]["exit_status"] == "success" and len(docs.named("event")) == N_FRAMES
    assert len(writer.errors) == 1 and isinstance(writer.errors[0], NexusWriteError)
    assert "no data key 'dac_pressure'" in str(writer.errors[0])
    assert any("no data key 'dac_pressure'" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_a_file_whose_metadata_cannot_be_written_is_not_left_behind(scan, tmp_path, monkeypatch):
    from nexus_definitions import writer as nexus_writer

    def broken(self, metadata):
        self._f.attrs["NX_class"] = "NXroot"  # something written already ...
        raise OSError("disk full")  # ... then the file system gives up

    monkeypatch.setattr(nexus_writer.NexusRunFile, "_write_metadata", broken)
    writer = NexusWriter(tmp_path, pattern_key="detector_pattern")
    uid, docs = scan(writer, sample="MgO")
    assert docs.named("stop")[0]["exit_status"] == "success" and len(docs.named("event")) == N_FRAMES
    assert len(writer.errors) == 1 and "disk full" in str(writer.errors[0])  # reported once, not per document
    assert list(tmp_path.iterdir()) == []  # no partial file


def test_raise_errors_hands_failures_to_the_run_engine(scan, tmp_path):
    writer = NexusWriter(tmp_path, pattern_key="detector_pattern", pressure_key="dac_pressure", raise_errors=True)
    with pytest.raises(NexusWriteError, match="no data key 'dac_pressure'"):
        scan(writer, sample="MgO")
    assert len(writer.errors) == 1


def test_sanitise_metadata_handles_odd_keys_and_values():
    from nexus_definitions.sanitise import MAX_STRING_BYTES, sanitise_metadata, sanitise_text

    assert sanitise_text("plain\ttext\n") == ("plain\ttext\n", [])
    assert sanitise_text("a\x00\x00b\x7f\x85") == ("ab", ["removed 2 NUL bytes", "removed 2 control characters"])
    assert sanitise_text(b"caf\xc3\xa9 \xff") == ("café \ufffd", ["decoded bytes as UTF-8, 1 invalid byte "
                                                                 "replaced with U+FFFD"])
    cut, actions = sanitise_text("é" * MAX_STRING_BYTES)  # 2 bytes each: never cut inside a character
    assert len(cut.encode()) == MAX_STRING_BYTES and actions == [f"cut from {2 * MAX_STRING_BYTES} to "
                                                                 f"{MAX_STRING_BYTES} bytes"]
    loop: dict = {"name": "x"}
    loop["self"] = loop
    doc = {"a\x00": 1, "a": 2, ("t", 1): "tuple key", 3: "int key", "loop": loop, "arr": np.arange(3),
           "none": None, "flag": True, "x": 1.5}
    clean, changes = sanitise_metadata(doc)
    assert clean["a"] == 2 and clean["a_2"] == 1  # a cleaned key never overwrites another
    assert clean["('t', 1)"] == "tuple key" and clean[3] == "int key"
    assert clean["loop"]["self"] == "<circular reference>"
    assert clean["arr"] is doc["arr"] and clean["none"] is None and clean["flag"] is True and clean["x"] == 1.5
    paths = {c.path: c.action for c in changes}
    assert paths["a\\x00"] == "key: removed 1 NUL byte (now 'a_2': 'a' is taken)"
    assert paths["('t', 1)"] == "key: a tuple, written as text"
    assert paths["loop.self"] == "circular reference replaced by text"
    assert 3 not in paths and "arr" not in paths
    json.dumps(clean, default=str)  # JSON text, as the writer stores it
    assert sanitise_metadata({"ok": ["fine", {"also": "fine"}]}) == ({"ok": ["fine", {"also": "fine"}]}, [])


def test_run_metadata_made_directly_is_cleaned_too(tmp_path):
    from nexus_definitions.writer import NexusRunFile, RunMetadata

    m = RunMetadata(uid="u1", start_time=0.0, title="t\x00", sample_name="s\ud800",
                    users=({"name": "A\x00"},), start_document={"k\x00": "v"})
    assert (m.title, m.sample_name, m.users, m.start_document) == ("t", "s\ufffd", ({"name": "A"},), {"k": "v"})
    assert [str(c) for c in m.sanitised] == [
        "title: removed 1 NUL byte", "sample_name: replaced 1 lone surrogate with U+FFFD",
        "users[0].name: removed 1 NUL byte", "start_document.k\\x00: key: removed 1 NUL byte (now 'k')"]
    with NexusRunFile.create(tmp_path / "direct.nxs", m) as run:
        run.define_frames(np.linspace(10.0, 20.0, 11))
    with h5py.File(tmp_path / "direct.nxs", "r") as f:
        assert text(f["entry/title"]) == "t" and len(json.loads(text(f["entry/metadata_sanitised/data"]))) == 4

"""The NXxrd_ml definition, the validator, the portal export, reading frames back and appending predictions."""

import json
import shutil
import struct
from pathlib import Path

import h5py
import nexus_runs as runs
import numpy as np
import pytest

from nexus_definitions import layout as L
from nexus_definitions.export import ExportError, export_record, validate_record
from nexus_definitions.reader import read_patterns
from nexus_definitions.validate import (
    NS,
    check_nxdl_schema,
    load_definition,
    units_match,
    validate_file,
)
from nexus_definitions.writer import NexusWriteError, append_predictions, lookup3
from xrd_nexus_ml.cli import main


@pytest.fixture(scope="module")
def written(tmp_path_factory, write_nexus_run) -> Path:
    """A run of 8 frames with its live predictions, written by NexusWriter from real documents."""
    return write_nexus_run(tmp_path_factory.mktemp("nexus"), 8)


@pytest.fixture
def copy(written, tmp_path) -> Path:
    target = tmp_path / "copy.nxs"
    shutil.copy(written, target)
    return target


# -- the definition ----------------------------------------------------------------------------


def test_the_nxdl_validates_against_the_nexus_schema():
    from lxml import etree

    assert check_nxdl_schema(L.NXDL_PATH) == []
    xsd = etree.XMLSchema(etree.parse(str(L.definitions_dir() / "nxdl.xsd")))
    assert xsd.validate(etree.parse(str(L.NXDL_PATH))), xsd.error_log
    broken = etree.parse(str(L.NXDL_PATH))
    broken.getroot().find(f"{NS}group").set("bogus", "1")
    assert not xsd.validate(broken)  # the schema check is real


def test_every_element_of_the_nxdl_is_documented():
    from lxml import etree

    root = etree.parse(str(L.NXDL_PATH)).getroot()
    assert root.get("name") == L.DEFINITION_NAME and root.get("extends") == "NXxrd"
    undocumented = [f"line {el.sourceline}: {el.tag.replace(NS, '')} {el.get('name') or el.get('type')}"
                    for el in root.iter(f"{NS}group", f"{NS}field", f"{NS}attribute", f"{NS}link", f"{NS}symbol")
                    if el.find(f"{NS}doc") is None or not (el.find(f"{NS}doc").text or "").strip()]
    assert undocumented == []


def test_the_definition_extends_the_powder_definitions():
    name, root = load_definition(L.NXDL_PATH)
    assert name == "NXxrd_ml"
    entry = root.children[("group", "NXentry")]
    # inherited from NXmonopd (monitor, monochromator crystal) and NXxrd (beam energy) ...
    assert ("group", "NXmonitor") in entry.children
    instrument = entry.children[("group", "NXinstrument")]
    assert ("field", "wavelength") in instrument.children[("group", "NXcrystal")].children
    assert instrument.children[("group", "NXbeam")].children[("field", "incident_energy")].units == "NX_ENERGY"
    # ... and what NXxrd_ml adds
    sample = entry.children[("group", "NXsample")]
    assert sample.children[("field", "pressure")].units == "NX_PRESSURE"
    assert sample.children[("field", "pressure")].need == "required"
    assert sample.children[("field", "temperature")].need == "optional"
    results = entry.children[("group", "NXprocess")].children[("group", "results")]
    assert {("field", s.name) for s in L.PREDICTION_FIELDS} <= set(results.children)


def test_the_layout_and_the_definition_agree(written):
    _, root = load_definition(L.NXDL_PATH)
    entry = root.children[("group", "NXentry")]
    classes = {"instrument": "NXinstrument", "source": "NXsource", "monochromator": "NXmonochromator",
               "crystal": "NXcrystal", "beam": "NXbeam", "detector": "NXdetector", "sample": "NXsample",
               "monitor": "NXmonitor", "data": "NXdata"}

    def node(path):
        current = entry
        *groups, name = path.split("/")
        for g in groups:
            current = current.children.get(("group", g)) or current.children[("group", classes[g])]
        return current.children[("field", name)]

    for path, unit in L.FIELD_UNITS.items():
        category = node(path).units
        assert category and units_match(category, unit), (path, unit, category)
    results = entry.children[("group", "NXprocess")].children[("group", "results")]
    for spec in L.PREDICTION_FIELDS:
        category = results.children[("field", spec.name)].units
        if spec.units is not None:
            assert units_match(category, spec.units), (spec.name, spec.units, category)
    with h5py.File(written, "r") as f:  # everything the writer puts in a units attribute is of the right kind
        for path, unit in L.FIELD_UNITS.items():
            if path in f["entry"]:
                assert f["entry"][path].attrs["units"] == unit


# -- validation --------------------------------------------------------------------------------


def test_a_written_file_validates_with_every_validator(written):
    report = validate_file(written)
    assert report.ok, report.format()
    assert report.checks == {"structure": "ok", "nexusformat": "ok", "pynxtools": "ok"}


@pytest.mark.parametrize("damage, expected", [
    ("drop_pressure", {"structure": "/entry/sample/pressure: required field is missing",
                       "nexusformat": "/entry/sample/pressure: This required field is not in the NeXus file",
                       "pynxtools": "/entry/sample/pressure"}),
    ("wrong_units", {"structure": "/entry/sample/pressure: units 'K' are not NX_PRESSURE",
                     "pynxtools": "The unit 'K' at /entry/sample/pressure/@units does not match"}),
])
def test_the_validator_catches_a_broken_file(copy, damage, expected):
    with h5py.File(copy, "r+") as f:
        if damage == "drop_pressure":  # the pressure and the links to it
            for path in ("entry/sample/pressure", "entry/data/pressure", "entry/predictions/results/pressure"):
                del f[path]
        else:
            f["entry/sample/pressure"].attrs["units"] = "K"
    report = validate_file(copy)
    assert not report.ok
    for check, text in expected.items():
        assert any(e.startswith(f"[{check}]") and text in e for e in report.errors), (check, report.format())


def test_nexus_validate_command_prints_problems_and_exits_nonzero(copy, capsys):
    assert main(["nexus", "validate", str(copy), "--no-pynxtools"]) == 0
    assert "valid against NXxrd_ml" in capsys.readouterr().out
    with h5py.File(copy, "r+") as f:
        f["entry/instrument/monochromator/energy"].attrs["units"] = "angstrom"
        del f["entry/title"]
    assert main(["nexus", "validate", str(copy), "--no-pynxtools", "--json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)
    assert not result["ok"]
    text = "\n".join(result["errors"])
    assert "/entry/title" in text and "units 'angstrom' are not NX_ENERGY" in text


# -- export ------------------------------------------------------------------------------------


def test_export_record_follows_the_shipped_schema(written):
    from datetime import datetime

    import jsonschema

    record = export_record(written)
    schema = json.loads((Path(L.__file__).parent / "scicat_dataset.schema.json").read_text())
    jsonschema.validate(record, schema)
    for key in ("creationTime", "startTime", "endTime"):
        assert datetime.fromisoformat(record[key]).tzinfo is not None
    science = record["scientificMetadata"]
    assert science["pressure_range"] == {"value": [5.0, runs.pressure_of(7)], "unit": "GPa"}
    assert science["beam_energy"]["value"] == pytest.approx(runs.ENERGY) and science["beam_energy"]["unit"] == "keV"
    assert science["number_of_frames"] == {"value": 8}
    (summary,) = science["predictions"]
    assert summary["frames_predicted"] == 8
    assert summary["phase_counts"] == {"B1 (rock salt)": 4, "B8 (NiAs)": 4}
    assert [s["phase"] for s in summary["phase_segments"]] == ["B1 (rock salt)", "B8 (NiAs)"]
    assert summary["phase_segments"][1]["pressure_min"] == runs.pressure_of(4)
    assert summary["transition_pressure"] == {"value": 14.0, "uncertainty": 1.5, "unit": "GPa"}
    assert [m["model_id"] for m in summary["models"]] == [m["model_id"] for m in runs.MODELS]
    assert record["pid"] is None and record["license"] == "CC-BY-4.0" and record["ownerGroup"] == "I-20240042"
    assert record["techniques"][0]["pid"].endswith("PaNET01101")
    without_owner = {k: v for k, v in record.items() if k != "owner"}
    assert validate_record(without_owner) == ["(record): 'owner' is a required property"]


def test_export_command_writes_json_and_never_overwrites(written, tmp_path, capsys):
    out = tmp_path / "record.json"
    args = ["export", str(written), "--out", str(out), "--set", "contactEmail=beamline@example.org", "--set",
            'accessGroups=["p02"]']
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["contactEmail"] == "beamline@example.org" and record["accessGroups"] == ["p02"]
    assert main(args) == 2  # exists: refused, the record untouched
    assert "exists" in capsys.readouterr().err
    assert json.loads(out.read_text()) == record
    with pytest.raises(ExportError, match="does not match"):
        export_record(written, overrides={"type": "derived"})


# -- reading every frame and classifying an existing file -------------------------------------------


def test_read_patterns_returns_every_frame_with_pressure_and_energy(written):
    patterns, pressures, energies = read_patterns(written)
    assert len(patterns) == 8
    np.testing.assert_allclose(pressures, [runs.pressure_of(i) for i in range(8)])
    np.testing.assert_allclose(energies, runs.ENERGY)
    assert patterns[5].axis == "two_theta" and patterns[5].wavelength == pytest.approx(12.398419843320026 / runs.ENERGY)
    np.testing.assert_allclose(patterns[5].intensity, runs.pattern(5, 200))
    assert [p.metadata["seq_num"] for p in patterns] == list(range(1, 9))
    assert patterns[0].metadata["sample"] == "Mg0.2Fe0.8O"


def foreign_file(path: Path) -> Path:
    """Another beamline's file: azimuthally integrated frames on q in 1/nm, pressure in MPa, no sequence numbers."""
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "scan"
        entry = f.create_group("scan")
        entry.attrs.update(NX_class="NXentry", default="integrated")
        entry["title"] = "DAC compression, other beamline"
        mono = entry.create_group("instrument/monochromator")
        entry["instrument"].attrs["NX_class"] = "NXinstrument"
        mono.attrs["NX_class"] = "NXmonochromator"
        mono.create_dataset("wavelength", data=0.2952).attrs["units"] = "angstrom"
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample.create_dataset("pressure", data=[1000.0, 2000.0, 3000.0]).attrs["units"] = "MPa"
        data = entry.create_group("integrated")
        data.attrs.update(NX_class="NXdata", signal="I", axes=[".", "radial_axis"])
        data.create_dataset("I", data=np.stack([runs.pattern(i, 100) for i in range(3)]))
        data.create_dataset("radial_axis", data=np.linspace(5.0, 45.0, 100)).attrs["units"] = "1/nm"
    return path


def test_append_predictions_to_another_beamlines_file_touches_nothing(tmp_path, checksums):
    path = foreign_file(tmp_path / "other.nxs")
    patterns, pressures, energies = read_patterns(path)
    assert [p.axis for p in patterns] == ["q"] * 3
    np.testing.assert_allclose(patterns[0].x[[0, -1]], [0.5, 4.5])  # 1/nm -> 1/angstrom
    np.testing.assert_allclose(pressures, [1.0, 2.0, 3.0])  # MPa -> GPa
    np.testing.assert_allclose(energies, 12.398419843320026 / 0.2952)
    before = checksums(path)
    predictions = [runs.prediction_data(i) | {"raw_seq_num": p.metadata["seq_num"]} for i, p in enumerate(patterns)]
    group = append_predictions(path, predictions, runs.PHASES, runs.TOP_K, runs.MODELS)
    assert group == "/scan/predictions"
    again = append_predictions(path, predictions[:1], runs.PHASES, runs.TOP_K, runs.MODELS)
    assert again == "/scan/predictions_2"
    after = checksums(path)
    assert {k: v for k, v in after.items() if k in before} == before
    with h5py.File(path, "r") as f:
        r = f["scan/predictions/results"]
        assert list(r["sequence_number"][()]) == [1, 2, 3]
        np.testing.assert_allclose(r["pressure"][()], [1000.0, 2000.0, 3000.0])  # linked: the file's own values
        assert list(f["scan/predictions_2/results/sequence_number"][()]) == [1, -1, -1]
    with pytest.raises(NexusWriteError, match="seq_num 9"):
        append_predictions(path, [runs.prediction_data(8)], runs.PHASES, runs.TOP_K, runs.MODELS)


def test_append_frame_predictions_to_a_written_file(copy, checksums):
    from xrd_nexus_ml.records import FramePrediction, ModelProvenance

    model = ModelProvenance("space_group/resnet@abcdefabcdef", "space_group", "resnet", "0.1.0", "cards/sg.json", "cpu")
    records = [FramePrediction(seq_num=s, phase="B1 (rock salt)", phase_probability=0.8,
                               phase_probabilities=(0.8, 0.1, 0.1), top_k_index=(0, 1), top_k_probability=(0.8, 0.1),
                               space_group_number=225, space_group_probability=0.7, latency=2.0,
                               model_ids=model.model_id) for s in (2, 5)]
    before = checksums(copy)
    assert append_predictions(copy, records, runs.PHASES, 2, [model]) == "/entry/predictions_2"
    assert {k: v for k, v in checksums(copy).items() if k in before} == before
    with h5py.File(copy, "r") as f:
        r = f["entry/predictions_2/results"]
        assert list(r["space_group_number"][()]) == [0, 225, 0, 0, 225, 0, 0, 0]
        assert r["pressure"].attrs["target"] == "/entry/sample/pressure"
    assert validate_file(copy, pynxtools=False).ok


# -- crash recovery --------------------------------------------------------------------------------


def test_lookup3_is_the_checksum_hdf5_writes(tmp_path):
    path = tmp_path / "any.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["x"] = 1
    raw = path.read_bytes()
    n = 12 + 4 * raw[9]
    assert lookup3(raw[:n]) == struct.unpack("<I", raw[n:n + 4])[0]
    assert lookup3(b"") == 0xDEADBEEF

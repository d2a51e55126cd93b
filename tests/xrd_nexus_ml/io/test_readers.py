"""Readers: real measured patterns, fixture files in every format, and the bad inputs users meet.

XRDML and NeXus files are written by fixtures here from a real pattern (no binary test data is
kept in the repository), so each reader is checked by round trip against `np.loadtxt`.
"""

import logging
import re
import warnings
from importlib import resources
from pathlib import Path

import h5py
import numpy as np
import pytest

from xrd_nexus_ml.errors import PatternError, PatternFileError, StructureError, WavelengthError
from xrd_nexus_ml.io import (
    SUPPORTED_SUFFIXES,
    read_nexus,
    read_npy,
    read_pattern,
    read_structure,
    read_xrdml,
    read_xy,
)
from xrd_nexus_ml.pattern import WAVELENGTHS, energy_to_wavelength, two_theta_to_q

DATA = Path(__file__).resolve().parents[2] / "data"  # tests/data (module level: parametrize needs it)
EXAMPLES = Path(str(resources.files("xrd_nexus_ml") / "data" / "examples"))  # shipped with the package
MEASURED = sorted([*(DATA / "measured").glob("*.xy"), EXAMPLES / "MnO.xy", EXAMPLES / "TiO2.xy"])
CIFS = EXAMPLES / "references"
CU_KA1 = WAVELENGTHS["CuKa1"]


def assert_error(info: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    """The message names the file and says what is wrong."""
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"


@pytest.fixture(scope="module")
def mno() -> np.ndarray:
    return np.loadtxt(EXAMPLES / "MnO.xy")


# -- real measured patterns ------------------------------------------------------------------


def test_measured_data_is_present():
    assert len(MEASURED) == 3
    assert (DATA / "measured" / "LICENSE").is_file() and (EXAMPLES / "LICENSE").is_file()


@pytest.mark.parametrize("path", MEASURED, ids=lambda p: p.name)
def test_measured_pattern_round_trips(path):
    expected = np.loadtxt(path)
    pattern = read_pattern(path)
    assert pattern.axis == "two_theta"
    assert pattern.source == str(path)
    assert pattern.wavelength is None and pattern.metadata["wavelength_origin"] == "none"
    assert pattern.metadata["n_columns"] == expected.shape[1]
    np.testing.assert_array_equal(pattern.x, expected[:, 0])
    np.testing.assert_array_equal(pattern.intensity, expected[:, 1])


@pytest.mark.parametrize("path", MEASURED, ids=lambda p: p.name)
def test_measured_pattern_goes_onto_canonical_grid(path):
    # the files cover 2θ 10-100° -> q 0.712-6.242 Å^-1 at Cu Kα (weighted mean, 1.54184 Å)
    canonical = read_pattern(path, wavelength="CuKa").on_canonical_grid()
    measured_q = canonical.x[canonical.mask]
    assert 0.70 < measured_q[0] < 0.73
    assert 6.20 < measured_q[-1] < 6.26
    first, last = np.flatnonzero(canonical.mask)[[0, -1]]
    assert canonical.mask[first : last + 1].all()  # one contiguous measured range, no holes
    assert canonical.intensity.max() == pytest.approx(1.0)
    assert not canonical.intensity[~canonical.mask].any()


# -- text: headers, separators, precedence ---------------------------------------------------

DATA_ROWS = "1.0 10\n1.5 30\n2.0 20\n"


@pytest.mark.parametrize(
    ("header", "wavelength"),
    [
        ("# wavelength = 1.5406\n", 1.5406),
        ("lambda: 1.54 A\n", 1.54),
        ("# Wavelength (Å): 0.4843\n", 0.4843),
        ("# Wavelength [nm] = 0.15406\n", 1.5406),
        ("# λ = 0.7093 Angstrom\n", 0.7093),
        ("# energy = 25.6 keV\n", energy_to_wavelength(25.6)),
        ("# Energy (eV): 25600\n", energy_to_wavelength(25.6)),
        ("# radiation: Cu Ka1\n", CU_KA1),
        ("# anode: Fe K-alpha1\n", WAVELENGTHS["FeKa"]),  # no Kα1 value known: the Kα mean
        ("# sample: MnO\n", None),
    ],
)
def test_wavelength_from_header(tmp_path, header, wavelength):
    path = tmp_path / "p.xy"
    path.write_text(header + DATA_ROWS, encoding="utf-8")
    pattern = read_xy(path)
    if wavelength is None:
        assert pattern.wavelength is None and pattern.metadata["wavelength_origin"] == "none"
    else:
        assert pattern.wavelength == pytest.approx(wavelength)
        assert pattern.metadata["wavelength_origin"] == "file"


def test_latin1_header_is_read(tmp_path):
    path = tmp_path / "old.xy"
    path.write_bytes("# Wavelength (Å): 0.4843\n".encode("latin-1") + DATA_ROWS.encode())
    assert read_xy(path).wavelength == pytest.approx(0.4843)


@pytest.mark.parametrize(
    ("header", "axis"),
    [
        ("", "two_theta"),
        ("2theta intensity\n", "two_theta"),
        ("# 2θ (deg)  I\n", "two_theta"),
        ("twotheta,counts\n", "two_theta"),
        ("# tth I\n", "two_theta"),
        ("q intensity\n", "q"),
        ("# Q (1/A)  I\n", "q"),
        ("# q_1/angstrom intensity\n", "q"),
        ("# sample: quartz\n# 2-Theta  Counts\n", "two_theta"),
        ("2 Theta, Intensity\n", "two_theta"),
    ],
)
def test_axis_from_header(tmp_path, header, axis):
    path = tmp_path / "p.xy"
    path.write_text(header + DATA_ROWS, encoding="utf-8")
    pattern = read_xy(path)
    assert pattern.axis == axis
    assert pattern.metadata["axis_origin"] == ("file" if header else "default")


@pytest.mark.parametrize(
    "text",
    [
        "1.0,10\n1.5,30\n2.0,20\n",
        "1.0;10\n1.5;30\n2.0;20\n",
        "1.0\t10\n1.5\t30\n2.0\t20\n",
        "1,0;10\n1,5;30\n2,0;20\n",  # decimal commas with semicolon separators
        "! comment\n% comment\n; comment\nangle, counts\n1.0, 10, 0.1\n1.5, 30, 0.2\n2.0, 20, 0.1\n",
        "1.0 10 # first\n\n1.5 30\r\n2.0 20\n",
    ],
)
def test_separators_and_comments(tmp_path, text):
    path = tmp_path / "p.csv"
    path.write_text(text, encoding="utf-8")
    pattern = read_pattern(path)
    np.testing.assert_array_equal(pattern.x, [1.0, 1.5, 2.0])
    np.testing.assert_array_equal(pattern.intensity, [10, 30, 20])


def test_argument_wavelength_beats_file(tmp_path):
    path = tmp_path / "p.xy"
    path.write_text("# wavelength = 0.5\n" + DATA_ROWS)
    assert read_xy(path).wavelength == 0.5
    pattern = read_pattern(path, wavelength="CuKa1")
    assert pattern.wavelength == CU_KA1
    assert pattern.metadata["wavelength_origin"] == "argument"
    assert pattern.metadata["wavelength_in_file"] == 0.5
    # a broken wavelength in the file does not matter when the caller gives one
    path.write_text("# wavelength = -1\n" + DATA_ROWS)
    assert read_xy(path, wavelength=1.0).wavelength == 1.0


def test_axis_argument_beats_header(tmp_path):
    path = tmp_path / "p.xy"
    path.write_text("2theta intensity\n" + DATA_ROWS)
    pattern = read_pattern(path, axis="q")
    assert pattern.axis == "q" and pattern.metadata["axis_origin"] == "argument"


def test_descending_axis_is_reversed(tmp_path):
    path = tmp_path / "p.xy"
    path.write_text("2.0 20\n1.5 30\n1.0 10\n")
    pattern = read_xy(path)
    np.testing.assert_array_equal(pattern.x, [1.0, 1.5, 2.0])
    np.testing.assert_array_equal(pattern.intensity, [10, 30, 20])
    assert pattern.metadata["axis_reversed"] is True


# -- text: bad input -------------------------------------------------------------------------

BAD_TEXT = {
    "empty": ("", PatternFileError, ["empty"]),
    "blank": ("\n  \n\t\n", PatternFileError, ["empty"]),
    "header_only": ("# wavelength = 1.54\n2theta intensity\n", PatternFileError, ["no numeric"]),
    "one_column": ("10\n11\n12\n", PatternFileError, ["one column", "line 1"]),
    "ragged": ("10 1\n11 2\n12 3 4\n", PatternFileError, ["line 3", "columns"]),
    "text_in_row": ("10 1\n11 abc\n12 3\n", PatternFileError, ["not a number", "line 2", "abc"]),
    "text_row_after_data": ("10 1\n11 2\nend of data\n", PatternFileError, ["not a number", "line 3"]),
    "nan": ("10 1\n11 nan\n12 3\n", PatternFileError, ["NaN", "line 2"]),
    "inf": ("10 1\n11 2\ninf 3\n", PatternFileError, ["infinite", "line 3"]),
    "non_monotonic": ("10 1\n12 2\n11 3\n13 4\n", PatternFileError, ["monotonic", "line 3"]),
    "repeated": ("10 1\n10 2\n11 3\n", PatternFileError, ["monotonic", "line 2"]),
    "one_row": ("10 1\n", PatternFileError, ["at least 2"]),
    "negative_wavelength": ("# wavelength = -1.54\n10 1\n11 2\n", WavelengthError, ["wavelength"]),
    "zero_wavelength": ("# lambda: 0 A\n10 1\n11 2\n", WavelengthError, ["wavelength"]),
    "negative_energy": ("# energy = -8 keV\n10 1\n11 2\n", WavelengthError, ["energy"]),
    "two_theta_zero": ("0 1\n1 2\n2 3\n", PatternFileError, ["outside", "line 1"]),
    "two_theta_185": ("170 1\n175 2\n185 3\n", PatternFileError, ["outside", "line 3"]),
}


@pytest.mark.parametrize("name", BAD_TEXT)
def test_bad_text_file(tmp_path, name):
    text, kind, words = BAD_TEXT[name]
    path = tmp_path / f"{name}.xy"
    path.write_text(text)
    with pytest.raises(kind) as info:
        read_pattern(path)
    assert_error(info, path, *words)


def test_binary_file_with_text_suffix(tmp_path):
    path = tmp_path / "p.dat"
    path.write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(PatternFileError) as info:
        read_pattern(path)
    assert_error(info, path, "binary")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "p.spc"
    path.write_text(DATA_ROWS)
    with pytest.raises(PatternFileError) as info:
        read_pattern(path)
    assert_error(info, path, "suffix", *SUPPORTED_SUFFIXES)


def test_missing_file_is_also_file_not_found(tmp_path):
    path = tmp_path / "nope.xy"
    with pytest.raises(PatternFileError) as info:
        read_pattern(path)
    assert isinstance(info.value, FileNotFoundError)
    assert_error(info, path, "not found")
    with pytest.raises(FileNotFoundError):
        read_xy(path)


def test_directory_is_refused(tmp_path):
    with pytest.raises(PatternFileError) as info:
        read_pattern(tmp_path)
    assert_error(info, tmp_path, "directory")


def test_bad_axis_argument(tmp_path):
    path = tmp_path / "p.xy"
    path.write_text(DATA_ROWS)
    with pytest.raises(PatternError, match="axis must be"):
        read_pattern(path, axis="d_spacing")


def test_bad_wavelength_argument(tmp_path):
    path = tmp_path / "p.xy"
    path.write_text(DATA_ROWS)
    with pytest.raises(WavelengthError) as info:
        read_pattern(path, wavelength=-1.0)
    assert_error(info, path, "wavelength")


# -- .npy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transpose", [False, True])
def test_npy_round_trip(tmp_path, mno, transpose):
    path = tmp_path / "mno.npy"
    np.save(path, mno.T if transpose else mno)
    pattern = read_pattern(path, wavelength=CU_KA1)
    np.testing.assert_array_equal(pattern.x, mno[:, 0])
    np.testing.assert_array_equal(pattern.intensity, mno[:, 1])
    assert pattern.wavelength == CU_KA1 and pattern.source == str(path)


def test_npy_q_axis(tmp_path, mno):
    path = tmp_path / "q.npy"
    np.save(path, np.column_stack([two_theta_to_q(mno[:, 0], CU_KA1), mno[:, 1]]))
    pattern = read_npy(path, axis="q", wavelength=CU_KA1)
    np.testing.assert_allclose(pattern.two_theta, mno[:, 0], rtol=1e-10)


BAD_NPY = {
    "one_dimensional": (np.arange(10.0), ["1D", "axis"]),
    "three_columns": (np.ones((10, 3)), ["shape"]),
    "three_dimensional": (np.ones((2, 5, 2)), ["shape"]),
    "strings": (np.array([["10", "1"], ["11", "2"]]), ["expected numbers"]),
    "nan": (np.array([[10.0, 1.0], [11.0, np.nan]]), ["NaN", "point 2"]),
}


@pytest.mark.parametrize("name", BAD_NPY)
def test_bad_npy(tmp_path, name):
    array, words = BAD_NPY[name]
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    with pytest.raises(PatternFileError) as info:
        read_pattern(path)
    assert_error(info, path, *words)


def test_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"two_theta": [10, 11]}, None], dtype=object), allow_pickle=True)
    with pytest.raises(PatternFileError) as info:
        read_pattern(path)
    assert_error(info, path, "pickle")


def test_text_file_named_npy(tmp_path):
    path = tmp_path / "text.npy"
    path.write_text(DATA_ROWS)
    with pytest.raises(PatternFileError) as info:
        read_pattern(path)
    assert_error(info, path, "NumPy header")


# -- XRDML ---------------------------------------------------------------------------------


def xrdml_text(two_theta, counts, *, list_positions=False, counts_tag="intensities", n_scans=1,
               wavelength=True, omit=()) -> str:
    """A small PANalytical XRDML 1.5 document (the parts the reader uses, and a few it skips)."""
    numbers = " ".join(f"{c:g}" for c in counts)
    if list_positions:
        positions = f"<listPositions>{' '.join(f'{x:.6f}' for x in two_theta)}</listPositions>"
    else:
        positions = (f"<startPosition>{two_theta[0]:.6f}</startPosition>"
                     f"<endPosition>{two_theta[-1]:.6f}</endPosition>")
    two_theta_el = "" if "positions" in omit else f'<positions axis="2Theta" unit="deg">{positions}</positions>'
    counts_el = "" if "intensities" in omit else f'<{counts_tag} unit="counts">{numbers}</{counts_tag}>'
    points = "" if "dataPoints" in omit else (
        f'<dataPoints>{two_theta_el}<positions axis="Omega" unit="deg"><startPosition>5</startPosition>'
        f'<endPosition>50</endPosition></positions><commonCountingTime unit="seconds">0.5</commonCountingTime>'
        f"{counts_el}</dataPoints>"
    )
    scan = (f'<scan appendNumber="0" mode="Continuous" scanAxis="Gonio" status="Completed">'
            f"<header><startTimeStamp>2024-01-01T00:00:00</startTimeStamp></header>{points}</scan>")
    used = ('<usedWavelength intended="K-Alpha 1"><kAlpha1 unit="Angstrom">1.5405980</kAlpha1>'
            '<kAlpha2 unit="Angstrom">1.5444260</kAlpha2><kBeta unit="Angstrom">1.3922500</kBeta>'
            "<ratioKAlpha2KAlpha1>0.5000</ratioKAlpha2KAlpha1></usedWavelength>") if wavelength else ""
    scans = "" if "scan" in omit else scan * n_scans
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<xrdMeasurements xmlns="http://www.xrdml.com/XRDMeasurement/1.5" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" status="Completed">'
        '<sample type="To be analyzed"><id>S1</id><name>MnO powder</name></sample>'
        f'<xrdMeasurement measurementType="Scan" status="Completed">{used}{scans}</xrdMeasurement>'
        "</xrdMeasurements>\n"
    )


@pytest.fixture
def xrdml_file(tmp_path, mno):
    def write(name="mno.xrdml", x=None, y=None, **kwargs) -> Path:
        path = tmp_path / name
        path.write_text(xrdml_text(mno[:, 0] if x is None else x, mno[:, 1] if y is None else y, **kwargs))
        return path

    return write


@pytest.mark.parametrize("list_positions", [False, True])
@pytest.mark.parametrize("counts_tag", ["intensities", "counts"])
def test_xrdml_round_trip(xrdml_file, mno, list_positions, counts_tag):
    path = xrdml_file(list_positions=list_positions, counts_tag=counts_tag)
    pattern = read_pattern(path)
    np.testing.assert_allclose(pattern.x, mno[:, 0], atol=1e-9)
    np.testing.assert_array_equal(pattern.intensity, mno[:, 1])
    assert pattern.wavelength == 1.540598 and pattern.metadata["wavelength_origin"] == "file"
    meta = pattern.metadata
    assert meta["kalpha2_wavelength"] == 1.544426 and meta["kalpha2_ratio"] == 0.5
    assert meta["sample"] == "MnO powder" and meta["counting_time_s"] == 0.5
    assert pattern.source == str(path)


def test_xrdml_wavelength_argument_and_missing(xrdml_file):
    assert read_xrdml(xrdml_file(), wavelength="MoKa1").wavelength == WAVELENGTHS["MoKa1"]
    no_wavelength = read_xrdml(xrdml_file(wavelength=False))
    assert no_wavelength.wavelength is None and no_wavelength.metadata["wavelength_origin"] == "none"


def test_xrdml_multiple_scans_takes_first(xrdml_file):
    pattern = read_xrdml(xrdml_file(n_scans=3))
    assert pattern.metadata["n_scans"] == 3 and "first" in pattern.metadata["note"]


def test_xrdml_descending_scan(xrdml_file, mno):
    pattern = read_xrdml(xrdml_file(x=mno[::-1, 0], y=mno[::-1, 1]))
    np.testing.assert_allclose(pattern.x, mno[:, 0], atol=1e-9)
    np.testing.assert_array_equal(pattern.intensity, mno[:, 1])


def test_xrdml_refuses_q_axis_argument(xrdml_file):
    path = xrdml_file()
    with pytest.raises(PatternFileError) as info:
        read_pattern(path, axis="q")
    assert_error(info, path, "axis")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"omit": ("scan",)}, ["xrdMeasurement/scan", "missing"]),
        ({"omit": ("dataPoints",)}, ["scan/dataPoints", "missing"]),
        ({"omit": ("positions",)}, ["positions[@axis='2Theta']", "missing"]),
        ({"omit": ("intensities",)}, ["intensities", "missing"]),
    ],
)
def test_xrdml_missing_elements(xrdml_file, kwargs, words):
    path = xrdml_file(**kwargs)
    with pytest.raises(PatternFileError) as info:
        read_xrdml(path)
    assert_error(info, path, *words)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("<xrdMeasurements><xrdMeasurement>", ["well-formed"]),
        ("<html><body/></html>", ["not an XRDML", "<html>"]),
        ("<xrdMeasurements/>", ["xrdMeasurement", "missing"]),
    ],
)
def test_xrdml_not_xrdml(tmp_path, text, words):
    path = tmp_path / "bad.xrdml"
    path.write_text(text)
    with pytest.raises(PatternFileError) as info:
        read_pattern(path)
    assert_error(info, path, *words)


def test_xrdml_bad_numbers(tmp_path, mno):
    path = tmp_path / "bad.xrdml"
    path.write_text(xrdml_text(mno[:, 0], mno[:, 1]).replace(">2001 ", ">2001 x12 ", 1))
    with pytest.raises(PatternFileError) as info:
        read_xrdml(path)
    assert_error(info, path, "non-number", "x12")
    path.write_text(xrdml_text(mno[:, 0], mno[:, 1], list_positions=True).replace("10.000000 ", "", 1))
    with pytest.raises(PatternFileError) as info:
        read_xrdml(path)
    assert_error(info, path, "listPositions", "9000 values")


# -- NeXus / HDF5 --------------------------------------------------------------------------


def write_nexus(path, x, y, *, axis_name="q", units="1/angstrom", beam=("wavelength", CU_KA1, "angstrom"),
                beam_class="NXmonochromator", defaults=True, signal="intensity", axes=None) -> Path:
    """A minimal NeXus file: /entry (NXentry) with an instrument, a sample and one NXdata."""
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["title"] = "MnO test scan"
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        source = instrument.create_group("source")
        source.attrs["NX_class"] = "NXsource"
        source["energy"] = 6.0  # the ring's GeV: must never be taken for the photon energy
        source["energy"].attrs["units"] = "GeV"
        if beam:
            group = instrument.create_group("beam")
            group.attrs["NX_class"] = beam_class
            name, value, unit = beam
            group[name] = value
            group[name].attrs["units"] = unit
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample["name"] = "MnO"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        if signal:
            data.attrs["signal"] = signal
        data.attrs["axes"] = axis_name if axes is None else axes
        data["intensity"] = y
        data[axis_name] = x
        if units:
            data[axis_name].attrs["units"] = units
        if defaults:
            f.attrs["default"] = "entry"
            entry.attrs["default"] = "data"
    return path


def test_nexus_q_axis_gives_back_two_theta(tmp_path, mno):
    path = write_nexus(tmp_path / "q.nxs", two_theta_to_q(mno[:, 0], CU_KA1), mno[:, 1])
    pattern = read_pattern(path)
    assert pattern.axis == "q" and pattern.wavelength == CU_KA1
    np.testing.assert_allclose(pattern.to_two_theta().x, mno[:, 0], rtol=1e-10)
    np.testing.assert_array_equal(pattern.intensity, mno[:, 1])
    meta = pattern.metadata
    assert meta["nxdata"] == "/entry/data" and meta["signal"] == "/entry/data/intensity"
    assert meta["wavelength_origin"] == "file" and meta["wavelength_path"] == "/entry/instrument/beam/wavelength"
    assert meta["sample"] == "MnO" and meta["title"] == "MnO test scan"
    assert pattern.source == str(path)


@pytest.mark.parametrize(("units", "scale"), [("1/nm", 10.0), ("nm^-1", 10.0), ("angstrom^-1", 1.0), (None, 1.0)])
def test_nexus_q_units(tmp_path, mno, units, scale):
    q = two_theta_to_q(mno[:, 0], CU_KA1)
    path = write_nexus(tmp_path / "q.h5", q * scale, mno[:, 1], units=units)
    np.testing.assert_allclose(read_nexus(path).q, q, rtol=1e-12)


@pytest.mark.parametrize("axis_name", ["two_theta", "2theta"])
@pytest.mark.parametrize("units", ["deg", "degrees", None])
def test_nexus_two_theta_axis(tmp_path, mno, axis_name, units):
    path = write_nexus(tmp_path / "tth.nxs", mno[:, 0], mno[:, 1], axis_name=axis_name, units=units)
    pattern = read_nexus(path)
    assert pattern.axis == "two_theta"
    np.testing.assert_array_equal(pattern.x, mno[:, 0])


@pytest.mark.parametrize(
    ("beam", "beam_class", "wavelength"),
    [
        (("wavelength", 0.15406, "nm"), "NXmonochromator", 1.5406),
        (("incident_wavelength", 0.4843, "angstrom"), "NXbeam", 0.4843),
        (("incident_energy", 25.6, "keV"), "NXbeam", energy_to_wavelength(25.6)),
        (("energy", 25600.0, "eV"), "NXmonochromator", energy_to_wavelength(25.6)),
        (None, None, None),  # NXsource/energy (6 GeV) alone must not become a wavelength
    ],
)
def test_nexus_wavelength_fields(tmp_path, mno, beam, beam_class, wavelength):
    path = write_nexus(tmp_path / "w.nxs", mno[:, 0], mno[:, 1], axis_name="two_theta", units="deg",
                       beam=beam, beam_class=beam_class)
    pattern = read_nexus(path)
    if wavelength is None:
        assert pattern.wavelength is None and pattern.metadata["wavelength_origin"] == "none"
    else:
        assert pattern.wavelength == pytest.approx(wavelength)


def test_nexus_argument_beats_file_and_finds_nxdata_without_defaults(tmp_path, mno):
    path = write_nexus(tmp_path / "d.nx", mno[:, 0], mno[:, 1], axis_name="two_theta", units="deg", defaults=False)
    pattern = read_pattern(path, wavelength=0.5)
    assert pattern.wavelength == 0.5 and pattern.metadata["wavelength_origin"] == "argument"
    assert pattern.metadata["nxdata"] == "/entry/data"


def test_nexus_stack_takes_first_frame(tmp_path, mno):
    frames = np.stack([mno[:, 1], 2 * mno[:, 1], 3 * mno[:, 1]])
    path = write_nexus(tmp_path / "stack.nxs", mno[:, 0], frames, axis_name="two_theta", units="deg",
                       axes=[".", "two_theta"])
    pattern = read_nexus(path)
    np.testing.assert_array_equal(pattern.intensity, mno[:, 1])
    assert "first frame" in pattern.metadata["note"]


def test_nexus_entry_argument(tmp_path, mno):
    path = write_nexus(tmp_path / "e.nxs", mno[:, 0], mno[:, 1], axis_name="two_theta", units="deg")
    assert read_nexus(path, entry="/entry").metadata["entry"] == "/entry"
    with pytest.raises(PatternFileError) as info:
        read_nexus(path, entry="entry2")
    assert_error(info, path, "/entry2", "does not exist")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"signal": "counts"}, ["/entry/data/counts", "does not exist"]),
        ({"axes": "polar"}, ["/entry/data/polar", "does not exist"]),
        ({"units": "mm"}, ["'mm'", "/entry/data/two_theta"]),
        ({"axis_name": "x", "units": None}, ["/entry/data/x", "units"]),
        ({"axis_name": "x", "units": None, "axes": "."}, ["/entry/data", "axes"]),
    ],
)
def test_nexus_bad_files(tmp_path, mno, kwargs, words):
    options = {"axis_name": "two_theta", "units": "deg", **kwargs}
    path = write_nexus(tmp_path / "bad.nxs", mno[:, 0], mno[:, 1], **options)
    with pytest.raises(PatternFileError) as info:
        read_nexus(path)
    assert_error(info, path, *words)


def test_nexus_default_to_missing_group(tmp_path, mno):
    path = write_nexus(tmp_path / "bad.nxs", mno[:, 0], mno[:, 1], axis_name="two_theta", units="deg")
    with h5py.File(path, "a") as f:
        f["entry"].attrs["default"] = "processed"
    with pytest.raises(PatternFileError) as info:
        read_nexus(path)
    assert_error(info, path, "/entry/processed", "default")


def test_nexus_without_nxdata_and_not_hdf5(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_group("entry").attrs["NX_class"] = "NXentry"
    with pytest.raises(PatternFileError) as info:
        read_pattern(path)
    assert_error(info, path, "no NXdata")
    text = tmp_path / "text.nxs"
    text.write_text(DATA_ROWS)
    with pytest.raises(PatternFileError) as info:
        read_pattern(text)
    assert_error(info, text, "HDF5")


# -- structures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "formula"),
    [("MnO_225.cif", "MnO"), ("TiO2_136.cif", "TiO2"), ("TiO2_141.cif", "TiO2"), ("Li2MnO3_12.cif", "Li2MnO3")],
)
def test_read_structure(name, formula):
    structure = read_structure(CIFS / name)
    assert structure.composition.reduced_formula == formula
    assert len(structure) > 0


def test_cif_warnings_go_to_debug_log(tmp_path, caplog):
    text = (CIFS / "MnO_225.cif").read_text()
    text = re.sub(r"loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n  1  'x, y, z'\n", "", text)
    path = tmp_path / "nosym.cif"
    for tag in ("_symmetry_space_group_name_H-M   'P 1'\n", "_symmetry_Int_Tables_number   1\n"):
        text = text.replace(tag, "")
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        with caplog.at_level(logging.DEBUG, logger="xrd_nexus_ml.io.readers"):
            structure = read_structure(path)
    assert structure.composition.reduced_formula == "MnO"
    assert any("symmetry" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


@pytest.mark.parametrize(
    "text",
    ["", "not a cif at all\n", "data_x\n_cell_length_a 5\n", "data_x\nloop_\nloop_\n _atom_site_label\n"],
)
def test_broken_cif(tmp_path, text):
    path = tmp_path / "broken.cif"
    path.write_text(text)
    with pytest.raises(StructureError) as info:
        read_structure(path)
    assert_error(info, path, "structure")


def test_missing_cif(tmp_path):
    path = tmp_path / "nope.cif"
    with pytest.raises(StructureError) as info:
        read_structure(path)
    assert isinstance(info.value, FileNotFoundError)
    assert_error(info, path, "not found")

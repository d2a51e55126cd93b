"""Read measured powder patterns (text, XRDML, .npy, NeXus/HDF5) and crystal structures (CIF).

Every pattern reader returns a `Diffractogram` whose `source` is the file and whose `metadata`
says what the file declared (sample, wavelength and where it came from), so a pattern can be
traced back after it has been resampled and fed to a model. Every failure is a
`PatternFileError`, `WavelengthError` or `StructureError` whose message starts with the file
name and says what is wrong and where (line number, XML element, HDF5 path): users meet these
messages with their own files, far from this code.
"""

from __future__ import annotations

import logging
import re
import warnings
import xml.etree.ElementTree as ET
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xrd_nexus_ml.errors import (
    StructureError,
    WavelengthError,
)
from xrd_nexus_ml.io.base import (
    PathLike,
    axis_argument,
    choose_wavelength,
    existing_file,
    file_error,
    make_pattern,
    require_axis,
    wavelength_from_energy,
)
from xrd_nexus_ml.io.nexus import read_nexus
from xrd_nexus_ml.pattern import WAVELENGTHS, Axis, Diffractogram, resolve_wavelength

if TYPE_CHECKING:
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".xy", ".xye", ".txt", ".csv", ".dat")
XRDML_SUFFIXES = (".xrdml",)
NPY_SUFFIXES = (".npy",)
NEXUS_SUFFIXES = (".nxs", ".nx", ".h5", ".hdf5", ".nx5", ".hdf")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + XRDML_SUFFIXES + NPY_SUFFIXES + NEXUS_SUFFIXES


# -- dispatch ------------------------------------------------------------------------------


def read_pattern(
    path: PathLike, wavelength: float | str | None = None, axis: str | None = None
) -> Diffractogram:
    """Read any supported pattern file, choosing the reader by suffix (the one entry point for users)."""
    p = existing_file(path)
    axis_name = axis_argument(axis, p)
    suffix = p.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return read_xy(p, wavelength=wavelength, axis=axis_name)
    if suffix in NPY_SUFFIXES:
        return read_npy(p, wavelength=wavelength, axis=axis_name)
    if suffix in XRDML_SUFFIXES:
        return require_axis(read_xrdml(p, wavelength=wavelength), axis_name, p)
    if suffix in NEXUS_SUFFIXES:
        return require_axis(read_nexus(p, wavelength=wavelength), axis_name, p)
    raise file_error(
        p, f"unknown suffix {p.suffix!r}; supported suffixes are {', '.join(SUPPORTED_SUFFIXES)}"
    )


# -- two-column text -----------------------------------------------------------------------

_COMMENT_CHARS = ("#", ";", "!", "%")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LENGTH_UNIT = r"nm|pm|Å|angstroms?|A"
_WAVELENGTH_RE = re.compile(
    rf"(?:wave[\s_-]*length|lambda|λ)\s*(?:[(\[]\s*(?P<unit1>{_LENGTH_UNIT})\s*[)\]])?\s*[:=]?\s*"
    rf"(?P<value>{_NUMBER})\s*(?P<unit2>{_LENGTH_UNIT})?(?![a-z])",
    re.IGNORECASE,
)
_ANODE_RE = re.compile(
    r"(?:wave[\s_-]*length|lambda|λ|radiation|anode|target|tube)\s*[:=]?\s*"
    r"(?P<element>Cu|Mo|Co|Ag|Fe|Cr)\s*[-_]?\s*K\s*[-_]?\s*(?:α|alpha|a)\s*(?P<line>[12])?(?![a-z0-9])",
    re.IGNORECASE,
)
_ENERGY_RE = re.compile(
    rf"energy\s*(?:[(\[]\s*(?P<unit1>keV|eV)\s*[)\]])?\s*[:=]?\s*(?P<value>{_NUMBER})\s*(?P<unit2>keV|eV)?",
    re.IGNORECASE,
)
_SAMPLE_RE = re.compile(r"(?:sample(?:[\s_]*name)?|title)\s*[:=]\s*(?P<value>\S.*)", re.IGNORECASE)
_TWO_THETA_RE = re.compile(
    r"2\s*[-_]?\s*theta|2\s*θ|two[\s_-]*theta|(?<![a-z0-9])(?:tth|2th)(?![a-z])", re.IGNORECASE
)
_Q_RE = re.compile(r"(?<![a-z0-9])q(?![a-z])", re.IGNORECASE)
_LENGTH_SCALE = {"nm": 10.0, "pm": 0.01}


def _lines(path: Path, encoding: str) -> Iterator[str]:
    """The file's lines, read as they are needed: a 10^7-line pattern is never held as text and a
    list of lines at once (that took 22 times the file's size)."""
    with open(path, encoding=encoding, newline=None) as fh:
        yield from fh


def _check_text(path: Path) -> None:
    with open(path, "rb") as fh:
        start = fh.read(4096)
    if b"\x00" in start:
        raise file_error(path, "looks like a binary file, not a text pattern (two columns: axis, intensity)")
    if not start.strip():
        with open(path, "rb") as fh:
            if not any(chunk.strip() for chunk in iter(lambda: fh.read(1 << 20), b"")):
                raise file_error(path, "file is empty")


def _split_fields(line: str) -> list[str]:
    """Split on whitespace, comma, semicolon or tab; with ';' as separator a comma is a decimal comma."""
    line = line.rstrip(",;").strip()
    if ";" in line:
        return [f.replace(",", ".") if re.fullmatch(r"[-+]?\d+,\d*", f) else f for f in re.split(r"\s*;\s*", line)]
    return re.split(r"\s*,\s*|\s+", line)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header_wavelength(path: Path, header: list[str]) -> tuple[float | None, str | None]:
    """The wavelength (Å) a header states, as a number, an anode name or a beam energy; and the line."""
    for line in header:
        if m := _WAVELENGTH_RE.search(line):
            unit = (m["unit1"] or m["unit2"] or "A").lower()
            return float(m["value"]) * _LENGTH_SCALE.get(unit, 1.0), line
        if m := _ANODE_RE.search(line):
            name = f"{m['element'].capitalize()}Ka{m['line'] or ''}"
            return resolve_wavelength(name if name in WAVELENGTHS else name[:-1], str(path)), line
    for line in header:
        if m := _ENERGY_RE.search(line):
            unit = (m["unit1"] or m["unit2"] or "keV").lower()
            energy = float(m["value"]) / (1000.0 if unit == "ev" else 1.0)
            return wavelength_from_energy(path, energy), line
    return None, None


def _header_axis(header: list[str]) -> Axis | None:
    """The axis named by the header line closest to the data (the column titles, usually)."""
    for line in reversed(header):
        if "wavelength" in line.lower() or "energy" in line.lower():
            continue  # 'λ (Å)' and '25 keV' lines are not column titles
        hits = [(m.start(), "two_theta") for m in _TWO_THETA_RE.finditer(line)]
        hits += [(m.start(), "q") for m in _Q_RE.finditer(line)]
        if hits:
            return min(hits)[1]  # type: ignore[return-value]
    return None


def _parse_text_rows(path: Path, lines: Iterable[str]) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Split the file into header lines and numeric rows; returns header, line numbers, rows (n, 2),
    columns. Values go straight into compact arrays (8 bytes a number), not lists of floats."""
    header: list[str] = []
    line_numbers = array("q")
    values_xy = array("d")
    rows = 0
    n_columns = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(_COMMENT_CHARS):
            header.append(line.lstrip("".join(_COMMENT_CHARS)).strip())
            continue
        fields = _split_fields(line.split("#", 1)[0])  # drop a trailing '# comment'
        if not rows and not all(_is_number(f) for f in fields):
            header.append(line)  # a column-title line before the data ('2 Theta, Counts')
            continue
        values = _row_values(path, fields, number)
        if not rows:
            n_columns = len(values)
            if n_columns < 2:
                raise file_error(path, f"only one column on line {number}; need an axis and an intensity column")
        elif len(values) != n_columns:
            raise file_error(path, f"line {number} has {len(values)} columns, but the data before it have {n_columns}")
        values_xy.extend(values[:2])
        line_numbers.append(number)
        rows += 1
    if not rows:
        raise file_error(path, "no numeric data rows found" + (" (only header lines)" if header else ""))
    return header, np.frombuffer(line_numbers, dtype=np.int64), np.frombuffer(values_xy).reshape(-1, 2), n_columns


def _row_values(path: Path, fields: list[str], number: int) -> list[float]:
    values = []
    for column, field in enumerate(fields, start=1):
        try:
            values.append(float(field))
        except ValueError:
            raise file_error(path, f"not a number on line {number}, column {column}: {field!r}") from None
    return values


def read_xy(path: PathLike, wavelength: float | str | None = None, axis: str | None = None) -> Diffractogram:
    """Read a text pattern (axis and intensity columns), taking wavelength and axis from its header.

    Columns may be separated by whitespace, commas, semicolons or tabs; extra columns (error bars,
    a fitted background) are ignored. `wavelength=` beats a wavelength in the header; `axis=`
    beats a column title; with neither the axis is taken as 2θ in degrees.
    """
    p = existing_file(path)
    axis_name = axis_argument(axis, p)
    _check_text(p)
    try:
        header, line_numbers, rows, n_columns = _parse_text_rows(p, _lines(p, "utf-8-sig"))
    except UnicodeDecodeError:  # old instrument software writes Å as one latin-1 byte
        header, line_numbers, rows, n_columns = _parse_text_rows(p, _lines(p, "latin-1"))
    try:
        in_file, wavelength_line = _header_wavelength(p, header)
    except WavelengthError:
        if wavelength is None:
            raise
        in_file, wavelength_line = None, None  # the caller's wavelength wins over a bad one in the file
    header_axis = _header_axis(header)
    chosen_axis = axis_name or header_axis or "two_theta"
    lam, origin = choose_wavelength(p, wavelength, in_file, f"header line {wavelength_line!r}")
    metadata: dict[str, Any] = {
        "format": "xy",
        "n_columns": n_columns,
        "axis_origin": "argument" if axis_name else ("file" if header_axis else "default"),
        "wavelength_origin": origin,
    }
    if in_file is not None:
        metadata["wavelength_in_file"] = in_file
        metadata["wavelength_header"] = wavelength_line
    if header:
        metadata["header"] = "\n".join(header[:50])
    if sample := next((m["value"].strip() for line in header if (m := _SAMPLE_RE.search(line))), None):
        metadata["sample"] = sample
    return make_pattern(
        p, rows[:, 0], rows[:, 1], axis=chosen_axis, wavelength=lam, metadata=metadata,
        where=lambda i: f"line {line_numbers[i]}",
    )


# -- PANalytical XRDML ---------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _strip_namespaces(root: ET.Element) -> ET.Element:
    """XRDML exists in several schema versions (1.0-2.x); matching local names reads them all."""
    for element in root.iter():
        element.tag = _local(element.tag)
    return root


def _child(parent: ET.Element, name: str, path: Path, where: str) -> ET.Element:
    found = parent.find(name)
    if found is None:
        raise file_error(path, f"XRDML element {where}/{name} is missing")
    return found


def _xml_numbers(path: Path, element: ET.Element, where: str) -> np.ndarray:
    text = (element.text or "").split()
    if not text:
        raise file_error(path, f"XRDML element {where} is empty")
    try:
        return np.array(text, dtype=float)
    except ValueError:
        bad = next(t for t in text if not _is_number(t))
        raise file_error(path, f"XRDML element {where} holds a non-number: {bad!r}") from None


def _xml_float(path: Path, element: ET.Element, where: str) -> float:
    values = _xml_numbers(path, element, where)
    return float(values[0])


def _xrdml_root(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise file_error(path, f"not well-formed XML ({exc})") from None
    root = _strip_namespaces(root)
    if root.tag not in ("xrdMeasurements", "xrdMeasurement"):
        raise file_error(path, f"not an XRDML file: the root element is <{root.tag}>, expected <xrdMeasurements>")
    return root


def _xrdml_two_theta(path: Path, points: ET.Element, n: int) -> np.ndarray:
    where = "xrdMeasurement/scan/dataPoints/positions[@axis='2Theta']"
    positions = next((e for e in points.findall("positions") if e.get("axis", "").lower() == "2theta"), None)
    if positions is None:
        raise file_error(path, f"XRDML element {where} is missing")
    listed = positions.find("listPositions")
    if listed is not None:
        x = _xml_numbers(path, listed, f"{where}/listPositions")
        if x.size != n:
            raise file_error(path, f"{where}/listPositions has {x.size} values but there are {n} intensities")
        return x
    start = _xml_float(path, _child(positions, "startPosition", path, where), f"{where}/startPosition")
    end = _xml_float(path, _child(positions, "endPosition", path, where), f"{where}/endPosition")
    return np.linspace(start, end, n)


def _xrdml_wavelength(path: Path, measurement: ET.Element) -> tuple[float | None, dict]:
    used = measurement.find("usedWavelength")
    if used is None or used.find("kAlpha1") is None:
        return None, {}
    where = "xrdMeasurement/usedWavelength"
    info: dict[str, Any] = {}
    if used.get("intended"):
        info["wavelength_intended"] = used.get("intended")
    for tag, key in (("kAlpha2", "kalpha2_wavelength"), ("kBeta", "kbeta_wavelength"),
                     ("ratioKAlpha2KAlpha1", "kalpha2_ratio")):
        if (element := used.find(tag)) is not None:
            info[key] = _xml_float(path, element, f"{where}/{tag}")
    kalpha1 = used.find("kAlpha1")
    scale = _LENGTH_SCALE.get((kalpha1.get("unit") or "Angstrom").lower(), 1.0)
    return _xml_float(path, kalpha1, f"{where}/kAlpha1") * scale, info


def read_xrdml(path: PathLike, wavelength: float | str | None = None) -> Diffractogram:
    """Read a PANalytical XRDML file: first scan, 2θ axis, raw counts, Kα1 wavelength.

    Counts are kept as measured (not divided by the counting time, which goes into metadata)
    so that Poisson statistics still apply to them.
    """
    p = existing_file(path)
    root = _xrdml_root(p)
    measurements = [root] if root.tag == "xrdMeasurement" else root.findall("xrdMeasurement")
    if not measurements:
        raise file_error(p, "XRDML element xrdMeasurements/xrdMeasurement is missing")
    measurement = measurements[0]
    scans = [s for m in measurements for s in m.findall("scan")]
    if not measurement.findall("scan"):
        raise file_error(p, "XRDML element xrdMeasurement/scan is missing")
    points = _child(measurement.find("scan"), "dataPoints", p, "xrdMeasurement/scan")
    counts = points.find("intensities")
    counts = points.find("counts") if counts is None else counts
    if counts is None:
        raise file_error(p, "XRDML element xrdMeasurement/scan/dataPoints/intensities (or counts) is missing")
    y = _xml_numbers(p, counts, f"xrdMeasurement/scan/dataPoints/{counts.tag}")
    x = _xrdml_two_theta(p, points, y.size)
    in_file, wavelength_info = _xrdml_wavelength(p, measurement)
    lam, origin = choose_wavelength(p, wavelength, in_file, "xrdMeasurement/usedWavelength/kAlpha1")
    metadata: dict[str, Any] = {"format": "xrdml", "wavelength_origin": origin, "intensity_unit": "counts",
                                "n_scans": len(scans), **wavelength_info}
    if in_file is not None:
        metadata["wavelength_in_file"] = in_file
    if len(scans) > 1:
        metadata["note"] = f"the file holds {len(scans)} scans; only the first was read"
    if (time := points.find("commonCountingTime")) is not None:
        metadata["counting_time_s"] = _xml_float(p, time, "xrdMeasurement/scan/dataPoints/commonCountingTime")
    for tag in ("name", "id"):
        if (element := root.find(f"sample/{tag}")) is not None and (element.text or "").strip():
            metadata["sample"] = element.text.strip()
            break
    return make_pattern(p, x, y, axis="two_theta", wavelength=lam, metadata=metadata)


# -- NumPy .npy ----------------------------------------------------------------------------


def read_npy(path: PathLike, wavelength: float | str | None = None, axis: str | None = None) -> Diffractogram:
    """Read a `(N, 2)` or `(2, N)` array (axis, intensity); never unpickles, as .npy can carry code."""
    p = existing_file(path)
    axis_name = axis_argument(axis, p) or "two_theta"
    with open(p, "rb") as handle:
        magic = handle.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):
        raise file_error(p, "not a .npy file (it does not start with the NumPy header)")
    try:
        array = np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise file_error(p, "holds pickled Python objects, which are never loaded (allow_pickle=False); "
                            "save a plain float array") from None
        raise file_error(p, f"not a readable .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise file_error(p, f"not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise file_error(p, "is an .npz archive, not one .npy array; save the pattern with np.save")
    if array.dtype.kind not in "iuf":
        raise file_error(p, f"holds {array.dtype} values, expected numbers")
    if array.ndim == 1:
        raise file_error(p, f"holds a 1D array of {array.size} values: an axis is needed too; "
                        "save np.column_stack([axis, intensity]), shape (N, 2)")
    if array.ndim != 2 or 2 not in array.shape:
        raise file_error(p, f"holds an array of shape {array.shape}, expected (N, 2) or (2, N)")
    x, y = (array[:, 0], array[:, 1]) if array.shape[1] == 2 else (array[0], array[1])
    lam, origin = choose_wavelength(p, wavelength, None)
    metadata = {"format": "npy", "array_shape": str(array.shape), "wavelength_origin": origin,
                "axis_origin": "argument" if axis else "default"}
    return make_pattern(p, x, y, axis=axis_name, wavelength=lam, metadata=metadata)


# -- crystal structures --------------------------------------------------------------------


def read_structure(path: PathLike) -> Structure:
    """Read a CIF (or any format pymatgen reads) as a pymatgen Structure.

    pymatgen warns about every CIF quirk (rounded occupancies, missing symmetry tags); those
    warnings would swamp a batch run, so they go to this module's DEBUG log instead.
    """
    p = existing_file(path, StructureError)
    from pymatgen.core import Structure

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = Structure.from_file(str(p))
        except Exception as exc:  # pymatgen raises many types (ValueError, KeyError, IndexError...)
            problem = f"cannot read a crystal structure ({type(exc).__name__}: {exc})"
            raise file_error(p, problem, StructureError) from exc
        finally:
            for warning in caught:
                log.debug("%s: pymatgen warned: %s", p, warning.message)
    if len(structure) == 0:
        raise file_error(p, "the structure is empty (no atoms)", StructureError)
    return structure

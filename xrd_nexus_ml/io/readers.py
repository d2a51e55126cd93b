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
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xrd_nexus_ml.errors import (
    PatternError,
    PatternFileError,
    PatternFileNotFoundError,
    StructureError,
    StructureFileNotFoundError,
    WavelengthError,
)
from xrd_nexus_ml.pattern import WAVELENGTHS, Axis, Diffractogram, energy_to_wavelength, resolve_wavelength

if TYPE_CHECKING:
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

TEXT_SUFFIXES = (".xy", ".xye", ".txt", ".csv", ".dat")
XRDML_SUFFIXES = (".xrdml",)
NPY_SUFFIXES = (".npy",)
NEXUS_SUFFIXES = (".nxs", ".nx", ".h5", ".hdf5", ".nx5", ".hdf")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + XRDML_SUFFIXES + NPY_SUFFIXES + NEXUS_SUFFIXES


# -- shared helpers ------------------------------------------------------------------------


def _error(path: PathLike, problem: str, kind: type[Exception] = PatternFileError) -> Exception:
    """The exception for `problem` in `path`: one place makes every message start with the file."""
    if issubclass(kind, PatternError):
        return kind(problem, str(path))
    return kind(f"{path}: {problem}")


def _existing_file(path: PathLike, kind: type[Exception] = PatternFileError) -> Path:
    """Fail early and clearly on a missing path or a directory, before any parser does it vaguely."""
    p = Path(path)
    if p.is_dir():
        raise _error(p, "is a directory, not a file", kind)
    if not p.exists():
        missing = StructureFileNotFoundError if issubclass(kind, StructureError) else PatternFileNotFoundError
        raise _error(p, "file not found", missing)
    return p


_AXIS_ALIASES = {"two_theta": "two_theta", "2theta": "two_theta", "tth": "two_theta", "twotheta": "two_theta",
                 "q": "q"}


def _axis_argument(axis: str | None, path: PathLike) -> Axis | None:
    """Check the caller's `axis=` early, so a typo is not mistaken for a problem with the file."""
    if axis is None:
        return None
    name = _AXIS_ALIASES.get(str(axis).strip().lower())
    if name is None:
        raise _error(path, f"axis must be 'two_theta' or 'q', got {axis!r}", PatternError)
    return name  # type: ignore[return-value]


def _choose_wavelength(
    path: PathLike, argument: float | str | None, from_file: float | None, found_in: str | None = None
) -> tuple[float | None, str]:
    """Explicit argument beats the file; the origin goes into metadata so users can tell which won."""
    if argument is not None:
        return resolve_wavelength(argument, str(path)), "argument"
    if from_file is None:
        return None, "none"
    try:
        return resolve_wavelength(from_file, str(path)), "file"
    except WavelengthError as exc:
        where = f" (read from {found_in})" if found_in else " (read from the file)"
        raise _error(path, exc.problem + where, WavelengthError) from None


def _wavelength_from_energy(path: PathLike, energy_kev: float) -> float:
    """Energy in keV -> Å, re-raised with the file name (the pattern module does not know it)."""
    try:
        return energy_to_wavelength(float(energy_kev))
    except WavelengthError as exc:
        raise _error(path, exc.problem, WavelengthError) from None


def _point(i: int) -> str:
    return f"point {i + 1}"


def _make_pattern(
    path: PathLike,
    x: np.ndarray,
    y: np.ndarray,
    *,
    axis: Axis,
    wavelength: float | None,
    metadata: dict,
    where: Callable[[int], str] = _point,
) -> Diffractogram:
    """Check the values (naming the line or point at fault), put the axis ascending, build the pattern.

    The Diffractogram constructor checks the same things, but only by array index; a reader knows
    where in the file the bad value is, which is what a user needs to fix it.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size != y.size:
        raise _error(path, f"the axis has {x.size} values but the intensity has {y.size}")
    if x.size < 2:
        raise _error(path, f"a pattern needs at least 2 data points, found {x.size}")
    for values, name in ((x, "axis"), (y, "intensity")):
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            kind = "NaN" if np.isnan(values[i]) else "infinite"
            raise _error(path, f"{kind} {name} value on {where(i)} ({int(bad.sum())} non-finite value(s) in all)")
    _check_axis_range(path, x, axis, where)
    steps = np.diff(x)
    if np.all(steps < 0):  # measured high-to-low: keep it, ascending
        x, y = x[::-1], y[::-1]
        metadata = {**metadata, "axis_reversed": True}
    elif not np.all(steps > 0):
        ascending = steps[0] > 0
        i = int(np.flatnonzero(steps <= 0 if ascending else steps >= 0)[0])
        how = "repeats" if steps[i] == 0 else "goes back"
        raise _error(
            path,
            f"the axis is not monotonic: it {how} at {where(i + 1)} ({x[i + 1]:g} after {x[i]:g} on {where(i)})",
        )
    return Diffractogram(
        x=x, intensity=y, axis=axis, wavelength=wavelength, source=str(path), metadata=metadata
    )


def _check_axis_range(path: PathLike, x: np.ndarray, axis: Axis, where: Callable[[int], str]) -> None:
    if axis == "two_theta":
        bad = (x <= 0) | (x >= 180)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _error(path, f"2θ = {x[i]:g} on {where(i)} is outside (0, 180) degrees")
    elif (x < 0).any():
        i = int(np.flatnonzero(x < 0)[0])
        raise _error(path, f"q = {x[i]:g} on {where(i)} is negative")


def _require_axis(pattern: Diffractogram, axis: Axis | None, path: PathLike) -> Diffractogram:
    """Self-describing formats state their axis; a contradicting `axis=` is refused, not obeyed."""
    if axis is not None and axis != pattern.axis:
        raise _error(
            path,
            f"the file's axis is {pattern.axis!r} but axis={axis!r} was given; "
            "read it without axis= and convert with .to_q() or .to_two_theta()",
        )
    return pattern


# -- dispatch ------------------------------------------------------------------------------


def read_pattern(
    path: PathLike, wavelength: float | str | None = None, axis: str | None = None
) -> Diffractogram:
    """Read any supported pattern file, choosing the reader by suffix (the one entry point for users)."""
    p = _existing_file(path)
    axis_name = _axis_argument(axis, p)
    suffix = p.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return read_xy(p, wavelength=wavelength, axis=axis_name)
    if suffix in NPY_SUFFIXES:
        return read_npy(p, wavelength=wavelength, axis=axis_name)
    if suffix in XRDML_SUFFIXES:
        return _require_axis(read_xrdml(p, wavelength=wavelength), axis_name, p)
    if suffix in NEXUS_SUFFIXES:
        return _require_axis(read_nexus(p, wavelength=wavelength), axis_name, p)
    raise _error(
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


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise _error(path, "looks like a binary file, not a text pattern (two columns: axis, intensity)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # old instrument software writes Å as one latin-1 byte


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
            return _wavelength_from_energy(path, energy), line
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


def _parse_text_rows(path: Path, text: str) -> tuple[list[str], list[int], np.ndarray, int]:
    """Split the file into header lines and numeric rows; returns header, line numbers, rows, columns."""
    header: list[str] = []
    line_numbers: list[int] = []
    rows: list[list[float]] = []
    n_columns = 0
    for number, raw in enumerate(text.splitlines(), start=1):
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
                raise _error(path, f"only one column on line {number}; need an axis and an intensity column")
        elif len(values) != n_columns:
            raise _error(path, f"line {number} has {len(values)} columns, but the data before it have {n_columns}")
        rows.append(values[:2])
        line_numbers.append(number)
    if not rows:
        raise _error(path, "no numeric data rows found" + (" (only header lines)" if header else ""))
    return header, line_numbers, np.array(rows, dtype=float), n_columns


def _row_values(path: Path, fields: list[str], number: int) -> list[float]:
    values = []
    for column, field in enumerate(fields, start=1):
        try:
            values.append(float(field))
        except ValueError:
            raise _error(path, f"not a number on line {number}, column {column}: {field!r}") from None
    return values


def read_xy(path: PathLike, wavelength: float | str | None = None, axis: str | None = None) -> Diffractogram:
    """Read a text pattern (axis and intensity columns), taking wavelength and axis from its header.

    Columns may be separated by whitespace, commas, semicolons or tabs; extra columns (error bars,
    a fitted background) are ignored. `wavelength=` beats a wavelength in the header; `axis=`
    beats a column title; with neither the axis is taken as 2θ in degrees.
    """
    p = _existing_file(path)
    axis_name = _axis_argument(axis, p)
    text = _decode(p)
    if not text.strip():
        raise _error(p, "file is empty")
    header, line_numbers, rows, n_columns = _parse_text_rows(p, text)
    try:
        in_file, wavelength_line = _header_wavelength(p, header)
    except WavelengthError:
        if wavelength is None:
            raise
        in_file, wavelength_line = None, None  # the caller's wavelength wins over a bad one in the file
    header_axis = _header_axis(header)
    chosen_axis = axis_name or header_axis or "two_theta"
    lam, origin = _choose_wavelength(p, wavelength, in_file, f"header line {wavelength_line!r}")
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
    return _make_pattern(
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
        raise _error(path, f"XRDML element {where}/{name} is missing")
    return found


def _xml_numbers(path: Path, element: ET.Element, where: str) -> np.ndarray:
    text = (element.text or "").split()
    if not text:
        raise _error(path, f"XRDML element {where} is empty")
    try:
        return np.array(text, dtype=float)
    except ValueError:
        bad = next(t for t in text if not _is_number(t))
        raise _error(path, f"XRDML element {where} holds a non-number: {bad!r}") from None


def _xml_float(path: Path, element: ET.Element, where: str) -> float:
    values = _xml_numbers(path, element, where)
    return float(values[0])


def _xrdml_root(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise _error(path, f"not well-formed XML ({exc})") from None
    root = _strip_namespaces(root)
    if root.tag not in ("xrdMeasurements", "xrdMeasurement"):
        raise _error(path, f"not an XRDML file: the root element is <{root.tag}>, expected <xrdMeasurements>")
    return root


def _xrdml_two_theta(path: Path, points: ET.Element, n: int) -> np.ndarray:
    where = "xrdMeasurement/scan/dataPoints/positions[@axis='2Theta']"
    positions = next((e for e in points.findall("positions") if e.get("axis", "").lower() == "2theta"), None)
    if positions is None:
        raise _error(path, f"XRDML element {where} is missing")
    listed = positions.find("listPositions")
    if listed is not None:
        x = _xml_numbers(path, listed, f"{where}/listPositions")
        if x.size != n:
            raise _error(path, f"{where}/listPositions has {x.size} values but there are {n} intensities")
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
    p = _existing_file(path)
    root = _xrdml_root(p)
    measurements = [root] if root.tag == "xrdMeasurement" else root.findall("xrdMeasurement")
    if not measurements:
        raise _error(p, "XRDML element xrdMeasurements/xrdMeasurement is missing")
    measurement = measurements[0]
    scans = [s for m in measurements for s in m.findall("scan")]
    if not measurement.findall("scan"):
        raise _error(p, "XRDML element xrdMeasurement/scan is missing")
    points = _child(measurement.find("scan"), "dataPoints", p, "xrdMeasurement/scan")
    counts = points.find("intensities")
    counts = points.find("counts") if counts is None else counts
    if counts is None:
        raise _error(p, "XRDML element xrdMeasurement/scan/dataPoints/intensities (or counts) is missing")
    y = _xml_numbers(p, counts, f"xrdMeasurement/scan/dataPoints/{counts.tag}")
    x = _xrdml_two_theta(p, points, y.size)
    in_file, wavelength_info = _xrdml_wavelength(p, measurement)
    lam, origin = _choose_wavelength(p, wavelength, in_file, "xrdMeasurement/usedWavelength/kAlpha1")
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
    return _make_pattern(p, x, y, axis="two_theta", wavelength=lam, metadata=metadata)


# -- NumPy .npy ----------------------------------------------------------------------------


def read_npy(path: PathLike, wavelength: float | str | None = None, axis: str | None = None) -> Diffractogram:
    """Read a `(N, 2)` or `(2, N)` array (axis, intensity); never unpickles, as .npy can carry code."""
    p = _existing_file(path)
    axis_name = _axis_argument(axis, p) or "two_theta"
    with open(p, "rb") as handle:
        magic = handle.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):
        raise _error(p, "not a .npy file (it does not start with the NumPy header)")
    try:
        array = np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise _error(p, "holds pickled Python objects, which are never loaded (allow_pickle=False); "
                            "save a plain float array") from None
        raise _error(p, f"not a readable .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise _error(p, f"not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise _error(p, "is an .npz archive, not one .npy array; save the pattern with np.save")
    if array.dtype.kind not in "iuf":
        raise _error(p, f"holds {array.dtype} values, expected numbers")
    if array.ndim == 1:
        raise _error(p, f"holds a 1D array of {array.size} values: an axis is needed too; "
                        "save np.column_stack([axis, intensity]), shape (N, 2)")
    if array.ndim != 2 or 2 not in array.shape:
        raise _error(p, f"holds an array of shape {array.shape}, expected (N, 2) or (2, N)")
    x, y = (array[:, 0], array[:, 1]) if array.shape[1] == 2 else (array[0], array[1])
    lam, origin = _choose_wavelength(p, wavelength, None)
    metadata = {"format": "npy", "array_shape": str(array.shape), "wavelength_origin": origin,
                "axis_origin": "argument" if axis else "default"}
    return _make_pattern(p, x, y, axis=axis_name, wavelength=lam, metadata=metadata)


# -- NeXus / HDF5 --------------------------------------------------------------------------

_TWO_THETA_NAMES = {"two_theta", "2theta", "twotheta", "tth", "2th", "polar_angle"}
_Q_NAMES = {"q", "q_magnitude"}
_DEGREE_UNITS = {"deg", "degree", "degrees", "°"}
_RADIAN_UNITS = {"rad", "radian", "radians"}
_INVERSE_ANGSTROM_UNITS = {"1/angstrom", "angstrom^-1", "angstrom-1", "1/a", "a^-1", "a-1", "1/å", "å^-1",
                           "å-1", "1/ang", "ang^-1"}
_INVERSE_NM_UNITS = {"1/nm", "nm^-1", "nm-1"}
_WAVELENGTH_NAMES = ("wavelength", "incident_wavelength")
_BEAM_CLASSES = ("NXmonochromator", "NXbeam")


def _attr_text(node, name: str) -> str | None:
    """An HDF5 attribute as text: h5py gives str, bytes or a 1-element array depending on the writer."""
    value = node.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _attr_list(node, name: str) -> list[str]:
    value = node.attrs.get(name)
    if value is None:
        return []
    items = list(np.ravel(value)) if isinstance(value, np.ndarray) else [value]
    texts = [v.decode() if isinstance(v, bytes) else str(v) for v in items]
    if len(texts) == 1 and ":" in texts[0]:  # NeXus before 2014 wrote axes="frame:two_theta"
        texts = texts[0].split(":")
    return texts


def _nx_class(node) -> str | None:
    return _attr_text(node, "NX_class")


def _is_group(node, nx_class: str) -> bool:
    import h5py

    return isinstance(node, h5py.Group) and _nx_class(node) == nx_class


def _h5_get(path: Path, group, name: str, why: str):
    if name not in group:
        target = f"{group.name.rstrip('/')}/{name}" if not name.startswith("/") else name
        raise _error(path, f"HDF5 path {target} ({why}) does not exist")
    return group[name]


def _find_nxdata(path: Path, h5, entry: str | None):
    """Follow the `default` attributes from the root (or `entry`); else take the first NXdata found."""
    import h5py

    start = h5 if entry is None else _h5_get(path, h5, entry, "the entry asked for")
    if not isinstance(start, h5py.Group):
        raise _error(path, f"HDF5 path {start.name} is a dataset, not an NXentry or NXdata group")
    node = start
    for _ in range(8):  # a chain of `default` links is short; a loop of them must not hang us
        target = _attr_text(node, "default")
        if _nx_class(node) == "NXdata" or not target:
            break
        node = _h5_get(path, node, target, f"named by the 'default' attribute of {node.name}")
        if not isinstance(node, h5py.Group):
            raise _error(path, f"HDF5 path {node.name} (a 'default' target) is a dataset, not a group")
    if _nx_class(node) == "NXdata":
        return node
    for root in (node, start):
        found = root.visititems(lambda name, obj: name if _is_group(obj, "NXdata") else None)
        if found:
            return root[found]
    raise _error(path, f"no NXdata group found under HDF5 path {start.name}")


def _signal_dataset(path: Path, nxdata):
    name = _attr_text(nxdata, "signal")
    if name:
        return _h5_get(path, nxdata, name, "named by the 'signal' attribute")
    for obj in nxdata.values():  # NeXus before 2014: signal=1 on the dataset itself
        if str(_attr_text(obj, "signal")) == "1":
            return obj
    for key in ("data", "intensity", "counts"):
        if key in nxdata:
            return nxdata[key]
    raise _error(path, f"NXdata group {nxdata.name} has no 'signal' attribute naming its intensities")


def _axis_dataset(path: Path, nxdata):
    names = [n for n in _attr_list(nxdata, "axes") if n and n != "."]
    if names:
        return _h5_get(path, nxdata, names[-1], "named by the 'axes' attribute")
    for key in nxdata:
        if key.lower() in _TWO_THETA_NAMES | _Q_NAMES:
            return nxdata[key]
    raise _error(path, f"NXdata group {nxdata.name} has no 'axes' attribute and no dataset named two_theta or q")


def _axis_values(path: Path, dataset) -> tuple[np.ndarray, Axis, str]:
    """Axis values in degrees or Å^-1, the axis kind, and how the unit was decided."""
    values = _h5_values(path, dataset)
    units = (_attr_text(dataset, "units") or "").strip()
    key = units.lower().replace(" ", "").replace("angstroms", "angstrom")
    name = dataset.name.rsplit("/", 1)[-1].lower()
    if key in _DEGREE_UNITS:
        return values, "two_theta", units
    if key in _RADIAN_UNITS:
        return np.degrees(values), "two_theta", units
    if key in _INVERSE_ANGSTROM_UNITS:
        return values, "q", units
    if key in _INVERSE_NM_UNITS:
        return values / 10.0, "q", units
    if key:
        raise _error(path, f"units {units!r} of HDF5 dataset {dataset.name} are neither degrees nor 1/angstrom")
    if name in _TWO_THETA_NAMES:
        return values, "two_theta", "none given; degrees assumed from the name"
    if name in _Q_NAMES:
        return values, "q", "none given; 1/angstrom assumed from the name"
    raise _error(path, f"HDF5 dataset {dataset.name} has no 'units' attribute and its name says neither 2θ nor q")


def _h5_values(path: Path, dataset) -> np.ndarray:
    try:
        return np.asarray(dataset[()], dtype=float)
    except (TypeError, ValueError) as exc:
        raise _error(path, f"HDF5 dataset {dataset.name} does not hold numbers ({exc})") from None


def _first_frame(values: np.ndarray) -> np.ndarray:
    return values[(0,) * (values.ndim - 1)] if values.ndim > 1 else values


def _nexus_wavelength(path: Path, entry) -> tuple[float | None, str | None]:
    """The beam wavelength (Å) under `entry`: a wavelength field first, else the photon energy."""
    import h5py

    found: list[tuple[int, str, Any]] = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        key, parent_class = name.rsplit("/", 1)[-1].lower(), _nx_class(obj.parent)
        if key in _WAVELENGTH_NAMES:
            found.append((0 if parent_class in _BEAM_CLASSES else 1, "wavelength", obj))
        elif key == "incident_energy" or (key == "energy" and parent_class in _BEAM_CLASSES):
            found.append((2, "energy", obj))  # never NXsource/energy: that is the storage ring's

    entry.visititems(visit)
    if not found:
        return None, None
    _, kind, dataset = min(found, key=lambda item: item[0])
    values = np.ravel(_h5_values(path, dataset))
    if values.size == 0:
        raise _error(path, f"HDF5 dataset {dataset.name} ({kind}) is empty", WavelengthError)
    value = float(values[0])
    units = (_attr_text(dataset, "units") or "").strip().lower()
    if kind == "wavelength":
        scale = {"nm": 10.0, "pm": 0.01, "m": 1e10}.get(units, 1.0)
        return value * scale, dataset.name
    energy_kev = value / 1000.0 if units == "ev" else value
    return _wavelength_from_energy(path, energy_kev), dataset.name


def _entry_of(node):
    while node.name != "/" and _nx_class(node) != "NXentry":
        node = node.parent
    return node


def _nexus_text(group, name: str) -> str | None:
    if name not in group:
        return None
    value = group[name][()]
    value = value.ravel()[0] if isinstance(value, np.ndarray) and value.size else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _nexus_descriptions(entry) -> dict[str, str]:
    """Entry title and sample name, for the metadata (they identify the measurement to a human)."""
    found = {}
    if (title := _nexus_text(entry, "title")) is not None:
        found["title"] = title
    sample = next((g for g in entry.values() if _is_group(g, "NXsample")), None)
    if sample is not None and (name := _nexus_text(sample, "name")) is not None:
        found["sample"] = name
    return found


def read_nexus(path: PathLike, entry: str | None = None, wavelength: float | str | None = None) -> Diffractogram:
    """Read the default NXdata of a NeXus/HDF5 file: its signal against its axis (2θ or q).

    A signal with more than one dimension (a stack of frames) gives its first frame; the
    metadata says so, since a silent choice of frame would be easy to miss.
    """
    import h5py

    p = _existing_file(path)
    try:
        h5 = h5py.File(p, "r")
    except OSError as exc:
        raise _error(p, f"not a readable HDF5/NeXus file ({exc})") from None
    with h5:
        nxdata = _find_nxdata(p, h5, entry)
        signal = _signal_dataset(p, nxdata)
        axis_dataset = _axis_dataset(p, nxdata)
        y_all = _h5_values(p, signal)
        if y_all.ndim == 0:
            raise _error(p, f"HDF5 dataset {signal.name} holds one number, not a pattern")
        x, axis, unit_note = _axis_values(p, axis_dataset)
        x, y = _first_frame(x), _first_frame(y_all)
        if x.size == y.size + 1:  # bin edges -> centres
            x = 0.5 * (x[:-1] + x[1:])
        if x.size != y.size:
            raise _error(p, f"HDF5 axis {axis_dataset.name} has {x.size} values, signal {signal.name} {y.size}")
        entry_group = _entry_of(nxdata)
        in_file, wavelength_path = _nexus_wavelength(p, entry_group)
        lam, origin = _choose_wavelength(p, wavelength, in_file, f"HDF5 path {wavelength_path}")
        metadata: dict[str, Any] = {
            "format": "nexus", "entry": entry_group.name, "nxdata": nxdata.name, "signal": signal.name,
            "axis_dataset": axis_dataset.name, "axis_units": unit_note, "wavelength_origin": origin,
        }
        if in_file is not None:
            metadata.update(wavelength_in_file=in_file, wavelength_path=wavelength_path)
        if y_all.ndim > 1:
            metadata["note"] = f"signal has shape {y_all.shape}; only the first frame was read"
        metadata.update(_nexus_descriptions(entry_group))
    return _make_pattern(p, x, y, axis=axis, wavelength=lam, metadata=metadata)


# -- crystal structures --------------------------------------------------------------------


def read_structure(path: PathLike) -> Structure:
    """Read a CIF (or any format pymatgen reads) as a pymatgen Structure.

    pymatgen warns about every CIF quirk (rounded occupancies, missing symmetry tags); those
    warnings would swamp a batch run, so they go to this module's DEBUG log instead.
    """
    p = _existing_file(path, StructureError)
    from pymatgen.core import Structure

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = Structure.from_file(str(p))
        except Exception as exc:  # pymatgen raises many types (ValueError, KeyError, IndexError...)
            problem = f"cannot read a crystal structure ({type(exc).__name__}: {exc})"
            raise _error(p, problem, StructureError) from exc
        finally:
            for warning in caught:
                log.debug("%s: pymatgen warned: %s", p, warning.message)
    if len(structure) == 0:
        raise _error(p, "the structure is empty (no atoms)", StructureError)
    return structure

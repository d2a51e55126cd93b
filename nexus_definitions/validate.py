"""Check a NeXus file against NXxrd_ml (or another NXDL file) with real validators.

Three checks, each reported separately:

* ``structure``: our own walk of the definition (parsed with lxml, its ``extends`` chain
  merged): every required group, field and attribute exists, enumerations hold, and every
  field whose definition gives a unit category (NX_PRESSURE, NX_ENERGY, ...) has a ``units``
  attribute of that kind (checked with pynxtools' unit registry). nexusformat does not check
  units, which is why this check exists.
* ``nexusformat``: `nexusformat.nexus.validate.validate_application` with the definition file
  (what ``nxcheck -a NXDL -e FILE`` runs) plus the base-class check (``nxcheck FILE``). nxcheck
  exits 0 even when it finds errors, so this module reads its log records instead.
* ``pynxtools``: `pynxtools.dataconverter.validation.validate_hdf_group_against`, told where
  the definition file is; it checks units and types as well.

A file whose writer is still running, or died, is marked "open for write"; it is checked as a
copy marked closed (the file itself is not changed) and the report says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nexus_definitions import layout as L
from nexus_definitions.writer import clear_consistency_flags
from xrd_nexus_ml.errors import XrdNexusMlError

log = logging.getLogger(__name__)

NS = "{http://definition.nexusformat.org/nxdl/3.1}"


class NexusValidationError(XrdNexusMlError, ValueError):
    """The validator itself could not run (missing file, unreadable definition)."""


@dataclass
class ValidationReport:
    """What the validators found. `ok` is True when no check reported an error."""

    path: str
    definition: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)  # check -> "ok", "N error(s)" or "not run: why"

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, check: str, severity: str, message: str) -> None:
        target = self.errors if severity == "error" else self.warnings
        text = f"[{check}] {message}"
        if text not in target:
            target.append(text)

    def to_dict(self) -> dict:
        return {"file": self.path, "definition": self.definition, "ok": self.ok, "checks": self.checks,
                "errors": self.errors, "warnings": self.warnings}

    def format(self, warnings: bool = True) -> str:
        lines = [f"{self.path}: {'valid' if self.ok else 'NOT valid'} against {self.definition}"]
        lines += [f"  {name}: {result}" for name, result in self.checks.items()]
        lines += [f"ERROR   {e}" for e in self.errors]
        if warnings:
            lines += [f"warning {w}" for w in self.warnings]
        return "\n".join(lines)


# -- the definition, merged along its `extends` chain ---------------------------------------------------


@dataclass
class Node:
    """One element of an NXDL definition (group, field, link or attribute) after merging."""

    kind: str  # "group", "field", "attribute"
    name: str | None  # None: an unnamed group, matched by its type
    type: str | None = None
    units: str | None = None
    need: str = "required"  # "required", "recommended", "optional"
    rank: int | None = None
    enumeration: list[str] | None = None
    link: bool = False
    variable: bool = False  # the name is a pattern (nameType any/partial): not checked by name
    children: dict[tuple[str, str], Node] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name if self.name is not None else self.type or "")

    def merged(self, child: Node) -> Node:
        """This (parent definition's) node overridden by a derived definition's node."""
        out = Node(self.kind, self.name, self.type, self.units, self.need, self.rank, self.enumeration, self.link,
                   self.variable, dict(self.children))
        for attr in ("type", "units", "rank", "enumeration"):
            value = getattr(child, attr)
            if value is not None:
                setattr(out, attr, value)
        out.need = child.need
        out.link = self.link or child.link
        for key, node in child.children.items():
            out.children[key] = out.children[key].merged(node) if key in out.children else node
        return out


def _need(element, default: str) -> str:
    if element.get("optional") == "true" or element.get("minOccurs") == "0":
        return "optional"
    if element.get("recommended") == "true":
        return "recommended"
    if element.get("optional") == "false" or (element.get("minOccurs") or "0") not in ("0", ""):
        return "required"
    return default


def _parse(element) -> Node:
    tag = element.tag.replace(NS, "")
    kind = {"link": "field"}.get(tag, tag)
    name = element.get("name")
    name_type = element.get("nameType", "specified" if name or kind != "group" else "any")
    node = Node(kind=kind, name=name, type=element.get("type"), units=element.get("units"),
                need=_need(element, "optional" if kind == "attribute" else "required"), link=tag == "link",
                variable=name_type != "specified")
    dims = element.find(f"{NS}dimensions")
    if dims is not None and (dims.get("rank") or "").isdigit():
        node.rank = int(dims.get("rank"))
    enum = element.find(f"{NS}enumeration")
    if enum is not None and enum.get("open") != "true":
        node.enumeration = [item.get("value") for item in enum.findall(f"{NS}item")]
    for child in element:
        if not isinstance(child.tag, str):
            continue
        if child.tag.replace(NS, "") in ("group", "field", "link", "attribute"):
            sub = _parse(child)
            node.children[sub.key] = node.children[sub.key].merged(sub) if sub.key in node.children else sub
    return node


def _find_nxdl(name: str) -> Path:
    base = L.definitions_dir()
    for folder in ("applications", "contributed_definitions", "base_classes"):
        candidate = base / folder / f"{name}.nxdl.xml"
        if candidate.is_file():
            return candidate
    raise NexusValidationError(f"definition {name!r} not found under {base}")


def load_definition(path: str | Path) -> tuple[str, Node]:
    """(name, merged root node) of an application definition file and everything it extends."""
    from lxml import etree

    path = Path(path)
    try:
        root = etree.parse(str(path)).getroot()
    except (OSError, etree.XMLSyntaxError) as exc:
        raise NexusValidationError(f"{path}: cannot read the NXDL file ({exc})") from None
    group = root.find(f"{NS}group")
    if group is None:
        raise NexusValidationError(f"{path}: the definition has no <group> element")
    node = Node("group", None, "NXroot")
    entry = _parse(group)
    node.children[entry.key] = entry
    extends = root.get("extends")
    if extends and extends != "NXobject":
        _, parent = load_definition(_find_nxdl(extends))
        node = parent.merged(node)
    return root.get("name"), node


def check_nxdl_schema(path: str | Path = L.NXDL_PATH) -> list[str]:
    """Errors of an NXDL file against the NeXus ``nxdl.xsd`` (empty when it validates)."""
    from lxml import etree

    xsd = L.definitions_dir() / "nxdl.xsd"
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    document = etree.parse(str(path))
    if schema.validate(document):
        return []
    return [f"{path}:{e.line}: {e.message}" for e in schema.error_log]


# -- our structural check -------------------------------------------------------------------


def units_match(category: str, unit: str) -> bool:
    """Does `unit` express a quantity of NXDL unit `category` (NX_PRESSURE, ...) or equal a literal unit?"""
    if not category.startswith("NX_"):
        return unit.replace(" ", "") == category.replace(" ", "")
    try:
        from pynxtools.units import NXUnitSet

        return bool(NXUnitSet.matches(category, unit))
    except ImportError:  # a small fallback for the units this package writes
        table = {"NX_PRESSURE": {"GPa", "MPa", "kPa", "Pa", "bar", "kbar"}, "NX_ENERGY": {"keV", "eV", "J"},
                 "NX_WAVELENGTH": {"angstrom", "nm", "m", "pm"}, "NX_ANGLE": {"deg", "degrees", "rad", "radian"},
                 "NX_TIME": {"s", "ms", "us", "ns", "min", "h"}, "NX_TEMPERATURE": {"K", "degC", "mK"},
                 "NX_WAVENUMBER": {"1/angstrom", "1/nm", "1/m"}, "NX_PER_LENGTH": {"1/angstrom", "1/nm", "1/m"},
                 "NX_DIMENSIONLESS": {"", "1"}}
        return category in ("NX_ANY", "NX_UNITLESS") or unit in table.get(category, {unit})


_TYPES = {
    "NX_FLOAT": lambda d: d.kind == "f",
    "NX_INT": lambda d: d.kind in "iu",
    "NX_POSINT": lambda d: d.kind in "iu",
    "NX_UINT": lambda d: d.kind == "u",
    "NX_NUMBER": lambda d: d.kind in "iufb",
    "NX_BOOLEAN": lambda d: d.kind in "biu",
    "NX_CHAR": lambda d: d.kind in "SUO",
    "NX_DATE_TIME": lambda d: d.kind in "SUO",
}


def _is_link(obj, expected_path: str) -> bool:
    target = obj.attrs.get("target")
    return target is not None and L.decode(target) != expected_path


def _check_group(report: ValidationReport, h5group, node: Node) -> None:
    import h5py

    where = h5group.name
    for _key, child in node.children.items():
        if child.kind == "attribute":
            if child.name not in h5group.attrs:
                if child.need != "optional":
                    report.add("structure", "error" if child.need == "required" else "warning",
                               f"{where}: {child.need} attribute @{child.name} is missing")
                continue
            if child.enumeration:
                value = h5group.attrs[child.name]
                text = L.decode(value) if not (isinstance(value, np.ndarray) and value.size > 1) else None
                if text is not None and text not in child.enumeration:
                    report.add("structure", "error", f"{where}/@{child.name} = {text!r}, expected one of "
                                                     f"{child.enumeration}")
            continue
        if child.variable and child.kind == "field":
            continue
        if child.kind == "group":
            if child.name is not None and not child.variable:
                matches = [h5group[child.name]] if child.name in h5group else []
                matches = [g for g in matches if isinstance(g, h5py.Group)]
                bad = [g for g in matches if L.decode(g.attrs.get("NX_class", b"")) != child.type]
                for g in bad:
                    found = L.decode(g.attrs.get("NX_class", b""))
                    report.add("structure", "error", f"{g.name}: NX_class is {found!r}, expected {child.type}")
            else:
                matches = [g for g in h5group.values() if isinstance(g, h5py.Group)
                           and L.decode(g.attrs.get("NX_class", b"")) == child.type]
            label = f"{child.type} group" + (f" '{child.name}'" if child.name and not child.variable else "")
            if not matches and child.need != "optional":
                report.add("structure", "error" if child.need == "required" else "warning",
                           f"{where}: {child.need} {label} is missing")
            for g in matches:
                _check_group(report, g, child)
            continue
        path = f"{where.rstrip('/')}/{child.name}"
        present = child.name in h5group or _dangling(h5group, child.name)
        link = h5group.get(child.name, getlink=True) if present else None
        if link is None:
            if child.need != "optional":
                units = f" (units of {child.units})" if child.units else ""
                report.add("structure", "error" if child.need == "required" else "warning",
                           f"{path}: {child.need} field is missing{units}")
            continue
        try:
            dataset = h5group[child.name]
        except (KeyError, OSError) as exc:
            report.add("structure", "error", f"{path}: link cannot be resolved ({exc})")
            continue
        if not isinstance(dataset, h5py.Dataset):
            report.add("structure", "error", f"{path}: is a group, expected a field")
            continue
        if child.link and not (isinstance(link, (h5py.SoftLink, h5py.ExternalLink)) or _is_link(dataset, path)):
            report.add("structure", "error", f"{path}: must be a link (NXDL <link>), found a plain dataset")
        _check_field(report, path, dataset, child)


def _dangling(group, name: str) -> bool:
    try:
        return group.get(name, getlink=True) is not None
    except (KeyError, OSError):
        return False


def _check_field(report: ValidationReport, path: str, dataset, node: Node) -> None:
    if node.type in _TYPES and not _TYPES[node.type](dataset.dtype):
        report.add("structure", "error", f"{path}: dtype {dataset.dtype} is not {node.type}")
    if node.type == "NX_DATE_TIME" and dataset.dtype.kind in "SUO":
        from datetime import datetime

        text = L.decode(dataset[()])
        try:
            datetime.fromisoformat(text)
        except ValueError:
            report.add("structure", "error", f"{path}: {text!r} is not an ISO 8601 date and time")
    if node.rank is not None and dataset.ndim != node.rank and not (node.rank == 1 and dataset.ndim == 0):
        report.add("structure", "warning", f"{path}: rank {dataset.ndim}, the definition gives rank {node.rank}")
    if node.enumeration and dataset.dtype.kind in "SUO" and dataset.ndim == 0:
        value = L.decode(dataset[()])
        if value not in node.enumeration:
            report.add("structure", "error", f"{path} = {value!r}, expected one of {node.enumeration}")
    units_node = node.children.get(("attribute", "units"))
    if node.units and node.units not in ("NX_UNITLESS",):
        if "units" not in dataset.attrs:
            report.add("structure", "error", f"{path}: no 'units' attribute; expected units of {node.units}")
        else:
            unit = L.decode(dataset.attrs["units"])
            if not units_match(node.units, unit):
                report.add("structure", "error", f"{path}: units {unit!r} are not {node.units} (e.g. "
                                                 f"{_example(node.units)})")
    if units_node is not None and units_node.enumeration and "units" in dataset.attrs:
        unit = L.decode(dataset.attrs["units"])
        if unit not in units_node.enumeration:
            report.add("structure", "error", f"{path}: units {unit!r}, the definition asks for one of "
                                             f"{units_node.enumeration}")
    for _key, child in node.children.items():
        if child.kind == "attribute" and child.name != "units" and child.need == "required" \
                and child.name not in dataset.attrs:
            report.add("structure", "error", f"{path}: required attribute @{child.name} is missing")


def _example(category: str) -> str:
    return {"NX_PRESSURE": "GPa", "NX_ENERGY": "keV", "NX_WAVELENGTH": "angstrom", "NX_ANGLE": "deg",
            "NX_TIME": "s", "NX_TEMPERATURE": "K", "NX_WAVENUMBER": "1/angstrom", "NX_DIMENSIONLESS": "''"}.get(
        category, category)


def check_structure(report: ValidationReport, h5file, entry: str, definition: Path) -> None:
    _, root = load_definition(definition)
    entry_node = next(n for n in root.children.values() if n.kind == "group")
    _check_group(report, h5file[entry], entry_node)


# -- nexusformat ---------------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str]] = []

    def emit(self, record):
        self.records.append((record.levelno, record.getMessage()))


@contextlib.contextmanager
def _captured(logger: logging.Logger, level: int):
    handler = _Capture()
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers = [handler]
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


_PATH = re.compile(r"(/[A-Za-z0-9_./\-\[\]]+)")


def _with_context(records: list[tuple[int, str]]) -> list[tuple[str, str]]:
    """nexusformat's (level, message) log as (severity, 'path: message'), the path from the nearest context line."""
    out, stack = [], []  # stack of (indent, path)
    for level, message in records:
        indent = len(message) - len(message.lstrip(" "))
        text = message.strip()
        if level >= logging.CRITICAL:  # context lines: "Field: /entry/x", "NXsample: /entry/sample", "Group: ..."
            while stack and stack[-1][0] >= indent:
                stack.pop()
            m = _PATH.search(text)
            stack.append((indent, m.group(1) if m else text))
            continue
        if level < logging.WARNING or text.startswith("Total number"):
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        context = stack[-1][1] if stack else ""
        out.append(("error" if level >= logging.ERROR else "warning", f"{context}: {text}" if context else text))
    return out


def check_nexusformat(report: ValidationReport, path: Path, entry: str, definition: Path) -> None:
    from nexusformat.nexus.validate import logger as nx_logger
    from nexusformat.nexus.validate import validate_application
    from nexusformat.nexus.validate import validate_file as nx_validate_file

    definitions = str(L.definitions_dir())
    n_errors = 0
    for label, run in (("application", lambda: validate_application(str(path), path=f"/{entry}",
                                                                     application=str(definition),
                                                                     definitions=definitions)),
                       ("base classes", lambda: nx_validate_file(str(path), definitions=definitions))):
        with _captured(nx_logger, logging.WARNING) as capture:
            try:
                result = run()
            except Exception as exc:  # nexusformat itself failed on this file: that is a finding, not a pass
                report.add("nexusformat", "error", f"{label} check failed: {type(exc).__name__}: {exc}")
                n_errors += 1
                continue
        if result is None:
            report.add("nexusformat", "error", f"{label} check did not run: "
                       + "; ".join(m for lv, m in capture.records if lv >= logging.ERROR))
            n_errors += 1
            continue
        for severity, message in _with_context(capture.records):
            if label == "base classes" and severity == "error" and "not defined in" in message:
                severity = "warning"
            report.add("nexusformat", severity, message)
            n_errors += severity == "error"
    report.checks["nexusformat"] = "ok" if n_errors == 0 else f"{n_errors} error(s)"


# -- pynxtools -------------------------------------------------------------------------------


def check_pynxtools(report: ValidationReport, path: Path, entry: str, definition: Path, name: str) -> None:
    # absolute before the chdir below: a relative path would then name another (missing) file
    path, definition = Path(path).resolve(), Path(definition).resolve()
    try:
        import h5py
        import pynxtools.nexus.utils as nexus_utils
        from pynxtools.dataconverter.helpers import collector
        from pynxtools.dataconverter.validation import validate_hdf_group_against
    except ImportError as exc:
        report.checks["pynxtools"] = f"not run: {exc}"
        return
    special = getattr(nexus_utils, "_NXDL_SPECIAL_NAMES", None)
    if special is None:
        report.checks["pynxtools"] = "not run: this pynxtools version cannot be given a definition file"
        return
    previous = special.get(name)
    special[name] = str(definition)  # pynxtools finds definitions by name; tell it where ours is
    cwd = os.getcwd()
    try:
        # pynxtools opens external-link files relative to the working directory, HDF5 relative to
        # the linking file: run it from the file's folder so both find the same files
        os.chdir(path.parent)
        with _captured(logging.getLogger("pynxtools"), logging.INFO) as capture, h5py.File(path, "r") as f:
            valid = validate_hdf_group_against(name, f[entry], str(path))
        problems = sorted(collector.data.get("warning_and_error", set())) if hasattr(collector, "data") else []
    except Exception as exc:  # a validator crash is reported, never taken for success
        report.add("pynxtools", "error", f"validator failed: {type(exc).__name__}: {exc}")
        report.checks["pynxtools"] = "failed to run"
        return
    finally:
        os.chdir(cwd)
        if previous is None:
            special.pop(name, None)
        else:
            special[name] = previous
    messages = [m for level, m in capture.records if level >= logging.WARNING]
    for message in messages:
        report.add("pynxtools", "error", message.replace("ERROR: ", "").replace("WARNING: ", ""))
    if not valid and not messages:
        for p in problems:
            report.add("pynxtools", "error", p)
    report.checks["pynxtools"] = "ok" if valid else f"{max(len(messages), len(problems))} problem(s)"


# -- entry point -----------------------------------------------------------------------------


@contextlib.contextmanager
def _readable_copy(path: Path, report: ValidationReport):
    """The path itself, or a temporary copy marked closed when a writer still has (or had) it open."""
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
        yield path
        return
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise NexusValidationError(f"{path}: not a readable HDF5/NeXus file ({exc})") from None

    report.add("file", "warning", f"{path} is still open for writing, or its writer died before closing it; "
                                  "checked a copy marked closed (run `xrd-nexus-ml nexus recover` to mark the file)")
    # the copy sits next to the file when it can, so that relative external links still resolve
    for folder in (path.resolve().parent, None):
        try:
            tmp = tempfile.TemporaryDirectory(prefix=".nxcheck-", dir=folder)
            break
        except OSError:
            continue
    with tmp as name:
        copy = Path(name) / path.name
        shutil.copy2(path, copy)
        clear_consistency_flags(copy)
        yield copy


def validate_file(path, definition: str | Path = L.NXDL_PATH, *, entry: str | None = None,
                  pynxtools: bool = True) -> ValidationReport:
    """Check `path` against the application definition file `definition` (default NXxrd_ml).

    Both paths are made absolute first (the pynxtools check runs from the file's folder); the
    report names the file as it was given."""
    import h5py

    given = str(path)
    path = Path(path)
    definition = Path(definition)
    if not path.is_file():
        raise NexusValidationError(f"{path}: no such file")
    if not definition.is_file():
        raise NexusValidationError(f"{definition}: no such NXDL file")
    path, definition = path.resolve(), definition.resolve()
    name, _ = load_definition(definition)
    report = ValidationReport(given, name)
    for problem in check_nxdl_schema(definition):
        report.add("nxdl", "error", f"the definition does not validate against nxdl.xsd: {problem}")
    with _readable_copy(path, report) as readable:
        with h5py.File(readable, "r") as f:
            entries = [k for k, g in f.items() if isinstance(g, h5py.Group)
                       and L.decode(g.attrs.get("NX_class", b"")) == "NXentry"]
            if entry is None:
                if not entries:
                    raise NexusValidationError(f"{given}: no NXentry group at the top of the file")
                entry = entries[0]
            elif entry.strip("/") not in f:
                raise NexusValidationError(f"{given}: no entry /{entry.strip('/')}")
            entry = entry.strip("/")
            declared = L.decode(f[entry]["definition"][()]) if "definition" in f[entry] else None
            if declared != name:
                report.add("structure", "error", f"/{entry}/definition is {declared!r}, expected {name!r}")
            before = len(report.errors)
            check_structure(report, f, entry, definition)
            n = len(report.errors) - before
            report.checks["structure"] = "ok" if n == 0 else f"{n} error(s)"
        check_nexusformat(report, readable, entry, definition)
        if pynxtools:
            check_pynxtools(report, readable, entry, definition, name)
        else:
            report.checks["pynxtools"] = "not run: disabled"
    return report

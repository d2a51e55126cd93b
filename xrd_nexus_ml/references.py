"""Reference structures the package knows without a user's files.

- The four NIST powder calibrants pyFAI ships d-spacing lists for (Si, CeO2, LaB6, α-Al2O3),
  with the cells of those lists, so simulated peak positions can be checked against them.
- The common phases of diffraction labs and beamlines (elements, oxides, carbonates, halides,
  sample-environment phases, ...): literature cells and asymmetric units with their sources, in
  `data/references/common_phases.json`, so the default library knows what a lab meets every day.
- pymatgen's bundled AFLOW library of 288 crystal prototypes (one structure type each).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

from pymatgen.core import Composition, Lattice, Structure

from xrd_nexus_ml.errors import XrdNexusMlError


@dataclass(frozen=True)
class CalibrantCell:
    """A calibrant's structure: space group, cell and asymmetric unit (standard setting)."""

    pyfai_name: str
    space_group: str
    lattice: tuple[float, ...]  # a (cubic) or a, c (hexagonal axes)
    species: tuple[str, ...]
    coords: tuple[tuple[float, float, float], ...]


#: Cells as in pyFAI's calibrant files (NIST SRM 640c, 674b, 660c; corundum as in pyFAI's
#: alpha_Al2O3.D); atomic positions from the textbook structures (Al2O3: Lewis et al. 1982).
CALIBRANTS: dict[str, CalibrantCell] = {
    "Si": CalibrantCell("Si", "Fd-3m", (5.4312,), ("Si",), ((0.0, 0.0, 0.0),)),
    "CeO2": CalibrantCell("CeO2", "Fm-3m", (5.411651,), ("Ce", "O"), ((0, 0, 0), (0.25, 0.25, 0.25))),
    "LaB6": CalibrantCell("LaB6", "Pm-3m", (4.1568,), ("La", "B"), ((0, 0, 0), (0.1975, 0.5, 0.5))),
    "Al2O3": CalibrantCell(
        "alpha_Al2O3", "R-3c", (4.7570, 12.9877), ("Al", "O"), ((0, 0, 0.35216), (0.30624, 0, 0.25))
    ),
}


def calibrant_structure(name: str) -> Structure:
    """The structure of calibrant `name` (a key of CALIBRANTS)."""
    try:
        cell = CALIBRANTS[name]
    except KeyError:
        raise KeyError(f"unknown calibrant {name!r}; known: {', '.join(CALIBRANTS)}") from None
    if len(cell.lattice) == 1:
        lattice = Lattice.cubic(cell.lattice[0])
    else:
        lattice = Lattice.hexagonal(*cell.lattice)
    return Structure.from_spacegroup(cell.space_group, lattice, list(cell.species), [list(c) for c in cell.coords])


@cache
def aflow_prototypes() -> tuple[tuple[str, Structure], ...]:
    """(AFLOW label, structure) of the 288 prototypes bundled with pymatgen (loads in a few s)."""
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

    return tuple((entry["tags"]["aflow"], entry["snl"].structure) for entry in AFLOW_PROTOTYPE_LIBRARY)


# -- common phases from the literature ----------------------------------------------------------

#: The shipped data file of common phases (JSON; see docs/identification.md for what it holds).
COMMON_PHASES_FILE = Path(__file__).resolve().parent / "data" / "references" / "common_phases.json"

#: The categories an entry may name; a closed list, so a typo fails instead of making a new one.
CATEGORIES = ("element", "sample-environment", "nist-srm", "oxide", "carbonate", "hydroxide", "halide",
              "chalcogenide", "sulfate", "phosphate", "carbide-nitride")

_REQUIRED = ("name", "formula", "category", "space_group", "space_group_number", "lattice", "sites", "conditions",
             "source")
_OPTIONAL = ("density", "roles", "note")
_LATTICE = ("a", "b", "c", "alpha", "beta", "gamma")


class ReferenceDataError(XrdNexusMlError, ValueError):
    """An entry of a reference data file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class CommonPhase:
    """One literature phase: its structure and what the file says about it."""

    name: str
    formula: str
    category: str
    structure: Structure
    source: str  # the literature reference of cell and positions
    conditions: str  # 'ambient ...' or the pressure/temperature the cell is given at
    density: float | None = None  # literature density, g/cm3, where recorded
    roles: tuple[str, ...] = ()  # 'pressure standard', 'gasket', ...
    note: str = ""


def _number(value: Any, what: str) -> float:
    """A float from a JSON number or a fraction string ('1/3': exact, unlike 0.333333)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} must be a number or a fraction string like '1/3', got {value!r}")
    try:
        return float(Fraction(value)) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{what} must be a number or a fraction string like '1/3', got {value!r}") from None


@cache
def _space_group(symbol: str):
    """pymatgen's SpaceGroup, held: building one takes 0.3 s and pymatgen's own cache lets it go."""
    from pymatgen.symmetry.groups import SpaceGroup

    return SpaceGroup(symbol)


def _phase_from_entry(entry: Any) -> CommonPhase:
    """The CommonPhase of one JSON entry; ValueError/TypeError say what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError(f"an entry must be an object, got {type(entry).__name__}")
    missing = [k for k in _REQUIRED if k not in entry]
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise ValueError(f"missing keys {missing}, unknown keys {unknown} (known: {', '.join(_REQUIRED + _OPTIONAL)})")
    for key in ("name", "formula", "space_group", "conditions", "source"):
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string, got {entry[key]!r}")
    if entry["category"] not in CATEGORIES:
        raise ValueError(f"category {entry['category']!r} is none of {', '.join(CATEGORIES)}")
    try:
        group = _space_group(entry["space_group"])
    except Exception:
        raise ValueError(f"space group {entry['space_group']!r} is no Hermann-Mauguin symbol pymatgen knows") from None
    if group.int_number != entry["space_group_number"]:
        raise ValueError(f"space group {entry['space_group']!r} is number {group.int_number}, "
                         f"the entry says {entry['space_group_number']!r}")
    lattice = entry["lattice"]
    if not isinstance(lattice, dict) or sorted(lattice) != sorted(_LATTICE):
        raise ValueError(f"'lattice' must give exactly {', '.join(_LATTICE)}, got {lattice!r}")
    params = [_number(lattice[k], f"lattice {k}") for k in _LATTICE]
    if not all(0 < p for p in params) or not all(p < 180 for p in params[3:]):
        raise ValueError(f"lattice lengths must be > 0 and angles in (0, 180), got {lattice!r}")
    sites = entry["sites"]
    if not isinstance(sites, list) or not sites:
        raise ValueError("'sites' must be a non-empty list")
    species, coords = [], []
    for i, site in enumerate(sites):
        if not isinstance(site, dict) or not {"species", "xyz"} <= set(site) <= {"species", "xyz", "occupancy"}:
            raise ValueError(f"site {i} must be an object with 'species', 'xyz' and optionally 'occupancy'")
        xyz = site["xyz"]
        if not isinstance(xyz, list) or len(xyz) != 3:
            raise ValueError(f"site {i}: 'xyz' must be 3 fractional coordinates, got {xyz!r}")
        coords.append([_number(v, f"site {i} xyz") for v in xyz])
        occupancy = _number(site.get("occupancy", 1.0), f"site {i} occupancy")
        if not 0 < occupancy <= 1:
            raise ValueError(f"site {i}: occupancy must lie in (0, 1], got {occupancy}")
        species.append(Composition({site["species"]: occupancy}) if occupancy < 1 else site["species"])
    structure = Structure.from_spacegroup(
        entry["space_group"], Lattice.from_parameters(*params), species, coords
    )
    stated = Composition(entry["formula"]).fractional_composition  # fractions: 'Fe0.9O' has no reduced integers
    if not structure.composition.fractional_composition.almost_equals(stated):
        raise ValueError(f"the sites make {structure.composition.reduced_formula}, the entry says {entry['formula']}")
    density = entry.get("density")
    if density is not None and (isinstance(density, bool) or not isinstance(density, int | float) or density <= 0):
        raise ValueError(f"'density' must be a positive number (g/cm3), got {density!r}")
    roles = entry.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ValueError(f"'roles' must be a list of strings, got {roles!r}")
    return CommonPhase(entry["name"], entry["formula"], entry["category"], structure, entry["source"],
                       entry["conditions"], None if density is None else float(density), tuple(roles),
                       entry.get("note", ""))


def load_common_phases(path: str | os.PathLike[str] = COMMON_PHASES_FILE) -> tuple[CommonPhase, ...]:
    """The phases of a common-phases JSON file, in file order; ReferenceDataError names file and entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReferenceDataError(f"{path}: cannot read a JSON file of phases ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("phases"), list):
        raise ReferenceDataError(f"{path}: expected an object with a 'phases' list")
    phases: list[CommonPhase] = []
    names: set[str] = set()
    for i, entry in enumerate(data["phases"]):
        label = f"{path}: phase {i}" + (f" ({entry['name']!r})" if isinstance(entry, dict) and "name" in entry else "")
        try:
            phase = _phase_from_entry(entry)
        except Exception as exc:  # pymatgen raises ValueError, KeyError, ... for bad species or cells
            raise ReferenceDataError(f"{label}: {exc}") from None
        if phase.name in names:
            raise ReferenceDataError(f"{label}: the name is used by an earlier phase")
        names.add(phase.name)
        phases.append(phase)
    return tuple(phases)


@cache
def common_phases() -> tuple[tuple[str, Structure, str], ...]:
    """(name, structure, 'literature:<source>') of the shipped common phases, in file order."""
    return tuple((p.name, p.structure, f"literature:{p.source}") for p in load_common_phases())

"""Reference structures the package knows without a user's files.

- The four NIST powder calibrants pyFAI ships d-spacing lists for (Si, CeO2, LaB6, α-Al2O3),
  with the cells of those lists, so simulated peak positions can be checked against them.
- pymatgen's bundled AFLOW library of 288 crystal prototypes (one structure type each).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from pymatgen.core import Lattice, Structure


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

"""Reference phase libraries for material identification by a mixture of element experts.

A library is a list of reference structures (CIFs, pymatgen's AFLOW prototypes, calibrants).
Identification is judged at the level of chemical *composition*: every phase gets a class
label from `canonical_formula`, polymorphs share a class and the space group is a secondary
label. `PhaseLibrary.experts` splits the classes among one expert per chemical element (the
mixture-of-experts identifier of Adachi et al.), with each class's chemical system as its
coarse label inside an expert.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Composition, Element, Structure

from xrd_nexus_ml.errors import StructureError, XrdNexusMlError
from xrd_nexus_ml.io.readers import read_structure
from xrd_nexus_ml.references import CALIBRANTS, aflow_prototypes, calibrant_structure, common_phases

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Elements that get no expert of their own: they occur in too many classes (oxides,
#: hydroxides, hydrates) for an expert of theirs to narrow anything down.
DEFAULT_EXCLUDED = ("H", "O")

#: symprec values tried in turn for the space group; the first is the one used for labels.
SYMPRECS = (0.1, 0.01, 0.3)


class LibraryError(XrdNexusMlError, ValueError):
    """A reference library, a truth label or a phase name cannot be used as given."""


# -- class labels ------------------------------------------------------------------------------

#: Separators of the parts of an adduct formula ('LiOH-H2O', 'LiOH·H2O', 'CuSO4*5H2O').
_ADDUCT_SPLIT = re.compile(r"\s*[-·•*]\s*|\.(?=[A-Z(\[])")
_PART_MULTIPLIER = re.compile(r"^(\d+(?:\.\d+)?)\s*(?=[A-Z(\[])")
_MAX_DENOMINATOR = 24


def _parse_formula(text: str) -> Composition:
    """A formula string as a Composition; '-', '·', '*' and '.' before a letter join adduct parts."""
    stripped = text.strip()
    if not stripped:
        raise LibraryError(f"{text!r} is not a chemical formula (it is empty)")
    total = Composition()
    for part in _ADDUCT_SPLIT.split(stripped):
        if not part:
            raise LibraryError(f"{text!r} is not a chemical formula (empty part between separators)")
        factor = 1.0
        if m := _PART_MULTIPLIER.match(part):  # '5H2O' in 'CuSO4·5H2O'
            factor, part = float(m.group(1)), part[m.end():]
        try:
            comp = Composition(part, strict=True)  # strict: 'Xx' is no dummy species here
        except Exception as exc:  # pymatgen raises ValueError, KeyError, ... for bad formulas
            raise LibraryError(f"{text!r} is not a chemical formula ({type(exc).__name__}: {exc})") from None
        total += comp * factor
    return total


def _integer_amounts(comp: Composition) -> dict[str, int] | None:
    """Small-integer amounts proportional to `comp`, or None if some amount is not near a fraction.

    Partial occupancies make amounts like 55.992 Li or 1.3333 Mn; each amount is taken as the
    nearest fraction with denominator <= 24 when within 0.2 % of it (CIF occupancies carry 3-4
    digits), then all are scaled by the common denominator.
    """
    fractions: dict[str, Fraction] = {}
    for element, amount in comp.items():
        frac = Fraction(amount).limit_denominator(_MAX_DENOMINATOR)
        if abs(float(frac) - amount) > 2e-3 * max(amount, 1.0) or frac <= 0:
            return None
        fractions[str(element)] = frac
    lcm = math.lcm(*(f.denominator for f in fractions.values()))
    return {e: int(f * lcm) for e, f in fractions.items()}


def canonical_formula(formula_or_composition: str | Composition | Mapping | Structure | Any) -> str:
    """The class label that decides identity at formula level, for references and truth alike.

    Rule: the element amounts (oxidation states dropped) are scaled to the smallest integers
    and written by pymatgen's `Composition.reduced_formula`. The label therefore depends only
    on the element ratios, never on how the formula was written: 'LiO', 'Li2O2' and a Li4O4 cell
    all give 'Li2O2'. Mind pymatgen's conventions, which the labels inherit: a few reduced
    compositions are written as molecules or peroxides ('O' -> 'O2', 'H' -> 'H2', 'HO' ->
    'H2O2', 'LiO' -> 'Li2O2', 'NaO' -> 'Na2O2'), elements are ordered by electronegativity
    ('LiOH' -> 'LiHO') and the last two elements are bracketed as a polyanion when pymatgen's
    electronegativity rule says so ('Li2TiO2F6' -> 'Li2Ti(OF3)2', 'La(OH)3' -> 'La(HO)3',
    'LiCo2O4' -> 'Li(CoO2)2', but 'LiMn2O4' stays). The AutoAnalyzer CIF names follow the same
    conventions ('Li2Ti(OF3)2_12.cif'). Strings may join adduct parts with '-', '·', '*' or '.' before a
    capital letter, with an optional leading count: 'LiOH-H2O' and 'LiOH·H2O' -> 'LiH3O2'
    ('.' before a digit is a decimal point: write 'CuSO4·5H2O', not 'CuSO4.5H2O').
    Amounts from partial occupancies are rounded to the nearest fraction (denominator <= 24).

    Accepts a formula string, a pymatgen Composition, a {element: amount} mapping or anything
    with a `.composition` (a Structure). Raises LibraryError for what is not a formula.
    """
    source = formula_or_composition
    if isinstance(source, str):
        comp = _parse_formula(source)
    elif isinstance(source, Composition):
        comp = source
    elif hasattr(source, "composition"):
        comp = source.composition
    elif isinstance(source, Mapping):
        try:
            comp = Composition(source)
        except Exception as exc:
            raise LibraryError(f"{source!r} is not a composition ({type(exc).__name__}: {exc})") from None
    else:
        raise LibraryError(f"cannot read a chemical formula from {type(source).__name__} {source!r}")
    try:
        comp = comp.element_composition
    except Exception as exc:  # dummy species (vacancies 'X') have no element
        raise LibraryError(f"{source!r} has species that are not chemical elements ({exc})") from None
    if not all(isinstance(e, Element) for e in comp.elements):
        raise LibraryError(f"{source!r} has species that are not chemical elements: {comp.formula}")
    if comp.num_atoms <= 0:
        raise LibraryError(f"{source!r} contains no atoms")
    amounts = _integer_amounts(comp)
    if amounts is None:  # irrational-looking occupancies: keep the rounded ratios as they are
        return Composition({e: round(a, 3) for e, a in comp.items()}).reduced_formula
    return Composition(amounts).reduced_formula


def formula_elements(formula: str) -> tuple[str, ...]:
    """The elements of a class label, sorted by symbol."""
    return tuple(sorted(str(e) for e in _parse_formula(formula).elements))


def chemical_system(elements: Iterable[str]) -> str:
    """'Li-Mn-O': the sorted element symbols joined by '-' (the coarse label of a class)."""
    return "-".join(sorted(set(elements)))


def _check_elements(elements: Iterable[str]) -> set[str]:
    """The given symbols as a set; LibraryError names one that is not a chemical element."""
    if isinstance(elements, str):
        elements = [elements]
    found = set()
    for symbol in elements:
        if not isinstance(symbol, str) or not Element.is_valid_symbol(symbol):
            raise LibraryError(f"{symbol!r} is not a chemical element symbol (expected e.g. 'Li', 'Mn', 'O')")
        found.add(symbol)
    return found


# -- phases ------------------------------------------------------------------------------------


def _space_group(structure: Structure, name: str) -> tuple[int, str]:
    """(number, Hermann-Mauguin symbol) by spglib at symprec 0.1, then 0.01, 0.3, then P1."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    for symprec in SYMPRECS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
                number, symbol = analyzer.get_space_group_number(), analyzer.get_space_group_symbol()
        except Exception as exc:  # spglib gives up on overlapping atoms or a degenerate cell
            log.debug("%s: spglib failed at symprec %g: %s", name, symprec, exc)
            continue
        if number:
            if symprec != SYMPRECS[0]:
                log.warning("%s: space group found only with symprec %g (not %g)", name, symprec, SYMPRECS[0])
            return int(number), str(symbol)
    log.warning("%s: spglib found no space group at symprec %s; labelled P1", name, SYMPRECS)
    return 1, "P1"


@dataclass(frozen=True)
class ReferencePhase:
    """One reference structure with its class label (formula) and secondary label (space group)."""

    name: str
    formula: str
    space_group_number: int
    space_group_symbol: str
    elements: tuple[str, ...]
    source: str
    structure: Structure = field(compare=False, hash=False, repr=False)

    @classmethod
    def from_structure(cls, name: str, structure: Structure, source: str) -> ReferencePhase:
        """Label `structure`: formula by `canonical_formula`, space group by spglib."""
        if len(structure) == 0:
            raise LibraryError(f"{source}: the structure {name!r} has no atoms")
        try:
            formula = canonical_formula(structure)
        except LibraryError as exc:
            raise LibraryError(f"{source}: {exc}") from None
        number, symbol = _space_group(structure, name)
        elements = tuple(sorted(str(e) for e in structure.composition.element_composition.elements))
        return cls(name, formula, number, symbol, elements, str(source), structure)

    @property
    def is_ordered(self) -> bool:
        """False for a structure with partial occupancies (kept: its composition is still defined)."""
        return bool(self.structure.is_ordered)


def _round(value: float, digits: int) -> float:
    """Rounded, with -0.0 made 0.0 so that the text of a number is unique."""
    return round(float(value), digits) + 0.0


def _phase_record(phase: ReferencePhase) -> str:
    """A canonical text of a phase's physics (not its name or file) for `content_hash`."""
    s = phase.structure
    lattice = [_round(x, 4) for x in s.lattice.abc] + [_round(x, 3) for x in s.lattice.angles]
    sites = []
    for site in s:
        species = ",".join(f"{el}:{_round(occ, 4)}" for el, occ in sorted(
            (str(getattr(sp, "element", sp)), occ) for sp, occ in site.species.items()))
        coords = [_round(_round(c, 4) % 1.0, 4) for c in site.frac_coords]  # 0.99999 and -1e-6 -> 0.0
        sites.append((species, coords))
    sites.sort()
    return json.dumps([phase.formula, phase.space_group_number, lattice, sites], separators=(",", ":"))


# -- experts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertPlan:
    """Which classes each element expert holds, and their coarse (chemical-system) labels.

    `expert_classes[k]` are global class ids (indices into `classes`) of expert `elements[k]`;
    `expert_coarse[k][j]` is the coarse id of `expert_classes[k][j]`, an index into
    `coarse_names[k]` (that expert's chemical systems, sorted).
    """

    elements: tuple[str, ...]
    expert_classes: tuple[tuple[int, ...], ...]
    expert_coarse: tuple[tuple[int, ...], ...]
    coarse_names: tuple[tuple[str, ...], ...]
    classes: tuple[str, ...] = ()
    excluded: tuple[str, ...] = DEFAULT_EXCLUDED

    def __len__(self) -> int:
        return len(self.elements)

    def experts_for_elements(self, elements: Iterable[str]) -> np.ndarray:
        """Bool (n_experts,): the experts whose element is among `elements`.

        Experts of excluded elements exist only for classes made of excluded elements alone
        (O2, H2O), so {'O'} selects the O expert if there is one and {'Li', 'O'} selects both
        the Li and the O experts (O2 lies within Li-O)."""
        given = _check_elements(elements)
        return np.array([e in given for e in self.elements], dtype=bool)

    def class_experts(self, class_id: int) -> tuple[int, ...]:
        """The experts (indices) that hold class `class_id`."""
        return tuple(k for k, ids in enumerate(self.expert_classes) if class_id in ids)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists of lists), read back by `from_dict`."""
        return {
            "elements": list(self.elements),
            "expert_classes": [list(c) for c in self.expert_classes],
            "expert_coarse": [list(c) for c in self.expert_coarse],
            "coarse_names": [list(c) for c in self.coarse_names],
            "classes": list(self.classes),
            "excluded": list(self.excluded),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExpertPlan:
        """The plan `to_dict` wrote; LibraryError on a missing key or inconsistent lengths."""
        try:
            plan = cls(
                elements=tuple(str(e) for e in data["elements"]),
                expert_classes=tuple(tuple(int(i) for i in c) for c in data["expert_classes"]),
                expert_coarse=tuple(tuple(int(i) for i in c) for c in data["expert_coarse"]),
                coarse_names=tuple(tuple(str(n) for n in c) for c in data["coarse_names"]),
                classes=tuple(str(c) for c in data.get("classes", ())),
                excluded=tuple(str(e) for e in data.get("excluded", DEFAULT_EXCLUDED)),
            )
        except KeyError as exc:
            raise LibraryError(f"expert plan: missing key {exc.args[0]!r}") from None
        n = len(plan.elements)
        if not (len(plan.expert_classes) == len(plan.expert_coarse) == len(plan.coarse_names) == n):
            raise LibraryError("expert plan: elements, expert_classes, expert_coarse and coarse_names differ in length")
        for k, (ids, coarse, names) in enumerate(zip(plan.expert_classes, plan.expert_coarse, plan.coarse_names)):
            if len(ids) != len(coarse) or any(not 0 <= c < len(names) for c in coarse):
                raise LibraryError(f"expert plan: expert {plan.elements[k]!r} has inconsistent coarse ids")
        return plan


# -- the library -------------------------------------------------------------------------------


@dataclass
class PhaseLibrary:
    """Reference phases with their composition classes; `duplicates` are (kept, dropped) names."""

    phases: list[ReferencePhase]
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.phases)

    @property
    def names(self) -> list[str]:
        """Phase names in library order."""
        return [p.name for p in self.phases]

    @property
    def classes(self) -> list[str]:
        """Sorted unique class labels (formulas); a class id is an index into this list."""
        return sorted({p.formula for p in self.phases})

    def class_index(self, formula: str) -> int:
        """Class id of `formula` (canonicalised first); LibraryError if not in the library."""
        label = canonical_formula(formula)
        classes = self.classes
        try:
            return classes.index(label)
        except ValueError:
            raise LibraryError(f"{formula!r} (class {label!r}) is not in the library") from None

    @property
    def phase_classes(self) -> np.ndarray:
        """Class id of each phase, (n_phases,) int."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup[p.formula] for p in self.phases], dtype=np.int64)

    def class_elements(self, i: int) -> tuple[str, ...]:
        """Elements of class `i`, sorted by symbol."""
        return formula_elements(self.classes[i])

    def chemical_system(self, i: int) -> str:
        """Chemical system of class `i` ('Li-Mn-O'): its coarse label inside an expert."""
        return chemical_system(self.class_elements(i))

    def classes_within(self, elements: Iterable[str]) -> np.ndarray:
        """Bool (n_classes,): classes all of whose elements are among `elements`."""
        given = _check_elements(elements)
        return np.array([set(self.class_elements(i)) <= given for i in range(len(self.classes))], dtype=bool)

    def experts(self, exclude: Iterable[str] = DEFAULT_EXCLUDED) -> ExpertPlan:
        """One expert per element, holding every class that contains it.

        Elements in `exclude` get no expert, except that a class made of excluded elements
        only (O2, H2O) goes to the experts of its elements, so that every class has an expert.
        """
        excluded = _check_elements(exclude)
        holders: dict[str, list[int]] = {}
        for i in range(len(self.classes)):
            elements = self.class_elements(i)
            kept = [e for e in elements if e not in excluded] or list(elements)
            for e in kept:
                holders.setdefault(e, []).append(i)
        experts = sorted(holders)
        expert_coarse, coarse_names = [], []
        for e in experts:
            systems = [self.chemical_system(i) for i in holders[e]]
            names = sorted(set(systems))
            expert_coarse.append(tuple(names.index(s) for s in systems))
            coarse_names.append(tuple(names))
        return ExpertPlan(
            elements=tuple(experts),
            expert_classes=tuple(tuple(holders[e]) for e in experts),
            expert_coarse=tuple(expert_coarse),
            coarse_names=tuple(coarse_names),
            classes=tuple(self.classes),
            excluded=tuple(sorted(excluded)),
        )

    def content_hash(self) -> str:
        """sha256 of the phases' physics (formula, space group, cell, sites), order-independent.

        Names and file paths do not enter: renaming or moving the CIFs keeps the hash, while a
        changed atom position (beyond 1e-4 fractional) or cell (1e-4 Å) changes it."""
        digest = hashlib.sha256()
        for record in sorted(_phase_record(p) for p in self.phases):
            digest.update(record.encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def subset(self, indices: Iterable[int] | np.ndarray) -> PhaseLibrary:
        """The library of the phases at `indices` (or a bool mask); class ids are recomputed from them."""
        arr = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices))
        if arr.dtype == bool:  # a mask over the phases
            if arr.shape != (len(self.phases),):
                raise LibraryError(f"a phase mask needs {len(self.phases)} values, got shape {arr.shape}")
            arr = np.flatnonzero(arr)
        idx = [int(i) for i in arr.astype(np.int64).ravel()]
        for i in idx:
            if not -len(self.phases) <= i < len(self.phases):
                raise LibraryError(f"phase index {i} is out of range for a library of {len(self.phases)} phases")
        phases = [self.phases[i] for i in idx]
        kept = {p.name for p in phases}
        return PhaseLibrary(phases, [d for d in self.duplicates if d[0] in kept])

    def summary(self) -> str:
        """One line: phases, classes, experts, duplicates dropped."""
        return (f"{len(self.phases)} phases, {len(self.classes)} classes, {len(self.experts())} experts, "
                f"{len(self.duplicates)} duplicates dropped")


# -- building libraries ------------------------------------------------------------------------


def library_from_structures(
    items: Iterable[tuple[str, Structure, str]], deduplicate: bool = True
) -> PhaseLibrary:
    """A library of (name, structure, source) items, in the order given.

    With `deduplicate`, a structure that pymatgen's StructureMatcher (default tolerances)
    matches with an earlier one of the same formula is dropped and recorded in `duplicates`
    as (kept name, dropped name): the first given wins. Names must be unique.
    """
    phases: list[ReferencePhase] = []
    duplicates: list[tuple[str, str]] = []
    by_formula: dict[str, list[ReferencePhase]] = {}
    seen: dict[str, str] = {}
    matcher = None
    for name, structure, source in items:
        if name in seen:
            raise LibraryError(f"{source}: phase name {name!r} is already used by {seen[name]}")
        seen[name] = str(source)
        phase = ReferencePhase.from_structure(name, structure, source)
        if not phase.is_ordered:
            log.info("%s: partial occupancies; kept as %s", source, phase.formula)
        if deduplicate:
            if matcher is None:
                from pymatgen.analysis.structure_matcher import StructureMatcher

                matcher = StructureMatcher()
            twin = next((p for p in by_formula.get(phase.formula, []) if _matches(matcher, p, phase)), None)
            if twin is not None:
                log.info("%s: same structure as %s; dropped", source, twin.name)
                duplicates.append((twin.name, phase.name))
                continue
        phases.append(phase)
        by_formula.setdefault(phase.formula, []).append(phase)
    return PhaseLibrary(phases, duplicates)


def _matches(matcher, a: ReferencePhase, b: ReferencePhase) -> bool:
    """StructureMatcher.fit, with its failures (it can raise on odd disorder) taken as 'different'."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(matcher.fit(a.structure, b.structure))
    except Exception as exc:
        log.warning("StructureMatcher failed on %s vs %s (%s); kept both", a.name, b.name, exc)
        return False


def cif_files(cif_dir: PathLike) -> list[Path]:
    """The *.cif files (any case) directly in `cif_dir`, sorted by name; LibraryError if none."""
    folder = Path(cif_dir)
    if not folder.exists():
        raise LibraryError(f"{folder}: reference folder not found")
    if not folder.is_dir():
        raise LibraryError(f"{folder}: is a file; expected a folder of *.cif files")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".cif"),
                   key=lambda p: p.name)
    if not files:
        raise LibraryError(f"{folder}: no *.cif files found (expected one CIF per reference phase)")
    return files


def load_cif_library(cif_dir: PathLike, deduplicate: bool = True) -> PhaseLibrary:
    """The library of the CIFs in `cif_dir` (not recursive); each phase is named by its file stem.

    Structures with partial occupancies are kept (their composition is defined; the class
    label rounds it, see `canonical_formula`). With `deduplicate`, identical structures under
    different names are dropped but the first by file name (see `library_from_structures`).
    """
    files = cif_files(cif_dir)
    items = []
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise LibraryError(f"{path}: same name {path.stem!r} as {stems[path.stem].name}")
        stems[path.stem] = path
        try:
            structure = read_structure(path)
        except StructureError as exc:  # its message starts with the file
            raise LibraryError(f"{exc} (expected a CIF with a cell and atom sites)") from None
        items.append((path.stem, structure, str(path)))
    library = library_from_structures(items, deduplicate=deduplicate)
    for name, what, from_name, from_structure in name_mismatches(library):
        log.warning("%s: the name says %s %s but the structure has %s", name, what, from_name, from_structure)
    return library


_SG_SUFFIX = re.compile(r"^(?P<formula>.+?)_(?P<sg>\d{1,3})$")


def formula_from_name(name: str) -> tuple[str | None, int | None]:
    """(class label, space group number) a name like 'MnO2_136' states; None where it states none."""
    stem = name.strip()
    number = None
    if m := _SG_SUFFIX.match(stem):
        stem, number = m["formula"], int(m["sg"])
        if not 1 <= number <= 230:
            number = None
    try:
        return canonical_formula(stem), number
    except LibraryError:
        return None, number


def name_mismatches(library: PhaseLibrary) -> list[tuple[str, str, str, str]]:
    """(name, 'formula' | 'space group', from name, from structure) where a 'Formula_SG' name
    disagrees with the structure: a CIF without its H atoms, a symmetry spglib finds higher."""
    found = []
    for p in library.phases:
        formula, number = formula_from_name(p.name)
        if formula is not None and formula != p.formula:
            found.append((p.name, "formula", formula, p.formula))
        if formula is not None and number is not None and number != p.space_group_number:
            found.append((p.name, "space group", str(number), str(p.space_group_number)))
    return found


def default_library(deduplicate: bool = True) -> PhaseLibrary:
    """The 4 pyFAI calibrants, the literature common phases and pymatgen's 288 AFLOW prototypes.

    In that order, so where two are the same structure the earlier is kept: a calibrant over a
    common phase over a prototype (corundum, fcc Cu, rocksalt NaCl, ...). Common phases keep their
    names ('NaCl halite', 'TiO2 rutile'), their source is 'literature:<reference>'
    (`references.common_phases`). Prototype names are 'aflow:<label>:<formula>' (a label alone
    repeats: AB_oP8_62_c_c is the prototype of four compounds); their source is 'aflow:<label>'.
    """
    items: list[tuple[str, Structure, str]] = [(n, calibrant_structure(n), f"calibrant:{n}") for n in CALIBRANTS]
    items.extend(common_phases())
    for label, structure in aflow_prototypes():
        items.append((f"aflow:{label}:{canonical_formula(structure)}", structure, f"aflow:{label}"))
    return library_from_structures(items, deduplicate=deduplicate)


# -- train/validation split --------------------------------------------------------------------


def split_by_structure(
    library: PhaseLibrary, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) phase indices, split by structure, never by augmented copy.

    Validation phases come only from classes with >= 2 phases and every class keeps at least
    one training phase, so validation measures recognising an *unseen polymorph of a known
    composition*; it cannot measure unknown compositions. The validation size is
    round(val_fraction * n_phases), or fewer when too few classes have polymorphs.
    Deterministic for a given library order and seed.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise LibraryError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    classes = library.phase_classes
    pool: list[int] = []
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        anchor = rng.choice(members)  # stays in training
        pool.extend(int(i) for i in members if i != anchor)
    pool_arr = rng.permutation(np.array(pool, dtype=np.int64))
    n_val = min(int(round(val_fraction * len(library))), len(pool_arr))
    val = np.sort(pool_arr[:n_val])
    train = np.setdiff1d(np.arange(len(library), dtype=np.int64), val)
    return train, val


__all__ = [
    "DEFAULT_EXCLUDED",
    "ExpertPlan",
    "LibraryError",
    "PhaseLibrary",
    "ReferencePhase",
    "canonical_formula",
    "chemical_system",
    "cif_files",
    "default_library",
    "formula_elements",
    "formula_from_name",
    "library_from_structures",
    "load_cif_library",
    "name_mismatches",
    "split_by_structure",
]

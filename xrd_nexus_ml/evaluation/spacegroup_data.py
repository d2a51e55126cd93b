"""Evaluation data and scores for the space-group classifier: real structures, measured folders, top-k.

The classifier is trained on synthetic crystals only, so its honest test is on structures it never
saw, built by people rather than by the generator:

- all 288 AFLOW prototypes bundled with pymatgen (`references.aflow_prototypes`), and
- the CIFs bundled with pyxtal (``pyxtal/database/cifs/*.cif``; the ``.vasp`` files there are
  not read): 77 CIFs, all readable with pymatgen, all ordered, every element with X-ray form
  factors. 7 are skipped as duplicates (see `real_structures`): ``NaCl``, ``R32``, ``ht_quartz``,
  ``ht_cristobalite`` and ``lt_cristobalite`` repeat the AFLOW prototypes of rock salt (225),
  Ni3S2 (155), β-quartz (180), β- and α-cristobalite (227, 92); ``MPWO`` repeats ``0-G62`` and
  ``JVASP-45907`` repeats ``JVASP-141590``. That leaves 288 AFLOW + 70 pyxtal = 358 structures
  (symprec 0.01).

Labels are what spglib finds (through pymatgen's `SpacegroupAnalyzer`), not what a file or an
AFLOW label claims. At symprec 0.01 they differ for three AFLOW prototypes: AB3_tI16_140_b_ah
(U3Si; pymatgen's cell holds 4 atoms, spglib says 123), AB_oP8_33_a_a (CoAs, pseudo-symmetric:
62 at symprec >= 0.01, 33 at 0.001) and A2B_oC12_38_de_ab (VAu2, 63 at any symprec). A pattern
simulated from the structure shows the symmetry the atoms have, so spglib's label is the one a
powder pattern can be judged against.

Patterns are simulated as training simulates them (`PatternStream`'s peak profile, Cu Kα1, the
"clean" or "measured" augmentation pipeline), and measured folders are read onto the canonical
grid the way every model input is made (`Diffractogram.on_canonical_grid`). `score` turns the
three heads' probabilities into top-1 / top-5 accuracies.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrd_nexus_ml.errors import StructureError, XrdNexusMlError
from xrd_nexus_ml.io import read_pattern, read_structure
from xrd_nexus_ml.io.readers import SUPPORTED_SUFFIXES
from xrd_nexus_ml.pattern import CANONICAL_GRID
from xrd_nexus_ml.physics import symmetry
from xrd_nexus_ml.physics.augment import default_pipeline
from xrd_nexus_ml.physics.crystal import as_crystal_arrays
from xrd_nexus_ml.physics.form_factors import check_supported
from xrd_nexus_ml.physics.profiles import PeakProfile
from xrd_nexus_ml.physics.simulator import PowderSimulator
from xrd_nexus_ml.physics.symmetry import CRYSTAL_SYSTEMS, crystal_system_index, extinction_group
from xrd_nexus_ml.references import aflow_prototypes
from xrd_nexus_ml.spacegroup.model import true_class_ranks

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class EvaluationDataError(XrdNexusMlError, ValueError):
    """A labels CSV or a folder of measured patterns cannot be used; the message names the file and line."""


# -- real structures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledStructure:
    """One real structure and its three labels (space group 1-230, extinction group, crystal system)."""

    name: str
    source: str  # "aflow" or "pyxtal"
    structure: Any  # pymatgen Structure
    space_group: int
    extinction_group: int
    crystal_system: int


def pyxtal_cif_folder() -> Path:
    """pyxtal's bundled structure folder (found from the installed package, wherever it lives)."""
    import pyxtal

    return Path(pyxtal.__file__).parent / "database" / "cifs"


def _labelled(name: str, source: str, structure, symprec: float) -> tuple[LabelledStructure, tuple]:
    """The structure with spglib's labels, and its duplicate key (formula, space group, primitive sites)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    with symmetry.quiet_spglib():
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        sg = analyzer.get_space_group_number()
        rotations = analyzer.get_symmetry_dataset().rotations
    # operations with the identity rotation are the lattice translations of the cell given
    n_primitive = len(structure) // max(1, int((np.asarray(rotations) == np.eye(3, dtype=int)).all(axis=(1, 2)).sum()))
    item = LabelledStructure(name, source, structure, sg, extinction_group(sg), crystal_system_index(sg))
    return item, (structure.composition.reduced_formula, sg, n_primitive)


@functools.cache
def _real_structures(symprec: float) -> tuple[tuple[LabelledStructure, ...], tuple[tuple[str, str], ...]]:
    """(structures, skipped pyxtal files with the reason); cached: labelling all takes seconds."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    items: list[LabelledStructure] = []
    by_key: dict[tuple, list[LabelledStructure]] = {}
    seen: dict[str, int] = {}
    for label, structure in aflow_prototypes():
        seen[label] = seen.get(label, 0) + 1  # a few AFLOW labels name several prototypes
        name = label if seen[label] == 1 else f"{label}#{seen[label]}"
        item, key = _labelled(name, "aflow", structure, symprec)
        items.append(item)
        by_key.setdefault(key, []).append(item)

    matcher = StructureMatcher()
    skipped: list[tuple[str, str]] = []
    for path in sorted(pyxtal_cif_folder().glob("*.cif")):
        try:
            structure = read_structure(path)
            check_supported(np.array([el.Z for el in structure.composition.elements]), str(path))
            item, key = _labelled(path.stem, "pyxtal", structure, symprec)
        except (StructureError, ValueError) as exc:  # unreadable, unknown element, spglib failure
            skipped.append((path.name, str(exc)))
            continue
        twin = next((o for o in by_key.get(key, []) if matcher.fit(o.structure, structure)), None)
        if twin is not None:
            skipped.append((path.name, f"duplicate of {twin.source} {twin.name}"))
            continue
        items.append(item)
        by_key.setdefault(key, []).append(item)
    for name, why in skipped:
        log.info("pyxtal structure %s skipped: %s", name, why)
    return tuple(items), tuple(skipped)


def real_structures(symprec: float = 0.01) -> list[LabelledStructure]:
    """The AFLOW prototypes (all 288, in pymatgen's order) then the pyxtal CIFs (by file name), labelled.

    Names: the AFLOW label (a label that names several prototypes gets ``#2``, ``#3`` on its
    repeats) or the CIF's file stem. Labels come from spglib at `symprec` (Å).

    Skipped, only among the pyxtal files: a CIF pymatgen cannot read, one with an element that
    has no X-ray form factor, one spglib cannot analyse, and a duplicate of a structure already
    kept (AFLOW or an earlier pyxtal file). A duplicate must have the same reduced formula, the
    same space group and the same number of atoms in the primitive cell (AFLOW cells are
    primitive, CIF cells conventional), and pymatgen's `StructureMatcher` (default tolerances,
    cells scaled) must match the two; the matcher keeps apart polymorphs the cheap key cannot
    tell apart (aspirin forms I and II: both P2_1/c with 84 atoms). `skipped_pyxtal_files` says
    what was skipped and why.

    Cached per symprec; the list is new on each call, the structures in it are shared.
    """
    return list(_real_structures(float(symprec))[0])


def skipped_pyxtal_files(symprec: float = 0.01) -> list[tuple[str, str]]:
    """(file name, reason) of each pyxtal CIF `real_structures` left out."""
    return list(_real_structures(float(symprec))[1])


# -- simulation -----------------------------------------------------------------------------------


def simulate_patterns(
    structures: Sequence,
    imperfections: bool,
    seed: int = 0,
    wavelength: float | str = "CuKa1",
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """(intensity (n, G) float32, mask (n, G) bool) on CANONICAL_GRID, in input order, max 1 over the mask.

    Same peak profile and pipelines as training (`training.streams.PatternStream`), so a drop in
    accuracy measures the structures, not a change of simulation: the "measured" pipeline when
    `imperfections`, else "clean" (Debye–Waller factors only). `structures`: LabelledStructure,
    pymatgen Structures or CrystalArrays. Reproducible for a seed and the same input list.
    """
    crystals = [as_crystal_arrays(s.structure if isinstance(s, LabelledStructure) else s) for s in structures]
    n, g = len(crystals), CANONICAL_GRID.n_points
    intensity = np.zeros((n, g), dtype=np.float32)
    mask = np.zeros((n, g), dtype=bool)
    if n == 0:
        return intensity, mask
    profile = PeakProfile(shape="pseudo_voigt", eta=0.3, caglioti_uvw=(0.004, -0.002, 0.004))
    simulator = PowderSimulator(wavelength=wavelength, grid=CANONICAL_GRID, profile=profile, device="cpu",
                                batch_size=batch_size)
    pipeline = default_pipeline("measured" if imperfections else "clean")
    generator = torch.Generator().manual_seed(int(seed))
    # one sorting window over all structures: similar sizes share a batch, little padding
    window = n // batch_size + 1
    for rows, state in simulator.stream_states(crystals, augment=pipeline, generator=generator, sort_window=window):
        intensity[rows] = state.intensity.cpu().numpy()
        mask[rows] = state.mask.cpu().numpy()
    return intensity, mask


# -- measured folders -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasuredSet:
    """Measured patterns on CANONICAL_GRID (max 1 over the mask) and their true space groups, in CSV order."""

    names: tuple[str, ...]
    intensity: np.ndarray  # (n, G) float32
    mask: np.ndarray  # (n, G) bool
    space_group: np.ndarray  # (n,) int64, 1-230

    def __len__(self) -> int:
        return len(self.names)


def _symbol_key(symbol: str) -> str:
    return re.sub(r"[\s_]", "", symbol).lower()


@functools.cache
def _symbol_table() -> dict[str, int]:
    """Hermann–Mauguin symbols of every setting spglib knows (short, full, 'P2_1/n'...) -> number.

    Spaces and underscores are ignored ('P 21/c', 'P2_1/c'); a key two numbers share is dropped.
    """
    import spglib

    found: dict[str, set[int]] = {}
    with symmetry.quiet_spglib():
        for hall in range(1, 531):
            kind = spglib.get_spacegroup_type(hall)
            names = [kind.international_short, kind.international_full, *kind.international.split("=")]
            if 3 <= kind.number <= 15:  # monoclinic 'P 1 2_1/n 1' is usually written 'P2_1/n'
                names += [" ".join(t for t in name.split() if t != "1") for name in names]
            for name in names:
                found.setdefault(_symbol_key(name), set()).add(kind.number)
    return {key: numbers.pop() for key, numbers in found.items() if len(numbers) == 1}


def parse_space_group(text: str) -> int | None:
    """A space-group number 1-230 from '225' or a Hermann–Mauguin symbol ('Fm-3m', 'P2_1/c'); None if neither."""
    text = text.strip()
    if re.fullmatch(r"[+]?\d+", text):
        number = int(text)
        return number if 1 <= number <= 230 else None
    return _symbol_table().get(_symbol_key(text))


def _header_columns(csv_path: Path, cells: list[str], line: int) -> tuple[int, int]:
    names = [c.strip().lower() for c in cells]
    missing = [c for c in ("file", "space_group") if c not in names]
    if missing:
        raise EvaluationDataError(
            f"{csv_path}, line {line}: no column {' or '.join(repr(m) for m in missing)} in the header "
            f"{','.join(cells)!r}; expected a header row 'file,space_group'"
        )
    return names.index("file"), names.index("space_group")


def _read_labels_csv(csv_path: Path, folder: Path) -> list[tuple[str, Path, int]]:
    """(name, path, space group) per CSV row, every file checked to exist; errors name the line."""
    rows: list[tuple[str, Path, int]] = []
    first_line: dict[str, int] = {}
    columns: tuple[int, int] | None = None
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells) or cells[0].strip().startswith("#"):
                continue
            if columns is None:
                columns = _header_columns(csv_path, cells, line)
                continue
            where = f"{csv_path}, line {line}"
            if len(cells) <= max(columns):
                raise EvaluationDataError(f"{where}: {len(cells)} column(s); expected 'file,space_group'")
            name, value = cells[columns[0]].strip(), cells[columns[1]].strip()
            if not name:
                raise EvaluationDataError(f"{where}: no file name; expected 'file,space_group'")
            if name in first_line:
                raise EvaluationDataError(f"{where}: {name!r} is listed again (first on line {first_line[name]})")
            sg = parse_space_group(value)
            if sg is None:
                raise EvaluationDataError(
                    f"{where}: space group {value!r} for {name!r} is not a number from 1 to 230 "
                    "or a Hermann–Mauguin symbol such as 'Fm-3m' or 'P2_1/c'"
                )
            path = Path(name) if Path(name).is_absolute() else folder / name
            if not path.is_file():
                raise EvaluationDataError(f"{where}: pattern file {name!r} not found ({path})")
            first_line[name] = line
            rows.append((name, path, sg))
    if columns is None:
        raise EvaluationDataError(f"{csv_path}: empty; expected a header row 'file,space_group' and one row per file")
    if not rows:
        raise EvaluationDataError(
            f"{csv_path}: no CSV row for any file; expected rows 'file,space_group' after the header"
        )
    return rows


def read_measured(
    patterns_dir: PathLike, labels_csv: PathLike | None, wavelength: float | str | None = None
) -> MeasuredSet:
    """The patterns a labels CSV lists, on CANONICAL_GRID with their masks, and their true space groups.

    The CSV has a header row with the columns 'file' and 'space_group' (others are ignored);
    each row names a file in `patterns_dir` (or an absolute path) and its space group as a
    number 1-230 or a Hermann–Mauguin symbol. A relative `labels_csv` not found as given is
    looked up in `patterns_dir`. Files are read with `read_pattern` (`wavelength` overrides the
    file's; 2θ files need one) and resampled and max-normalised by `Diffractogram.on_canonical_grid`,
    exactly how model inputs are made. Pattern files in the folder the CSV does not list are left
    out with a warning. Errors name the CSV and line, or the pattern file.
    """
    folder = Path(patterns_dir)
    if not folder.is_dir():
        raise EvaluationDataError(f"{folder}: pattern folder not found" if not folder.exists()
                                  else f"{folder}: is a file; expected a folder of patterns")
    if labels_csv is None:
        raise EvaluationDataError(f"{folder}: no labels CSV given; expected one with a header 'file,space_group'"
                                  " and a row per pattern file")
    csv_path = Path(labels_csv)
    if not csv_path.is_absolute() and not csv_path.exists() and (folder / csv_path).exists():
        csv_path = folder / csv_path
    if not csv_path.is_file():
        raise EvaluationDataError(f"{csv_path}: labels CSV not found (expected a header 'file,space_group')")
    rows = _read_labels_csv(csv_path, folder)

    listed = {p.resolve() for _, p, _ in rows} | {csv_path.resolve()}
    unlisted = sorted(p.name for p in folder.iterdir()
                      if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and p.resolve() not in listed)
    if unlisted:
        log.warning("%s: %d pattern file(s) not listed, left out: %s", csv_path, len(unlisted), ", ".join(unlisted))

    g = CANONICAL_GRID.n_points
    intensity = np.zeros((len(rows), g), dtype=np.float32)
    mask = np.zeros((len(rows), g), dtype=bool)
    for i, (_, path, _) in enumerate(rows):
        canonical = read_pattern(path, wavelength=wavelength).on_canonical_grid(CANONICAL_GRID)
        intensity[i] = canonical.intensity
        mask[i] = canonical.mask
    return MeasuredSet(
        names=tuple(name for name, _, _ in rows),
        intensity=intensity,
        mask=mask,
        space_group=np.array([sg for _, _, sg in rows], dtype=np.int64),
    )


# -- scores ---------------------------------------------------------------------------------------


def _checked(probabilities: Mapping[str, np.ndarray], head: str, n: int, n_classes: int) -> np.ndarray:
    if head not in probabilities:
        raise ValueError(f"probabilities has no {head!r} head; expected keys space_group, extinction_group, "
                         "crystal_system")
    p = np.asarray(probabilities[head], dtype=float)
    if p.shape != (n, n_classes):
        raise ValueError(f"probabilities[{head!r}] has shape {p.shape}; expected ({n}, {n_classes})")
    if not np.isfinite(p).all():
        raise ValueError(f"probabilities[{head!r}] holds NaN or infinite values")
    return p


def score(probabilities: Mapping[str, np.ndarray], space_group: np.ndarray) -> dict:
    """Top-1 / top-5 accuracies of the three heads against the labels implied by the true space groups.

    probabilities: "space_group" (n, 230), column i = space group i + 1; "extinction_group"
    (n, N_EXTINCTION_GROUPS); "crystal_system" (n, 7) in CRYSTAL_SYSTEMS order. Scores are
    fractions of patterns; ties count against the model. "per_crystal_system" gives, for each
    system with at least one pattern, its count and the space-group head's top-1 there.
    """
    truth = np.asarray(space_group)
    if truth.ndim != 1 or truth.size == 0:
        raise ValueError(f"space_group must be a non-empty 1-D array, got shape {truth.shape}")
    if not (np.issubdtype(truth.dtype, np.integer) or np.issubdtype(truth.dtype, np.floating)):
        raise ValueError(f"space_group must hold numbers 1-230, got dtype {truth.dtype}")
    bad = ~np.isfinite(truth) | (truth != np.round(truth)) | (truth < 1) | (truth > 230)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"space_group must hold integers 1-230; pattern {i} has {truth[i].item()!r}")
    sg = truth.astype(np.int64)
    n = len(sg)
    p_sg = _checked(probabilities, "space_group", n, 230)
    p_ext = _checked(probabilities, "extinction_group", n, symmetry.N_EXTINCTION_GROUPS)
    p_sys = _checked(probabilities, "crystal_system", n, len(CRYSTAL_SYSTEMS))
    ext = np.array([extinction_group(int(v)) for v in sg])
    system = np.array([crystal_system_index(int(v)) for v in sg])
    rank_sg, rank_ext, rank_sys = (true_class_ranks(p_sg, sg - 1), true_class_ranks(p_ext, ext),
                                  true_class_ranks(p_sys, system))
    per_system = {
        name: {"n": int((system == i).sum()), "top1": float((rank_sg[system == i] < 1).mean())}
        for i, name in enumerate(CRYSTAL_SYSTEMS) if (system == i).any()
    }
    return {
        "n_patterns": n,
        "top1": float((rank_sg < 1).mean()),
        "top5": float((rank_sg < 5).mean()),
        "extinction_top1": float((rank_ext < 1).mean()),
        "extinction_top5": float((rank_ext < 5).mean()),
        "crystal_system_top1": float((rank_sys < 1).mean()),
        "per_crystal_system": per_system,
    }


__all__ = [
    "EvaluationDataError",
    "LabelledStructure",
    "MeasuredSet",
    "parse_space_group",
    "pyxtal_cif_folder",
    "read_measured",
    "real_structures",
    "score",
    "simulate_patterns",
    "skipped_pyxtal_files",
]

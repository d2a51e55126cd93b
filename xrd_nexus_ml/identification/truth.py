"""True phases of measured patterns (from file names or a CSV) and scores of predictions.

Everything is judged on class labels from `canonical_formula`, so 'LiOH-H2O', 'LiOH·H2O' and a
reference CIF of the monohydrate all name one class, and polymorphs are not told apart.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xrd_nexus_ml.identification.library import LibraryError, canonical_formula

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Suffixes of pattern files whose names or CSV rows carry the truth.
PATTERN_SUFFIXES = (".xy", ".xye", ".dat", ".txt", ".csv", ".xrdml", ".npy")

_SG_SUFFIX = re.compile(r"_\d{1,3}$")


def _strip_suffix(name: str) -> str:
    """The file name without directory and pattern suffix (other dots stay: 'Li0.5CoO2')."""
    base = Path(name).name
    path = Path(base)
    return path.stem if path.suffix.lower() in PATTERN_SUFFIXES else base


def _labels(parts: Iterable[str], where: str) -> frozenset[str]:
    """Class labels of phase names; a reference-style '_SG' suffix ('MnO2_136') is dropped."""
    labels = set()
    for part in parts:
        text = _SG_SUFFIX.sub("", part.strip())
        if not text:
            raise LibraryError(f"{where}: empty phase name (expected phases joined by '+')")
        try:
            labels.add(canonical_formula(text))
        except LibraryError as exc:
            raise LibraryError(f"{where}: phase {part.strip()!r}: {exc}") from None
    return frozenset(labels)


def labels_from_filename(name: str, known: Collection[str] | None = None) -> frozenset[str]:
    """The true phases a file name states, as class labels: 'Li2MnO3+MnO+TiO2.xy' -> 3 labels.

    Separator rule: phases are joined by '+'; only a name without '+' is split on '-'
    ('Li2CO3-ZrO2.xy'). '-' also joins the parts of a hydrate ('LiOH-H2O'), so a single-phase
    'LiOH-H2O.xy' is ambiguous: it reads as LiOH and H2O unless `known` (class labels, e.g.
    `library.classes`) holds the hydrate LiH3O2 and not both parts; within a '+' list '-'
    always joins a hydrate ('LiOH-H2O+ZrO2'). Raises LibraryError naming the file.
    """
    stem = _strip_suffix(name)
    if not stem.strip():
        raise LibraryError(f"{name}: no phase names in the file name")
    if "+" in stem:
        return _labels(stem.split("+"), name)
    if "-" in stem:
        if known is not None:
            known_labels = {canonical_formula(k) for k in known}
            try:
                whole = _labels([stem], name)
            except LibraryError:
                whole = frozenset()
            try:
                parts = _labels(stem.split("-"), name)
            except LibraryError:
                parts = frozenset()
            if whole and whole <= known_labels and not (parts and parts <= known_labels):
                return whole
        return _labels(stem.split("-"), name)
    return _labels([stem], name)


def pattern_files(patterns_dir: PathLike, exclude: Iterable[PathLike] = ()) -> list[Path]:
    """Pattern files (PATTERN_SUFFIXES, any case) directly in `patterns_dir`, sorted by name."""
    folder = Path(patterns_dir)
    if not folder.is_dir():
        raise LibraryError(f"{folder}: pattern folder not found" if not folder.exists()
                           else f"{folder}: is a file; expected a folder of patterns")
    skip = {Path(p).resolve() for p in exclude}
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in PATTERN_SUFFIXES and p.resolve() not in skip),
                  key=lambda p: p.name)


def read_truth(
    patterns_dir: PathLike, labels_csv: PathLike | None = None, known: Collection[str] | None = None
) -> dict[str, frozenset[str]]:
    """True class labels of the patterns in `patterns_dir`, keyed by file name.

    Without `labels_csv` they come from the file names (`labels_from_filename`, with `known`).
    With it, from its rows `file,phases` (an optional header row 'file,phases'; phases joined
    by '+'; a relative CSV path is looked up in `patterns_dir` too): then exactly the files
    the CSV lists are returned, every one must exist, and pattern files it does not list are
    left out with a warning. Errors name the file or the CSV row.
    """
    folder = Path(patterns_dir)
    if labels_csv is None:
        files = pattern_files(folder)
        if not files:
            raise LibraryError(f"{folder}: no pattern files ({', '.join(PATTERN_SUFFIXES)}) found")
        return {p.name: labels_from_filename(p.name, known) for p in files}
    csv_path = Path(labels_csv)
    if not csv_path.is_absolute() and not csv_path.exists() and (folder / csv_path).exists():
        csv_path = folder / csv_path
    if not csv_path.is_file():
        raise LibraryError(f"{csv_path}: labels CSV not found (expected rows 'file,phases')")
    present = {p.name: p for p in pattern_files(folder, exclude=[csv_path])}
    truth = _read_truth_csv(csv_path, present, folder)
    unlisted = sorted(set(present) - set(truth))
    if unlisted:
        log.warning("%s: %d pattern file(s) not listed, left out: %s", csv_path, len(unlisted), ", ".join(unlisted))
    return truth


def _read_truth_csv(csv_path: Path, present: Mapping[str, Path], folder: Path) -> dict[str, frozenset[str]]:
    """Rows of a 'file,phases' CSV, each checked against the pattern files present."""
    truth: dict[str, frozenset[str]] = {}
    rows: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            where = f"{csv_path}, row {number}"
            if number == 1 and [c.lower() for c in cells[:2]] == ["file", "phases"]:
                continue
            if len(cells) != 2:
                raise LibraryError(f"{where}: {len(cells)} columns; expected 2 (file,phases; join phases with '+')")
            file, phases = Path(cells[0]).name, cells[1]
            if file not in present:
                raise LibraryError(f"{where}: pattern file {cells[0]!r} not found in {folder}")
            if file in truth:
                raise LibraryError(f"{where}: {file!r} is listed again (first on row {rows[file]})")
            if not phases:
                raise LibraryError(f"{where}: no phases given for {file!r}")
            truth[file] = _labels(phases.split("+"), where)
            rows[file] = number
    if not truth:
        raise LibraryError(f"{csv_path}: no rows (expected 'file,phases' rows)")
    return truth


@dataclass
class PatternScore:
    """How a prediction for one pattern compares with its truth (class labels).

    recall = true_positives / |truth| and precision = true_positives / |predicted|; NaN where
    the set divided by is empty. exact: predicted == truth."""

    file: str
    truth: frozenset[str]
    predicted: frozenset[str]
    true_positives: int
    recall: float
    precision: float
    exact: bool


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def _predicted_labels(file: str, labels: Iterable[str]) -> frozenset[str]:
    if isinstance(labels, str):
        labels = [labels]
    found = set()
    for label in labels:
        try:
            found.add(canonical_formula(label))
        except LibraryError as exc:
            raise LibraryError(f"prediction for {file}: {exc}") from None
    return frozenset(found)


def score(predicted: Mapping[str, Iterable[str]], truth: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """Per-pattern and total scores of `predicted` phases against `truth`, on class labels.

    A file in `truth` missing from `predicted` counts as predicting nothing; predictions for
    files not in `truth` are not scored and are listed under 'unscored'. Totals: micro
    'recall' and 'precision' over all phases of all patterns (NaN when nothing to divide by),
    'f1', and 'exact_match', the fraction of patterns predicted exactly.
    """
    patterns = []
    for file in sorted(truth):
        true_labels = _predicted_labels(file, truth[file])
        guess = _predicted_labels(file, predicted.get(file, ()))
        tp = len(true_labels & guess)
        patterns.append(PatternScore(file, true_labels, guess, tp, _ratio(tp, len(true_labels)),
                                     _ratio(tp, len(guess)), guess == true_labels))
    tp = sum(p.true_positives for p in patterns)
    n_true = sum(len(p.truth) for p in patterns)
    n_predicted = sum(len(p.predicted) for p in patterns)
    recall, precision = _ratio(tp, n_true), _ratio(tp, n_predicted)
    f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else math.nan
    return {
        "patterns": patterns,
        "n_patterns": len(patterns),
        "true_positives": tp,
        "n_true": n_true,
        "n_predicted": n_predicted,
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "exact_match": _ratio(sum(p.exact for p in patterns), len(patterns)),
        "unscored": sorted(set(predicted) - set(truth)),
    }


__all__ = ["PATTERN_SUFFIXES", "PatternScore", "labels_from_filename", "pattern_files", "read_truth", "score"]

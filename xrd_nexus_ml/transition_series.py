"""A measured series along a control variable: read it, check it, find its transitions.

`xrd-nexus-ml transition FILE... | DIR | FILE.nxs --control CSV`. The CSV has a header
`file,<name>_<unit>` (e.g. `file,pressure_GPa`, `file,temperature_K`) and one row per frame in
acquisition order; a NeXus file carries its own pressures. Problems are reported where a user can
fix them (the file or the CSV row, by number); a frame that cannot be used (unreadable, NaN, no
signal) is kept as a flagged frame so that the others still give an answer.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nexus_definitions.reader import read_patterns
from xrd_nexus_ml.errors import PatternError, XrdNexusMlError
from xrd_nexus_ml.io import read_pattern
from xrd_nexus_ml.io.readers import NEXUS_SUFFIXES, SUPPORTED_SUFFIXES
from xrd_nexus_ml.transitions.changepoint import TransitionTracker
from xrd_nexus_ml.transitions.detector import DetectorSettings, detect_series
from xrd_nexus_ml.transitions.models import load_model


class SeriesError(XrdNexusMlError, ValueError):
    """A series cannot be read as given (the message names the file or the CSV row)."""


@dataclass
class Series:
    """Frames in acquisition order with their control values. frames[i] is None where the file
    could not be read as a pattern (problems[i] says why)."""

    names: list[str]
    frames: list
    control: np.ndarray
    control_name: str = "pressure"
    unit: str = "GPa"
    problems: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


def read_control_csv(path) -> tuple[str, str, list[tuple[str, float]]]:
    """(control name, unit, [(file name, value), ...] in row order) of a `file,<name>_<unit>` CSV."""
    path = Path(path)
    if not path.is_file():
        raise SeriesError(f"{path}: no such control CSV")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise SeriesError(f"{path}: empty; expected a header 'file,<name>_<unit>' (e.g. file,pressure_GPa) and rows")
    header = [c.strip() for c in rows[0]]
    if len(header) < 2 or header[0].lower() != "file":
        raise SeriesError(f"{path}: header {','.join(header)!r}; "
                          f"expected 'file,<name>_<unit>' (e.g. file,pressure_GPa)")
    name, _, unit = header[1].rpartition("_")
    if not name:
        name, unit = header[1], ""
    entries, seen = [], {}
    for number, row in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in row]
        if len(cells) < 2 or not cells[0]:
            raise SeriesError(f"{path}, row {number}: {','.join(cells)!r} names no file; expected 'file,value'")
        try:
            value = float(cells[1])
        except ValueError:
            raise SeriesError(f"{path}, row {number}: {cells[1]!r} is not a number ({header[1]})") from None
        if not math.isfinite(value):
            raise SeriesError(f"{path}, row {number}: {header[1]} is {cells[1]}; expected a finite number")
        if cells[0] in seen:
            raise SeriesError(f"{path}, row {number}: {cells[0]} is listed twice (first in row {seen[cells[0]]})")
        seen[cells[0]] = number
        entries.append((cells[0], value))
    if not entries:
        raise SeriesError(f"{path}: a header but no rows")
    return name, unit, entries


def _is_control_csv(path: Path) -> bool:
    """A control CSV (header 'file,...') lying in a folder of patterns is not a pattern."""
    if path.suffix.lower() != ".csv":
        return False
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        return handle.readline().strip().lower().startswith("file,")


def _pattern_files(inputs: Sequence) -> list[Path]:
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
                           and p.suffix.lower() not in NEXUS_SUFFIXES and not _is_control_csv(p))
            if not found:
                raise SeriesError(f"{path}: no pattern files ({', '.join(SUPPORTED_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SeriesError(f"{path}: no such file or folder")
    return files


def load_series(inputs: Sequence, control=None, wavelength=None) -> Series:
    """The series of `inputs` (pattern files, folders of them, or one NeXus file) with the control
    values of the CSV `control` (required except for a NeXus file, whose pressures are used)."""
    inputs = [Path(i) for i in inputs]
    if not inputs:
        raise SeriesError("no input: give pattern files, a folder of them, or a NeXus file")
    if len(inputs) == 1 and inputs[0].suffix.lower() in NEXUS_SUFFIXES and control is None:
        patterns, pressures, _ = read_patterns(inputs[0], wavelength=wavelength, on_bad_frame="skip")
        if not patterns:
            raise SeriesError(f"{inputs[0]}: no valid frame")
        if not np.isfinite(pressures).any():
            raise SeriesError(f"{inputs[0]}: records no pressure per frame; give --control CSV")
        names = [f"{inputs[0].name}#frame{p.metadata.get('frame_index', i)}" for i, p in enumerate(patterns)]
        return Series(names, list(patterns), np.asarray(pressures, float), "pressure", "GPa", [None] * len(names))
    if control is None:
        raise SeriesError("pattern files need their control values: --control CSV ('file,pressure_GPa' rows)")
    name, unit, entries = read_control_csv(control)
    files = [f for f in _pattern_files(inputs) if f.resolve() != Path(control).resolve()]
    by_name = {}
    for f in files:
        if f.name in by_name:
            raise SeriesError(f"{f}: two input files are named {f.name}; the CSV cannot tell them apart")
        by_name[f.name] = f
    listed = {e[0] for e in entries}
    missing = [f.name for f in files if f.name not in listed]
    if missing:
        raise SeriesError(f"{control}: no row for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    unknown = [n for n, _ in entries if n not in by_name]
    if unknown:
        raise SeriesError(f"{control}: rows name files that are not among the inputs: {', '.join(unknown[:5])}")
    frames, problems = [], []
    for file_name, _ in entries:
        try:  # the file's own wavelength wins; the argument serves files that record none
            pattern = read_pattern(by_name[file_name])
            if wavelength is not None and pattern.axis != "q" and not pattern.wavelength:
                pattern = read_pattern(by_name[file_name], wavelength=wavelength)
            frames.append(pattern)
            problems.append(None)
        except PatternError as err:  # one unreadable frame is flagged; the others still count
            frames.append(None)
            problems.append(str(err))
    return Series([n for n, _ in entries], frames, np.array([v for _, v in entries]), name, unit, problems)


def find_transitions(series: Series, settings: DetectorSettings | None = None) -> dict:
    """The training-free detector over a series: the JSON of `xrd-nexus-ml transition --json`."""
    usable = [i for i, f in enumerate(series.frames) if f is not None]
    if not usable:
        raise SeriesError("no frame of the series could be read: " + "; ".join(p for p in series.problems if p))
    missing_axis = [series.names[i] for i in usable if series.frames[i].axis != "q" and not series.frames[i].wavelength]
    if missing_axis:
        raise SeriesError(f"{missing_axis[0]}: no wavelength recorded; give --wavelength (Å, or e.g. CuKa)")
    records, transitions = detect_series([series.frames[i] for i in usable], series.control[usable], settings=settings)
    by_index = dict(zip(usable, records))
    frames = []
    previous = None
    for i, name in enumerate(series.names):
        r = by_index.get(i)
        if r is None or r.status == "flagged":
            frames.append({"file": name, series.control_name: float(series.control[i]), "status": "flagged",
                           "reason": series.problems[i] or (r.flag if r is not None else "unreadable")})
            continue
        change = "same" if previous is None or r.assemblage == previous else "changed"
        if r.status == "changed":
            change = "changed"
        previous = r.assemblage
        frames.append({"file": name, series.control_name: float(series.control[i]), "status": change,
                       "assemblage": r.assemblage + 1, "change_score": r.score, "new": r.new, "vanished": r.vanished,
                       "split": r.split, "fraction": r.fraction})
    return {"control": series.control_name, "unit": series.unit, "model": "auto",
            "transitions": [t.to_dict() for t in transitions], "frames": frames, "n_frames": len(series),
            "n_flagged": sum(f["status"] == "flagged" for f in frames)}


def classify_series(series: Series, model_dir) -> dict:
    """A trained transition bundle (`train transition`) over a series, in acquisition order: the
    same JSON as `find_transitions`, phases named as the model names them."""
    model = load_model(model_dir)
    usable = [i for i, f in enumerate(series.frames) if f is not None]
    tracker = TransitionTracker(model)
    records = tracker.run([series.frames[i] for i in usable], series.control[usable])
    by_index = dict(zip(usable, records))
    frames = []
    for i, name in enumerate(series.names):
        r = by_index.get(i)
        if r is None or r.flag:
            frames.append({"file": name, series.control_name: float(series.control[i]), "status": "flagged",
                           "reason": series.problems[i] or (r.flag if r is not None else "unreadable")})
            continue
        frames.append({"file": name, series.control_name: float(series.control[i]), "status": r.phase,
                       "phase": r.phase, "probabilities": r.probabilities})
    transitions = []
    for b in tracker.estimates:
        if math.isfinite(b.pressure) and b.observed >= 0.9:
            transitions.append({"value": b.pressure, "sigma": b.sigma, "interval": list(b.interval), "from": b.lower,
                                "to": b.upper, "direction": "increasing", "settled": b.settled})
    return {"control": series.control_name, "unit": series.unit, "model": str(model_dir),
            "transitions": transitions, "frames": frames, "n_frames": len(series),
            "n_flagged": sum(f["status"] == "flagged" for f in frames)}


def plot_series(series: Series, result: dict, path) -> Path:
    """Waterfall of the frames offset by their control value, coloured by assemblage, with each
    transition's estimate and 2σ band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    fig, ax = plt.subplots(figsize=(9, 7))
    usable = [i for i, f in enumerate(series.frames) if f is not None]
    span = float(np.ptp(series.control[usable])) if usable else 1.0
    scale = 2.5 * (span or 1.0) / max(len(usable), 1)
    seen = set()
    for i in usable:
        frame = result["frames"][i]
        pattern = series.frames[i]
        y = np.asarray(pattern.intensity, float)
        y = (y - y.min()) / max(float(np.ptp(y)), 1e-12)
        k = frame.get("assemblage", 0)
        label = f"assemblage {k}" if k and k not in seen else None
        seen.add(k)
        ax.plot(pattern.q, series.control[i] + scale * y, lw=0.6, color=colours[(k - 1) % len(colours)] if k else "0.6",
                label=label)
    for t in result["transitions"]:
        ax.axhspan(t["value"] - 2 * t["sigma"], t["value"] + 2 * t["sigma"], color="0.85", zorder=0)
        ax.axhline(t["value"], color="k", ls="--", lw=1,
                   label=f"transition {t['value']:.3g} ± {t['sigma']:.2g} {result['unit']} ({t['direction']})")
    ax.set_xlabel("q (1/Å)")
    ax.set_ylabel(f"{result['control']} ({result['unit']}), frame offset by its value")
    ax.set_title(f"{len(series)} frames, {len(result['transitions'])} transition(s), training-free detector")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

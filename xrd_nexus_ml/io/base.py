"""What every pattern reader shares: errors that name the file, the wavelength and axis choice,
and the `Diffractogram` built from a file's arrays and checked point by point."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xrd_nexus_ml.errors import (
    PatternError,
    PatternFileError,
    PatternFileNotFoundError,
    StructureError,
    StructureFileNotFoundError,
    WavelengthError,
)
from xrd_nexus_ml.pattern import Axis, Diffractogram, energy_to_wavelength, resolve_wavelength

PathLike = str | os.PathLike[str]


def file_error(path: PathLike, problem: str, kind: type[Exception] = PatternFileError) -> Exception:
    """The exception for `problem` in `path`: one place makes every message start with the file."""
    if issubclass(kind, PatternError):
        return kind(problem, str(path))
    return kind(f"{path}: {problem}")


def existing_file(path: PathLike, kind: type[Exception] = PatternFileError) -> Path:
    """Fail early and clearly on a missing path or a directory, before any parser does it vaguely."""
    p = Path(path)
    if p.is_dir():
        raise file_error(p, "is a directory, not a file", kind)
    if not p.exists():
        missing = StructureFileNotFoundError if issubclass(kind, StructureError) else PatternFileNotFoundError
        raise file_error(p, "file not found", missing)
    return p


_AXIS_ALIASES = {"two_theta": "two_theta", "2theta": "two_theta", "tth": "two_theta", "twotheta": "two_theta",
                 "q": "q"}


def axis_argument(axis: str | None, path: PathLike) -> Axis | None:
    """Check the caller's `axis=` early, so a typo is not mistaken for a problem with the file."""
    if axis is None:
        return None
    name = _AXIS_ALIASES.get(str(axis).strip().lower())
    if name is None:
        raise file_error(path, f"axis must be 'two_theta' or 'q', got {axis!r}", PatternError)
    return name  # type: ignore[return-value]


def choose_wavelength(
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
        raise file_error(path, exc.problem + where, WavelengthError) from None


def wavelength_from_energy(path: PathLike, energy_kev: float) -> float:
    """Energy in keV -> Å, re-raised with the file name (the pattern module does not know it)."""
    try:
        return energy_to_wavelength(float(energy_kev))
    except WavelengthError as exc:
        raise file_error(path, exc.problem, WavelengthError) from None


def _point(i: int) -> str:
    return f"point {i + 1}"


def make_pattern(
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
        raise file_error(path, f"the axis has {x.size} values but the intensity has {y.size}")
    if x.size < 2:
        raise file_error(path, f"a pattern needs at least 2 data points, found {x.size}")
    for values, name in ((x, "axis"), (y, "intensity")):
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            kind = "NaN" if np.isnan(values[i]) else "infinite"
            raise file_error(path, f"{kind} {name} value on {where(i)} ({int(bad.sum())} non-finite value(s) in all)")
    _check_axis_range(path, x, axis, where)
    steps = np.diff(x)
    if np.all(steps < 0):  # measured high-to-low: keep it, ascending
        x, y = x[::-1], y[::-1]
        metadata = {**metadata, "axis_reversed": True}
    elif not np.all(steps > 0):
        ascending = steps[0] > 0
        i = int(np.flatnonzero(steps <= 0 if ascending else steps >= 0)[0])
        how = "repeats" if steps[i] == 0 else "goes back"
        raise file_error(
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
            raise file_error(path, f"2θ = {x[i]:g} on {where(i)} is outside (0, 180) degrees")
    elif (x < 0).any():
        i = int(np.flatnonzero(x < 0)[0])
        raise file_error(path, f"q = {x[i]:g} on {where(i)} is negative")


def require_axis(pattern: Diffractogram, axis: Axis | None, path: PathLike) -> Diffractogram:
    """Self-describing formats state their axis; a contradicting `axis=` is refused, not obeyed."""
    if axis is not None and axis != pattern.axis:
        raise file_error(
            path,
            f"the file's axis is {pattern.axis!r} but axis={axis!r} was given; "
            "read it without axis= and convert with .to_q() or .to_two_theta()",
        )
    return pattern

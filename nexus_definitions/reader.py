"""Read every frame of a NeXus powder file (ours or another beamline's) for classification.

`read_patterns(path)` follows the file's default plot (the ``default`` attributes, as
`xrd_nexus_ml.io.read_nexus` does, with the helpers of `xrd_nexus_ml.io.nexus`) and returns one `Diffractogram`
per frame with the frame's pressure (GPa) and beam energy (keV). `read_nexus` reads only the
first frame of a stack; this reader reads all of them, each with its own wavelength where the
file records one per frame.

Files whose writer is still running or died mid-run are read in SWMR mode; then only the
frames complete in NXdetector/sequence_number are returned.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import numpy as np

from nexus_definitions import layout as L
from xrd_nexus_ml.errors import PatternError
from xrd_nexus_ml.io.base import existing_file, file_error, make_pattern
from xrd_nexus_ml.io.nexus import (
    axis_dataset,
    axis_values,
    entry_of,
    find_nxdata,
    h5_values,
    nexus_descriptions,
    nexus_wavelength,
    nx_class,
    signal_dataset,
)
from xrd_nexus_ml.pattern import HC_KEV_ANGSTROM, Diffractogram, resolve_wavelength

log = logging.getLogger(__name__)

#: Pressure units -> factor to GPa.
_PRESSURE_TO_GPA = {"gpa": 1.0, "mpa": 1e-3, "kpa": 1e-6, "pa": 1e-9, "bar": 1e-4, "kbar": 0.1, "mbar": 1e-7,
                    "atm": 1.01325e-4}
_WAVELENGTH_TO_ANGSTROM = {"angstrom": 1.0, "a": 1.0, "å": 1.0, "ang": 1.0, "nm": 10.0, "pm": 0.01, "m": 1e10}
_ENERGY_TO_KEV = {"kev": 1.0, "ev": 1e-3, "mev": 1e3}


@contextlib.contextmanager
def open_for_reading(path):
    """Open an HDF5 file read-only; a file still open for writing (or left so by a crash) is read in SWMR mode."""
    import h5py

    p = existing_file(path)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise file_error(p, f"not a readable HDF5/NeXus file ({exc})") from None
        try:
            f = h5py.File(p, "r", swmr=True)
        except OSError as exc2:
            raise file_error(p, f"the file is marked open for writing and cannot be read in SWMR mode either ({exc2}); "
                            "run `xrd-nexus-ml nexus recover` on it") from None
        log.info("%s is still open for writing (or its writer died); reading it in SWMR mode", p)
    try:
        yield f
    finally:
        f.close()


def _unit(dataset) -> str:
    value = dataset.attrs.get("units", b"")
    return L.decode(value).strip().lower().replace(" ", "") if value is not None else ""


def _complete_frames(entry, n_rows: int) -> tuple[int, np.ndarray]:
    """Number of complete frames and their seq_num (1, 2, ... where the file does not say)."""
    if L.SEQUENCE_NUMBER in entry:
        seq = np.asarray(entry[L.SEQUENCE_NUMBER][()], dtype=np.int64)
        n = min(len(seq), n_rows)
        return n, seq[:n]
    return n_rows, np.arange(1, n_rows + 1, dtype=np.int64)


def frame_count(path, h5file, entry: str | None = None) -> int:
    """Number of frames (rows of the default plot's signal; 1 for a single pattern)."""
    p = Path(path)
    nxdata = find_nxdata(p, h5file, entry)

    signal = signal_dataset(p, nxdata)
    n_rows = 1 if signal.ndim <= 1 else int(signal.shape[0])
    if signal.ndim > 2:
        raise file_error(p, f"HDF5 dataset {signal.name} has shape {signal.shape}; expected one pattern or a stack "
                        "(frames, points)")
    return _complete_frames(entry_of(nxdata), n_rows)[0]


def _per_frame(path, entry, n: int, names: tuple[str, ...], classes: tuple[str, ...] | None, scale: dict[str, float],
               default_unit: str) -> tuple[np.ndarray | None, str | None]:
    """Values of the first dataset called one of `names` (in a group of `classes`) with n rows, scaled."""
    import h5py

    found = []

    def visit(name):  # every link, not every object: NeXus links make one dataset appear in several groups
        if name.rsplit("/", 1)[-1].lower() not in names:
            return
        parent = entry[name.rsplit("/", 1)[0]] if "/" in name else entry
        try:
            obj = entry[name]
        except (KeyError, OSError):
            return
        if isinstance(obj, h5py.Dataset) and (classes is None or nx_class(parent) in classes):
            found.append(obj)

    entry.visit_links(visit)
    for dataset in found:
        values = np.ravel(h5_values(path, dataset))
        if values.size < n:
            continue
        unit = _unit(dataset) or default_unit
        unit = unit.replace("angstroms", "angstrom")
        if unit not in scale:
            raise file_error(path, f"units {unit!r} of HDF5 dataset {dataset.name} are not one of {sorted(scale)}")
        return values[:n] * scale[unit], dataset.name
    return None, None


def read_patterns(path, entry: str | None = None, wavelength: float | str | None = None,
                  on_bad_frame: str = "raise") -> tuple[list[Diffractogram], np.ndarray, np.ndarray]:
    """Every frame of the default plot as a Diffractogram, with pressures (GPa) and energies (keV).

    Pressure and energy are NaN where the file does not record them. Each pattern's metadata
    holds its ``seq_num`` (NXdetector/sequence_number, else 1, 2, ...) and ``frame_index``,
    which is how `nexus_definitions.writer.append_predictions` matches predictions to frames.
    `on_bad_frame="skip"` leaves out frames that are not valid patterns (NaN intensities)
    instead of raising; the three returned sequences stay aligned.
    """
    if on_bad_frame not in ("raise", "skip"):
        raise PatternError(f"on_bad_frame must be 'raise' or 'skip', got {on_bad_frame!r}", str(path))
    p = existing_file(path)
    with open_for_reading(p) as h5:
        nxdata = find_nxdata(p, h5, entry)

        signal = signal_dataset(p, nxdata)
        if signal.ndim == 0 or signal.ndim > 2:
            raise file_error(p, f"HDF5 dataset {signal.name} has shape {signal.shape}; expected one pattern or a stack "
                            "(frames, points)")
        y_all = h5_values(p, signal)
        if y_all.ndim == 1:
            y_all = y_all[None, :]
        entry_group = entry_of(nxdata)
        n, seq = _complete_frames(entry_group, y_all.shape[0])
        x_dataset = axis_dataset(p, nxdata)
        x_all, axis, unit_note = axis_values(p, x_dataset)
        if x_all.ndim > 2:
            raise file_error(p, f"HDF5 axis {x_dataset.name} has shape {x_all.shape}")
        lam_arg = resolve_wavelength(wavelength, str(p)) if wavelength is not None else None
        lam, lam_path = _per_frame(p, entry_group, n, ("wavelength", "incident_wavelength"),
                                   ("NXmonochromator", "NXbeam", "NXcrystal"), _WAVELENGTH_TO_ANGSTROM, "angstrom")
        energy, energy_path = _per_frame(p, entry_group, n, ("energy", "incident_energy"),
                                         ("NXmonochromator", "NXbeam"), _ENERGY_TO_KEV, "kev")
        if lam is None and energy is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                lam = HC_KEV_ANGSTROM / energy
            lam_path = energy_path
        if lam is None:  # a single value somewhere in the entry (read_nexus' rules)
            single, single_path = nexus_wavelength(p, entry_group)
            if single is not None:
                lam, lam_path = np.full(n, single), single_path
        if energy is None and lam is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                energy = HC_KEV_ANGSTROM / lam
        pressure, pressure_path = _per_frame(p, entry_group, n, ("pressure",), ("NXsample",), _PRESSURE_TO_GPA, "gpa")
        descriptions = nexus_descriptions(entry_group)
        patterns, pressures, energies = [], [], []
        for i in range(n):
            x = x_all[i] if x_all.ndim == 2 else x_all
            y = y_all[i]
            if x.size == y.size + 1:
                x = 0.5 * (x[:-1] + x[1:])
            frame_lam = lam_arg if lam_arg is not None else (
                float(lam[i]) if lam is not None and math.isfinite(lam[i]) and lam[i] > 0 else None)
            metadata = {
                "format": "nexus", "entry": entry_group.name, "nxdata": nxdata.name, "signal": signal.name,
                "axis_dataset": x_dataset.name, "axis_units": unit_note, "frame_index": i, "seq_num": int(seq[i]),
                "wavelength_origin": "argument" if lam_arg is not None else ("file" if frame_lam else "none"),
                **descriptions,
            }
            if lam_path and lam_arg is None:
                metadata["wavelength_path"] = lam_path
            if pressure_path:
                metadata["pressure_path"] = pressure_path
            try:
                pattern = make_pattern(p, x, y, axis=axis, wavelength=frame_lam, metadata=metadata,
                                        where=lambda j, i=i: f"frame {i} (seq_num {int(seq[i])}), point {j + 1}")
            except PatternError:
                if on_bad_frame == "raise":
                    raise
                log.warning("%s: frame %d (seq_num %d) is not a valid pattern; skipped", p, i, int(seq[i]))
                continue
            patterns.append(pattern)
            pressures.append(float(pressure[i]) if pressure is not None else math.nan)
            energies.append(float(energy[i]) if energy is not None else math.nan)
    return patterns, np.asarray(pressures, dtype=float), np.asarray(energies, dtype=float)

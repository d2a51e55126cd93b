"""NeXus/HDF5 patterns: the file's default plot (NXdata signal and axis) followed as the NeXus rules
say, with the wavelength or energy from the beam or monochromator. `read_nexus` reads the first
frame; `nexus_definitions.reader` reads every frame of a stack with the same helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xrd_nexus_ml.errors import WavelengthError
from xrd_nexus_ml.io.base import (
    PathLike,
    choose_wavelength,
    existing_file,
    file_error,
    make_pattern,
    wavelength_from_energy,
)
from xrd_nexus_ml.pattern import Axis, Diffractogram

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


def nx_class(node) -> str | None:
    return _attr_text(node, "NX_class")


def _is_group(node, wanted: str) -> bool:
    import h5py

    return isinstance(node, h5py.Group) and nx_class(node) == wanted


def _h5_get(path: Path, group, name: str, why: str):
    if name not in group:
        target = f"{group.name.rstrip('/')}/{name}" if not name.startswith("/") else name
        raise file_error(path, f"HDF5 path {target} ({why}) does not exist")
    return group[name]


def find_nxdata(path: Path, h5, entry: str | None):
    """Follow the `default` attributes from the root (or `entry`); else take the first NXdata found."""
    import h5py

    start = h5 if entry is None else _h5_get(path, h5, entry, "the entry asked for")
    if not isinstance(start, h5py.Group):
        raise file_error(path, f"HDF5 path {start.name} is a dataset, not an NXentry or NXdata group")
    node = start
    for _ in range(8):  # a chain of `default` links is short; a loop of them must not hang us
        target = _attr_text(node, "default")
        if nx_class(node) == "NXdata" or not target:
            break
        node = _h5_get(path, node, target, f"named by the 'default' attribute of {node.name}")
        if not isinstance(node, h5py.Group):
            raise file_error(path, f"HDF5 path {node.name} (a 'default' target) is a dataset, not a group")
    if nx_class(node) == "NXdata":
        return node
    for root in (node, start):
        found = root.visititems(lambda name, obj: name if _is_group(obj, "NXdata") else None)
        if found:
            return root[found]
    raise file_error(path, f"no NXdata group found under HDF5 path {start.name}")


def signal_dataset(path: Path, nxdata):
    name = _attr_text(nxdata, "signal")
    if name:
        return _h5_get(path, nxdata, name, "named by the 'signal' attribute")
    for obj in nxdata.values():  # NeXus before 2014: signal=1 on the dataset itself
        if str(_attr_text(obj, "signal")) == "1":
            return obj
    for key in ("data", "intensity", "counts"):
        if key in nxdata:
            return nxdata[key]
    raise file_error(path, f"NXdata group {nxdata.name} has no 'signal' attribute naming its intensities")


def axis_dataset(path: Path, nxdata):
    names = [n for n in _attr_list(nxdata, "axes") if n and n != "."]
    if names:
        return _h5_get(path, nxdata, names[-1], "named by the 'axes' attribute")
    for key in nxdata:
        if key.lower() in _TWO_THETA_NAMES | _Q_NAMES:
            return nxdata[key]
    raise file_error(path, f"NXdata group {nxdata.name} has no 'axes' attribute and no dataset named two_theta or q")


def axis_values(path: Path, dataset) -> tuple[np.ndarray, Axis, str]:
    """Axis values in degrees or Å^-1, the axis kind, and how the unit was decided."""
    values = h5_values(path, dataset)
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
        raise file_error(path, f"units {units!r} of HDF5 dataset {dataset.name} are neither degrees nor 1/angstrom")
    if name in _TWO_THETA_NAMES:
        return values, "two_theta", "none given; degrees assumed from the name"
    if name in _Q_NAMES:
        return values, "q", "none given; 1/angstrom assumed from the name"
    raise file_error(path, f"HDF5 dataset {dataset.name} has no 'units' attribute and its name says neither 2θ nor q")


def h5_values(path: Path, dataset) -> np.ndarray:
    try:
        return np.asarray(dataset[()], dtype=float)
    except (TypeError, ValueError) as exc:
        raise file_error(path, f"HDF5 dataset {dataset.name} does not hold numbers ({exc})") from None


def _first_frame(values: np.ndarray) -> np.ndarray:
    return values[(0,) * (values.ndim - 1)] if values.ndim > 1 else values


def nexus_wavelength(path: Path, entry) -> tuple[float | None, str | None]:
    """The beam wavelength (Å) under `entry`: a wavelength field first, else the photon energy."""
    import h5py

    found: list[tuple[int, str, Any]] = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        key, parent_class = name.rsplit("/", 1)[-1].lower(), nx_class(obj.parent)
        if key in _WAVELENGTH_NAMES:
            found.append((0 if parent_class in _BEAM_CLASSES else 1, "wavelength", obj))
        elif key == "incident_energy" or (key == "energy" and parent_class in _BEAM_CLASSES):
            found.append((2, "energy", obj))  # never NXsource/energy: that is the storage ring's

    entry.visititems(visit)
    if not found:
        return None, None
    _, kind, dataset = min(found, key=lambda item: item[0])
    values = np.ravel(h5_values(path, dataset))
    if values.size == 0:
        raise file_error(path, f"HDF5 dataset {dataset.name} ({kind}) is empty", WavelengthError)
    value = float(values[0])
    units = (_attr_text(dataset, "units") or "").strip().lower()
    if kind == "wavelength":
        scale = {"nm": 10.0, "pm": 0.01, "m": 1e10}.get(units, 1.0)
        return value * scale, dataset.name
    energy_kev = value / 1000.0 if units == "ev" else value
    return wavelength_from_energy(path, energy_kev), dataset.name


def entry_of(node):
    while node.name != "/" and nx_class(node) != "NXentry":
        node = node.parent
    return node


def _nexus_text(group, name: str) -> str | None:
    if name not in group:
        return None
    value = group[name][()]
    value = value.ravel()[0] if isinstance(value, np.ndarray) and value.size else value
    return value.decode() if isinstance(value, bytes) else str(value)


def nexus_descriptions(entry) -> dict[str, str]:
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

    p = existing_file(path)
    try:
        h5 = h5py.File(p, "r")
    except OSError as exc:
        raise file_error(p, f"not a readable HDF5/NeXus file ({exc})") from None
    with h5:
        nxdata = find_nxdata(p, h5, entry)
        signal = signal_dataset(p, nxdata)
        x_dataset = axis_dataset(p, nxdata)
        y_all = h5_values(p, signal)
        if y_all.ndim == 0:
            raise file_error(p, f"HDF5 dataset {signal.name} holds one number, not a pattern")
        x, axis, unit_note = axis_values(p, x_dataset)
        x, y = _first_frame(x), _first_frame(y_all)
        if x.size == y.size + 1:  # bin edges -> centres
            x = 0.5 * (x[:-1] + x[1:])
        if x.size != y.size:
            raise file_error(p, f"HDF5 axis {x_dataset.name} has {x.size} values, signal {signal.name} {y.size}")
        entry_group = entry_of(nxdata)
        in_file, wavelength_path = nexus_wavelength(p, entry_group)
        lam, origin = choose_wavelength(p, wavelength, in_file, f"HDF5 path {wavelength_path}")
        metadata: dict[str, Any] = {
            "format": "nexus", "entry": entry_group.name, "nxdata": nxdata.name, "signal": signal.name,
            "axis_dataset": x_dataset.name, "axis_units": unit_note, "wavelength_origin": origin,
        }
        if in_file is not None:
            metadata.update(wavelength_in_file=in_file, wavelength_path=wavelength_path)
        if y_all.ndim > 1:
            metadata["note"] = f"signal has shape {y_all.shape}; only the first frame was read"
        metadata.update(nexus_descriptions(entry_group))
    return make_pattern(p, x, y, axis=axis, wavelength=lam, metadata=metadata)

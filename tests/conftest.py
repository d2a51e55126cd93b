"""Shared test data (the XRD-AutoAnalyzer Li-Mn-Ti-O-F example, whose files lie in three places) and
helpers that several test modules use: fixtures, never imported from another test module."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

TESTS = Path(__file__).parent
EXAMPLES = TESTS.parent / "xrd_nexus_ml" / "data" / "examples"
#: The 56 reference CIFs of the Li-Mn-Ti-O-F example (shipped with the package for the demo).
LMTOF_REFERENCES = EXAMPLES / "references"
_LMTOF_SPECTRA = [
    *(EXAMPLES / n for n in ("MnO.xy", "TiO2.xy", "Mn2O3.xy")),
    TESTS / "data" / "measured" / "Li2MnO3+MnO+TiO2.xy",
    *sorted((TESTS / "data" / "autoanalyzer" / "li-mn-ti-o-f" / "Spectra").glob("*.xy")),
]


@pytest.fixture(scope="session")
def lmtof_spectra(tmp_path_factory) -> Path:
    """A folder holding all 8 measured patterns of the Li-Mn-Ti-O-F example (names carry the truth)."""
    folder = tmp_path_factory.mktemp("lmtof_spectra")
    for path in _LMTOF_SPECTRA:
        shutil.copy(path, folder / path.name)
    assert len(list(folder.glob("*.xy"))) == 8
    return folder


def _checksums(path: Path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        def visit(name):  # every link, so a dataset linked from a new group is still checked at its old path
            obj = f[name]
            attrs = {k: repr(v) for k, v in obj.attrs.items()}
            body = obj[()].tobytes() if isinstance(obj, h5py.Dataset) and obj.dtype.kind != "O" else repr(
                obj[()]).encode() if isinstance(obj, h5py.Dataset) else b""
            out[name] = hashlib.sha256(body + repr(sorted(attrs.items())).encode()).hexdigest()
        f.visit_links(visit)
        out["/"] = repr(sorted((k, repr(v)) for k, v in f.attrs.items()))
    return out


@pytest.fixture(scope="session")
def checksums():
    """``checksums(path)``: a digest of every dataset's bytes and every attribute of an HDF5 file,
    to prove that appending to it changed nothing that was there."""
    return _checksums


class BeamlineFile(NamedTuple):
    path: Path
    pressures: np.ndarray  # GPa, one per frame
    transition: float  # GPa, the simulated B1 -> rB1 transition


@pytest.fixture(scope="session")
def beamline_file():
    """``beamline_file(path)``: a compression measured elsewhere, as a NeXus file: frames on 2θ
    (degrees), pressure in GPa, energy in keV; 12 frames from 8 to 52 GPa across a transition at 30 GPa."""
    import h5py

    from xrd_nexus_ml.transitions import simulate_ramp

    def write(path: Path, transition: float = 30.0) -> BeamlineFile:
        ramp = simulate_ramp(np.linspace(8, 52, 12), transition_pressure=transition, noise=0.02, seed=21)
        with h5py.File(path, "w") as f:
            entry = f.create_group("entry")
            entry.attrs.update(NX_class="NXentry", default="data")
            mono = entry.create_group("instrument/monochromator")
            entry["instrument"].attrs["NX_class"] = "NXinstrument"
            mono.attrs["NX_class"] = "NXmonochromator"
            mono.create_dataset("energy", data=ramp.energy_kev).attrs["units"] = "keV"
            sample = entry.create_group("sample")
            sample.attrs["NX_class"] = "NXsample"
            sample.create_dataset("pressure", data=ramp.pressures).attrs["units"] = "GPa"
            data = entry.create_group("data")
            data.attrs.update(NX_class="NXdata", signal="counts", axes=[".", "two_theta"])
            data.create_dataset("counts", data=ramp.intensity * 1e4)
            data.create_dataset("two_theta", data=ramp.two_theta).attrs["units"] = "degrees"
        return BeamlineFile(path, ramp.pressures, transition)

    return write

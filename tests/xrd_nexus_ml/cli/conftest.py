"""Fixtures of the command-line tests: another beamline's NeXus file to classify."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest


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

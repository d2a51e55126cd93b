"""Physics of powder diffraction: batched simulation, profiles, augmentation, synthetic crystals."""

from xrd_nexus_ml.physics.crystal import CrystalArrays, CrystalBatch
from xrd_nexus_ml.physics.peaks import PeakList
from xrd_nexus_ml.physics.profiles import PeakProfile, RenderGrid, RenderSettings, render
from xrd_nexus_ml.physics.simulator import PowderSimulator, SimulatedBatch

__all__ = [
    "CrystalArrays",
    "CrystalBatch",
    "PeakList",
    "PeakProfile",
    "PowderSimulator",
    "RenderGrid",
    "RenderSettings",
    "SimulatedBatch",
    "render",
]

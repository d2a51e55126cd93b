"""Phase transitions along a scan: simulated pressure ramps, phase classifiers, online change point.

pattern -> model -> record: `ramp` simulates (Mg0.2Fe0.8)O through its cubic -> rhombohedral
transition (and the seed's training regime); `models` classifies each frame (the seed's binned
vote, an end-to-end network, a cosine baseline; bundles in safetensors + JSON); `changepoint`
turns per-frame phase probabilities into transition-pressure estimates with uncertainties as
frames arrive; `detector` finds transitions without training, on any sample; `materials` holds
literature phases and their ramps. `xrd_nexus_ml.evaluation` measures it all on fresh ramps.
"""

from xrd_nexus_ml.transitions.changepoint import (
    BoundaryEstimate,
    FrameRecord,
    OnlineChangePoint,
    TransitionTracker,
)
from xrd_nexus_ml.transitions.models import (
    MODELS,
    BinnedVoteClassifier,
    CosineBaseline,
    EndToEndClassifier,
    ModelBundleError,
    believability,
    load_model,
    train_models,
)
from xrd_nexus_ml.transitions.ramp import (
    FERROPERICLASE_MW80,
    PHASES,
    SEED_COMPOSITION,
    SEED_ENERGY_KEV,
    SEED_TWO_THETA,
    BirchMurnaghan3,
    Instrument,
    Phase,
    Ramp,
    RampError,
    TrainingSet,
    phase_fractions,
    rhombohedral_angle,
    seed_pressures,
    simulate_ramp,
    simulate_training_set,
)

__all__ = [
    "FERROPERICLASE_MW80",
    "MODELS",
    "PHASES",
    "SEED_COMPOSITION",
    "SEED_ENERGY_KEV",
    "SEED_TWO_THETA",
    "BinnedVoteClassifier",
    "BirchMurnaghan3",
    "BoundaryEstimate",
    "CosineBaseline",
    "EndToEndClassifier",
    "FrameRecord",
    "Instrument",
    "ModelBundleError",
    "OnlineChangePoint",
    "Phase",
    "Ramp",
    "RampError",
    "TrainingSet",
    "TransitionTracker",
    "believability",
    "load_model",
    "phase_fractions",
    "rhombohedral_angle",
    "seed_pressures",
    "simulate_ramp",
    "simulate_training_set",
    "train_models",
]

"""Neural models: a 1D-RegNet encoder, metric-learning heads, and a sparse mixture of experts."""

from xrd_nexus_ml.models.metric import AdaCosHead, CosFaceHead, ExpertOutput, HierarchicalExpert
from xrd_nexus_ml.models.moe import (
    BinnedEncoder,
    FlatClassifier,
    GateOutput,
    MixtureOfExperts,
    MoEOutput,
    NoisyTopKGate,
    build_moe,
    default_expert_config,
    default_trunk_config,
)
from xrd_nexus_ml.models.regnet1d import RegNet1D, RegNetConfig

__all__ = [
    "AdaCosHead",
    "BinnedEncoder",
    "CosFaceHead",
    "ExpertOutput",
    "FlatClassifier",
    "GateOutput",
    "HierarchicalExpert",
    "MixtureOfExperts",
    "MoEOutput",
    "NoisyTopKGate",
    "RegNet1D",
    "RegNetConfig",
    "build_moe",
    "default_expert_config",
    "default_trunk_config",
]

"""Neural models: a 1D-RegNet encoder, metric-learning heads, a sparse mixture of experts, and the
1D ResNet family of the space-group classifier."""

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
from xrd_nexus_ml.models.resnet1d import RESNET_DEPTHS, ResNet1D, ResNetConfig, SymmetryClassifier

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
    "RESNET_DEPTHS",
    "RegNet1D",
    "RegNetConfig",
    "ResNet1D",
    "ResNetConfig",
    "SymmetryClassifier",
    "build_moe",
    "default_expert_config",
    "default_trunk_config",
]

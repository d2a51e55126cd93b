"""Inference: trained bundles in, `FramePrediction` records out (pattern -> model -> record).

`engine` loads the models once and classifies batches of frames per run; `library` is the
open-set check; `records` is the plain data every consumer (Bluesky documents, NeXus) moves.
"""

from xrd_nexus_ml.inference.engine import (
    Frame,
    InferenceEngine,
    RunClassifier,
)
from xrd_nexus_ml.inference.library import LibraryGate
from xrd_nexus_ml.records import FLAGS, FramePrediction, ModelProvenance, event_data_keys

__all__ = [
    "FLAGS",
    "Frame",
    "FramePrediction",
    "InferenceEngine",
    "LibraryGate",
    "ModelProvenance",
    "RunClassifier",
    "event_data_keys",
]

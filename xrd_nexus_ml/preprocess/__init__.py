"""What every model does to a measured pattern before it reads it: background removal (SNIP)
and the preparation of detector frames onto a model's q grid."""

from xrd_nexus_ml.preprocess.background import model_input, snip_background, subtract_background
from xrd_nexus_ml.preprocess.frames import SNIP_WIDTH_Q, PreparedFrames, prepare_frames

__all__ = ["SNIP_WIDTH_Q", "PreparedFrames", "model_input", "prepare_frames", "snip_background",
           "subtract_background"]

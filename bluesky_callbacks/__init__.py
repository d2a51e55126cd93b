"""Everything that speaks Bluesky: callbacks, simulated beamline devices, steering plans, storage.

- `ClassifierCallback` (classifier): live classification, published as a derived run.
- `NexusWriter` (nexus_writer): one NXxrd_ml NeXus file per run, raw and derived runs combined.
- `LiveView` (live_view): the scan drawn as it runs (frames, phases, running estimate).
- `RunStore` (storage): the embedded tiled store for raw and derived runs.
- `sim`: the simulated high-pressure beamline (ophyd devices); `plans`: adaptive steering.
- `serve`: the classifier behind a 0MQ proxy; `demo`: the main job; `bench`: its cost.
"""

from bluesky_callbacks.classifier import ClassifierCallback, FrameKeys
from bluesky_callbacks.live_view import LiveView
from bluesky_callbacks.nexus_writer import NexusWriter
from bluesky_callbacks.storage import RunStore

__all__ = ["ClassifierCallback", "FrameKeys", "LiveView", "NexusWriter", "RunStore"]

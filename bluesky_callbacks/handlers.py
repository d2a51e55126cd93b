"""Handlers that load externally stored frames back into documents (`event_model.Filler`).

The simulated detectors of `bluesky_callbacks.sim` write each frame to an HDF5 file and put a
datum id in the Event, as an Area Detector's HDF5 plugin does. Their Resource documents use
the spec "AD_HDF5" with resource_kwargs {"frame_per_point": n}; each Datum names a
`point_number`. `HDF5FrameHandler` turns (resource, datum) back into the frame:

    Filler(handler_registry=HANDLERS, inplace=False)

Files are opened lazily and in SWMR read mode, so a Filler running as a live callback reads
frames the detector is still appending to the same file.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from xrd_nexus_ml.errors import XrdNexusMlError

#: The spec of the Resource documents the handler reads.
AD_HDF5 = "AD_HDF5"
#: Where the frames live in the file: (n_frames, *frame_shape), one row per point.
FRAMES_DATASET = "/entry/data/data"


class FrameNotWrittenError(XrdNexusMlError, OSError):
    """A Datum points at a frame the file does not (yet) hold. An OSError, so that
    `event_model.Filler` retries: the writer may not have flushed it yet."""


class HDF5FrameHandler:
    """Frames of one AD_HDF5 resource: `handler(point_number)` returns that point's frame(s).

    resource_path: the HDF5 file (the Filler joins the Resource's root and resource_path).
    frame_per_point: frames written per point; 1 returns the frame itself (the descriptor's
    shape), more return an array (frame_per_point, *frame_shape).
    """

    specs = {AD_HDF5}

    def __init__(self, resource_path: str, frame_per_point: int = 1):
        if not (isinstance(frame_per_point, int) and frame_per_point >= 1):
            raise ValueError(f"frame_per_point must be a positive integer, got {frame_per_point!r}")
        self.path = Path(resource_path)
        self.frame_per_point = frame_per_point
        self._file: h5py.File | None = None

    def _dataset(self) -> h5py.Dataset:
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r", swmr=True)
            except FileNotFoundError as error:
                raise FrameNotWrittenError(f"{self.path}: no such HDF5 file (yet)") from error
        if FRAMES_DATASET not in self._file:
            raise FrameNotWrittenError(f"{self.path}: has no dataset {FRAMES_DATASET}")
        dataset = self._file[FRAMES_DATASET]
        dataset.refresh()  # see frames appended since the file was opened
        return dataset

    def __call__(self, point_number: int) -> np.ndarray:
        dataset = self._dataset()
        start = int(point_number) * self.frame_per_point
        stop = start + self.frame_per_point
        if start < 0 or stop > dataset.shape[0]:
            raise FrameNotWrittenError(
                f"{self.path}{FRAMES_DATASET}: point {point_number} needs frames {start}-{stop - 1}, "
                f"the file holds {dataset.shape[0]}"
            )
        return dataset[start] if self.frame_per_point == 1 else dataset[start:stop]

    def close(self) -> None:
        """Close the file (idempotent); a later call reopens it."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> HDF5FrameHandler:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


#: Handler registry for `event_model.Filler` (and databroker) of everything `sim` writes.
HANDLERS: dict[str, type] = {AD_HDF5: HDF5FrameHandler}

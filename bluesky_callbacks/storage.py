"""Run storage that needs no set-up: an embedded tiled server in a local folder.

Bluesky's maintained path for storing documents is tiled (`bluesky_tiled_plugins.TiledWriter`
into a tiled catalog); `tiled.server.SimpleTiledServer` runs one in-process on loopback, with
its catalog (SQLite) and array data (Zarr/Parquet) in a folder. `RunStore` starts it and hands
out writers: one per document source, because the raw run comes from the RunEngine thread and
the derived run from the classifier's worker thread. Reopening the same folder later gives the
same runs back (see docs/live.md, "Reading runs back").
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class RunStore:
    """An embedded tiled catalog in `directory` (a temporary one when None)."""

    def __init__(self, directory: str | Path | None = None):
        from tiled.client import from_uri
        from tiled.server import SimpleTiledServer

        if directory is not None:
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._server = SimpleTiledServer(directory=str(directory) if directory is not None else None)
        self.uri = self._server.uri
        self.client = from_uri(self.uri)
        self._writers: list = []

    def writer(self):
        """A new `TiledWriter` into this store: subscribe one to each document source."""
        from bluesky_tiled_plugins import TiledWriter

        writer = TiledWriter(self.client)
        self._writers.append(writer)
        return writer

    def __getitem__(self, uid: str):
        """A stored run (raw or derived) by its start uid, as a tiled `BlueskyRun`."""
        return self.client[uid]

    def derived_runs(self, raw_uid: str) -> list:
        """The prediction runs that answer raw run `raw_uid` (their start has original_run_uid)."""
        from tiled.queries import Key

        results = self.client.search(Key("start.original_run_uid") == raw_uid)
        return [results[uid] for uid in results]

    def close(self):
        self._server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

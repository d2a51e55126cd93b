"""External data: frames that a detector wrote to a file and the documents only point to.

Two conventions reach a callback: the legacy Resource/Datum pair (ophyd v1 detectors; the event
holds a datum id and `event_model.Filler` with a handler reads the frame), and
StreamResource/StreamDatum (ophyd-async; no event carries the frames, a StreamDatum says which
rows of the file belong to which seq_nums). `ExternalData` takes both and returns arrays. It
reads; it never computes.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import event_model
import numpy as np

from bluesky_callbacks.handlers import HANDLERS
from xrd_nexus_ml.errors import XrdNexusMlError


class ExternalDataError(XrdNexusMlError, ValueError):
    """An external frame could not be found or read; the message names the document and the file."""


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ExternalDataError(f"StreamResource uri {uri!r}: only local files (file://) can be read here")
    return Path(parsed.path)


class ExternalData:
    """Resolves external data of one or more runs: feed it every document, ask it for frames."""

    def __init__(self, handler_registry: dict | None = None):
        registry = dict(HANDLERS)
        registry.update(handler_registry or {})
        self._handlers: dict = {}  # ours, so close() can close the files handlers opened
        self.filler = event_model.Filler(registry, inplace=False, handler_cache=self._handlers)
        self.stream_resources: dict[str, dict] = {}
        self._files: dict[str, object] = {}

    # -- documents -------------------------------------------------------------------------
    def __call__(self, name: str, doc: dict):
        """Cache what later fills need (resources, datums, descriptors)."""
        if name in ("resource", "datum", "datum_page", "descriptor", "start"):
            self.filler(name, doc)
        elif name == "stream_resource":
            self.stream_resources[doc["uid"]] = doc

    def fill_page(self, page: dict, keys: set[str]) -> dict:
        """A copy of the event page with the external `keys` read from their files."""
        pending = [key for key, filled in page.get("filled", {}).items() if key in keys and not all(filled)]
        if not pending:
            return page
        try:
            return self.filler.fill_event_page(page, include=sorted(keys), inplace=False)
        except Exception as err:  # the handler's own error, with the resource named
            raise ExternalDataError(f"could not read external data {sorted(keys)} of event page "
                                    f"{page.get('uid', '?')}: {type(err).__name__}: {err}") from err

    def read_stream_datum(self, doc: dict) -> tuple[str, np.ndarray, np.ndarray]:
        """(data_key, frames (n, ...), seq_nums (n,)) of a StreamDatum pointing into HDF5."""
        resource = self.stream_resources.get(doc["stream_resource"])
        if resource is None:
            raise ExternalDataError(f"StreamDatum {doc['uid']}: unknown stream_resource {doc['stream_resource']!r} "
                                    f"(its StreamResource document must come first)")
        if resource.get("mimetype") not in ("application/x-hdf5", "application/x-hdf5-swmr"):
            raise ExternalDataError(f"StreamResource {resource['uid']}: mimetype {resource.get('mimetype')!r} "
                                    f"is not HDF5, which is all this reader knows")
        dataset = resource.get("parameters", {}).get("dataset")
        if not dataset:
            raise ExternalDataError(f"StreamResource {resource['uid']}: parameters hold no 'dataset' path")
        path = _local_path(resource["uri"])
        start, stop = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        seq = np.arange(int(doc["seq_nums"]["start"]), int(doc["seq_nums"]["stop"]))
        h5 = self._open(path)
        if dataset not in h5:
            raise ExternalDataError(f"{path}: no dataset {dataset!r} (StreamResource {resource['uid']})")
        ds = h5[dataset]
        ds.refresh()
        if stop > ds.shape[0]:
            raise ExternalDataError(f"{path}:{dataset}: StreamDatum {doc['uid']} asks for rows {start}-{stop} "
                                    f"but the dataset holds {ds.shape[0]}")
        return resource["data_key"], np.asarray(ds[start:stop]), seq

    def _open(self, path: Path):
        import h5py

        key = str(path)
        if key not in self._files:
            try:
                self._files[key] = h5py.File(path, "r", libver="latest", swmr=True)
            except OSError:
                try:
                    self._files[key] = h5py.File(path, "r")
                except OSError as err:
                    raise ExternalDataError(
                        f"{path}: cannot open the HDF5 file a StreamResource points to: {err}") from err
        return self._files[key]

    def close(self):
        for h5 in self._files.values():
            h5.close()
        self._files.clear()
        for handler in self._handlers.values():  # Filler.close() leaves handlers' files open
            if hasattr(handler, "close"):
                handler.close()
        self._handlers.clear()
        self.filler.close()

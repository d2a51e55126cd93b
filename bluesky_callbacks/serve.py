"""Classification out of process: `xrd-nexus-ml serve --zmq HOST:PORT`.

A GPU node runs one `ClassifierCallback` behind bluesky's 0MQ `RemoteDispatcher`, listening to
the output port of a `bluesky-0MQ-proxy` that several beamline RunEngines publish to. The
derived runs go back into the proxy's input port (`--publish`), so every listener sees raw and
derived runs side by side, and/or into a local store and NeXus files.

The documents travel as msgpack (`bluesky_callbacks.wire`), not bluesky's default pickle, which
would let any host that can publish to the proxy run code here: RunEngines publish with
``Publisher(address, serializer=bluesky_callbacks.wire.serialize)``. A message that is not a
bluesky document is logged, counted (`GuardedRemoteDispatcher.dropped`) and dropped; the server
keeps running. `--unsafe-pickle` restores pickle on both ends, for hosts that trust each other.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import signal
import time
from collections.abc import Callable
from pathlib import Path

from bluesky.callbacks.zmq import RemoteDispatcher
from bluesky.run_engine import DocumentNames

from bluesky_callbacks.classifier import ClassifierCallback
from bluesky_callbacks.nexus_writer import NexusWriter
from bluesky_callbacks.storage import RunStore
from bluesky_callbacks.wire import deserialize, serialize
from xrd_nexus_ml.inference import InferenceEngine

log = logging.getLogger(__name__)

#: a flood of bad messages logs one warning per this many seconds; every one is counted
DROP_LOG_INTERVAL_S = 5.0


def parse_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" -> (host, port), with a clear error for anything else."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. localhost:5578), got {text!r}")
    return host, int(port)


def codec(unsafe_pickle: bool = False) -> tuple[Callable, Callable]:
    """(serializer, deserializer) for both 0MQ ends: msgpack (`bluesky_callbacks.wire`), or with
    unsafe_pickle bluesky's pickle default, which lets any publisher run code on this host."""
    if unsafe_pickle:
        log.warning("--unsafe-pickle: documents travel as pickle; any host that can publish to the proxy "
                    "can run code on this one")
        return pickle.dumps, pickle.loads

    return serialize, deserialize


class GuardedRemoteDispatcher(RemoteDispatcher):
    """bluesky's `RemoteDispatcher`, hardened for a shared network.

    bluesky's `_poll` survives a message its deserializer rejects (it prints it, up to 1 KiB, and
    goes on) but not an unknown document name (a `KeyError` that ends its loop, and `serve` with
    it), and under a sustained flood it never yields to the loop, so the documents it schedules
    pile up. Here every message goes through `handle`: whatever is not a bluesky document
    (unsplittable, unknown name, rejected by the deserializer, not a dict) is logged (rate-limited)
    and counted in `dropped`; a document whose callbacks raise is logged and counted in `failed`;
    and the loop runs each document's callbacks before reading the next message, so nothing
    accumulates per message beyond 0MQ's own bounded receive queue."""

    def __init__(self, address, *, deserializer: Callable, prefix: bytes = b"", loop=None):
        super().__init__(address, prefix=prefix, loop=loop, deserializer=deserializer)
        self.dropped = 0  # messages that were not bluesky documents
        self.failed = 0  # documents whose callbacks raised
        self._last_warning = {"dropped": -float("inf"), "failed": -float("inf")}

    async def _poll(self):  # overrides bluesky's (same socket, prefix and deserializer)
        while True:
            self.handle(await self._socket.recv())
            await asyncio.sleep(0)  # let the scheduled document's callbacks run before the next recv

    def handle(self, message: bytes) -> bool:
        """One raw 0MQ message ("PREFIX NAME BODY"): schedule its document, or drop it. True if scheduled."""
        parts = message.split(b" ", 2)
        if len(parts) != 3:
            return self._drop("not 'PREFIX NAME BODY'")
        prefix, name, body = parts
        if self._prefix and prefix != self._prefix:
            return False  # someone else's: not ours to count
        try:
            kind = DocumentNames[name.decode()]
        except (UnicodeDecodeError, KeyError):
            return self._drop(f"unknown document name {name[:40]!r}")
        try:
            doc = self._deserializer(body)
        except Exception as e:
            return self._drop(f"{kind.name} document of {len(body)} bytes rejected: {type(e).__name__}: {e}")
        if not isinstance(doc, dict):
            return self._drop(f"{kind.name} document decoded to a {type(doc).__name__}, not a dict")
        self.loop.call_soon(self._dispatch, kind, doc)
        return True

    def _dispatch(self, kind, doc: dict):
        try:
            self.process(kind, doc)
        except Exception:
            self.failed += 1
            if self._due("failed"):
                log.warning("a callback failed on a %s document (uid %.40r); continuing (%d failed so far; the "
                            "next %g s of failures are only counted)", kind.name, str(doc.get("uid")), self.failed,
                            DROP_LOG_INTERVAL_S, exc_info=True)

    def _drop(self, why: str) -> bool:
        self.dropped += 1
        if self._due("dropped"):
            log.warning("dropped a message from %s: %.300s (%d dropped so far; the next %g s of drops are only "
                        "counted)", self.address, why, self.dropped, DROP_LOG_INTERVAL_S)
        return False

    def _due(self, what: str) -> bool:
        """Rate-limits the warnings: a flood of bad messages must not become a flood of log lines."""
        now = time.monotonic()
        if now - self._last_warning[what] < DROP_LOG_INTERVAL_S:
            return False
        self._last_warning[what] = now
        return True


def serve(listen: str, publish: str | None = None, store: str | Path | None = None, nexus_dir: str | Path | None = None,
          device: str = "auto", batch_size: int = 64, max_queue: int = 4096, ready=None,
          spacegroup_model: str | None = "default", identification_model: str | None = "default",
          identification_options: dict | None = None, transition_model: str = "default",
          unsafe_pickle: bool = False) -> None:
    """Classify every run arriving at `listen` until interrupted (SIGINT/SIGTERM).
    spacegroup_model / identification_model / identification_options: as
    `InferenceEngine.from_bundles` (None: not run); transition_model: a bundle folder, "default",
    "auto" (the training-free detector) or "none". Documents travel as msgpack on both ends;
    unsafe_pickle: as pickle (bluesky's default), which lets any publisher run code on this host."""
    from bluesky.callbacks.zmq import Publisher

    engine = InferenceEngine.from_bundles(transition_model, device=device, spacegroup_model=spacegroup_model,
                                          identification_model=identification_model,
                                          identification_options=identification_options)
    classifier = ClassifierCallback(engine, batch_size=batch_size, max_queue=max_queue)
    serializer, deserializer = codec(unsafe_pickle)
    dispatcher = GuardedRemoteDispatcher(parse_address(listen), deserializer=deserializer)
    closers = []
    if publish:
        # used only from the classifier's worker thread (0MQ sockets are not thread-safe)
        publisher = Publisher(parse_address(publish), prefix=b"xrd_nexus_ml", serializer=serializer)
        classifier.subscribe(publisher)
        closers.append(publisher.close)  # after the classifier (reversed order): it publishes to the end
    if store is not None:
        run_store = RunStore(store)
        dispatcher.subscribe(run_store.writer())
        classifier.subscribe(run_store.writer())
        closers.append(run_store.close)
    if nexus_dir is not None:
        writer = NexusWriter(out_dir=nexus_dir)
        dispatcher.subscribe(writer)
        classifier.subscribe(writer)
    dispatcher.subscribe(classifier)
    closers.append(classifier.close)

    def interrupt(signum, frame):
        log.info("signal %s: stopping", signum)
        dispatcher.loop.call_soon_threadsafe(dispatcher.stop)

    signal.signal(signal.SIGTERM, interrupt)
    log.info("classifying runs from %s (models: %s, device %s)", listen, engine.model_ids, engine.device)
    if ready is not None:
        ready()
    try:
        dispatcher.start()
    except (KeyboardInterrupt, asyncio.CancelledError):  # how the dispatcher's loop ends
        pass
    finally:
        for close in reversed(closers):
            close()
        (log.warning if dispatcher.dropped or dispatcher.failed else log.info)(
            "stopped: %d message(s) dropped (not bluesky documents), %d document(s) failed in a callback",
            dispatcher.dropped, dispatcher.failed)

"""Classification out of process: `xrd-nexus-ml serve --zmq HOST:PORT`.

A GPU node runs one `ClassifierCallback` behind bluesky's 0MQ `RemoteDispatcher`, listening to
the output port of a `bluesky-0MQ-proxy` that several beamline RunEngines publish to. The
derived runs go back into the proxy's input port (`--publish`), so every listener sees raw and
derived runs side by side, and/or into a local store and NeXus files. The documents travel with
bluesky's default serializer (pickle): run it only between hosts that trust each other.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

log = logging.getLogger(__name__)


def parse_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" -> (host, port), with a clear error for anything else."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. localhost:5578), got {text!r}")
    return host, int(port)


def serve(listen: str, publish: str | None = None, store: str | Path | None = None, nexus_dir: str | Path | None = None,
          device: str = "auto", batch_size: int = 64, max_queue: int = 4096, ready=None,
          spacegroup_model: str | None = "default", identification_model: str | None = "default",
          identification_options: dict | None = None, transition_model: str = "default") -> None:
    """Classify every run arriving at `listen` until interrupted (SIGINT/SIGTERM).
    spacegroup_model / identification_model / identification_options: as
    `InferenceEngine.from_bundles` (None: not run); transition_model: a bundle folder, "default",
    "auto" (the training-free detector) or "none"."""
    from bluesky.callbacks.zmq import Publisher, RemoteDispatcher

    from bluesky_callbacks.classifier import ClassifierCallback
    from xrd_nexus_ml.inference import InferenceEngine

    engine = InferenceEngine.from_bundles(transition_model, device=device, spacegroup_model=spacegroup_model,
                                          identification_model=identification_model,
                                          identification_options=identification_options)
    classifier = ClassifierCallback(engine, batch_size=batch_size, max_queue=max_queue)
    dispatcher = RemoteDispatcher(parse_address(listen))
    closers = []
    if publish:
        # used only from the classifier's worker thread (0MQ sockets are not thread-safe)
        publisher = Publisher(parse_address(publish), prefix=b"xrd_nexus_ml")
        classifier.subscribe(publisher)
        closers.append(publisher.close)  # after the classifier (reversed order): it publishes to the end
    if store is not None:
        from bluesky_callbacks.storage import RunStore

        run_store = RunStore(store)
        dispatcher.subscribe(run_store.writer())
        classifier.subscribe(run_store.writer())
        closers.append(run_store.close)
    if nexus_dir is not None:
        from bluesky_callbacks.nexus_writer import NexusWriter

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


def cmd_serve(args) -> int:
    """The CLI command."""
    from xrd_nexus_ml.cli import identification_options

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(args.zmq, publish=args.publish, store=args.store, nexus_dir=args.nexus_dir, device=args.device,
          batch_size=args.batch_size, max_queue=args.max_queue, spacegroup_model=args.spacegroup_model,
          identification_model=args.identification_model, identification_options=identification_options(args),
          transition_model=args.transition_model, ready=lambda: print(f"serving {args.zmq}", flush=True))
    return 0

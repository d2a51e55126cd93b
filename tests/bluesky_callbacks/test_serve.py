"""`xrd-nexus-ml serve --zmq`: the classifier in another process, behind a real 0MQ proxy on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher, RemoteDispatcher
from ophyd.sim import SynAxis

from bluesky_callbacks.serve import parse_address
from bluesky_callbacks.wire import deserialize, serialize


def test_parse_address_names_what_it_expects():
    assert parse_address("localhost:5578") == ("localhost", 5578)
    for bad in ["localhost", ":5", "host:port", "host:70000"]:
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def test_serve_classifies_runs_published_through_a_proxy(zmq_proxy, listen_in_thread, ramp_detector, small_ramp):
    in_port, out_port = zmq_proxy

    received: list[tuple[str, dict]] = []
    done = threading.Event()
    loop = asyncio.new_event_loop()
    listener = RemoteDispatcher(("localhost", out_port), loop=loop, deserializer=deserialize)

    def collect(name, doc):
        received.append((name, doc))
        if name == "stop" and "classified" in doc.get("reason", ""):
            done.set()

    listener.subscribe(collect)
    listen_in_thread(listener)

    env = dict(os.environ, PYTHONPATH=os.getcwd())
    server = subprocess.Popen([sys.executable, "-m", "xrd_nexus_ml.cli", "serve", "--zmq", f"localhost:{out_port}",
                               "--publish", f"localhost:{in_port}", "--batch-size", "8"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    publisher = Publisher(("localhost", in_port), serializer=serialize)  # serve speaks msgpack, not pickle
    try:
        assert server.stdout.readline().startswith("serving"), "the server did not start"
        time.sleep(1.0)  # 0MQ subscriptions propagate asynchronously (slow joiner)
        ramp = small_ramp
        pressure = SynAxis(name="pressure")
        RE = RunEngine({})
        RE.subscribe(publisher)
        (uid,) = RE(bp.scan([ramp_detector(ramp, pressure)], pressure, 5, 55, ramp.n_frames))
        assert done.wait(120), "no derived run came back through the proxy"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        loop.call_soon_threadsafe(listener.stop)
        # close 0MQ sockets now: a context garbage-collected later blocks in term() on open sockets
        publisher.close()

    derived_start = [d for n, d in received if n == "start" and d.get("original_run_uid") == uid]
    assert len(derived_start) == 1  # and no derived-of-derived run: the server ignores its own echo
    assert not [d for n, d in received if n == "start" and d.get("original_run_uid") == derived_start[0]["uid"]]
    seq = [s for n, d in received if n == "event_page" and d["descriptor"] in
           {x["uid"] for m, x in received if m == "descriptor" and x["run_start"] == derived_start[0]["uid"]}
           for s in d["data"]["raw_seq_num"]]
    assert sorted(seq) == list(range(1, ramp.n_frames + 1))
    assert server.returncode == 0

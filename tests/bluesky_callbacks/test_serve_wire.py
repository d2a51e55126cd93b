"""What `serve` accepts from the 0MQ wire: msgpack documents only; hostile or malformed messages
are logged, counted and dropped, and the server keeps classifying."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import bluesky.plans as bp
import msgpack
import msgpack_numpy
import numpy as np
import pytest
import zmq
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from ophyd.sim import SynAxis

from bluesky_callbacks.serve import GuardedRemoteDispatcher, codec
from bluesky_callbacks.wire import MAX_MESSAGE_BYTES, WireError, deserialize, serialize
from xrd_nexus_ml.cli import build_parser


class Exploit:
    """Unpickling this runs a shell command: what any host on the network could send a pickle listener."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def smuggled_object_array(marker) -> bytes:
    """msgpack-numpy's own object-array map: its stock decoder unpickles the data."""
    return msgpack.packb({"data": {b"nd": True, b"kind": b"O", b"type": [["", "|O"]], b"shape": [1],
                                   b"data": pickle.dumps(Exploit(marker))}})


def malformed_messages(n: int, seed: int = 0) -> list[bytes]:
    """n raw 0MQ messages that are not bluesky documents: random bodies, truncated msgpack, wrong
    types, unknown names, no separators, non-string keys, bad arrays."""
    rng = np.random.default_rng(seed)
    good = serialize({"uid": "x", "data": {"pattern": np.arange(50.0)}, "time": 1.0})
    fixed = [msgpack.packb(v) for v in ([1, 2], 5, "doc", None, {1: 2}, {"a": 1, 3: 4})]
    fixed.append(msgpack.packb({"a": {b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [10**6], b"data": b"0"}}))
    fixed.append(msgpack.packb({"a": {b"nd": True, b"type": "|V0", b"kind": b"", b"shape": [10**12], b"data": b""}}))
    fixed.append(b"\x91" * 5000)  # nested too deep
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:  # random bytes; a leading 0xc1 is never valid msgpack
            body = b"\xc1" + rng.bytes(int(rng.integers(0, 200)))
            out.append(b" event_page " + body)
        elif kind == 1:  # a valid document cut short
            out.append(b" event " + good[: int(rng.integers(1, len(good)))])
        elif kind == 2:  # well-formed msgpack of the wrong shape, or a bad array
            out.append(b" start " + fixed[i // 5 % len(fixed)])
        elif kind == 3:  # an unknown name (bluesky's own RemoteDispatcher dies on this KeyError)
            out.append(b" " + [b"bogus", b"\xff\xfe", b"__class__"][i // 5 % 3] + b" " + good)
        else:  # no "PREFIX NAME BODY" separators
            out.append(rng.bytes(int(rng.integers(0, 60))).replace(b" ", b"_"))
    return out


# -- the format ------------------------------------------------------------------------------------

def test_numpy_arrays_and_nested_dicts_survive_the_round_trip():
    doc = {"uid": "abc", "time": 1.5, "seq_num": [1, 2],
           "data": {"pattern": np.linspace(0, 1, 7, dtype=np.float32).reshape(7, 1), "n": np.int64(3),
                    "image": np.arange(12, dtype=">u2").reshape(3, 4)[:, ::2],  # not contiguous, big-endian
                    "nested": {"deep": [{"x": np.float64(2.5)}, "s", None, True]}},
           "table": np.zeros(2, dtype=[("a", "<f8"), ("b", "<i4", (2,))]),
           "names": np.array(["Si", "MgO"]), "objects": np.array(["a", 1], dtype=object), "z": 1 - 2j}
    back = deserialize(serialize(doc))
    assert set(back) == set(doc)
    for key in ("pattern", "image"):
        np.testing.assert_array_equal(back["data"][key], doc["data"][key])
        assert back["data"][key].dtype == doc["data"][key].dtype
        assert back["data"][key].flags.writeable
    assert back["data"]["n"] == 3 and isinstance(back["data"]["n"], np.int64)
    assert back["data"]["nested"] == {"deep": [{"x": 2.5}, "s", None, True]}
    assert back["table"].dtype == doc["table"].dtype
    np.testing.assert_array_equal(back["names"], doc["names"])
    assert back["objects"] == ["a", 1]  # object arrays travel as lists, never pickled
    assert back["seq_num"] == [1, 2] and back["z"] == 1 - 2j


def test_oversize_and_malformed_bodies_are_rejected_with_wire_error(tmp_path):
    with pytest.raises(WireError, match="over the .*limit"):
        deserialize(b"\x80" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(WireError, match="over the 100-byte limit"):
        deserialize(serialize({"a": np.zeros(100)}), max_bytes=100)
    for body, match in [(msgpack.packb([1]), "a map"), (msgpack.packb({1: 2}), "keys must be strings"),
                        (b"\x81", "not a msgpack document"), (b"\x80\x80", "not a msgpack document"),
                        (pickle.dumps(Exploit(tmp_path / "a")), "not a msgpack document"),
                        (smuggled_object_array(tmp_path / "b"), "object arrays"), ("text", "bytes")]:
        with pytest.raises(WireError, match=match):
            deserialize(body)
    assert not list(tmp_path.iterdir())
    # the controls: the payloads are real, pickle and msgpack-numpy's stock decoder run them
    pickle.loads(pickle.dumps(Exploit(tmp_path / "pickle")))
    msgpack.unpackb(smuggled_object_array(tmp_path / "msgpack_numpy"), object_hook=msgpack_numpy.decode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msgpack_numpy", "pickle"]


def test_unsafe_pickle_parses_and_selects_pickle_on_both_ends(caplog):
    parser = build_parser()
    assert parser.parse_args(["serve", "--zmq", "localhost:5578", "--unsafe-pickle"]).unsafe_pickle is True
    assert parser.parse_args(["serve", "--zmq", "localhost:5578"]).unsafe_pickle is False
    assert codec() == (serialize, deserialize)
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert codec(unsafe_pickle=True) == (pickle.dumps, pickle.loads)
    assert any("run code" in r.getMessage() for r in caplog.records)


# -- the listener ----------------------------------------------------------------------------------

def test_ten_thousand_malformed_messages_are_counted_and_dropped_in_bounded_memory(caplog, free_port):
    dispatcher = GuardedRemoteDispatcher(("localhost", free_port()), deserializer=deserialize)
    received = []
    dispatcher.subscribe(lambda name, doc: received.append((name, doc)))
    messages = malformed_messages(10_000)
    try:
        with caplog.at_level(logging.WARNING):
            assert not any(dispatcher.handle(m) for m in messages[:1000])
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            assert not any(dispatcher.handle(m) for m in messages[1000:])
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            assert not dispatcher.handle(b" start " + b"\x80" * (MAX_MESSAGE_BYTES + 1))
        assert dispatcher.dropped == 10_001
        assert grown < 256 * 1024, f"{grown} bytes kept by 9000 dropped messages"
        assert 1 <= len(caplog.records) <= 3  # rate-limited: a flood is not a flood of log lines
        # still a working dispatcher: a document is delivered, a failing callback is counted
        assert dispatcher.handle(b" start " + serialize({"uid": "u1", "time": 0.0}))
        dispatcher.loop.run_until_complete(asyncio.sleep(0))  # the loop runs the scheduled document
        dispatcher.subscribe(lambda name, doc: 1 / 0)
        assert dispatcher.handle(b" stop " + serialize({"uid": "u2", "run_start": "u1"}))
        dispatcher.loop.run_until_complete(asyncio.sleep(0))
        assert received == [("start", {"uid": "u1", "time": 0.0}), ("stop", {"uid": "u2", "run_start": "u1"})]
        assert dispatcher.failed == 1 and dispatcher.dropped == 10_001
    finally:
        dispatcher.stop()


def test_serve_drops_a_pickle_exploit_and_a_malformed_flood_and_keeps_classifying(tmp_path, zmq_proxy, listen_in_thread,
                                                                                  ramp_detector, small_ramp):
    """A real server behind a real proxy on loopback: a run, then a pickle payload that would run
    `touch`, 250 malformed messages and a document that breaks a callback, then a second run."""
    in_port, out_port = zmq_proxy

    # the test listens with the same guard: the hostile messages reach every listener of the proxy
    loop = asyncio.new_event_loop()
    listener = GuardedRemoteDispatcher(("localhost", out_port), loop=loop, deserializer=deserialize)
    classified = []
    finished = threading.Semaphore(0)

    def collect(name, doc):
        if name == "stop" and "classified" in doc.get("reason", ""):
            classified.append(doc)
            finished.release()

    listener.subscribe(collect)
    listen_in_thread(listener)

    marker, smuggled = tmp_path / "pwned", tmp_path / "pwned_msgpack_numpy"
    n_malformed = 250
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    server = subprocess.Popen([sys.executable, "-m", "xrd_nexus_ml.cli", "serve", "--zmq", f"localhost:{out_port}",
                               "--publish", f"localhost:{in_port}", "--batch-size", "8",
                               "--spacegroup-model", "none", "--identification-model", "none"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    publisher = Publisher(("localhost", in_port), serializer=serialize)
    context = zmq.Context()
    raw = context.socket(zmq.PUB)  # what a hostile host sends: raw bytes into the proxy's input port
    raw.connect(f"tcp://localhost:{in_port}")
    output = ""
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if line.startswith("serving"):
                break
        assert lines and lines[-1].startswith("serving"), f"the server did not start:\n{''.join(lines)}"
        time.sleep(1.0)  # 0MQ subscriptions propagate asynchronously (slow joiner)
        ramp = small_ramp
        pressure = SynAxis(name="pressure")
        RE = RunEngine({})
        RE.subscribe(publisher)
        scan = lambda: bp.scan([ramp_detector(ramp, pressure)], pressure, 5, 55, ramp.n_frames)  # noqa: E731
        RE(scan())  # the first run: every socket is connected before the attack
        assert finished.acquire(timeout=120), "the first run was not classified"

        exploit = pickle.dumps(Exploit(marker))
        raw.send(b" start " + exploit)
        raw.send(b" start " + smuggled_object_array(smuggled))
        for message in malformed_messages(n_malformed - 2, seed=1):
            raw.send(message)
        raw.send(b" start " + serialize({"time": 0.0}))  # a document, but no uid: the classifier raises
        RE(scan())
        assert finished.acquire(timeout=120), "the server stopped classifying after the hostile messages"
        time.sleep(0.5)
        assert server.poll() is None, "the server died"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
        loop.call_soon_threadsafe(listener.stop)
        publisher.close()
        raw.close(linger=0)
        context.term()

    assert not marker.exists() and not smuggled.exists(), "a hostile message ran code on the server"
    assert len(classified) == 2
    assert server.returncode == 0, output
    assert f"start document of {len(exploit)} bytes rejected: WireError" in output, output  # the exploit, first
    assert re.search(rf"stopped: {n_malformed} message\(s\) dropped .*, 1 document\(s\) failed", output), output
    assert listener.dropped == n_malformed and listener.failed == 0

"""Fixtures of the Bluesky callback tests: a detector that plays a simulated ramp, loopback ports,
a 0MQ proxy that stops with its test, a 0MQ listener in a thread."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest


@pytest.fixture(scope="session")
def ramp_detector():
    """``ramp_detector(ramp, pressure)``: a 1D ophyd detector whose frame is the ramp's frame nearest
    the pressure axis' readback, its 2θ axis and energy in the configuration."""
    from ophyd import Component as Cpt
    from ophyd import Device, Signal

    def make(ramp, pressure):
        class RampDetector(Device):
            pattern = Cpt(Signal, value=np.zeros(ramp.two_theta.size), kind="hinted")
            two_theta = Cpt(Signal, value=ramp.two_theta, kind="config")
            energy = Cpt(Signal, value=ramp.energy_kev, kind="config")

            def trigger(self):
                i = int(np.argmin(np.abs(ramp.pressures - pressure.readback.get())))
                self.pattern.put(ramp.intensity[i])
                return super().trigger()

        return RampDetector(name="detector")

    return make


@pytest.fixture(scope="session")
def small_ramp():
    """16 frames from 5 to 55 GPa across a B1 -> rB1 transition at 31.3 GPa (what `serve` classifies)."""
    from xrd_nexus_ml.transitions import simulate_ramp

    return simulate_ramp(np.linspace(5, 55, 16), transition_pressure=31.3, noise=0.02, seed=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """``free_port()``: a TCP port on loopback that nothing listens on now."""
    return _free_port


@pytest.fixture
def zmq_proxy(free_port):
    """``(in_port, out_port)`` of bluesky's 0MQ proxy (``bluesky-0MQ-proxy``) on loopback, in a
    process of its own as at a beamline, stopped with the test. (In a thread of the test process
    it could not be stopped cleanly: ``Proxy.start`` only returns when its context is terminated,
    and then terminates that context a second time itself.)"""
    in_port, out_port = free_port(), free_port()
    proxy = subprocess.Popen([sys.executable, "-u", "-m", "bluesky.commandline.zmq_proxy",
                              "--in-address", f"tcp://localhost:{in_port}", "--out-address", f"tcp://localhost:{out_port}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proxy.stdout:  # "Receiving on address ...": both sockets are bound
            lines.append(line)
            if line.startswith("Receiving on address"):
                break
        else:
            pytest.fail(f"the 0MQ proxy did not start:\n{''.join(lines)}")
        yield in_port, out_port
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        proxy.stdout.close()


@pytest.fixture(scope="session")
def listen_in_thread():
    """``listen_in_thread(dispatcher)``: ``dispatcher.start()`` (a bluesky RemoteDispatcher) in a
    thread. The test stops it with ``dispatcher.loop.call_soon_threadsafe(dispatcher.stop)``: its
    task is cancelled, and the thread ends (the thread-leak guard checks that it did)."""

    def start(dispatcher) -> threading.Thread:
        def listen():
            try:
                dispatcher.start()
            except asyncio.CancelledError:  # how a stopped dispatcher's loop ends
                pass

        thread = threading.Thread(target=listen, name="zmq-listener", daemon=True)
        thread.start()
        return thread

    return start

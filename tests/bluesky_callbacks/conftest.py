"""Fixtures of the Bluesky callback tests: a detector that plays a simulated ramp, loopback ports."""

from __future__ import annotations

import socket

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

"""A simulated high-pressure powder beamline: real ophyd (v1) devices, simulated hardware.

What the seed's experiment (PETRA III P02.2) had, so that plans, callbacks and writers meet
the documents a real scan produces:

`PressureCell`      diamond-anvil-cell pressure (GPa), a movable that settles on a timer thread
`BeamEnergy`        beam energy (keV), wavelength (Å) as configuration
`PowderDetector1D`  the sample's pattern (4023 points, 2θ 10-26°) at the current pressure and
                    energy, fresh counting noise per frame, inline or written to HDF5
`PowderAreaDetector` Debye-Scherrer rings on a flat panel, integrated per frame with pyFAI
`PatternFlyer`      replays precomputed frames as event pages (kHz detectors, benchmarks)
`make_beamline`     all of it wired together: `scan([bl.detector], bl.pressure, 5, 55, 51)`

The science is `xrd_nexus_ml.transitions.ramp` (equation of state, B1 -> rB1 transition,
peak widths) and `xrd_nexus_ml.physics.augment` (background, Poisson and readout noise);
`PatternSource` only decides which pattern a detector sees and caches it. External frames
follow ophyd v1's Area Detector convention (Resource spec "AD_HDF5", one Datum per point):
read them back with `bluesky_callbacks.handlers.HANDLERS`.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from event_model import compose_resource
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus
from ophyd.utils import LimitError

from bluesky_callbacks.handlers import AD_HDF5, FRAMES_DATASET
from xrd_nexus_ml.errors import XrdNexusMlError
from xrd_nexus_ml.pattern import energy_to_wavelength
from xrd_nexus_ml.physics import PowderSimulator
from xrd_nexus_ml.physics.augment import Background
from xrd_nexus_ml.physics.simulator import SimulatedBatch
from xrd_nexus_ml.transitions.materials import MATERIALS, simulate_material_ramp
from xrd_nexus_ml.transitions.ramp import (
    PHASES,
    SEED_ENERGY_KEV,
    SEED_TWO_THETA,
    Instrument,
    Ramp,
    noise_pipeline,
    simulate_ramp,
)

logger = logging.getLogger(__name__)


class SimulatedBeamlineError(XrdNexusMlError, ValueError):
    """A simulated device is asked for something it cannot do (bad sample, frames, folder, state)."""


class PressureLimitError(SimulatedBeamlineError, LimitError):
    """A pressure outside the cell's limits was requested (also an ophyd `LimitError`)."""


class PressureMoveError(XrdNexusMlError, RuntimeError):
    """A pressure move was stopped or superseded before it settled."""


# -- signals that describe themselves fully ---------------------------------------------------------


class QuantitySignal(Signal):
    """A soft signal whose describe() states its units and numpy dtype ('<f8'): plain ophyd
    Signals give neither, and NeXus writers and q conversion downstream need both."""

    def __init__(self, *, units: str = "", **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def describe(self) -> dict[str, dict]:
        description = super().describe()
        description[self.name].update(units=self.units, dtype_numpy=np.asarray(self.get()).dtype.str)
        return description


class FrameSignal(Signal):
    """A detector frame: the array itself, or (external) the datum id of a frame in a file.

    describe() gives the frame's declared shape, numpy dtype and units in both cases, and
    `external: "FILESTORE:"` when the reading is a datum id; the owning detector declares them.
    """

    def __init__(self, *, units: str = "", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.frame_shape: tuple[int, ...] = ()
        self.frame_dtype = np.dtype(np.float32)
        self.external = False

    def declare(self, shape: tuple[int, ...], dtype: Any, external: bool) -> None:
        """What every reading of this signal will be (before any frame exists)."""
        self.frame_shape = tuple(int(n) for n in shape)
        self.frame_dtype = np.dtype(dtype)
        self.external = bool(external)

    def describe(self) -> dict[str, dict]:
        key = {"source": self.source_name, "dtype": "array", "shape": list(self.frame_shape),
               "dtype_numpy": self.frame_dtype.str, "units": self.units}
        if self.external:
            key["external"] = "FILESTORE:"
        return {self.name: key}


# -- movables ---------------------------------------------------------------------------------------


class PressureCell(Device):
    """Diamond-anvil-cell pressure in GPa, a movable for `mv`, `scan` and `list_scan`.

    A membrane cell needs time to reach and hold a new load: `set` returns a status that a timer
    thread finishes `settle_time` seconds later, when the readback takes the new value, so the
    RunEngine waits without blocking its own thread. A request outside `limits` raises
    `PressureLimitError` before anything moves. Data keys: `<name>` (readback, hinted),
    `<name>_setpoint`; configuration `<name>_settle_time` (s).
    """

    readback = Cpt(QuantitySignal, value=0.0, units="GPa", kind="hinted")
    setpoint = Cpt(QuantitySignal, value=0.0, units="GPa", kind="normal")
    settle_time = Cpt(QuantitySignal, value=0.0, units="s", kind="config")

    def __init__(self, *, name: str = "pressure", limits: tuple[float, float] = (0.0, 150.0),
                 settle_time: float = 0.01, initial: float = 0.0, **kwargs):
        super().__init__(name=name, **kwargs)
        self.readback.name = self.name
        low, high = (float(v) for v in limits)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise SimulatedBeamlineError(f"{name}: limits must be (low, high) GPa with low < high, got {limits!r}")
        self._limits = (low, high)
        start = self.check_value(initial)
        self.readback.put(start)
        self.setpoint.put(start)
        self.settle_time.put(self._settle_seconds(settle_time))
        self._lock = threading.Lock()
        self._pending: tuple[threading.Timer, DeviceStatus, float] | None = None

    @property
    def limits(self) -> tuple[float, float]:
        return self._limits

    @property
    def egu(self) -> str:
        return "GPa"

    @property
    def position(self) -> float:
        """The readback: the pressure the sample is at now."""
        return float(self.readback.get())

    def _settle_seconds(self, value: Any) -> float:
        seconds = float(value)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise SimulatedBeamlineError(f"{self.name}: settle_time must be a number of seconds >= 0, got {value!r}")
        return seconds

    def check_value(self, value: Any) -> float:
        """`value` as GPa, or `PressureLimitError` if it is not a number within the limits."""
        try:
            pressure = float(value)
        except (TypeError, ValueError):
            raise PressureLimitError(f"{self.name}: a pressure must be a number of GPa, got {value!r}") from None
        low, high = self._limits
        if not (low <= pressure <= high):
            raise PressureLimitError(
                f"{self.name}: {value!r} GPa is outside the cell's limits {low:g}-{high:g} GPa")
        return pressure

    def set(self, value: float) -> DeviceStatus:
        """Move to `value` GPa; the status finishes when the pressure has settled there."""
        target = self.check_value(value)
        delay = self._settle_seconds(self.settle_time.get())
        status = DeviceStatus(self, call_stop_on_failure=False)  # only stop() or a newer move fail it
        timer = threading.Timer(delay, self._settle, args=(status, target))
        timer.daemon = True
        with self._lock:
            superseded, self._pending = self._pending, (timer, status, target)
        self._abort(superseded, f"superseded by a move to {target:g} GPa")
        self.setpoint.put(target)
        timer.start()
        return status

    def _settle(self, status: DeviceStatus, target: float) -> None:
        with self._lock:
            if self._pending is None or self._pending[1] is not status:
                return  # stopped or superseded meanwhile
            self._pending = None
        self.readback.put(target)
        status.set_finished()

    def _abort(self, move: tuple[threading.Timer, DeviceStatus, float] | None, reason: str) -> None:
        """Cancel a move that is no longer pending; its status fails with `reason`."""
        if move is None:
            return
        timer, status, target = move
        timer.cancel()
        status.set_exception(PressureMoveError(f"{self.name}: move to {target:g} GPa {reason}"))

    def stop(self, *, success: bool = False) -> None:
        """Stop where the cell is: a move in flight does not complete and its status fails."""
        with self._lock:
            move, self._pending = self._pending, None
        self._abort(move, "was stopped before it settled")


class BeamEnergy(Device):
    """Beam energy in keV (the monochromator), moves at once. Data key `<name>` (keV);
    configuration `<name>_wavelength` (Å), because detectors and q conversion need λ."""

    readback = Cpt(QuantitySignal, value=SEED_ENERGY_KEV, units="keV", kind="hinted")
    wavelength = Cpt(QuantitySignal, value=energy_to_wavelength(SEED_ENERGY_KEV), units="angstrom", kind="config")

    def __init__(self, energy_kev: float = SEED_ENERGY_KEV, *, name: str = "energy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.readback.name = self.name
        self.set(energy_kev)

    @property
    def position(self) -> float:
        return float(self.readback.get())

    def set(self, value: float) -> DeviceStatus:
        """Set the energy (keV); `WavelengthError` unless it is a positive number."""
        wavelength = energy_to_wavelength(value, source=self.name)
        self.readback.put(float(value))
        self.wavelength.put(wavelength)
        status = DeviceStatus(self)
        status.set_finished()
        return status


# -- the sample and its patterns --------------------------------------------------------------------


@dataclass(frozen=True)
class SampleModel:
    """The sample in the cell: a (Mg0.2Fe0.8)O ramp as in `transitions.ramp`, and how it looks.

    transition_pressure / coexistence_width: GPa, one value (or a tuple, one per boundary)
    between consecutive `phases` (names of `transitions.ramp.PHASES`). noise: relative counting
    noise at the strongest peak (0.01: 10^4 counts there). background: amplitude of the cell's
    smooth background (diamond Compton, gasket) relative to the pattern maximum; it belongs to
    the cell, so it is drawn once from `seed`, while each frame draws fresh noise from `seed`
    and its frame number (reproducible, and different from frame to frame).
    """

    transition_pressure: float | tuple[float, ...] = 30.0
    coexistence_width: float | tuple[float, ...] = 2.0
    noise: float = 0.01
    background: float = 0.1
    phases: tuple[str, ...] = ("B1", "rB1")
    seed: int = 0
    material: str | None = None  # a name of `transitions.materials.MATERIALS` instead of `phases`

    def __post_init__(self):
        if self.material is not None:
            if self.material not in MATERIALS:
                raise SimulatedBeamlineError(f"SampleModel.material must be one of {', '.join(MATERIALS)}, "
                                             f"got {self.material!r}")
        unknown = [p for p in self.phases if p not in PHASES]
        if self.material is None and (len(self.phases) < 2 or unknown):
            raise SimulatedBeamlineError(
                f"SampleModel.phases must name at least two of {', '.join(PHASES)}, got {self.phases!r}")
        for name in ("noise", "background"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SimulatedBeamlineError(f"SampleModel.{name} must be a number >= 0, got {value!r}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise SimulatedBeamlineError(f"SampleModel.seed must be an integer >= 0, got {self.seed!r}")


class PatternSource:
    """Which pattern a detector sees: the sample's noiseless pattern at (pressure, energy) on one
    2θ grid, the cell's fixed background, and fresh noise for each numbered frame.

    Simulating one noiseless pattern takes ~10 ms (the last one is kept); `precompute(pressures,
    energy_kev)` simulates a table in one batch, and patterns inside its pressure range at that
    energy then come from it: `interpolation` "nearest" (a step <= 0.1 GPa keeps peaks within a
    2θ bin: they move ~0.025°/GPa) or "linear" (blends the two neighbours, which splits a peak
    that moved by more than its width between them). The noise costs ~2 ms a frame.
    """

    def __init__(self, sample: SampleModel | None = None,
                 two_theta: tuple[float, float, int] = SEED_TWO_THETA,
                 interpolation: Literal["nearest", "linear"] = "nearest"):
        if interpolation not in ("nearest", "linear"):
            raise SimulatedBeamlineError(f"interpolation must be 'nearest' or 'linear', got {interpolation!r}")
        self.sample = sample or SampleModel()
        self.interpolation = interpolation
        self._two_theta_range = two_theta
        grid = Instrument(two_theta=two_theta).grid
        self.two_theta = grid.values.numpy().astype(np.float64)
        # the augmentation transforms read only the grid from these settings (no wavelength-dependent term is on)
        self._settings = PowderSimulator(wavelength=energy_to_wavelength(SEED_ENERGY_KEV), grid=grid).settings
        self._noise = noise_pipeline(self.sample.noise, 0.0)
        self.background = self._draw_background()
        self._table: tuple[float, np.ndarray, np.ndarray] | None = None
        self._last: tuple[tuple[float, float], np.ndarray] | None = None

    def draw_seed(self, *keys: int) -> int:
        """A seed for one draw, from the sample's seed and `keys` (e.g. a frame number)."""
        return int(np.random.SeedSequence([self.sample.seed, *keys]).generate_state(1)[0])

    def _batch(self, intensity: np.ndarray) -> SimulatedBatch:
        y = torch.as_tensor(np.atleast_2d(intensity), dtype=torch.float64)
        return SimulatedBatch(crystals=None, settings=self._settings, intensity=y,
                              mask=torch.ones_like(y, dtype=torch.bool))

    def _draw_background(self) -> np.ndarray:
        """The cell's background relative to a pattern of maximum 1, as `simulate_ramp` draws it."""
        stages = [t for t in noise_pipeline(0.0, self.sample.background) if isinstance(t, Background)]
        curve = np.zeros_like(self.two_theta)
        for stage in stages:
            state = stage(self._batch(np.ones_like(curve)), torch.Generator().manual_seed(self.draw_seed(1)))
            curve += state.intensity[0].numpy() - 1.0
        curve.setflags(write=False)
        return curve

    def _simulate(self, pressures: Sequence[float] | np.ndarray, energy_kev: float) -> np.ndarray:
        s = self.sample
        if s.material is not None:  # a literature material: its own phases, EOS and transitions

            material = MATERIALS[s.material]
            n_b = len(material.transition_pressures)
            given = s.transition_pressure if isinstance(s.transition_pressure, tuple) else (s.transition_pressure,)
            ramp = simulate_material_ramp(material, pressures=np.asarray(pressures, float), noise=0.0, background=0.0,
                                          seed=s.seed, energy_kev=float(energy_kev), two_theta=self._two_theta_range,
                                          transition_pressures=given[:n_b] if len(given) >= n_b and n_b else None)
            patterns = ramp.intensity.astype(np.float64)
            patterns.setflags(write=False)
            return patterns
        ramp = simulate_ramp(pressures, s.transition_pressure, s.coexistence_width, noise=0.0, seed=s.seed,
                             phases=s.phases, background=0.0,
                             instrument=Instrument(energy_kev=float(energy_kev), two_theta=self._two_theta_range))
        patterns = ramp.intensity.astype(np.float64)
        patterns.setflags(write=False)
        return patterns

    def precompute(self, pressures: Sequence[float] | np.ndarray, energy_kev: float) -> None:
        """Simulate the noiseless patterns at `pressures` (GPa) and `energy_kev` once, as a lookup table."""
        p = np.unique(np.asarray(pressures, dtype=float).ravel())
        if p.size == 0 or not np.all(np.isfinite(p)):
            raise SimulatedBeamlineError("precompute needs a non-empty sequence of finite pressures in GPa")
        self._table = (float(energy_kev), p, self._simulate(p, energy_kev))
        logger.info("precomputed %d patterns, %g-%g GPa at %g keV", p.size, p[0], p[-1], energy_kev)

    def clean(self, pressure: float, energy_kev: float) -> np.ndarray:
        """The noiseless pattern (maximum 1, no background) at `pressure` GPa and `energy_kev`; read-only."""
        pressure, energy_kev = float(pressure), float(energy_kev)
        if self._table is not None:
            table_energy, pressures, patterns = self._table
            if table_energy == energy_kev and pressures[0] <= pressure <= pressures[-1]:
                return self._look_up(pressures, patterns, pressure)
            logger.debug("%g GPa at %g keV is outside the table (%g-%g GPa at %g keV): simulating",
                         pressure, energy_kev, pressures[0], pressures[-1], table_energy)
        key = (pressure, energy_kev)
        if self._last is None or self._last[0] != key:
            self._last = (key, self._simulate([pressure], energy_kev)[0])
        return self._last[1]

    def _look_up(self, pressures: np.ndarray, patterns: np.ndarray, pressure: float) -> np.ndarray:
        hi = int(np.searchsorted(pressures, pressure))
        if pressures[hi] == pressure:
            return patterns[hi]
        lo = hi - 1
        if self.interpolation == "nearest":
            return patterns[lo if pressure - pressures[lo] <= pressures[hi] - pressure else hi]
        weight = (pressure - pressures[lo]) / (pressures[hi] - pressures[lo])
        return (1.0 - weight) * patterns[lo] + weight * patterns[hi]

    def expected(self, pressure: float, energy_kev: float) -> np.ndarray:
        """The mean a detector records: noiseless pattern plus the cell's background."""
        return self.clean(pressure, energy_kev) + self.background

    def frame(self, pressure: float, energy_kev: float, number: int) -> np.ndarray:
        """Frame `number`: the expected pattern with Poisson and readout noise, normalised to max 1 (float32)."""
        generator = torch.Generator().manual_seed(self.draw_seed(0, int(number)))
        state = self._noise.apply("pattern", self._batch(self.expected(pressure, energy_kev)), generator)
        return state.intensity[0].numpy().astype(np.float32)


# -- external frames --------------------------------------------------------------------------------


class HDF5FrameWriter:
    """Appends frames to `FRAMES_DATASET` of one new HDF5 file per `open()` in `write_dir`, flushed
    frame by frame in SWMR mode (a live reader sees each at once), and queues the AD_HDF5 Resource
    and the Datum documents that point at them, for a detector's `collect_asset_docs`."""

    def __init__(self, write_dir: str | Path, prefix: str, frame_shape: tuple[int, ...], dtype: Any):
        self.write_dir = Path(write_dir).absolute()
        self.prefix = prefix
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.path: Path | None = None
        self._file: h5py.File | None = None
        self._compose_datum = None
        self._documents: deque[tuple[str, dict]] = deque()

    def open(self) -> None:
        self.write_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.write_dir / f"{self.prefix}_{uuid.uuid4().hex}.h5"
        self._file = h5py.File(self.path, "w", libver="latest")
        entry = self._file.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        data.create_dataset("data", shape=(0, *self.frame_shape), maxshape=(None, *self.frame_shape),
                            chunks=(1, *self.frame_shape), dtype=self.dtype)
        self._file.swmr_mode = True  # after every object exists: SWMR cannot create new ones
        bundle = compose_resource(spec=AD_HDF5, root=str(self.write_dir), resource_path=self.path.name,
                                  resource_kwargs={"frame_per_point": 1})
        self._compose_datum = bundle.compose_datum
        self._documents.append(("resource", bundle.resource_doc))

    def write(self, frame: np.ndarray) -> str:
        """Append one frame; returns the datum id that stands for it in the Event."""
        if self._file is None:
            raise SimulatedBeamlineError(f"{self.prefix}: no HDF5 file is open in {self.write_dir}; stage the "
                                         "detector (plans do) before triggering it with external=True")
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise SimulatedBeamlineError(f"{self.prefix}: frames must have shape {self.frame_shape}, got {frame.shape}")
        dataset = self._file[FRAMES_DATASET]
        point = dataset.shape[0]
        dataset.resize(point + 1, axis=0)
        dataset[point] = frame.astype(self.dtype, copy=False)
        dataset.flush()
        datum = self._compose_datum(datum_kwargs={"point_number": point})
        self._documents.append(("datum", datum))
        return datum["datum_id"]

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        while self._documents:
            yield self._documents.popleft()

    def close(self) -> None:
        """Close the file (idempotent); documents nobody collected are dropped with it."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._documents.clear()


# -- detectors --------------------------------------------------------------------------------------


class _DiffractionConfiguration(Device):
    """Configuration every diffraction reading carries so that a callback can put it on q:
    `<name>_two_theta` (deg), `<name>_wavelength` (Å), `<name>_energy` (keV)."""

    two_theta = Cpt(QuantitySignal, value=np.zeros(0), units="deg", kind="config")
    wavelength = Cpt(QuantitySignal, value=energy_to_wavelength(SEED_ENERGY_KEV), units="angstrom", kind="config")
    energy = Cpt(QuantitySignal, value=SEED_ENERGY_KEV, units="keV", kind="config")

    def _set_energy(self, energy_kev: float) -> None:
        self.energy.put(float(energy_kev))
        self.wavelength.put(energy_to_wavelength(energy_kev, source=self.name))


class _PowderDetector(_DiffractionConfiguration):
    """What both simulated powder detectors share: they image a `PatternSource` at the pressure
    cell's readback and the beam's energy (followed into the configuration), number their frames
    for reproducible noise, and with `external=True` append frames to an HDF5 file per staging
    and hand out its Resource and Datum documents. Triggers finish at once."""

    _frame_attr = ""  # the FrameSignal component that may go to a file

    def __init__(self, pressure: PressureCell, energy: BeamEnergy, source: PatternSource, *, name: str,
                 frame_shape: tuple[int, ...], frame_dtype: Any, external: bool,
                 write_dir: str | Path | None, **kwargs):
        super().__init__(name=name, **kwargs)
        if external and write_dir is None:
            raise SimulatedBeamlineError(
                f"{name}: external=True writes HDF5 files; give write_dir, the folder for them")
        self.source = source
        self._pressure_cell = pressure
        self._beam = energy
        self._frame_numbers = itertools.count()
        getattr(self, self._frame_attr).declare(frame_shape, frame_dtype, external)
        self._writer = HDF5FrameWriter(write_dir, name, frame_shape, frame_dtype) if external else None
        energy.readback.subscribe(self._follow_energy, run=True)

    def _follow_energy(self, value: float, **kwargs) -> None:
        self._set_energy(value)

    @property
    def file_path(self) -> Path | None:
        """The HDF5 file of the current (or last) staging, with external=True."""
        return None if self._writer is None else self._writer.path

    def stage(self) -> list:
        staged = super().stage()
        if self._writer is not None:
            self._writer.open()
        return staged

    def unstage(self) -> list:
        if self._writer is not None:
            self._writer.close()
        return super().unstage()

    def trigger(self) -> DeviceStatus:
        self._acquire(self._pressure_cell.position, self._beam.position, next(self._frame_numbers))
        status = DeviceStatus(self)
        status.set_finished()
        return status

    def _acquire(self, pressure: float, energy_kev: float, number: int) -> None:
        raise NotImplementedError

    def _frame_value(self, frame: np.ndarray) -> np.ndarray | str:
        """What the frame signal reads: the frame, or the datum id of it written to the file."""
        return frame if self._writer is None else self._writer.write(frame)

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        if self._writer is not None:
            yield from self._writer.collect_asset_docs()


def _as_source(sample: SampleModel | PatternSource | None) -> PatternSource:
    return sample if isinstance(sample, PatternSource) else PatternSource(sample)


class PowderDetector1D(_PowderDetector):
    """A 1D powder detector like the seed's (4023 points, 2θ 10-26°): each trigger records the
    sample's pattern at the current pressure and energy with fresh noise.

    Data key `<name>_pattern` (float32, normalised to max 1; a datum id with external=True);
    configuration `<name>_two_theta`, `<name>_wavelength`, `<name>_energy`. `sample` is a
    `SampleModel` or a `PatternSource` shared with other detectors.
    """

    pattern = Cpt(FrameSignal, units="a.u.", kind="normal")
    _frame_attr = "pattern"

    def __init__(self, pressure: PressureCell, energy: BeamEnergy,
                 sample: SampleModel | PatternSource | None = None, *, name: str = "detector",
                 external: bool = False, write_dir: str | Path | None = None, **kwargs):
        source = _as_source(sample)
        super().__init__(pressure, energy, source, name=name, frame_shape=source.two_theta.shape,
                         frame_dtype=np.float32, external=external, write_dir=write_dir, **kwargs)
        self.two_theta.put(source.two_theta)

    def precompute(self, pressures: Sequence[float] | np.ndarray) -> None:
        """Tabulate the sample's patterns at `pressures` (GPa) and the current energy (fast scans)."""
        self.source.precompute(pressures, self._beam.position)

    def _acquire(self, pressure: float, energy_kev: float, number: int) -> None:
        self.pattern.put(self._frame_value(self.source.frame(pressure, energy_kev, number)))


@dataclass(frozen=True)
class AreaGeometry:
    """A flat panel normal to the beam: `shape` (rows, columns) of square `pixel_size` pixels (m)
    at `distance` (m); the beam's point of normal incidence at `poni1`, `poni2` (m, pyFAI's)."""

    shape: tuple[int, int]
    pixel_size: float
    distance: float
    poni1: float
    poni2: float

    @classmethod
    def covering(cls, two_theta_range: tuple[float, float], shape: tuple[int, int] = (512, 512),
                 pixel_size: float = 200e-6) -> AreaGeometry:
        """The panel placed so its pixel centres span `two_theta_range` (degrees): the beam passes
        beside the left edge at mid-height, the nearest column at the low angle and the far corners
        at the high one, so each ring crosses the panel as an arc (a detector offset from the beam,
        as at high-pressure stations that want high angles on a modest panel)."""
        low, high = (math.radians(float(a)) for a in two_theta_range)
        if not 0 < low < high < math.pi / 2:
            raise SimulatedBeamlineError(f"two_theta_range must be 0 < low < high < 90 degrees, got {two_theta_range}")
        rows, cols = (int(n) for n in shape)
        k2 = (math.tan(high) / math.tan(low)) ** 2
        # pixels from the beam to the nearest column centre, a: (a + cols - 1)^2 + ((rows - 1)/2)^2 = k2 a^2
        b, c = cols - 1.0, (cols - 1.0) ** 2 + ((rows - 1.0) / 2.0) ** 2
        a = (b + math.sqrt(b * b + (k2 - 1.0) * c)) / (k2 - 1.0)
        return cls(shape=(rows, cols), pixel_size=float(pixel_size), distance=a * pixel_size / math.tan(low),
                   poni1=rows / 2.0 * pixel_size, poni2=-(a - 0.5) * pixel_size)


class PowderAreaDetector(_PowderDetector):
    """A flat-panel detector behind the cell: renders the sample's Debye-Scherrer rings and
    integrates each frame azimuthally with pyFAI, as a beamline's pipeline does.

    Each pixel records Poisson counts of the expected 1D pattern at the pixel's 2θ times its
    solid angle (`peak_counts` at the pattern's maximum at normal incidence); the integration
    corrects the solid angle back. pyFAI's AzimuthalIntegrator is costly to set up (its
    pixel-to-bin lookup table is built on first use), so one is built per geometry and beam
    energy and reused; each build is logged with its reason and counted in `integrator_builds`.

    Data keys `<name>_image` (uint32 counts, an AD_HDF5 datum id with external=True) and
    `<name>_integrated` (float32 on `<name>_two_theta`, `npt` bins over the source's 2θ range);
    configuration also `<name>_distance`, `<name>_poni1`, `<name>_poni2`, `<name>_pixel_size` (m).
    """

    image = Cpt(FrameSignal, units="counts", kind="normal")
    integrated = Cpt(FrameSignal, units="counts", kind="normal")
    distance = Cpt(QuantitySignal, value=0.0, units="m", kind="config")
    poni1 = Cpt(QuantitySignal, value=0.0, units="m", kind="config")
    poni2 = Cpt(QuantitySignal, value=0.0, units="m", kind="config")
    pixel_size = Cpt(QuantitySignal, value=0.0, units="m", kind="config")
    _frame_attr = "image"

    def __init__(self, pressure: PressureCell, energy: BeamEnergy,
                 sample: SampleModel | PatternSource | None = None, *, name: str = "area_detector",
                 shape: tuple[int, int] = (512, 512), pixel_size: float = 200e-6, npt: int = 1000,
                 peak_counts: float = 1e4, external: bool = False, write_dir: str | Path | None = None,
                 **kwargs):
        source = _as_source(sample)
        self.radial_range = (float(source.two_theta[0]), float(source.two_theta[-1]))
        self.geometry = AreaGeometry.covering(self.radial_range, shape, pixel_size)
        super().__init__(pressure, energy, source, name=name, frame_shape=self.geometry.shape,
                         frame_dtype=np.uint32, external=external, write_dir=write_dir, **kwargs)
        if not (isinstance(npt, int) and npt >= 2):
            raise SimulatedBeamlineError(f"{name}: npt must be an integer >= 2 bins, got {npt!r}")
        if not peak_counts > 0:
            raise SimulatedBeamlineError(f"{name}: peak_counts must be > 0, got {peak_counts!r}")
        self.npt = npt
        self.peak_counts = float(peak_counts)
        self.integrated.declare((npt,), np.float32, external=False)
        edges = np.linspace(*self.radial_range, npt + 1)
        self.two_theta.put(0.5 * (edges[1:] + edges[:-1]))  # pyFAI's bin centres
        for signal, value in ((self.distance, self.geometry.distance), (self.poni1, self.geometry.poni1),
                              (self.poni2, self.geometry.poni2), (self.pixel_size, self.geometry.pixel_size)):
            signal.put(value)
        self.integrator_builds = 0
        self._integrator = None
        self._integrator_energy: float | None = None
        self._pixel_two_theta: np.ndarray | None = None
        self._solid_angle: np.ndarray | None = None

    def integrator(self, energy_kev: float):
        """The AzimuthalIntegrator of this geometry at `energy_kev`: built once, rebuilt when the energy changes."""
        if self._integrator is not None and self._integrator_energy == energy_kev:
            return self._integrator
        from pyFAI.detectors import Detector  # pyFAI takes seconds to import: only when an area detector works
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        reason = ("first frame" if self._integrator is None
                  else f"beam energy changed from {self._integrator_energy:g} to {energy_kev:g} keV")
        logger.info("%s: building a pyFAI AzimuthalIntegrator (%s)", self.name, reason)
        g = self.geometry
        integrator = AzimuthalIntegrator(
            dist=g.distance, poni1=g.poni1, poni2=g.poni2,
            detector=Detector(pixel1=g.pixel_size, pixel2=g.pixel_size, max_shape=g.shape),
            wavelength=energy_to_wavelength(energy_kev) * 1e-10)
        self._pixel_two_theta = integrator.center_array(g.shape, unit="2th_deg")
        self._solid_angle = integrator.solidAngleArray(g.shape)
        self._integrator, self._integrator_energy = integrator, energy_kev
        self.integrator_builds += 1
        return integrator

    def _acquire(self, pressure: float, energy_kev: float, number: int) -> None:
        integrator = self.integrator(energy_kev)
        profile = self.source.expected(pressure, energy_kev)
        rings = np.interp(self._pixel_two_theta, self.source.two_theta, profile / profile.max())
        mean = self.peak_counts * rings * self._solid_angle
        image = np.random.default_rng(self.source.draw_seed(2, number)).poisson(mean).astype(np.uint32)
        result = integrator.integrate1d(image, self.npt, unit="2th_deg", radial_range=self.radial_range,
                                        method=("bbox", "csr", "cython"), correctSolidAngle=True)
        self.image.put(self._frame_value(image))
        self.integrated.put(result.intensity.astype(np.float32))


# -- fly scans --------------------------------------------------------------------------------------


class PatternFlyer(_DiffractionConfiguration):
    """Replays precomputed 1D frames as the event pages of one fly scan, the way kHz detectors
    reach callbacks: `bp.fly([flyer])` then measures the callbacks, not the simulator.

    frames (n, n_points) on `two_theta` (deg) at `energy_kev`, with their `pressures` (GPa).
    One stream (`stream_name`), pages of `page_size` frames; timestamps as if recorded at
    `frame_rate_hz` from kickoff. Data keys `<name>_pattern` (float32) and `pressure_key`:
    with the defaults, the same keys and configuration as a step scan of `make_beamline()`.
    """

    def __init__(self, frames: np.ndarray, pressures: Sequence[float] | np.ndarray, two_theta: np.ndarray,
                 energy_kev: float = SEED_ENERGY_KEV, *, name: str = "detector", pressure_key: str = "pressure",
                 stream_name: str = "primary", frame_rate_hz: float = 1000.0, page_size: int = 1000, **kwargs):
        super().__init__(name=name, **kwargs)
        two_theta = np.asarray(two_theta, dtype=np.float64)
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        pressures = np.asarray(pressures, dtype=np.float64)
        if two_theta.ndim != 1 or frames.ndim != 2 or frames.shape[1] != two_theta.size:
            raise SimulatedBeamlineError(f"{name}: frames must be (n, {two_theta.size}) to match two_theta, "
                                         f"got {frames.shape}")
        if pressures.shape != (frames.shape[0],):
            raise SimulatedBeamlineError(f"{name}: need one pressure per frame ({frames.shape[0]}), "
                                         f"got shape {pressures.shape}")
        if not (frame_rate_hz > 0 and isinstance(page_size, int) and page_size >= 1):
            raise SimulatedBeamlineError(f"{name}: frame_rate_hz must be > 0 and page_size an integer >= 1, "
                                         f"got {frame_rate_hz!r}, {page_size!r}")
        self.frames, self.pressures = frames, pressures
        self.pattern_key, self.pressure_key, self.stream_name = f"{name}_pattern", pressure_key, stream_name
        self.frame_rate_hz, self.page_size = float(frame_rate_hz), page_size
        self.two_theta.put(two_theta)
        self._set_energy(energy_kev)
        self._kickoff_time: float | None = None

    @classmethod
    def from_ramp(cls, ramp: Ramp, **kwargs) -> PatternFlyer:
        """Replay a simulated ramp's frames."""
        return cls(ramp.intensity, ramp.pressures, ramp.two_theta, ramp.energy_kev, **kwargs)

    def _done(self) -> DeviceStatus:
        status = DeviceStatus(self)
        status.set_finished()
        return status

    def kickoff(self) -> DeviceStatus:
        self._kickoff_time = time.time()
        return self._done()

    def complete(self) -> DeviceStatus:
        self._require_kickoff("complete")
        return self._done()

    def _require_kickoff(self, what: str) -> None:
        if self._kickoff_time is None:
            raise SimulatedBeamlineError(f"{self.name}: kickoff() must come before {what}()")

    def describe_collect(self) -> dict[str, dict[str, dict]]:
        return {self.stream_name: {
            self.pattern_key: {"source": f"SIM:{self.pattern_key}", "dtype": "array",
                               "shape": [self.frames.shape[1]], "dtype_numpy": self.frames.dtype.str,
                               "units": "a.u."},
            self.pressure_key: {"source": f"SIM:{self.pressure_key}", "dtype": "number", "shape": [],
                                "dtype_numpy": self.pressures.dtype.str, "units": "GPa"},
        }}

    def collect_pages(self) -> Iterator[dict[str, Any]]:
        """Partial event pages of `page_size` frames; the flyer needs a new kickoff afterwards."""
        self._require_kickoff("collect_pages")
        start_time = self._kickoff_time
        for start in range(0, self.frames.shape[0], self.page_size):
            stop = min(start + self.page_size, self.frames.shape[0])
            stamps = (start_time + np.arange(start, stop) / self.frame_rate_hz).tolist()
            yield {"data": {self.pattern_key: list(self.frames[start:stop]),
                            self.pressure_key: self.pressures[start:stop].tolist()},
                   "timestamps": {self.pattern_key: stamps, self.pressure_key: stamps},
                   "time": stamps}
        self._kickoff_time = None


# -- the beamline -----------------------------------------------------------------------------------


@dataclass
class HighPressureBeamline:
    """The devices of one simulated high-pressure powder station, for plans such as
    `scan([bl.detector], bl.pressure, 5, 55, 51)`. Both detectors see one `PatternSource`."""

    pressure: PressureCell
    energy: BeamEnergy
    detector: PowderDetector1D
    area_detector: PowderAreaDetector | None = None


def make_beamline(sample: SampleModel | None = None, *, external: bool = False,
                  write_dir: str | Path | None = None, area_detector: bool = False, settle_time: float = 0.01,
                  lookup_pressures: Sequence[float] | np.ndarray | None = None) -> HighPressureBeamline:
    """A pressure cell, a beam, a 1D detector (and an area detector) looking at one `sample`.

    external / write_dir: detectors write frames to HDF5 files in `write_dir`. lookup_pressures:
    tabulate the sample's patterns there at the seed energy first (fast scans, benchmarks).
    """
    pressure = PressureCell(settle_time=settle_time)
    energy = BeamEnergy()
    source = PatternSource(sample)
    if lookup_pressures is not None:
        source.precompute(lookup_pressures, energy.position)
    detector = PowderDetector1D(pressure, energy, source, external=external, write_dir=write_dir)
    area = (PowderAreaDetector(pressure, energy, source, external=external, write_dir=write_dir)
            if area_detector else None)
    return HighPressureBeamline(pressure=pressure, energy=energy, detector=detector, area_detector=area)

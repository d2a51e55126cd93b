"""A live view of the scan: the frames so far, the phase predicted for each, the running
transition estimate with its band, and the current identification.

Subscribe it to the RunEngine (it keeps a thinned copy of each raw frame, the only work done in
the RunEngine's thread) and to the `ClassifierCallback` (the predictions, which arrive in the
classifier's worker thread; drawing happens there, at most once per `min_interval` seconds, and
once more when the run stops). The RunEngine therefore never waits for matplotlib. The figure
is drawn with the Agg backend (headless); `path` also saves it as a PNG after each draw, for a
browser or a remote desktop to show.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from bluesky_callbacks.classifier import FrameKeys, device_configuration

log = logging.getLogger(__name__)
COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange")


class LiveView:
    """`LiveView(path=None, min_interval=1.0, max_frames=120, points=800)`; see the module doc.

    max_frames: the most recent frames kept and drawn; points: each frame thinned to about this
    many points. `figure` is the matplotlib Figure once drawn; `draws` counts the draws; `errors`
    keeps what a draw raised (a failed draw never reaches the scan)."""

    def __init__(self, path: str | Path | None = None, keys: FrameKeys | None = None, min_interval: float = 1.0,
                 max_frames: int = 120, points: int = 800, clock=time.monotonic):
        if max_frames < 1 or points < 2 or min_interval < 0:
            raise ValueError(f"max_frames >= 1, points >= 2 and min_interval >= 0 needed, got {max_frames}, "
                             f"{points}, {min_interval}")
        self.path = Path(path) if path is not None else None
        self.keys = keys or FrameKeys()
        self.min_interval = float(min_interval)
        self.max_frames = int(max_frames)
        self.points = int(points)
        self.clock = clock
        self.figure = None
        self.draws = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()  # raw seq_num -> thinned frame
        self._x: np.ndarray | None = None
        self._raw_uid = None
        self._raw_descriptors: set[str] = set()
        self._derived_uid = None
        self._predictions: dict[int, dict] = {}  # raw seq_num -> the prediction's fields
        self._estimates: list[tuple[int, float, float]] = []  # (raw seq_num, estimate, sigma)
        self._phase_names: list[str] = []
        self._last_draw = -math.inf

    def __call__(self, name: str, doc: dict) -> None:
        handler = getattr(self, f"_{name}", None)
        if handler is not None:
            handler(doc)

    # -- raw documents (RunEngine thread): keep a thinned frame, nothing more ---------------------
    def _start(self, doc):
        if "original_run_uid" in doc:  # the derived run of the classifier
            self._derived_uid = doc["uid"]
            self._phase_names = list(doc.get("phase_names", []))
            return
        with self._lock:
            self._raw_uid = doc["uid"]
            self._frames.clear()
            self._predictions.clear()
            self._estimates.clear()
            self._raw_descriptors.clear()
            self._x = None

    def _descriptor(self, doc):
        if doc["run_start"] != self._raw_uid or self.keys.pattern not in doc["data_keys"]:
            return
        self._raw_descriptors.add(doc["uid"])
        device, config = device_configuration(doc, self.keys.pattern)  # as the classifier reads the axis
        axis = config.get(f"{device}_two_theta")
        if axis is not None:
            self._x = np.asarray(axis, dtype=float)

    def _event(self, doc):
        if doc["descriptor"] in self._raw_descriptors:
            self._keep(doc["seq_num"], doc["data"].get(self.keys.pattern))

    def _event_page(self, doc):
        if doc["descriptor"] in self._raw_descriptors:
            for seq, frame in zip(doc["seq_num"], doc["data"].get(self.keys.pattern, [])):
                self._keep(seq, frame)
        elif self._derived_uid is not None and "raw_seq_num" in doc["data"]:
            self._predicted(doc["data"])

    def _keep(self, seq_num: int, frame) -> None:
        if frame is None or isinstance(frame, str):  # external data (a datum id): not drawn
            return
        y = np.asarray(frame, dtype=float).ravel()
        step = max(1, y.size // self.points)
        with self._lock:
            self._frames[int(seq_num)] = y[::step].copy()
            while len(self._frames) > self.max_frames:
                self._frames.popitem(last=False)

    # -- derived documents (classifier's worker thread): record, draw at a bounded rate ---------------
    def _predicted(self, data: dict) -> None:
        with self._lock:
            for i, seq in enumerate(data["raw_seq_num"]):
                row = {k: values[i] for k, values in data.items()}
                self._predictions[int(seq)] = row
                self._estimates.append((int(seq), float(row.get("transition_pressure", math.nan)),
                                        float(row.get("transition_pressure_uncertainty", math.nan))))
            while len(self._predictions) > self.max_frames:
                self._predictions.pop(next(iter(self._predictions)))
            del self._estimates[:-10 * self.max_frames]
        if self.clock() - self._last_draw >= self.min_interval:
            self.draw()

    def _stop(self, doc):
        if doc.get("run_start") == self._derived_uid:
            self.draw()

    # -- the figure ---------------------------------------------------------------------------------
    def draw(self) -> None:
        """Redraw now (the callbacks call it at a bounded rate); errors are kept in `errors`."""
        self._last_draw = self.clock()
        try:
            self._draw()
            self.draws += 1
        except Exception as err:  # noqa: BLE001 - a figure never stops the scan
            message = f"live view draw failed: {err!r}"
            log.error(message)
            self.errors.append(message)

    def _draw(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with self._lock:
            rows = [(self._predictions[s], self._frames[s]) for s in self._predictions if s in self._frames]
            estimates = list(self._estimates)
            x_full = self._x
        if self.figure is None:
            self.figure = plt.figure(figsize=(11, 6))
        fig = self.figure
        fig.clear()
        ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        colours = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(self._phase_names)}
        rows.sort(key=lambda r: float(r[0].get("pressure", math.nan)))
        for row, (prediction, y) in enumerate(rows):
            x = x_full[:: max(1, x_full.size // self.points)][: y.size] if x_full is not None else np.arange(y.size)
            top = float(np.nanmax(y)) if np.isfinite(y).any() else 0.0
            scaled = y / top if top > 0 else y
            ax.plot(x[: scaled.size], row + 0.9 * scaled, lw=0.6,
                    color=colours.get(str(prediction.get("phase", "")), "0.5"))
        ax.set_yticks(np.arange(len(rows)), [f"{float(p.get('pressure', math.nan)):.2f}" for p, _ in rows],
                      fontsize=7)
        ax.set_ylabel("frames in pressure order (tick: pressure, GPa)")
        ax.set_xlabel("2θ (°)" if x_full is not None else "detector point")
        handles = [plt.Line2D([], [], color=c, label=f"predicted {n}") for n, c in colours.items()]
        if handles:
            ax.legend(handles=handles, loc="upper left", fontsize=8)
        seq = np.array([e[0] for e in estimates], dtype=float)
        est = np.array([e[1] for e in estimates])
        sig = np.array([e[2] for e in estimates])
        ok = np.isfinite(est) & np.isfinite(sig)
        if ok.any():
            ax2.fill_between(seq[ok], est[ok] - 2 * sig[ok], est[ok] + 2 * sig[ok], color="0.85", label="± 2σ")
            ax2.plot(seq[ok], est[ok], color="k", lw=1, label="transition estimate")
            ax2.legend(loc="upper right", fontsize=8)
        ax2.set_xlabel("frame (seq_num)")
        ax2.set_ylabel("transition pressure (GPa)")
        ax2.set_title("running estimate", fontsize=10)
        latest = rows[-1][0] if rows else {}
        if estimates and math.isfinite(estimates[-1][1]):
            headline = f"transition {estimates[-1][1]:.2f} ± {estimates[-1][2]:.2f} GPa"
        else:
            headline = "no transition yet"
        newest = max(self._predictions.items(), key=lambda kv: kv[0])[1] if self._predictions else latest
        material = str(newest.get("material") or ("out of library" if newest.get("material_out_of_library")
                                                  else "-"))
        ax.set_title(f"{len(rows)} frames; {headline}; latest frame: {newest.get('phase', '-')}, "
                     f"material {material}", fontsize=10)
        fig.tight_layout()
        if self.path is not None:
            fig.savefig(self.path, dpi=90)

"""`xrd-nexus-ml classify FILE.nxs`: predictions for a NeXus file written by anyone.

The patterns (and pressure and energy, where the file records them) are read with
`reader.read_patterns`, classified by the same `InferenceEngine` the live callback runs, in
the file's frame order, and appended as a new NXprocess group (`predictions`, or
`predictions_2`, ... when one exists), in a copy of the file or, when asked, in the file itself.
Nothing that was in the file is modified.

The transition estimate uses the change-point settings the scan used live: a steered run's
start document (kept in the file) names its `SteeringPolicy`, whose settings suit frames taken
out of pressure order; without one, frames out of order get settings of the same kind derived
from the file's pressures (the defaults assume a monotonic ramp).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np

from nexus_definitions import layout as L
from nexus_definitions.reader import open_for_reading, read_patterns
from nexus_definitions.writer import NexusFileExistsError, append_predictions
from xrd_nexus_ml.inference import Frame, InferenceEngine
from xrd_nexus_ml.steering import SteeringPolicy


def recorded_steering_policy(path, entry: str | None = None) -> SteeringPolicy | None:
    """The `SteeringPolicy` of a steered run, from the start document the file keeps (None: none)."""
    with open_for_reading(path) as f:
        name = entry or next((k for k in f if f[k].attrs.get("NX_class") in ("NXentry", b"NXentry")), None)
        start = f.get(f"{name}/{L.BLUESKY}/start") if name else None
        if start is None:
            return None
        try:
            policy = json.loads(L.decode(start[()])).get("steering_policy")
        except (ValueError, AttributeError):
            return None
    if not isinstance(policy, dict):
        return None
    known = {f.name for f in dataclasses.fields(SteeringPolicy)}
    try:
        return SteeringPolicy(**{k: v for k, v in policy.items() if k in known})
    except (TypeError, ValueError):
        return None


def changepoint_options_for(pressures, policy: SteeringPolicy | None = None) -> dict | None:
    """The change-point settings for frames at `pressures` in acquisition order: the steering
    policy's when given; for frames out of pressure order, a fixed grid of a tenth of the finest
    step, physical widths and a margin of two of the widest steps; None (the defaults) otherwise."""
    if policy is not None:
        return policy.changepoint_options()
    if pressures is None:
        return None
    p = np.asarray(pressures, dtype=float)
    p = p[np.isfinite(p)]
    steps = np.diff(p)
    if p.size < 3 or (steps >= 0).all() or (steps <= 0).all():
        return None
    levels = np.diff(np.unique(p))
    levels = levels[levels > 0]
    if not levels.size:
        return None
    return {"resolution": max(float(levels.min()) / 10.0, float(np.ptp(p)) / 2000.0),
            "widths": list(SteeringPolicy().transition_widths), "margin": 2.0 * float(levels.max())}


def classified_copy_path(path, folder=None) -> Path:
    """Where `classify` writes a file's classified copy: `<stem>.classified<suffix>` beside it or in `folder`."""
    path = Path(path)
    return (Path(folder) if folder is not None else path.parent) / f"{path.stem}.classified{path.suffix}"


def classify_file(path, engine=None, entry: str | None = None, wavelength=None, elements=None,
                  out=None) -> dict:
    """Classify every frame of `path` and append the predictions; returns a short summary.
    elements: those that may be present (restrict material identification), as in a live run.
    out: a new file to write (a copy of `path` with the predictions appended; an existing one is
    refused); None appends to `path` itself."""
    engine = engine or InferenceEngine.from_bundles()
    copy = out is not None and Path(out).resolve() != Path(path).resolve()
    target = Path(out) if copy else Path(path)
    if copy and target.exists():
        raise NexusFileExistsError(f"{target}: exists; remove it, choose another --out, or classify it with "
                                   "--in-place")
    # the file's own wavelength (or energy) wins; `wavelength` serves the frames that record none
    patterns, pressures, energies = read_patterns(path, entry=entry)
    if wavelength is not None and any(p.axis != "q" and not p.wavelength for p in patterns):
        fallback, _, _ = read_patterns(path, entry=entry, wavelength=wavelength)
        patterns = [p if p.axis == "q" or p.wavelength else f for p, f in zip(patterns, fallback)]
    frames = [Frame(seq_num=int(p.metadata["seq_num"]), intensity=p,
                    pressure=float(pressures[i]) if pressures is not None else math.nan,
                    energy=float(energies[i]) if energies is not None else math.nan)
              for i, p in enumerate(patterns)]
    options = changepoint_options_for(pressures, recorded_steering_policy(path, entry))
    predictions = engine.new_run(changepoint_options=options, elements=elements).classify(frames)
    if copy:  # only now: a file that cannot be read or classified leaves no copy behind
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    group = append_predictions(target, predictions, engine.phase_names, engine.top_k, list(engine.provenance),
                               entry=entry)
    phases: dict[str, int] = {}
    for p in predictions:
        phases[p.phase or f"({p.flag})"] = phases.get(p.phase or f"({p.flag})", 0) + 1
    last = predictions[-1] if predictions else None
    return {"file": str(Path(path)), "written_to": str(target), "group": group, "frames": len(predictions),
            "phases": phases,
            "out_of_library": sum(p.out_of_library for p in predictions),
            "transition_pressure_gpa": last.transition_pressure if last else math.nan,
            "transition_uncertainty_gpa": last.transition_pressure_uncertainty if last else math.nan,
            "changepoint_options": options or "defaults (frames in pressure order)",
            "models": [m.model_id for m in engine.provenance]}

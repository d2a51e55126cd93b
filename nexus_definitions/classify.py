"""`xrd-nexus-ml classify FILE.nxs`: predictions for a NeXus file written by anyone.

The patterns (and pressure and energy, where the file records them) are read with
`reader.read_patterns`, classified by the same `InferenceEngine` the live callback runs, in
the file's frame order, and appended as a new NXprocess group (`predictions`, or
`predictions_2`, ... when one exists). Nothing that was in the file is modified.
"""

from __future__ import annotations

import math
from pathlib import Path

from nexus_definitions.reader import read_patterns
from nexus_definitions.writer import append_predictions
from xrd_nexus_ml.inference import Frame, InferenceEngine


def classify_file(path, engine=None, entry: str | None = None, wavelength=None, elements=None) -> dict:
    """Classify every frame of `path` and append the predictions; returns a short summary.
    elements: those that may be present (restrict material identification), as in a live run."""
    engine = engine or InferenceEngine.from_bundles()
    # the file's own wavelength (or energy) wins; `wavelength` serves the frames that record none
    patterns, pressures, energies = read_patterns(path, entry=entry)
    if wavelength is not None and any(p.axis != "q" and not p.wavelength for p in patterns):
        fallback, _, _ = read_patterns(path, entry=entry, wavelength=wavelength)
        patterns = [p if p.axis == "q" or p.wavelength else f for p, f in zip(patterns, fallback)]
    frames = [Frame(seq_num=int(p.metadata["seq_num"]), intensity=p,
                    pressure=float(pressures[i]) if pressures is not None else math.nan,
                    energy=float(energies[i]) if energies is not None else math.nan)
              for i, p in enumerate(patterns)]
    predictions = engine.new_run(elements=elements).classify(frames)
    group = append_predictions(path, predictions, engine.phase_names, engine.top_k, list(engine.provenance),
                               entry=entry)
    phases: dict[str, int] = {}
    for p in predictions:
        phases[p.phase or f"({p.flag})"] = phases.get(p.phase or f"({p.flag})", 0) + 1
    last = predictions[-1] if predictions else None
    return {"file": str(Path(path)), "group": group, "frames": len(predictions), "phases": phases,
            "out_of_library": sum(p.out_of_library for p in predictions),
            "transition_pressure_gpa": last.transition_pressure if last else math.nan,
            "transition_uncertainty_gpa": last.transition_pressure_uncertainty if last else math.nan,
            "models": [m.model_id for m in engine.provenance]}

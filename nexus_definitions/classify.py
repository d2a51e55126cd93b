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


def classify_file(path, engine=None, entry: str | None = None, wavelength=None) -> dict:
    """Classify every frame of `path` and append the predictions; returns a short summary."""
    from xrd_nexus_ml.inference import Frame, InferenceEngine

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
    predictions = engine.new_run().classify(frames)
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


def cmd_classify(args) -> int:
    """Each file classified in turn; one that cannot be read or written gets an error line (--json:
    {"file", "error"}) in its place, the others are still classified, and the exit status is then 2."""
    import json
    import sys

    from xrd_nexus_ml.errors import XrdNexusMlError
    from xrd_nexus_ml.inference import InferenceEngine

    engine = InferenceEngine.from_bundles(device=args.device)
    failed = []
    for path in args.files:
        try:
            summary = classify_file(path, engine, entry=args.entry, wavelength=args.wavelength)
        except (XrdNexusMlError, OSError) as err:
            failed.append(str(path))
            problem = getattr(err, "problem", None) or str(err)
            print(json.dumps({"file": str(path), "error": problem}) if args.json else f"{path}: error: {problem}")
            continue
        if args.json:
            print(json.dumps(summary, default=float))
        else:
            print(f"{summary['file']}: {summary['frames']} frames -> {summary['group']}; phases {summary['phases']}; "
                  f"transition {summary['transition_pressure_gpa']:.2f} ± {summary['transition_uncertainty_gpa']:.2f} GPa")
    if failed:
        print(f"xrd-nexus-ml: error: {len(failed)} of {len(args.files)} NeXus file(s) could not be classified: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 2
    return 0

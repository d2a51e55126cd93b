"""The main job: a simulated high-pressure beamline scan, classified live and steered.

`xrd-nexus-ml demo`: a RunEngine ramps the pressure on a simulated (Mg0.2Fe0.8)O sample
(`bluesky_callbacks.sim`), the `ClassifierCallback` classifies each frame in its worker thread,
the adaptive plan (`bluesky_callbacks.plans`) refines the steps around the transition the
callback reports, raw and derived runs go into the embedded tiled store, the `NexusWriter`
writes the NeXus file, which is then validated. It prints what it found and draws the
waterfall of the frames coloured by the predicted phase, with the estimated transition.
Everything shown is read back from the store and the NeXus file, not from memory.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bluesky_callbacks.classifier import ClassifierCallback, FrameKeys
from bluesky_callbacks.nexus_writer import NexusWriter
from bluesky_callbacks.plans import adaptive_pressure_ramp, uniform_pressure_ramp
from bluesky_callbacks.sim import SampleModel, make_beamline
from bluesky_callbacks.storage import RunStore
from nexus_definitions import layout as L
from nexus_definitions.layout import decode
from nexus_definitions.validate import validate_file
from xrd_nexus_ml.inference import InferenceEngine
from xrd_nexus_ml.physics.symmetry import space_group_symbol
from xrd_nexus_ml.spacegroup.model import UNDETERMINED
from xrd_nexus_ml.steering import SteeringPolicy
from xrd_nexus_ml.transitions.materials import MATERIALS

log = logging.getLogger(__name__)

SAMPLE = {"name": "ferropericlase (Mg0.2Fe0.8)O", "chemical_formula": "Mg0.2Fe0.8O", "elements": ["Mg", "Fe", "O"]}


def run_demo(out="out/demo", *, steering: bool = True, max_frames: int = 60, device: str = "auto",
             transition_pressure: float | None = None, precision: float | None = None, noise: float = 0.02,
             seed: int = 0,
             store: bool = True, area_detector: bool = False, spacegroup_model: str | None = "default",
             identification_model: str | None = "default", identification_options: dict | None = None,
             transition_model: str = "default", sample: str | None = None) -> dict:
    """Run the scan and write everything under `out`; returns the summary.

    area_detector: classify the pyFAI-integrated frames of the simulated 2D detector instead of
    the 1D detector's patterns. spacegroup_model / identification_model / identification_options:
    the optional live models (`InferenceEngine.from_bundles`; None or "none": not run).
    transition_model: a bundle folder, "default" (shipped), "auto" (training-free) or "none".
    sample: a material of `transitions.materials.MATERIALS` (e.g. "KCl", "Si") instead of the seed's
    (Mg,Fe)O; its literature transition unless `transition_pressure` is given, its pressure range,
    and steps and precision scaled to that range. Only "auto" or a model trained for it can follow
    it (the shipped models know (Mg,Fe)O alone)."""
    from bluesky import RunEngine

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, stop, coarse = 5.0, 55.0, 6.0
    sample_md = SAMPLE
    if sample is not None:
        if sample not in MATERIALS:
            raise ValueError(f"unknown sample {sample!r}; the demo knows {', '.join(MATERIALS)}")
        material = MATERIALS[sample]
        start, stop = material.pressure_range
        coarse = (stop - start) / 8.0
        if transition_pressure is None:
            transition_pressure = material.transition_pressures[0] if material.transition_pressures else stop + 1.0
        if precision is None:
            precision = (stop - start) / 100.0
        sample_md = _material_metadata(material)
    transition_pressure = 31.0 if transition_pressure is None else transition_pressure
    precision = 0.5 if precision is None else precision
    sample = SampleModel(transition_pressure=transition_pressure, noise=noise, seed=seed, material=sample)
    beamline = make_beamline(sample, settle_time=0.0, area_detector=area_detector)
    detector = beamline.area_detector if area_detector else beamline.detector
    pattern_key = f"{detector.name}_integrated" if area_detector else f"{detector.name}_pattern"
    engine = InferenceEngine.from_bundles(transition_model, device=device, spacegroup_model=spacegroup_model,
                                          identification_model=identification_model,
                                          identification_options=identification_options)
    policy = SteeringPolicy(start=start, stop=stop, precision=precision, max_frames=max_frames, coarse_step=coarse)
    classifier = ClassifierCallback(engine, FrameKeys(pattern=pattern_key),
                                    changepoint_options=policy.changepoint_options())
    nexus = NexusWriter(out / "nexus", pattern_key=pattern_key, license="CC-BY-4.0",
                        instrument="simulated high-pressure powder station",
                        facility="xrd-nexus-ml simulation", source_type="Synchrotron X-ray Source")
    RE = RunEngine({}, call_returns_result=True)
    run_store = None
    if store:
        run_store = RunStore(out / "store")
        RE.subscribe(run_store.writer())
        classifier.subscribe(run_store.writer())
    RE.subscribe(nexus)
    RE.subscribe(classifier)
    classifier.subscribe(nexus)

    detectors = [detector, beamline.energy]
    if steering:
        plan = adaptive_pressure_ramp(detectors, beamline.pressure, policy, classifier)
    else:
        step = 2.0 * precision
        plan = uniform_pressure_ramp(detectors, beamline.pressure, policy.start, policy.stop, step,
                                     estimate_source=classifier, precision=precision)
    md = {"sample": sample_md,
          "title": f"pressure ramp of {sample_md['name']}, {'adaptive' if steering else 'uniform'}",
          "owner": "xrd-nexus-ml demo", "license": "CC-BY-4.0", "energy_kev": beamline.energy.position}
    try:
        result = RE(plan, **md)
    finally:
        classifier.flush(120)
        classifier.close()
    uid = result.run_start_uids[0]
    if nexus.errors or classifier.subscriber_errors:
        raise RuntimeError(f"writing the run failed: {nexus.errors or classifier.subscriber_errors}")

    nexus_path = nexus.paths[uid]
    report = validate_file(nexus_path)
    frames = _read_back(run_store, uid, detector.name, pattern_key) if run_store is not None else None
    if frames is None:
        frames = _read_nexus(nexus_path)
    summary = _summarise(frames, classifier.counts(uid), steering, precision, transition_pressure, nexus_path,
                         report, run_store, uid, time.perf_counter() - started, engine,
                         sample_name=sample_md["name"], energy_kev=float(beamline.energy.position))
    plot_demo(frames, summary, out / "demo.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if run_store is not None:
        run_store.close()
    return summary


def _material_metadata(material) -> dict:
    """The start document's sample of a literature material: name, formula, elements."""
    structure = getattr(material.phases[0], "structure", None)
    if structure is None:
        return SAMPLE
    composition = structure.composition.reduced_composition
    return {"name": material.name, "chemical_formula": composition.formula.replace(" ", ""),
            "elements": sorted(str(e) for e in composition.elements)}


def _read_back(run_store, uid: str, device: str, pattern_key: str) -> dict:
    """Frames and predictions of the run, from the tiled store (raw and derived)."""
    raw = run_store[uid]["primary"].read()
    derived = run_store.derived_runs(uid)
    if not derived:
        raise RuntimeError(f"the store holds no prediction run for raw run {uid}")
    pred = derived[0]["primary"].read()
    order = np.argsort(np.asarray(pred["raw_seq_num"]))
    return {
        "intensity": np.asarray(raw[pattern_key]),
        "two_theta": np.asarray(
            run_store[uid]["primary"].metadata["configuration"][device]["data"][f"{device}_two_theta"]),
        "pressure": np.asarray(raw["pressure"]),
        "phase": [str(v) for v in np.asarray(pred["phase"])[order]],
        "space_group_number": np.asarray(pred["space_group_number"])[order],
        "crystal_system": [str(v) for v in np.asarray(pred["crystal_system"])[order]],
        "material": [str(v) for v in np.asarray(pred["material"])[order]],
        "material_out_of_library": np.asarray(pred["material_out_of_library"])[order],
        "transition_probability": np.asarray(pred["transition_probability"])[order],
        "transition_pressure": np.asarray(pred["transition_pressure"])[order],
        "transition_pressure_uncertainty": np.asarray(pred["transition_pressure_uncertainty"])[order],
        "flag": [str(v) for v in np.asarray(pred["flag"])[order]],
        "latency": np.asarray(pred["latency"])[order],
        "phase_names": list(derived[0].metadata["start"]["phase_names"]),
        "source": "tiled store",
    }


def _read_nexus(path: Path) -> dict:
    """The same, from the NeXus file (when no store was asked for), at the paths of its layout."""
    import h5py

    with h5py.File(path, "r") as h5:
        entry = h5[L.ENTRY]
        results = entry[f"{L.PREDICTIONS}/{L.PROCESS_RESULTS}"]
        return {"intensity": entry[L.PATTERN][()], "two_theta": entry[L.TWO_THETA][()],
                "pressure": entry[L.PRESSURE][()], "phase": [decode(v) for v in results["phase"][()]],
                "space_group_number": results["space_group_number"][()],
                "crystal_system": [decode(v) for v in results["crystal_system"][()]],
                "material": [decode(v) for v in results["material"][()]],
                "material_out_of_library": results["material_out_of_library"][()],
                "transition_probability": results["transition_probability"][()],
                "transition_pressure": results["transition_pressure"][()],
                "transition_pressure_uncertainty": results["transition_pressure_uncertainty"][()],
                "flag": [decode(v) for v in results["flag"][()]], "latency": results["latency"][()],
                "phase_names": [decode(v) for v in entry[f"{L.PREDICTIONS}/{L.PROCESS_PARAMETERS}/phase_names"][()]],
                "source": str(path)}


def _summarise(frames: dict, counts: dict, steering: bool, precision: float, truth: float, nexus_path: Path,
               report, run_store, uid: str, seconds: float, engine, sample_name: str = "",
               energy_kev: float | None = None) -> dict:
    pressure = frames["pressure"]
    phases = {}
    for name in frames["phase_names"]:
        where = np.array([p == name for p in frames["phase"]], dtype=bool)
        at = pressure[where]
        if at.size:
            phases[name] = {"frames": int(at.size), "pressure_range_gpa": [float(at.min()), float(at.max())],
                            **_companions(frames, where)}
    estimate = float(frames["transition_pressure"][-1])
    sigma = float(frames["transition_pressure_uncertainty"][-1])
    return {
        "raw_run_uid": uid,
        "sample": sample_name,
        "beam_energy_kev": energy_kev,
        "steering": "adaptive" if steering else "uniform",
        "frames": int(pressure.size),
        "classification": counts,
        "phases": phases,
        "transition_pressure_gpa": estimate,
        "transition_uncertainty_gpa": sigma,
        "true_transition_pressure_gpa": truth,
        "error_gpa": abs(estimate - truth) if math.isfinite(estimate) else None,
        "requested_precision_gpa": precision,
        "latency_median_ms": float(np.median(frames["latency"])),
        "flags": {f: frames["flag"].count(f) for f in sorted(set(frames["flag"]))},
        "nexus_file": str(nexus_path),
        "nexus_valid": bool(report.ok),
        "nexus_errors": list(report.errors),
        "store": str(run_store.directory) if run_store is not None else None,
        "read_back_from": frames["source"],
        "models": [p.model_id for p in engine.provenance],
        "device": str(engine.device),
        "seconds": round(seconds, 1),
    }


def _most_common(values) -> tuple[object, int]:
    """(value, count) of the most frequent value; (None, 0) for none."""
    counted = Counter(values).most_common(1)
    return counted[0] if counted else (None, 0)


def _companions(frames: dict, where: np.ndarray) -> dict:
    """What the space-group and identification models said most often over some frames."""
    systems = [s for s, w in zip(frames["crystal_system"], where) if w and s]
    # a frame with a space-group prediction ("" crystal system: none) and number 0 was undetermined
    numbers = [int(n) if int(n) > 0 else UNDETERMINED
               for n, s, w in zip(np.asarray(frames["space_group_number"]), frames["crystal_system"], where) if w and s]
    named = [m for m, w in zip(frames["material"], where) if w and m]
    space_group, sg_frames = _most_common(numbers)
    system, system_frames = _most_common(systems)
    material, material_frames = _most_common(named)
    return {"space_group": space_group, "space_group_frames": sg_frames,
            "crystal_system": system, "crystal_system_frames": system_frames,
            "material": material, "material_frames": material_frames,
            "material_out_of_library_frames": int(np.asarray(frames["material_out_of_library"])[where].sum())}


def _companion_text(name: str, info: dict) -> str:
    """One line of what the table says of a phase: space group, crystal system, material."""
    n = info["frames"]
    space_group = info["space_group"]
    if space_group and space_group != UNDETERMINED:
        space_group = f"{space_group} {space_group_symbol(int(space_group))}"
    material = info["material"] or ("out of library" if info["material_out_of_library_frames"] else "-")
    return (f"{name}: space group {space_group or '-'} ({info['space_group_frames']}/{n}), "
            f"crystal system {info['crystal_system'] or '-'} ({info['crystal_system_frames']}/{n}), "
            f"material {material}")


def draw_demo(frames: dict, summary: dict):
    """The demo's figure: left, the frames in pressure order, one per row (evenly offset, each row's
    tick its pressure, so peak heights never read as pressures), coloured by predicted phase, with
    the transition estimate and its 2σ band between the rows that bracket it; right, the steering
    path in the order the frames were taken. Title: sample and beam energy; below: what the other
    models said of each phase. Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = {name: c for name, c in zip(frames["phase_names"], ["tab:blue", "tab:red", "tab:green", "tab:purple"])}
    pressure, intensity = np.asarray(frames["pressure"], dtype=float), frames["intensity"]
    order = np.argsort(pressure, kind="stable")
    x = frames["two_theta"] if frames["two_theta"] is not None and len(frames["two_theta"]) == intensity.shape[1] \
        else np.arange(intensity.shape[1])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 7.5), gridspec_kw={"width_ratios": [3, 2]})
    for row, i in enumerate(order):
        y = intensity[i] / max(float(np.max(intensity[i])), 1e-12)
        ax.plot(x, row + 0.9 * y, lw=0.6, color=colours.get(frames["phase"][i], "0.5"))
    ax.set_yticks(np.arange(len(order)), [f"{pressure[i]:.2f}" for i in order], fontsize=7)
    ax.set_ylim(-0.5, len(order) + 0.4 + 0.3 * (len(frames["phase_names"]) + 2))  # room for the legend
    est, sig = summary["transition_pressure_gpa"], summary["transition_uncertainty_gpa"]
    handles = [plt.Line2D([], [], color=c, label=f"predicted {name}") for name, c in colours.items()]
    if math.isfinite(est) and len(order) > 1:
        ranks = np.interp([est - 2 * sig, est, est + 2 * sig], pressure[order], np.arange(len(order)))
        ax.axhspan(ranks[0], ranks[2], color="0.85", zorder=0)
        ax.axhline(ranks[1], color="k", ls="--", lw=1)
        handles += [plt.Line2D([], [], color="k", ls="--", label=f"transition {est:.2f} ± {sig:.2f} GPa (1σ)"),
                    Patch(color="0.85", label="± 2σ")]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_xlabel("2θ (°)" if x is frames["two_theta"] else "detector point")
    ax.set_ylabel("frames in pressure order (tick: pressure, GPa)")
    energy = summary.get("beam_energy_kev")
    sample = summary.get("sample") or "sample"
    ax.set_title(f"{sample}{f' at {energy:.1f} keV' if energy else ''}: {summary['frames']} frames, "
                 f"{summary['steering']} steering", fontsize=10)
    seq = np.arange(1, len(pressure) + 1)
    ax2.plot(seq, pressure, color="0.6", lw=0.8)
    ax2.scatter(seq, pressure, c=[colours.get(p, "0.5") for p in frames["phase"]], s=18, zorder=3)
    handles2 = [plt.Line2D([], [], marker="o", ls="", color=c, label=f"predicted {name}")
                for name, c in colours.items()]
    if math.isfinite(est):
        ax2.axhline(est, color="k", ls="--", lw=1)
        handles2.append(plt.Line2D([], [], color="k", ls="--", label="estimate"))
    truth = summary.get("true_transition_pressure_gpa")
    if truth is not None and math.isfinite(truth):
        ax2.axhline(truth, color="tab:green", ls=":", lw=1)
        handles2.append(plt.Line2D([], [], color="tab:green", ls=":", label="true (simulated) transition"))
    ax2.legend(handles=handles2, loc="lower right", fontsize=8)
    ax2.set_xlabel("frame (order taken)")
    ax2.set_ylabel("pressure (GPa)")
    ax2.set_title("steering path", fontsize=10)
    lines = [_companion_text(name, info) for name, info in summary["phases"].items()]
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom", family="monospace")
    fig.tight_layout(rect=(0, 0.03 * max(len(lines), 1) + 0.01, 1, 1))
    return fig


def plot_demo(frames: dict, summary: dict, path: Path) -> None:
    """`draw_demo` saved as a PNG."""
    import matplotlib.pyplot as plt

    fig = draw_demo(frames, summary)
    fig.savefig(path, dpi=110)
    plt.close(fig)

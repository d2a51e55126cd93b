"""`xrd-nexus-ml`: the command line. Each subcommand parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from xrd_nexus_ml.errors import XrdNexusMlError


def _print_json(payload: dict | list) -> None:
    print(json.dumps(payload, indent=2, default=float))


def cmd_demo(args) -> int:
    from xrd_nexus_ml.demo import run_demo

    summary = run_demo(Path(args.out), seed=args.seed, n_augmented=args.n_augmented, device=args.device)
    if args.json:
        _print_json(summary)
        return 0
    print(f"Simulated {len(summary['simulated'])} structures on the canonical grid "
          f"({summary['canonical_grid']['n_points']} points, q {summary['canonical_grid']['q_min']}-"
          f"{summary['canonical_grid']['q_max']} 1/Å), clean and augmented.")
    print(f"{'measured pattern':<18} {'true':<8} {'best reference (cosine)':<28} {'correct':<8} identified (MoE)")
    for m in summary["measured"]:
        top = m["top3"][0]
        best = "{} ({:.3f})".format(top["reference"], top["cosine"])
        found = ", ".join(f"{p['formula']} ({p['probability']:.2f})" for p in m["identified"]) or "-"
        print(f"{m['file']:<18} {m['true_phase']:<8} {best:<28} {'yes' if m['correct_formula'] else 'no':<8} {found}")
    print(f"Figure: {summary['png']}  ({summary['seconds']} s on {summary['device']})")
    return 0


def cmd_simulate(args) -> int:
    import numpy as np

    from xrd_nexus_ml.io import read_structure
    from xrd_nexus_ml.pattern import CANONICAL_GRID
    from xrd_nexus_ml.physics import PeakProfile, PowderSimulator, RenderGrid

    if args.two_theta:
        grid = RenderGrid.two_theta(*args.two_theta)
    else:
        grid = RenderGrid.from_qgrid(CANONICAL_GRID)
    profile = PeakProfile(shape=args.shape, caglioti_uvw=tuple(args.caglioti), crystallite_size_nm=args.size_nm)
    sim = PowderSimulator(wavelength=args.wavelength, grid=grid, profile=profile, device=args.device,
                          batch_size=args.batch_size)
    paths = [Path(p) for p in args.cifs]
    patterns = sim.simulate_all((read_structure(p) for p in paths), progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = grid.values.numpy()
    unit = "2theta_deg" if grid.axis == "two_theta" else "q_1/angstrom"
    for path, pattern in zip(paths, patterns):
        target = out / f"{path.stem}.xy"
        header = f"simulated by xrd-nexus-ml from {path.name}\nwavelength = {sim.wavelength} A\n{unit} intensity"
        np.savetxt(target, np.column_stack([x, pattern / max(pattern.max(), 1e-30)]), fmt="%.6g", header=header)
    print(f"wrote {len(paths)} patterns to {out}")
    return 0


def cmd_inspect(args) -> int:
    """One JSON document: the file's object for one file, a list of them (in argument order) for several."""
    from xrd_nexus_ml.io import read_pattern

    infos = []
    for name in args.files:
        pattern = read_pattern(name, wavelength=args.wavelength)
        info = {
            "file": name,
            "points": pattern.n_points,
            "axis": pattern.axis,
            "range": [float(pattern.x[0]), float(pattern.x[-1])],
            "wavelength_angstrom": pattern.wavelength,
            "metadata": {k: v for k, v in pattern.metadata.items() if isinstance(v, (str, int, float))},
        }
        if pattern.wavelength or pattern.axis == "q":
            canonical = pattern.on_canonical_grid()
            q = canonical.x[canonical.mask]
            info["canonical_q_measured"] = [float(q.min()), float(q.max())]
            info["canonical_fraction_measured"] = float(canonical.mask.mean())
        infos.append(info)
    _print_json(infos[0] if len(infos) == 1 else infos)
    return 0


def cmd_check(args) -> int:
    from tqdm import tqdm

    from xrd_nexus_ml.physics.parity import compare_with_calibrant, compare_with_pymatgen, parity_summary
    from xrd_nexus_ml.references import CALIBRANTS, aflow_prototypes

    named = list(aflow_prototypes())[: args.n]
    results = []
    for start in tqdm(range(0, len(named), 32), desc="pymatgen parity", unit="batch", disable=args.json):
        results += compare_with_pymatgen(named[start : start + 32], wavelength=args.wavelength)
    summary = parity_summary(results)
    summary["calibrants"] = [compare_with_calibrant(name) for name in CALIBRANTS]
    ok = not summary["failures"] and all(
        not c["simulated_not_listed"] and not c["listed_not_simulated"] for c in summary["calibrants"]
    )
    summary["ok"] = ok
    if args.json:
        _print_json(summary)
    else:
        wp, wi = summary["worst_position"], summary["worst_intensity"]
        print(f"pymatgen parity: {summary['n_pass']}/{summary['n_structures']} structures pass ({summary['criteria']})")
        print(f"  worst position error  {wp['max_position_error_deg']:.2e} deg  ({wp['name']})")
        print(f"  worst intensity error {wi['max_intensity_error']:.3f} %    ({wi['name']})")
        for c in summary["calibrants"]:
            print(f"pyFAI calibrant {c['calibrant']:<6} {c['n_listed']} lines, max relative d error "
                  f"{c['max_relative_d_error']:.1e}, unmatched {len(c['simulated_not_listed']) + len(c['listed_not_simulated'])}")
    return 0 if ok else 1


def cmd_bench(args) -> int:
    from xrd_nexus_ml.benchmarks import bench_simulate, bench_stream, bench_synthetic
    from xrd_nexus_ml.references import aflow_prototypes

    if args.bench == "synthetic":
        result = bench_synthetic(n_crystals=args.n, batch_size=args.batch_size)
        _print_json(result)
        return 0
    structures = [s for _, s in aflow_prototypes()]
    if args.bench == "stream":
        result = bench_stream(structures, n_patterns=args.n, batch_size=args.batch_size, device=args.device)
        summary = (f"{result['n_patterns']} patterns at {result['patterns_per_s']:.0f}/s, resident memory grew "
                   f"{result['rss_growth_mb']:.0f} MB (holding them would take {result['output_if_held_mb']:.0f} MB)")
    else:
        result = bench_simulate(structures[: args.n], device=args.device, batch_size=args.batch_size,
                                repeats=args.repeats)
        summary = (f"{result['n_structures']} structures: pymatgen {result['pymatgen_patterns_per_s']:.0f}/s, "
                   f"ours {result['ours_patterns_per_s']:.0f}/s, speedup {result['speedup']:.1f}x on {result['device']}")
    if args.json:
        _print_json(result)
    else:
        print(summary)
    return 0


def cmd_evaluate(args) -> int:
    if args.calibrate:
        from xrd_nexus_ml.transitions.evaluate_materials import calibrate_detector

        _print_json(calibrate_detector(n_ramps=args.n_ramps, seed=100 + args.seed))
        return 0
    if args.materials:
        from xrd_nexus_ml.transitions.evaluate_materials import evaluate_materials

        names = "all" if args.materials == "all" else [m.strip() for m in args.materials.split(",")]
        models = [m.strip() for m in args.models.split(",")]
        result = evaluate_materials(names, n_ramps=args.n_ramps, seed=args.seed, models=models)
        if args.json:
            _print_json(result)
            return 0
        for name, entry in result["materials"].items():
            for model, m in entry["models"].items():
                err = m["transition_error_steps"]
                print(f"{name:<15} {model:<11} found {m['found']}/{m['n_transitions']}  within 1 step "
                      f"{m['within_one_step'] if m['within_one_step'] is None else round(m['within_one_step'], 2)}  "
                      f"|err| mean/max {err['mean'] if err['mean'] is None else round(err['mean'], 2)}/"
                      f"{err['max'] if err['max'] is None else round(err['max'], 2)} steps  false alarms/ramp "
                      f"{m['false_alarms_per_ramp']}  {m['ms_per_frame']:.2f} ms/frame")
        print(f"held out ({', '.join(result['held_out']['materials'])}): "
              f"{json.dumps(result['held_out']['models'], default=float)}")
        return 0
    from xrd_nexus_ml.transitions.evaluate import cmd_evaluate_transition

    return cmd_evaluate_transition(args)


def cmd_train(args) -> int:
    from training.transition import cmd_train_transition

    return cmd_train_transition(args)


def cmd_bench_callback(args) -> int:
    from bluesky_callbacks.bench import cmd_bench_callback as bench

    return bench(args)


def cmd_live_demo(args) -> int:
    from bluesky_callbacks.demo import cmd_demo as live_demo

    return live_demo(args)


def cmd_classify(args) -> int:
    from xrd_nexus_ml.identification.commands import cmd_classify as classify

    return classify(args)


def cmd_nexus(args) -> int:
    from nexus_definitions.validate import cmd_nexus_recover, cmd_nexus_validate

    return {"validate": cmd_nexus_validate, "recover": cmd_nexus_recover}[args.nexus_command](args)


def cmd_export(args) -> int:
    from nexus_definitions.export import cmd_export as export

    return export(args)


def cmd_serve(args) -> int:
    from bluesky_callbacks.serve import cmd_serve as serve

    return serve(args)


def cmd_transition(args) -> int:
    from xrd_nexus_ml.transitions.series import classify_series, find_transitions, load_series, plot_series

    series = load_series(args.inputs, control=args.control, wavelength=args.wavelength)
    if args.model == "auto":
        result = find_transitions(series)
    else:
        result = classify_series(series, args.model)
    if args.plot:
        result["plot"] = str(plot_series(series, result, args.plot))
    if args.json:
        _print_json(result)
        return 0
    unit, name = result["unit"], result["control"]
    print(f"{'frame':<28} {name + ' (' + unit + ')':>18}  status")
    for f in result["frames"]:
        extra = f" (score {f['change_score']:.2f})" if f.get("status") == "changed" and "change_score" in f else ""
        reason = f": {f['reason']}" if f["status"] == "flagged" else ""
        print(f"{f['file']:<28} {f[name]:>18.4g}  {f['status']}{extra}{reason}")
    if not result["transitions"]:
        print("no transition found")
    for t in result["transitions"]:
        print(f"transition {t['from']} -> {t['to']} at {t['value']:.4g} ± {t['sigma']:.2g} {unit} (1σ, "
              f"{t['direction']} {name}{'' if t['settled'] else ', not settled'})")
    if args.plot:
        print(f"figure: {result['plot']}")
    return 0


def _add_live_model_arguments(p: argparse.ArgumentParser, default: str = "default") -> None:
    """The models the live classifier runs: the phase-transition model and the optional others."""
    p.add_argument("--transition-model", default="default", metavar="DIR|default|auto|none",
                   help="phase-transition model: a bundle folder (e.g. from `train transition`), 'default' (the "
                        "shipped (Mg,Fe)O end-to-end model), 'auto' (the training-free detector: any sample, no "
                        "CIF) or 'none' (default: default)")
    p.add_argument("--spacegroup-model", default=default,
                   help=f"space-group model: a bundle folder, 'default' (shipped) or 'none' (default: {default})")
    p.add_argument("--identification-model", default=default,
                   help="material-identification model: a bundle folder, a shipped name ('default') or 'none' "
                        f"(default: {default})")
    p.add_argument("--identification-screen", type=int, default=None, metavar="N",
                   help="classes the identification screen fits for a later phase the network did not propose "
                        "(default 3; 0: the network's proposals only, faster live; recorded in the provenance)")


def identification_options(args) -> dict | None:
    """`InferenceEngine.from_bundles(identification_options=...)` from the live model arguments."""
    return None if args.identification_screen is None else {"screen": args.identification_screen}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xrd-nexus-ml",
        description="ML identification of powder diffraction patterns, live in Bluesky scans, with NeXus output.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job: a simulated beamline scan classified live, steered, stored, NeXus")
    p.add_argument("--out", default="out/demo", help="output folder (NeXus file, store, PNG, summary.json)")
    p.add_argument("--frames", type=int, default=60, help="most frames the scan may take")
    p.add_argument("--no-steering", action="store_true", help="a uniform ramp instead of adaptive steering")
    p.add_argument("--precision", type=float, default=None,
                   help="transition pressure precision to reach, GPa (default 0.5; 1 %% of the range with --sample)")
    p.add_argument("--transition-pressure", type=float, default=None,
                   help="the simulated sample's, GPa (default 31; the literature value with --sample)")
    p.add_argument("--sample", default=None, metavar="NAME",
                   help="simulate a literature material instead of (Mg0.2Fe0.8)O: KCl, NaCl, Si, ZnO, Fe, SiO2, "
                        "MgO, Au, Al2O3 (use with --transition-model auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, ...")
    p.add_argument("--no-store", action="store_true", help="skip the embedded tiled store")
    p.add_argument("--area-detector", action="store_true",
                   help="classify the pyFAI-integrated frames of the simulated 2D detector")
    _add_live_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_live_demo)

    p = sub.add_parser("patterns-demo", help="simulate, augment, measured patterns onto the model grid, rank phases")
    p.add_argument("--out", default="out/demo", help="output folder (PNG and summary.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-augmented", type=int, default=4, help="augmented copies to draw")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: GPU when present)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="simulate powder patterns of CIF files into .xy files")
    p.add_argument("cifs", nargs="+", help="CIF files")
    p.add_argument("--out", default="out/simulated")
    p.add_argument("--wavelength", default="CuKa1", help="Å or an anode name (CuKa1, MoKa, ...)")
    p.add_argument("--two-theta", type=float, nargs=3, metavar=("START", "STOP", "STEP"),
                   help="2θ grid in degrees (default: the canonical q grid)")
    p.add_argument("--shape", default="pseudo_voigt", choices=["gaussian", "lorentzian", "pseudo_voigt"])
    p.add_argument("--caglioti", type=float, nargs=3, default=[0.004, -0.002, 0.004], metavar=("U", "V", "W"),
                   help="instrument widths, degrees² of 2θ")
    p.add_argument("--size-nm", type=float, default=None, help="crystallite size for Scherrer broadening")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("inspect", help="read pattern files and report range, wavelength and canonical-grid coverage "
                                       "(JSON: an object for one file, a list of them for several)")
    p.add_argument("files", nargs="+")
    p.add_argument("--wavelength", default=None, help="Å or anode name when the file does not say")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("check", help="simulator parity: all AFLOW prototypes vs pymatgen, calibrants vs pyFAI")
    p.add_argument("--n", type=int, default=None, help="only the first N prototypes")
    p.add_argument("--wavelength", type=float, default=1.54184)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="benchmarks that print JSON")
    bench = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    b = bench.add_parser("simulate", help="patterns/s of pymatgen+numpy vs the batched simulator, same grid")
    b.add_argument("--n", type=int, default=None, help="only the first N AFLOW prototypes (default all 288)")
    b.add_argument("--device", default=None)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("synthetic", help="random-crystal generator and simulation throughput (JSON)")
    b.add_argument("--n", type=int, default=1000, help="crystals to generate")
    b.add_argument("--batch-size", type=int, default=64)
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("stream", help="stream many simulations and report resident-memory growth")
    b.add_argument("--n", type=int, default=100_000, help="patterns to simulate (cycling the AFLOW prototypes)")
    b.add_argument("--device", default=None)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    b = bench.add_parser("callback", help="RunEngine events/s with and without live classification, latency, memory")
    b.add_argument("--n", type=int, default=100_000, help="frames of the long paced run (memory growth)")
    b.add_argument("--rate", type=float, default=1000.0, help="frame rate of the paced runs, Hz")
    b.add_argument("--page-size", type=int, default=100, help="frames per event page")
    b.add_argument("--compare-frames", type=int, default=5000, help="frames of each side-by-side run")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--device", default="auto")
    _add_live_model_arguments(b, default="none")
    b.add_argument("--json", action="store_true", help="(always JSON)")
    b.set_defaults(func=cmd_bench_callback)

    p = sub.add_parser("evaluate", help="evaluations that print JSON")
    evaluate = p.add_subparsers(dest="evaluation", required=True, metavar="WHAT")
    e = evaluate.add_parser("transition", help="phase-transition models and change point on simulated pressure ramps")
    e.add_argument("--n-ramps", type=int, default=8, help="fresh test ramps (349 frames each; per material with "
                   "--materials)")
    e.add_argument("--materials", default=None, metavar="all|NAME,...",
                   help="simulated ramps of literature materials (transitions.materials) instead of the seed's "
                        "(Mg,Fe)O; scores per material, pooled and on the materials the detector was not tuned on")
    e.add_argument("--models", default="auto", metavar="auto,...",
                   help="with --materials: 'auto' (the training-free detector)")
    e.add_argument("--calibrate", action="store_true",
                   help="the training-free detector's systematic term, from the tuning materials only")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--fast", action="store_true", help="fewer training epochs (smoke runs)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)
    from xrd_nexus_ml.steering_eval import add_steering_parser

    add_steering_parser(evaluate)

    p = sub.add_parser("serve", help="classify runs from a bluesky 0MQ proxy (out of process, e.g. on a GPU node)")
    p.add_argument("--zmq", required=True, metavar="HOST:PORT", help="the proxy's output port to listen to")
    p.add_argument("--publish", metavar="HOST:PORT", default=None,
                   help="the proxy's input port: publish the derived runs back")
    p.add_argument("--store", default=None, help="also store raw and derived runs in this folder (embedded tiled)")
    p.add_argument("--nexus-dir", default=None, help="also write one NeXus file per run here")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, ...")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-queue", type=int, default=4096, help="frames waiting before new ones are shed")
    p.add_argument("--unsafe-pickle", action="store_true",
                   help="documents travel as pickle (bluesky's default) instead of msgpack: lets any host that can "
                        "publish to the proxy run code on this host; only between hosts that trust each other")
    _add_live_model_arguments(p)
    p.set_defaults(func=cmd_serve)

    from xrd_nexus_ml.identification.commands import STRAIN_HELP, strain_fraction

    p = sub.add_parser("classify", help="identify the phases of pattern files; NeXus files: phase-transition "
                                        "predictions in a new NXprocess group")
    p.add_argument("files", nargs="+", help="pattern files (.xy, .xye, .xrdml, .npy, ...) and/or NeXus/HDF5 files")
    p.add_argument("--model", default=None, help="identification model: a bundle folder or a shipped name "
                                                 "(default: 'default')")
    p.add_argument("--elements", default=None, help="comma-separated elements that may be present, e.g. Li,Mn,Ti,O")
    p.add_argument("--max-phases", type=int, default=3, help="most phases reported per pattern")
    p.add_argument("--max-strain", type=strain_fraction, default=None, metavar="FRACTION", help=STRAIN_HELP)
    p.add_argument("--spacegroup-model", default="default",
                   help="space-group model: a bundle folder, 'default' (shipped) or 'none' (skip)")
    p.add_argument("--plot", nargs="?", const=".", default=None, metavar="DIR",
                   help="write <name>.phases.png (pattern + identified sticks) into DIR (default: .)")
    p.add_argument("--entry", default=None, help="NeXus: the NXentry (default: the first)")
    p.add_argument("--wavelength", default=None, help="Å or anode name when the file records none")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("transition", help="phase transitions along a measured series (pressure, temperature, ...)")
    p.add_argument("inputs", nargs="+", metavar="FILE|DIR|FILE.nxs", help="pattern files, a folder of them, or a "
                   "NeXus file (which records its pressures)")
    p.add_argument("--control", metavar="CSV", help="'file,<name>_<unit>' header (e.g. file,pressure_GPa), one row "
                   "per frame in acquisition order (not needed for a NeXus file)")
    p.add_argument("--wavelength", default=None, help="Å or a line name (CuKa, MoKa); only for files that record none")
    p.add_argument("--model", default="auto", metavar="DIR|auto",
                   help="'auto': the training-free detector (any sample); or a bundle from `train transition`")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.add_argument("--plot", metavar="PNG", help="draw the waterfall with the transitions marked")
    p.set_defaults(func=cmd_transition)

    p = sub.add_parser("nexus", help="check NeXus files against NXxrd_ml; recover files whose writer died")
    nx = p.add_subparsers(dest="nexus_command", required=True, metavar="WHAT")
    v = nx.add_parser("validate", help="structure and units, nexusformat and pynxtools checks against NXxrd_ml")
    v.add_argument("files", nargs="+")
    v.add_argument("--definition", default=None, help="another NXDL file (default: nexus_definitions/NXxrd_ml)")
    v.add_argument("--entry", default=None)
    v.add_argument("--no-pynxtools", action="store_true")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_nexus)
    r = nx.add_parser("recover", help="mark files left open by a crashed writer as closed (like h5clear -s)")
    r.add_argument("files", nargs="+")
    r.set_defaults(func=cmd_nexus)

    p = sub.add_parser("export", help="write the SciCat dataset record (JSON) of a NeXus file")
    p.add_argument("file")
    p.add_argument("--out", default=None, help="default FILE.scicat.json; '-' for standard output")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (owner, pid, ...)")
    p.add_argument("--entry", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train models and write their bundles")
    train = p.add_subparsers(dest="training", required=True, metavar="WHAT")
    t = train.add_parser("transition", help="the phase-transition models, in the seed's 4 + 40 regime")
    t.add_argument("--out", required=True, help="folder for the bundles")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--fast", action="store_true", help="fewer training epochs (smoke runs)")
    t.add_argument("--phase", action="append", metavar="CIF",
                   help="your own phases, in pressure order (repeat; default: the shipped (Mg,Fe)O B1 -> rB1)")
    t.add_argument("--eos", action="append", metavar="V0,K0,K0p",
                   help="Birch-Murnaghan EOS per --phase (Å^3 of the CIF cell or per formula unit, GPa, -); "
                        "default: K0 estimated from the volume per atom (±60 %%), K0' = 4")
    t.add_argument("--transition", type=float, nargs="+", metavar="GPa",
                   help="expected transition pressure(s) (default: evenly spaced in the range)")
    t.add_argument("--pressure-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="GPa of the ramp to simulate (default 0 to twice the highest transition, or 0-50)")
    t.add_argument("--energy", type=float, default=25.6, help="beam energy, keV (default 25.6)")
    t.add_argument("--two-theta", type=float, nargs=3, default=(10.0, 26.0, 4023), metavar=("START", "STOP", "N"),
                   help="detector range (degrees) and point count (default 10 26 4023)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train)
    from xrd_nexus_ml.identification.commands import add_parsers as add_identification_parsers

    add_identification_parsers(sub, evaluate, bench, train)
    from xrd_nexus_ml.spacegroup.commands import add_parsers as add_spacegroup_parsers

    add_spacegroup_parsers(evaluate, train)
    return parser


def _check_wavelength_argument(args) -> None:
    """Every command's --wavelength, checked before anything runs (`resolve_wavelength`: a number of Å
    in the X-ray/neutron range, or an anode name), so that a bad value is refused with exit status 2
    even where every file records its own wavelength and the argument would never be used."""
    value = getattr(args, "wavelength", None)
    if value is not None:
        from xrd_nexus_ml.pattern import resolve_wavelength

        try:
            resolve_wavelength(value)
        except XrdNexusMlError as err:
            raise type(err)(f"--wavelength: {getattr(err, 'problem', err)}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("silx.opencl").setLevel(logging.ERROR)
    logging.getLogger("pint.util").setLevel(logging.ERROR)  # unit redefinitions when pynxtools loads  # pyFAI's optional OpenCL probe is noise here
    try:
        _check_wavelength_argument(args)
        return args.func(args)
    except XrdNexusMlError as err:
        print(f"xrd-nexus-ml: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

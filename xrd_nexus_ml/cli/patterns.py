"""Pattern commands: `patterns-demo`, `simulate`, `inspect`, `check` (simulator parity), and the
simulator benchmarks `bench simulate|synthetic|stream`."""

from __future__ import annotations

from pathlib import Path

from xrd_nexus_ml.cli.common import print_json


def cmd_patterns_demo(args) -> int:
    from xrd_nexus_ml.patterns_demo import run_demo  # local: start-up time

    summary = run_demo(Path(args.out), seed=args.seed, n_augmented=args.n_augmented, device=args.device)
    if args.json:
        print_json(summary)
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

    from xrd_nexus_ml.io import read_structure  # local: start-up time
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
    from xrd_nexus_ml.io import read_pattern  # local: start-up time

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
    print_json(infos[0] if len(infos) == 1 else infos)
    return 0


def cmd_check(args) -> int:
    from tqdm import tqdm  # local: start-up time

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
        print_json(summary)
    else:
        wp, wi = summary["worst_position"], summary["worst_intensity"]
        print(f"pymatgen parity: {summary['n_pass']}/{summary['n_structures']} structures pass ({summary['criteria']})")
        print(f"  worst position error  {wp['max_position_error_deg']:.2e} deg  ({wp['name']})")
        print(f"  worst intensity error {wi['max_intensity_error']:.3f} %    ({wi['name']})")
        for c in summary["calibrants"]:
            print(f"pyFAI calibrant {c['calibrant']:<6} {c['n_listed']} lines, max relative d error "
                  f"{c['max_relative_d_error']:.1e}, "
                  f"unmatched {len(c['simulated_not_listed']) + len(c['listed_not_simulated'])}")
    return 0 if ok else 1


def cmd_bench(args) -> int:
    from xrd_nexus_ml.evaluation.benchmarks import bench_simulate, bench_stream, bench_synthetic  # local: start-up time
    from xrd_nexus_ml.references import aflow_prototypes

    if args.bench == "synthetic":
        result = bench_synthetic(n_crystals=args.n, batch_size=args.batch_size, use_symmetry=not args.no_symmetry)
        print_json(result)
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
                   f"ours {result['ours_patterns_per_s']:.0f}/s, "
                   f"speedup {result['speedup']:.1f}x on {result['device']}")
    if args.json:
        print_json(result)
    else:
        print(summary)
    return 0


def add_parsers(sub, bench) -> None:
    """The pattern commands at the top level; `simulate`, `synthetic`, `stream` under `bench`."""
    p = sub.add_parser("patterns-demo", help="simulate, augment, measured patterns onto the model grid, rank phases")
    p.add_argument("--out", default="out/demo", help="output folder (PNG and summary.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-augmented", type=int, default=4, help="augmented copies to draw")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: GPU when present)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_patterns_demo)

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
    b.add_argument("--no-symmetry", action="store_true",
                   help="compute every Friedel pair instead of one reflection per symmetry orbit (the reference path)")
    b.add_argument("--json", action="store_true", help="accepted like the other benches' --json (output is JSON)")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("stream", help="stream many simulations and report resident-memory growth")
    b.add_argument("--n", type=int, default=100_000, help="patterns to simulate (cycling the AFLOW prototypes)")
    b.add_argument("--device", default=None)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

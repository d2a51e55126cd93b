"""Live commands: `demo` (the main job), `serve` (classify runs from a 0MQ proxy), `bench callback`."""

from __future__ import annotations

import logging
from pathlib import Path

from xrd_nexus_ml.cli.common import add_live_model_arguments, live_models, print_json


def print_demo_table(summary: dict) -> None:
    """The short report a beamline scientist reads at the end of the scan."""
    from xrd_nexus_ml.physics.symmetry import space_group_symbol  # local: start-up time

    print(f"{summary['steering']} pressure ramp: {summary['frames']} frames "
          f"({summary['classification'].get('classified', 0)} classified, {summary['classification'].get('shed', 0)} "
          f"shed, {summary['classification'].get('errors', 0)} errors), {summary['seconds']} s on {summary['device']}")
    print(f"{'phase':<8}{'frames':>6}  {'pressure (GPa)':<17}{'space group':<20}{'crystal system':<20}material")
    for name, info in summary["phases"].items():
        lo, hi = info["pressure_range_gpa"]
        n = info["frames"]
        if info["space_group"] == "undetermined" or not info["space_group"]:
            space_group = f"{info['space_group']} ({info['space_group_frames']}/{n})" if info["space_group"] else "-"
        else:
            space_group = (f"{info['space_group']} {space_group_symbol(info['space_group'])} "
                           f"({info['space_group_frames']}/{n})")
        system = f"{info['crystal_system']} ({info['crystal_system_frames']}/{n})" if info["crystal_system"] else "-"
        if info["material"]:
            material = f"{info['material']} ({info['material_frames']}/{n})"
        else:
            material = f"out of library ({info['material_out_of_library_frames']}/{n})" \
                if info["material_out_of_library_frames"] else "-"
        print(f"{name:<8}{n:>6}  {f'{lo:.2f} - {hi:.2f}':<17}{space_group:<20}{system:<20}{material}")
    print(f"transition pressure: {summary['transition_pressure_gpa']:.2f} ± {summary['transition_uncertainty_gpa']:.2f}"
          f" GPa (1σ; simulated truth {summary['true_transition_pressure_gpa']:.2f}, requested precision "
          f"{summary['requested_precision_gpa']} GPa)")
    print(f"NeXus: {summary['nexus_file']} ({'valid' if summary['nexus_valid'] else 'INVALID'} against NXxrd_ml)")
    if summary["store"]:
        print(f"runs stored in {summary['store']} (raw {summary['raw_run_uid'][:8]} + derived predictions)")


def cmd_demo(args) -> int:
    from bluesky_callbacks.demo import run_demo  # local: start-up time

    summary = run_demo(args.out, steering=not args.no_steering, max_frames=args.frames, device=args.device,
                       transition_pressure=args.transition_pressure, precision=args.precision, seed=args.seed,
                       store=not args.no_store, area_detector=args.area_detector, sample=args.sample,
                       **live_models(args))
    if args.json:
        print_json(summary)
    else:
        print_demo_table(summary)
        print(f"figure: {Path(args.out) / 'demo.png'}; summary: {Path(args.out) / 'summary.json'}")
    return 0 if summary["nexus_valid"] else 1


def cmd_serve(args) -> int:
    from bluesky_callbacks.serve import serve  # local: start-up time

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(args.zmq, publish=args.publish, store=args.store, nexus_dir=args.nexus_dir, device=args.device,
          batch_size=args.batch_size, max_queue=args.max_queue, unsafe_pickle=args.unsafe_pickle,
          ready=lambda: print(f"serving {args.zmq}", flush=True), **live_models(args))
    return 0


def cmd_bench_callback(args) -> int:
    from bluesky_callbacks.bench import bench_callback  # local: start-up time

    print_json(bench_callback(n_frames=args.n, rate_hz=args.rate, page_size=args.page_size,
                              compare_frames=args.compare_frames, batch_size=args.batch_size, device=args.device,
                              **live_models(args)))
    return 0


def add_parsers(sub, bench) -> None:
    """`demo` and `serve` under the top-level commands, `callback` under `bench`."""
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
    add_live_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_demo)

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
    add_live_model_arguments(p)
    p.set_defaults(func=cmd_serve)

    b = bench.add_parser("callback", help="RunEngine events/s with and without live classification, latency, memory")
    b.add_argument("--n", type=int, default=100_000, help="frames of the long paced run (memory growth)")
    b.add_argument("--rate", type=float, default=1000.0, help="frame rate of the paced runs, Hz")
    b.add_argument("--page-size", type=int, default=100, help="frames per event page")
    b.add_argument("--compare-frames", type=int, default=5000, help="frames of each side-by-side run")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--device", default="auto")
    add_live_model_arguments(b, default="none")
    b.add_argument("--json", action="store_true", help="(always JSON)")
    b.set_defaults(func=cmd_bench_callback)

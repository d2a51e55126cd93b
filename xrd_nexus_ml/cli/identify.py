"""Identification commands: `classify`, `library build`, `train identify`, `evaluate identify`,
`evaluate scaling`, `bench infer`, `bench train-identify`."""

from __future__ import annotations

import sys
from pathlib import Path

from xrd_nexus_ml.cli.common import (
    STRAIN_HELP,
    class_counts,
    element_list,
    name_list,
    print_json,
    strain_fraction,
    to_json,
)
from xrd_nexus_ml.errors import XrdNexusMlError


def describe_symmetry(symmetry: dict) -> str:
    """One line for the terminal from `SpaceGroupPrediction.to_dict()`: each head's answer, or
    "undetermined" with the model's best guess and its probability."""
    if not symmetry["crystalline"]:
        return f"not a crystal pattern (confidence {symmetry['confidence']:.2f}, below the model's threshold)"
    answer, best = symmetry["answer"], symmetry["space_group"][0]
    if isinstance(answer["space_group"], dict):
        top5 = ", ".join(str(s["number"]) for s in symmetry["space_group"])
        space_group = (f"space group {best['symbol']} ({best['number']}, p={best['probability']:.2f}; "
                       f"top-5 {top5})")
    else:
        space_group = f"space group undetermined (best guess {best['symbol']}, p={best['probability']:.2f})"
    ext, system = answer["extinction_group"], answer["crystal_system"]
    ext_text = (f"extinction group {ext['name'].split(' [')[0]} (p={ext['probability']:.2f})"
                if isinstance(ext, dict) else "extinction group undetermined")
    system_text = (f"{system['name']} (p={system['probability']:.2f})" if isinstance(system, dict)
                   else f"crystal system undetermined (best guess {symmetry['crystal_system'][0]['name']}, "
                        f"p={symmetry['crystal_system'][0]['probability']:.2f})")
    return f"{space_group}; {ext_text}; {system_text}"


def classify_nexus_files(files, args) -> int:
    """NeXus files: every frame classified by the same engine the live callback runs, with the
    models and elements the flags name, appended as a new NXprocess group. A file that cannot be
    read or written gets an error line in its place; the others are still classified (status 2)."""
    from nexus_definitions.classify import classified_copy_path, classify_file  # local: start-up time
    from xrd_nexus_ml.errors import XrdNexusMlError
    from xrd_nexus_ml.inference import InferenceEngine

    if args.plot is not None:
        print("xrd-nexus-ml: note: --plot draws pattern files only; NeXus files get no figure", file=sys.stderr)
    options = {"max_phases": args.max_phases}
    if args.max_strain is not None:
        options["max_strain"] = args.max_strain
    engine = InferenceEngine.from_bundles(
        device=args.device, spacegroup_model=None if args.spacegroup_model == "none" else args.spacegroup_model,
        identification_model=args.model or "default", identification_options=options)
    failed = []
    for path in files:
        try:
            summary = classify_file(path, engine, entry=args.entry, wavelength=args.wavelength,
                                    elements=element_list(args.elements),
                                    out=None if args.in_place else classified_copy_path(path, args.out))
        except (XrdNexusMlError, OSError) as err:
            failed.append(str(path))
            problem = getattr(err, "problem", None) or str(err)
            print(to_json({"file": str(path), "error": problem}, indent=None) if args.json
                  else f"{path}: error: {problem}")
            continue
        if args.json:
            print(to_json(summary, indent=None))
        else:
            print(f"{summary['file']}: {summary['frames']} frames -> {summary['written_to']}:{summary['group']}; "
                  f"phases {summary['phases']}; "
                  f"transition {summary['transition_pressure_gpa']:.2f} "
                  f"± {summary['transition_uncertainty_gpa']:.2f} GPa")
    if failed:
        print(f"xrd-nexus-ml: error: {len(failed)} of {len(files)} NeXus file(s) could not be classified: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


def print_identification(r: dict) -> None:
    if "error" in r:
        print(f"{r['file']}: error: {r['error']}")
        return
    if r["flag"]:
        print(f"{r['source']}: not usable ({r['flag']})")
        return
    phases = ", ".join(f"{p['formula']} ({p['space_group_symbol']}, p={p['probability']:.2f})"
                       for p in r["phases"]) or "no phase"
    explained = f"library phases explain {r['explained']:.0%}; " if r["explained"] > 0 else ""
    nearest = ", ".join(c["formula"] for c in r["candidates"][:3])
    unknown = f"  [OUT OF LIBRARY: {explained}nearest {nearest}]" if r["out_of_library"] else ""
    print(f"{r['source']}: {phases}{unknown}  ({1000 * r['seconds']:.1f} ms)" +
          (f"  -> {r['png']}" if r.get("png") else ""))
    if "symmetry" in r:
        print(f"    {describe_symmetry(r['symmetry'])}")


def cmd_classify(args) -> int:
    """Pattern files are identified; NeXus files get the predictions appended.

    A file that cannot be read or classified gets a line (text) or {"file", "error"} entry (--json)
    where its result would be; the others are still classified, and the exit status is then 2."""
    from xrd_nexus_ml.classify import classify_patterns  # local: start-up time
    from xrd_nexus_ml.io.readers import NEXUS_SUFFIXES

    nexus = [f for f in args.files if Path(f).suffix.lower() in NEXUS_SUFFIXES]
    patterns = [f for f in args.files if Path(f).suffix.lower() not in NEXUS_SUFFIXES]
    status = classify_nexus_files(nexus, args) if nexus else 0
    if not patterns:
        return status
    records = classify_patterns(patterns, model=args.model, elements=element_list(args.elements),
                                wavelength=args.wavelength, max_phases=args.max_phases, plot_dir=args.plot,
                                spacegroup_model=None if args.spacegroup_model == "none" else args.spacegroup_model,
                                max_strain=args.max_strain, errors="record")
    failed = [r["file"] for r in records if "error" in r]
    if args.json:
        print_json(records)
    else:
        for r in records:
            print_identification(r)
    if failed:
        print(f"xrd-nexus-ml: error: {len(failed)} of {len(patterns)} pattern file(s) could not be classified: "
              f"{', '.join(failed)}", file=sys.stderr)
        status = 2
    return status


def cmd_library_build(args) -> int:
    from training.identify import build_library_model  # local: start-up time

    summary = build_library_model(args.cif_dir, args.out, steps=args.steps, seed=args.seed, progress=not args.json,
                                  resume=not args.no_resume)
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['n_phases']} phases, {summary['n_classes']} classes, {summary['n_experts']} experts "
              f"({', '.join(summary['experts'])}); {summary['n_parameters']} parameters; "
              f"{summary['seconds']['total']} s. Bundle: {args.out}")
    return 0


def cmd_train_identify(args) -> int:
    from training.identify import train_default_model  # local: start-up time
    from xrd_nexus_ml.bundle import SHIPPED_MODELS_DIR

    out = args.out or SHIPPED_MODELS_DIR / "identification" / "default"
    summary = train_default_model(out, steps=args.steps, seed=args.seed, progress=not args.json,
                                  resume=not args.no_resume)
    if args.json:
        print_json(summary)
    else:
        print(f"default model: {summary['n_phases']} phases, {summary['n_classes']} classes, {summary['n_experts']} "
              f"experts, {summary['seconds']['total']} s -> {out}")
    return 0


def cmd_evaluate_identify(args) -> int:
    from xrd_nexus_ml.evaluation.identify import evaluate_identify  # local: start-up time

    if (args.references is None) == (args.model is None):
        raise XrdNexusMlError("evaluate identify: give --references CIF_DIR (build a model for them) or --model "
                              "NAME|DIR (score that model), not both")
    result = evaluate_identify(args.references, args.patterns, model=args.model, labels=args.labels,
                               wavelength=args.wavelength,
                               steps=args.steps, seed=args.seed, cache_dir=args.cache_dir,
                               elements=element_list(args.elements), max_phases=args.max_phases,
                               progress=not args.json, unknown=args.unknown, max_strain=args.max_strain)
    if args.json:
        print_json(result)
        return 0
    for p in result["patterns"]:
        print(f"{p['file']:<28} truth {'+'.join(p['truth']):<24} found {'+'.join(p['predicted']) or '-':<24} "
              f"recall {p['recall']:.2f} precision {p['precision']:.2f}")
    print(f"recall {result['recall']:.3f}, precision {result['precision']:.3f}, exact {result['exact_match']:.3f}; "
          f"{1000 * result['seconds_per_pattern']:.1f} ms/pattern; build {result['build_seconds']} s "
          f"({'reused' if result['model_reused'] else 'trained'}) on {result['device']}")
    for name, m in (result["simulated_mixtures"] or {}).items():
        if isinstance(m, dict):
            print(f"simulated mixtures ({name.replace('_', ' ')}): recall {m['recall']:.3f}, precision "
                  f"{m['precision']:.3f}, exact {m['exact_match']:.3f}")
    if result["open_set"]:
        inside, foreign = result["open_set"]["in_library"], result["open_set"]["foreign"]
        print(f"open set (simulated): {inside['n_patterns']} library phases top-1 {inside['top1']:.2f}, called out "
              f"of library {inside['out_of_library_rate']:.2f}; {foreign['n_patterns']} foreign phases called out of "
              f"library {foreign['out_of_library_rate']:.2f}")
        for source, m in result["open_set"]["foreign_by_source"].items():
            print(f"    {source}: {m['n_patterns']} foreign phases, out of library {m['out_of_library_rate']:.2f}")
    return 0


def cmd_evaluate_scaling(args) -> int:
    from xrd_nexus_ml.evaluation.scaling import ARMS, ScalingModels, evaluate_scaling  # local: start-up time

    budget = {"steps": args.steps} if args.steps else {"patterns_per_class": args.patterns_per_class}
    arms = ARMS if args.models in (None, "all") else args.models
    result = evaluate_scaling(sizes=args.sizes, batch_size=args.batch_size, seed=args.seed, device=args.device,
                              test_patterns=args.test_patterns, progress=not args.json, arms=arms,
                              models=ScalingModels(router=args.gate == "router"), checkpoint_dir=args.checkpoint_dir,
                              stop_after=args.stop_after, **budget)
    if args.json:
        print_json(result)
        return 0
    hw = result["hardware"]
    print(f"{result['batch_size']} patterns per step on {result['device']} "
          f"({hw.get('gpu') or hw['cpu']}, {hw['torch_threads']} torch threads)")
    for lib in result["libraries"]:
        state = "" if lib["complete"] else f" (INCOMPLETE: resume with the same command; {lib['checkpoint']})"
        print(f"{lib['n_classes']} classes: {lib['steps_done']}/{lib['steps']} steps, "
              f"{lib['patterns_per_class']:.0f} patterns per class{state}")
    print(f"{'classes':>8} {'model':<17} {'top1':>6} {'top5':>6} {'train s':>8} {'ms/pattern':>10} {'parameters':>11}")
    for r in result["results"]:
        print(f"{r['n_classes']:>8} {r['model']:<17} {r['top1']:>6.3f} {r['top5']:>6.3f} {r['train_seconds']:>8.1f} "
              f"{r['ms_per_pattern']:>10.3f} {r['n_parameters']:>11}")
    return 0


def cmd_bench_infer(args) -> int:
    from xrd_nexus_ml.evaluation.bench_identify import bench_infer  # local: start-up time

    print_json(bench_infer(args.model, n=args.n, batch_size=args.batch_size, single=args.single, device=args.device))
    return 0


def cmd_bench_train_identify(args) -> int:
    from xrd_nexus_ml.evaluation.bench_train import bench_train_identify  # local: start-up time

    print_json(bench_train_identify(classes=args.classes, batch_size=args.batch_size, batches=args.batches,
                                    seed=args.seed, old_batches=args.old_batches, workers=args.workers))
    return 0


def add_parsers(sub, evaluate, bench, train) -> None:
    """`classify` and `library build` at the top level; `identify` under `train` and `evaluate`,
    `scaling` under `evaluate`, `infer` and `train-identify` under `bench`."""
    p = sub.add_parser("classify", help="identify the phases of pattern files; NeXus files: predictions of every "
                                        "frame in a new NXprocess group")
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
    p.add_argument("--in-place", action="store_true",
                   help="NeXus: append the predictions to the file itself (default: to a copy, <name>.classified.nxs)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="NeXus: the folder for the classified copies (default: beside each file)")
    p.add_argument("--wavelength", default=None, help="Å or anode name when the file records none")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("library", help="build identification models for a library of reference CIFs")
    lib = p.add_subparsers(dest="library_command", required=True, metavar="WHAT")
    b = lib.add_parser("build", help="simulate, augment and train a mixture-of-experts model for every CIF in a folder")
    b.add_argument("cif_dir")
    b.add_argument("--out", required=True, help="model bundle folder (also holds checkpoint.pt while training)")
    b.add_argument("--steps", type=int, default=1500)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint is there")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_library_build)

    t = train.add_parser("identify", help="the shipped default identification model (calibrants, common phases, "
                                          "AFLOW prototypes)")
    t.add_argument("--out", default=None, help="bundle folder (default: the package's own)")
    t.add_argument("--steps", type=int, default=6000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_identify)

    e = evaluate.add_parser("identify", help="score measured patterns: a model built (or reused) for reference "
                                             "CIFs, or an existing model")
    e.add_argument("--references", default=None, help="folder of reference CIFs: build or reuse a model for them")
    e.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="instead of --references: score this model (a shipped name such as 'default', or a bundle)")
    e.add_argument("--patterns", required=True, help="folder of measured patterns")
    e.add_argument("--labels", default=None, help="CSV file,phases (phases joined by '+'); default: file names")
    e.add_argument("--wavelength", default=None,
                   help="Å or anode name for every file (default: each file's own; Cu Kα for files that record none)")
    e.add_argument("--elements", default=None, help="comma-separated elements that may be present")
    e.add_argument("--max-phases", type=int, default=3)
    e.add_argument("--max-strain", type=strain_fraction, default=None, metavar="FRACTION", help=STRAIN_HELP)
    e.add_argument("--unknown", action="append", default=None, metavar="CIF_DIR|aflow",
                   help="also simulate these phases (those not in the library) and report how often they are "
                        "called out of library, beside the library's own phases; 'aflow': the default library "
                        "(calibrants, common phases, AFLOW prototypes); may be repeated")
    e.add_argument("--steps", type=int, default=1500)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--cache-dir", default=None, help="where built models are kept (default ~/.cache/xrd-nexus-ml)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate_identify)

    e = evaluate.add_parser("scaling", help="top-1 vs number of classes: flat, hierarchical and MoE "
                                            "on element-substituted AFLOW prototypes")
    e.add_argument("--sizes", type=class_counts, default=[100, 1000, 10000],
                   help="comma-separated class counts (default 100,1000,10000; 1e5 too on a GPU)")
    e.add_argument("--patterns-per-class", type=int, default=100,
                   help="training budget of every model: this many patterns per class on average (default 100)")
    e.add_argument("--steps", type=int, default=None, help="a fixed number of training steps instead")
    e.add_argument("--models", type=name_list, default=None,
                   help="comma-separated models to train side by side, of flat, hierarchical, moe (joint recipe), "
                        "moe_expert_first (default: all four)")
    e.add_argument("--gate", choices=("router", "element"), default="router",
                   help="how the mixtures route: 'router' (class prototypes, default) or 'element' (noisy top-k "
                        "gate on element presence)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--test-patterns", type=int, default=2048,
                   help="fresh test patterns per size (at least one per class)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (patterns are simulated on the CPU)")
    e.add_argument("--checkpoint-dir", default=None,
                   help="save the models there as they train; the same command resumes an unfinished run")
    e.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                   help="stop training after this many seconds, test the models as they are, and report "
                        "'complete': false (resume with --checkpoint-dir)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate_scaling)

    b = bench.add_parser("infer", help="identification model latency and throughput (network and end to end)")
    b.add_argument("--model", default=None, help="bundle folder or shipped name (default: 'default')")
    b.add_argument("--n", type=int, default=512)
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--single", type=int, default=200, help="one-pattern calls timed for the latency figures")
    b.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    b.add_argument("--json", action="store_true", help="(always JSON)")
    b.set_defaults(func=cmd_bench_infer)

    b = bench.add_parser("train-identify", help="identification training: patterns/s generated, trained, and both "
                                               "together (is the data or the network the bottleneck?)")
    b.add_argument("--classes", type=int, default=1000, help="classes of the element-substituted AFLOW library")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--batches", type=int, default=20, help="batches timed for each figure")
    b.add_argument("--old-batches", type=int, default=2,
                   help="batches of the old windowed renderer, for the speed-up (0: skip)")
    b.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers for the flat-out generation figure (default: one per core; 0: skip)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", action="store_true", help="(always JSON)")
    b.set_defaults(func=cmd_bench_train_identify)


"""Command-line verbs of phase identification: build a library model, classify files, evaluate.

    xrd-nexus-ml library build CIF_DIR --out MODEL_DIR [--steps N] [--seed N]
    xrd-nexus-ml classify FILE... [--model PATH_OR_NAME] [--elements Li,Mn,O] [--json] [--plot [DIR]]
    xrd-nexus-ml evaluate identify --references CIF_DIR --patterns DIR [--labels CSV] [--json]

Model names resolve to the bundles shipped in `xrd_nexus_ml/data/models/identification/`
("default"); anything else is a bundle folder.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import time
from pathlib import Path

from xrd_nexus_ml.errors import ModelBundleError

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "models" / "identification"
NEXUS_SUFFIXES = (".nxs", ".h5", ".hdf5", ".nx5", ".hdf")
STRAIN_HELP = ("largest relative lattice mismatch a reference is fitted with (default 0.04, for in-situ series; "
               "0.015 suits ex-situ laboratory patterns and calls more foreign phases out of library)")


def strain_fraction(text: str) -> float:
    """argparse type of --max-strain: a fraction in (0, 0.5)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 0.5 (0.015 = 1.5 %), got {text!r}")
    return value


def resolve_model(name_or_path: str | None) -> Path:
    """A bundle folder for a shipped model name or a path; ModelBundleError naming both if neither."""
    name_or_path = name_or_path or "default"
    path = Path(name_or_path)
    if (path / "card.json").is_file():
        return path
    shipped = SHIPPED / name_or_path
    if (shipped / "card.json").is_file():
        return shipped
    known = sorted(p.name for p in SHIPPED.iterdir() if (p / "card.json").is_file()) if SHIPPED.is_dir() else []
    raise ModelBundleError(f"{name_or_path}: neither a model bundle folder (card.json + weights.safetensors) nor a "
                           f"shipped model name (shipped: {', '.join(known) or 'none'})")


def parse_elements(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [e.strip() for e in text.split(",") if e.strip()]


def cmd_library_build(args) -> int:
    from training.identify import BuildConfig, build_model
    from xrd_nexus_ml.identification.library import load_cif_library

    library = load_cif_library(args.cif_dir)
    config = BuildConfig(steps=args.steps, seed=args.seed)
    model = build_model(library, args.out, config, progress=not args.json, resume=not args.no_resume)
    summary = {"out": str(args.out), "n_phases": len(library), "n_classes": len(model.classes),
               "n_experts": len(model.plan.elements), "duplicates_removed": library.duplicates,
               "n_parameters": model.n_parameters, "metrics": model.metrics,
               "seconds": model.training["seconds"]}
    if args.json:
        print(json.dumps(summary, indent=2, default=float))
    else:
        print(f"{len(library)} phases, {len(model.classes)} classes, {len(model.plan.elements)} experts "
              f"({', '.join(model.plan.elements)}); {model.n_parameters} parameters; "
              f"{summary['seconds']['total']} s. Bundle: {args.out}")
    return 0


def cmd_train_identify(args) -> int:
    """The shipped default: pymatgen's AFLOW prototypes + pyFAI's calibrants (`default_library`)."""
    from training.identify import BuildConfig, build_model
    from xrd_nexus_ml.identification.library import default_library

    library = default_library()
    model = build_model(library, args.out, BuildConfig(steps=args.steps, seed=args.seed), progress=not args.json,
                        resume=not args.no_resume)
    summary = {"out": str(args.out), "n_phases": len(library), "n_classes": len(model.classes),
               "n_experts": len(model.plan.elements), "n_parameters": model.n_parameters, "metrics": model.metrics,
               "seconds": model.training["seconds"]}
    print(json.dumps(summary, indent=2, default=float) if args.json else
          f"default model: {summary['n_phases']} phases, {summary['n_classes']} classes, {summary['n_experts']} "
          f"experts, {summary['seconds']['total']} s -> {args.out}")
    return 0


def read_pattern_file_first(path, wavelength=None):
    """A pattern file read with its own recorded wavelength; `wavelength` (Å or an anode name) serves
    only a file that records none (or an unusable one). A q axis needs none. (`read_pattern(path,
    wavelength=...)` would put the argument above the file's value.)"""
    from xrd_nexus_ml.errors import WavelengthError
    from xrd_nexus_ml.io import read_pattern

    if wavelength is None:
        return read_pattern(path)
    try:
        pattern = read_pattern(path)
    except WavelengthError:  # the file states a wavelength that is no wavelength: the argument serves
        return read_pattern(path, wavelength=wavelength)
    if pattern.axis == "q" or pattern.wavelength:
        return pattern
    return read_pattern(path, wavelength=wavelength)


def classify_patterns(files, model: str | None = None, elements=None, wavelength=None, max_phases: int = 3,
                      plot_dir: str | None = None, spacegroup_model: str | None = "default",
                      max_strain: float | None = None, errors: str = "raise") -> list[dict]:
    """Identify the phases of pattern files; one dict per file, in order (see `Identification.to_dict`,
    plus the wavelength used and where it came from), with the space-group model's answer under
    "symmetry" unless `spacegroup_model` is None.

    wavelength: for files that record none (`read_pattern_file_first`); a 2θ file with neither is
    a file error. errors: "raise" (the first file that cannot be read or used raises) or "record"
    (its dict is {"file": ..., "error": ...} and the other files are still identified).
    max_strain: see `Identifier` (None: its default)."""
    from xrd_nexus_ml.errors import WavelengthError, XrdNexusMlError
    from xrd_nexus_ml.identification.identifier import Identifier

    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
    strain = {} if max_strain is None else {"max_strain": max_strain}
    identifier = Identifier.from_bundle(resolve_model(model), max_phases=max_phases, **strain)
    out: list[dict | None] = [None] * len(files)
    patterns, rows = [], []
    for i, f in enumerate(files):
        try:
            pattern = read_pattern_file_first(f, wavelength)
            if pattern.axis != "q" and not pattern.wavelength:
                raise WavelengthError("the axis is 2θ and the file records no wavelength; give --wavelength (Å, or "
                                      "an anode name such as CuKa1)", str(f))
        except (XrdNexusMlError, OSError) as err:
            if errors == "raise":
                raise
            out[i] = {"file": str(f), "error": getattr(err, "problem", None) or str(err)}
            continue
        patterns.append(pattern)
        rows.append(i)
    if not patterns:
        return out
    results = identifier.identify(patterns, elements=elements, sources=[str(files[i]) for i in rows])
    symmetry = [None] * len(patterns)
    if spacegroup_model is not None:
        from xrd_nexus_ml.spacegroup.commands import predict_patterns
        from xrd_nexus_ml.spacegroup.model import load_model

        symmetry = predict_patterns(patterns, load_model(spacegroup_model))
    for row, pattern, result, sym in zip(rows, patterns, results, symmetry):
        record = result.to_dict()
        record["wavelength_angstrom"] = pattern.wavelength
        record["wavelength_origin"] = pattern.metadata.get("wavelength_origin")
        if sym is not None:
            record["symmetry"] = sym.to_dict()
        if plot_dir is not None and result.flag is None:
            from xrd_nexus_ml.plotting import plot_identification

            record["png"] = str(plot_identification(pattern, result, identifier.model, Path(plot_dir)))
        out[row] = record
    return out


def cmd_classify(args) -> int:
    """Pattern files are identified; NeXus files get the phase-transition predictions appended.

    A file that cannot be read or classified gets a line (text) or {"file", "error"} entry (--json)
    where its result would be; the others are still classified, and the exit status is then 2."""
    import sys

    nexus = [f for f in args.files if Path(f).suffix.lower() in NEXUS_SUFFIXES]
    patterns = [f for f in args.files if Path(f).suffix.lower() not in NEXUS_SUFFIXES]
    status = 0
    if nexus:
        from nexus_definitions.classify import cmd_classify as classify_nexus

        args.files = nexus
        status = classify_nexus(args)
    if not patterns:
        return status
    records = classify_patterns(patterns, args.model, parse_elements(args.elements), args.wavelength,
                                args.max_phases, args.plot,
                                None if args.spacegroup_model == "none" else args.spacegroup_model,
                                max_strain=args.max_strain, errors="record")
    failed = [r["file"] for r in records if "error" in r]
    if args.json:
        print(json.dumps(records, indent=2, default=float))
    else:
        from xrd_nexus_ml.spacegroup.commands import describe

        for r in records:
            if "error" in r:
                print(f"{r['file']}: error: {r['error']}")
                continue
            if r["flag"]:
                print(f"{r['source']}: not usable ({r['flag']})")
                continue
            phases = ", ".join(f"{p['formula']} ({p['space_group_symbol']}, p={p['probability']:.2f})"
                               for p in r["phases"]) or "no phase"
            explained = f"library phases explain {r['explained']:.0%}; " if r["explained"] > 0 else ""
            nearest = ", ".join(c["formula"] for c in r["candidates"][:3])
            unknown = f"  [OUT OF LIBRARY: {explained}nearest {nearest}]" if r["out_of_library"] else ""
            print(f"{r['source']}: {phases}{unknown}  ({1000 * r['seconds']:.1f} ms)" +
                  (f"  -> {r['png']}" if r.get("png") else ""))
            if "symmetry" in r:
                print(f"    {describe(r['symmetry'])}")
    if failed:
        print(f"xrd-nexus-ml: error: {len(failed)} of {len(patterns)} pattern file(s) could not be classified: "
              f"{', '.join(failed)}", file=sys.stderr)
        status = 2
    return status


def _recipe_key(steps: int, seed: int) -> str:
    return f"steps{steps}-seed{seed}"


def cached_model_dir(library, cache_dir: Path, steps: int, seed: int) -> Path:
    """Where the model of `library` (by content hash) and recipe lives in `cache_dir`."""
    digest = hashlib.sha256(f"{library.content_hash()}|{_recipe_key(steps, seed)}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"identify-{digest}"


def unknown_phases(source: str):
    """The phases of an `--unknown` source: a folder of CIFs, or "aflow" (the AFLOW prototypes
    and calibrants of the shipped default library) unless a folder of that name exists."""
    from xrd_nexus_ml.identification.library import default_library, load_cif_library

    aflow = source.lower() == "aflow" and not Path(source).is_dir()
    return (default_library() if aflow else load_cif_library(source)).phases


def open_set_check(identifier, library, unknown, seed: int = 0) -> dict:
    """Simulated patterns (lattice ±1 % off the reference, Debye-Waller, crystallite size
    20-100 nm, background, Poisson noise) of the library's own references and of the phases
    of each `unknown` source (see `unknown_phases`) whose composition the library lacks: how
    often each is called out of library ("foreign" pools the sources, "foreign_by_source"
    splits them), and top-1 on the known ones."""
    from xrd_nexus_ml.physics import PowderSimulator
    from xrd_nexus_ml.physics.augment import (Background, Compose, CrystalliteSize, LatticeStrain, PoissonNoise,
                                              RandomDebyeWaller)

    sources = [unknown] if isinstance(unknown, (str, Path)) else list(unknown)
    known = set(library.classes)
    foreign = {str(s): [p for p in unknown_phases(str(s)) if p.formula not in known] for s in sources}
    sim = PowderSimulator(wavelength="CuKa1", device="cpu")
    # a measured cell is rarely the reference's: the laboratory patterns of both examples fit within 1 %
    noise = Compose((LatticeStrain(strain_range=(-0.01, 0.01)), RandomDebyeWaller(),
                     CrystalliteSize(size_nm=(20.0, 100.0)), Background(), PoissonNoise(max_counts=(1e3, 1e4))))
    import torch

    generator = torch.Generator().manual_seed(seed)

    def identified(phases):
        if not phases:
            return []
        patterns = sim.simulate([p.structure for p in phases], augment=noise, generator=generator).numpy()
        return identifier.identify(list(patterns), sources=[p.name for p in phases])

    def rate(results):
        return float(np.mean([r.out_of_library for r in results])) if results else float("nan")

    results = identified(library.phases)
    out = {"in_library": {"n_patterns": len(results), "out_of_library_rate": rate(results),
                          "top1": float(np.mean([bool(r.phases) and r.phases[0].formula == p.formula
                                                 for r, p in zip(results, library.phases)]))}}
    by_source = {s: identified(phases) for s, phases in foreign.items()}
    pooled = [r for results in by_source.values() for r in results]
    out["foreign"] = {"n_patterns": len(pooled), "out_of_library_rate": rate(pooled),
                      "named_a_phase": [r.source for r in pooled if r.phases]}
    out["foreign_by_source"] = {s: {"n_patterns": len(r), "out_of_library_rate": rate(r)} for s, r in by_source.items()}
    return out


def simulated_mixtures(library, n: int = 200, seed: int = 0) -> tuple[np.ndarray, list[frozenset]]:
    """n patterns of 1-3 library classes (30/40/30 %): each phase simulated (Debye-Waller,
    crystallite size 20-100 nm), max-normalised and weighted (major 1, others 0.2-0.8), then a
    smooth background, Poisson noise (10^3-10^4 counts) and a laboratory range (q 0.6-5.8 Å^-1,
    about 8.5-90° 2θ in Cu Kα). Returns (patterns on the canonical grid, true classes)."""
    import torch

    from xrd_nexus_ml.physics import PowderSimulator
    from xrd_nexus_ml.physics.augment import Compose, CrystalliteSize, RandomDebyeWaller

    rng = np.random.default_rng(seed)
    sim = PowderSimulator(wavelength="CuKa1", device="cpu")
    single = sim.simulate([p.structure for p in library.phases], augment=Compose((RandomDebyeWaller(),
                          CrystalliteSize(size_nm=(20.0, 100.0)))), generator=torch.Generator().manual_seed(seed))
    single = single.numpy() / np.maximum(single.numpy().max(1, keepdims=True), 1e-12)
    by_class: dict[str, list[int]] = {}
    for i, phase in enumerate(library.phases):
        by_class.setdefault(phase.formula, []).append(i)
    classes = sorted(by_class)
    q = np.asarray(sim.grid.values, dtype=float)
    x = (q - q.min()) / np.ptp(q)
    patterns, truth = [], []
    for _ in range(n):
        k = min(int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3])), len(classes))
        chosen = rng.choice(classes, size=k, replace=False)
        weights = np.concatenate([[1.0], rng.uniform(0.2, 0.8, k - 1)])
        y = sum(w * single[rng.choice(by_class[c])] for w, c in zip(weights, chosen))
        y = y / y.max() + rng.uniform(0.0, 0.1) * (1 - x) ** 2 + rng.uniform(0.0, 0.05)
        counts = 10 ** rng.uniform(3, 4)
        y = rng.poisson(y * counts) / counts
        patterns.append(np.where((q > 0.6) & (q < 5.8), y, 0.0))
        truth.append(frozenset(str(c) for c in chosen))
    return np.asarray(patterns), truth


def mixture_check(model, library, n: int = 200, seed: int = 0, max_phases: int = 3, **options) -> dict:
    """Formula-level scores on `simulated_mixtures`, with the screen of all classes for later
    phases and without it (network proposals only), on the same patterns."""
    from xrd_nexus_ml.identification.identifier import Identifier

    patterns, truth = simulated_mixtures(library, n, seed)
    out = {"n_patterns": len(truth)}
    for name, screen in (("with_screen", 3), ("network_only", 0)):
        results = Identifier(model, max_phases=max_phases, screen=screen, **options).identify(list(patterns))
        hits = sum(len(set(r.formulas) & t) for r, t in zip(results, truth))
        named = sum(len(r.formulas) for r in results)
        out[name] = {"recall": hits / max(sum(len(t) for t in truth), 1), "precision": hits / max(named, 1),
                     "exact_match": float(np.mean([set(r.formulas) == t for r, t in zip(results, truth)])),
                     "seconds_per_pattern": float(np.mean([r.seconds for r in results]))}
    return out


def evaluate_identify(references, patterns, labels=None, wavelength=None, steps: int = 1500, seed: int = 0,
                      cache_dir=None, elements=None, max_phases: int = 3, progress: bool = False,
                      unknown=None, max_strain: float | None = None) -> dict:
    """Build (or reuse) a model for the reference CIFs, identify every pattern, score it (formula level);
    with `unknown` (CIF folders or "aflow"), also the open-set check (`open_set_check`).
    max_strain: see `Identifier` (None: its default)."""
    import torch

    from training.identify import BuildConfig, build_model
    from xrd_nexus_ml.identification.identifier import Identifier
    from xrd_nexus_ml.identification.library import load_cif_library
    from xrd_nexus_ml.identification.model import IdentificationModel
    from xrd_nexus_ml.identification.truth import pattern_files, read_truth, score
    from xrd_nexus_ml.io import read_pattern

    library = load_cif_library(references)
    cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "xrd-nexus-ml"
    folder = cached_model_dir(library, cache_dir, steps, seed)
    started = time.perf_counter()
    reused = (folder / "card.json").is_file()
    if reused:
        model = IdentificationModel.load(folder)
    else:
        model = build_model(library, folder, BuildConfig(steps=steps, seed=seed), progress=progress)
    build_seconds = time.perf_counter() - started
    truth = read_truth(patterns, labels, known=library.classes)
    files = [f for f in pattern_files(patterns, exclude=[labels] if labels else []) if f.name in truth]
    loaded = [read_pattern(f, wavelength=wavelength) for f in files]
    strain = {} if max_strain is None else {"max_strain": max_strain}
    identifier = Identifier(model, max_phases=max_phases, **strain)
    identifier.identify(loaded[:1], elements=elements)  # warm-up: first call pays for lazy imports
    t0 = time.perf_counter()
    results = identifier.identify(loaded, elements=elements, sources=[f.name for f in files])
    seconds = time.perf_counter() - t0
    scores = score({r.source: r.formulas for r in results}, truth)
    per_pattern = []
    for r in results:
        per_pattern.append({"file": r.source, "truth": sorted(truth[r.source]), "predicted": list(r.formulas),
                            "out_of_library": r.out_of_library,
                            "phases": [{"formula": p.formula, "reference": p.reference,
                                        "probability": p.probability, "explained": p.explained,
                                        "proposed_by": p.proposed_by}
                                       for p in r.phases]})
    by_file = {s.file: s for s in scores["patterns"]}
    for entry in per_pattern:
        s = by_file[entry["file"]]
        entry.update({"recall": s.recall, "precision": s.precision, "exact": s.exact})
    open_set = open_set_check(identifier, library, unknown, seed) if unknown else None
    mixtures = mixture_check(model, library, seed=seed, max_phases=max_phases, **strain)
    return {"n_patterns": len(results), "recall": scores["recall"], "precision": scores["precision"],
            "exact_match": scores["exact_match"], "seconds_per_pattern": seconds / max(len(results), 1),
            "build_seconds": round(build_seconds, 2), "model_reused": reused, "model": str(folder),
            "device": f"cpu ({torch.get_num_threads()} threads)", "n_references": len(library),
            "n_classes": len(library.classes), "max_strain": identifier.max_strain, "patterns": per_pattern,
            "open_set": open_set, "simulated_mixtures": mixtures}


def cmd_evaluate_identify(args) -> int:
    result = evaluate_identify(args.references, args.patterns, args.labels, args.wavelength, args.steps, args.seed,
                               args.cache_dir, parse_elements(args.elements), args.max_phases,
                               progress=not args.json, unknown=args.unknown, max_strain=args.max_strain)
    if args.json:
        print(json.dumps(result, indent=2, default=float))
        return 0
    for p in result["patterns"]:
        print(f"{p['file']:<28} truth {'+'.join(p['truth']):<24} found {'+'.join(p['predicted']) or '-':<24} "
              f"recall {p['recall']:.2f} precision {p['precision']:.2f}")
    print(f"recall {result['recall']:.3f}, precision {result['precision']:.3f}, exact {result['exact_match']:.3f}; "
          f"{1000 * result['seconds_per_pattern']:.1f} ms/pattern; build {result['build_seconds']} s "
          f"({'reused' if result['model_reused'] else 'trained'}) on {result['device']}")
    for name, m in result["simulated_mixtures"].items():
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


def add_parsers(sub, evaluate, bench, train) -> None:
    """Register `library build` under `sub`, and `identify` under the `evaluate` and `train`
    subcommands and `infer` under `bench`."""
    t = train.add_parser("identify", help="the shipped default identification model (AFLOW prototypes + calibrants)")
    t.add_argument("--out", default=str(SHIPPED / "default"), help="bundle folder (default: the package's own)")
    t.add_argument("--steps", type=int, default=6000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_identify)

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

    from xrd_nexus_ml.identification.bench import cmd_bench_infer
    from xrd_nexus_ml.identification.scaling import add_scaling_parser

    add_scaling_parser(evaluate)

    b = bench.add_parser("infer", help="identification model latency and throughput (network and end to end)")
    b.add_argument("--model", default=None, help="bundle folder or shipped name (default: 'default')")
    b.add_argument("--n", type=int, default=512)
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--single", type=int, default=200, help="one-pattern calls timed for the latency figures")
    b.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    b.add_argument("--json", action="store_true", help="(always JSON)")
    b.set_defaults(func=cmd_bench_infer)

    e = evaluate.add_parser("identify", help="build/reuse a model for reference CIFs and score measured patterns")
    e.add_argument("--references", required=True, help="folder of reference CIFs")
    e.add_argument("--patterns", required=True, help="folder of measured patterns")
    e.add_argument("--labels", default=None, help="CSV file,phases (phases joined by '+'); default: file names")
    e.add_argument("--wavelength", default="CuKa", help="Å or anode name for two-column 2θ files (default CuKa)")
    e.add_argument("--elements", default=None, help="comma-separated elements that may be present")
    e.add_argument("--max-phases", type=int, default=3)
    e.add_argument("--max-strain", type=strain_fraction, default=None, metavar="FRACTION", help=STRAIN_HELP)
    e.add_argument("--unknown", action="append", default=None, metavar="CIF_DIR|aflow",
                   help="also simulate these phases (those not in the library) and report how often they are "
                        "called out of library, beside the library's own phases; 'aflow': the AFLOW prototypes "
                        "and calibrants of the default library; may be repeated")
    e.add_argument("--steps", type=int, default=1500)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--cache-dir", default=None, help="where built models are kept (default ~/.cache/xrd-nexus-ml)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate_identify)

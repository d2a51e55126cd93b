"""Identification scored: measured patterns against reference CIFs (model built or reused), the
open-set check on simulated foreign phases, and simulated mixtures.

An evaluation: it may train (`training.identify`); nothing below this layer imports it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from training.identify import BuildConfig, build_model
from xrd_nexus_ml.bundle import resolve_bundle
from xrd_nexus_ml.classify import read_pattern_file_first
from xrd_nexus_ml.device import describe_device
from xrd_nexus_ml.identification.identifier import Identifier
from xrd_nexus_ml.identification.library import default_library, load_cif_library
from xrd_nexus_ml.identification.model import IdentificationModel
from xrd_nexus_ml.identification.truth import pattern_files, read_truth, score
from xrd_nexus_ml.io import read_pattern
from xrd_nexus_ml.physics import PowderSimulator
from xrd_nexus_ml.physics.augment import (
    Background,
    Compose,
    CrystalliteSize,
    LatticeStrain,
    PoissonNoise,
    RandomDebyeWaller,
)

#: The wavelength of two-column files that record none (the laboratory's usual anode).
FALLBACK_WAVELENGTH = "CuKa"


def _recipe_key(steps: int, seed: int) -> str:
    return f"steps{steps}-seed{seed}"


def cached_model_dir(library, cache_dir: Path, steps: int, seed: int) -> Path:
    """Where the model of `library` (by content hash) and recipe lives in `cache_dir`."""
    digest = hashlib.sha256(f"{library.content_hash()}|{_recipe_key(steps, seed)}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"identify-{digest}"


def unknown_phases(source: str):
    """The phases of an `--unknown` source: a folder of CIFs, or "aflow" (`default_library`: the
    calibrants, the common phases and the AFLOW prototypes) unless a folder of that name exists."""
    aflow = source.lower() == "aflow" and not Path(source).is_dir()
    return (default_library() if aflow else load_cif_library(source)).phases


def open_set_check(identifier, library, unknown, seed: int = 0) -> dict:
    """Simulated patterns (lattice ±1 % off the reference, Debye-Waller, crystallite size
    20-100 nm, background, Poisson noise) of the library's own references and of the phases
    of each `unknown` source (see `unknown_phases`) whose composition the library lacks: how
    often each is called out of library ("foreign" pools the sources, "foreign_by_source"
    splits them), and top-1 on the known ones."""
    sources = [unknown] if isinstance(unknown, (str, Path)) else list(unknown)
    known = set(library.classes)
    foreign = {str(s): [p for p in unknown_phases(str(s)) if p.formula not in known] for s in sources}
    sim = PowderSimulator(wavelength="CuKa1", device="cpu")
    # a measured cell is rarely the reference's: the laboratory patterns of both examples fit within 1 %
    noise = Compose((LatticeStrain(strain_range=(-0.01, 0.01)), RandomDebyeWaller(),
                     CrystalliteSize(size_nm=(20.0, 100.0)), Background(), PoissonNoise(max_counts=(1e3, 1e4))))
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


def read_for_evaluation(path, wavelength=None):
    """A measured pattern as `evaluate identify` reads it: `wavelength` (Å or an anode name), when
    given, applies to every file; without it each file's own recorded wavelength is used, and Cu Kα
    (`FALLBACK_WAVELENGTH`) serves two-column files that record none."""
    if wavelength is not None:
        return read_pattern(path, wavelength=wavelength)
    return read_pattern_file_first(path, FALLBACK_WAVELENGTH)


def evaluate_identify(references=None, patterns=None, labels=None, wavelength=None, steps: int = 1500, seed: int = 0,
                      cache_dir=None, elements=None, max_phases: int = 3, progress: bool = False,
                      unknown=None, max_strain: float | None = None, model=None) -> dict:
    """Identify every measured pattern and score it (formula level): with `references` (a folder of
    CIFs) a model is built for them or reused from the cache; with `model` (a bundle folder or a
    shipped name such as "default") that model is scored as it is. The truth (file names or
    `labels`) and the patterns are read first, so a bad name fails in seconds, before any build.
    With `unknown` (CIF folders or "aflow"; `references` only), also the open-set check
    (`open_set_check`); with `references`, simulated mixtures of the library (`mixture_check`).
    wavelength: see `read_for_evaluation`. max_strain: see `Identifier` (None: its default)."""
    if (references is None) == (model is None):
        raise ValueError("give references (a folder of CIFs) or model (a bundle folder or shipped name), not both")
    if patterns is None:
        raise ValueError("patterns: the folder of measured patterns is needed")
    if references is not None:
        library = load_cif_library(references)
        known = library.classes
    else:
        library, folder = None, resolve_bundle(model, task="identification")
        shipped = IdentificationModel.load(folder)
        known = shipped.classes
    truth = read_truth(patterns, labels, known=known)
    files = [f for f in pattern_files(patterns, exclude=[labels] if labels else []) if f.name in truth]
    loaded = [read_for_evaluation(f, wavelength) for f in files]
    started = time.perf_counter()
    if library is not None:
        cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "xrd-nexus-ml"
        folder = cached_model_dir(library, cache_dir, steps, seed)
        reused = (folder / "card.json").is_file()
        if reused:
            model = IdentificationModel.load(folder)
        else:
            model = build_model(library, folder, BuildConfig(steps=steps, seed=seed), progress=progress)
    else:
        model, reused = shipped, True
    build_seconds = time.perf_counter() - started
    strain = {} if max_strain is None else {"max_strain": max_strain}
    identifier = Identifier(model, max_phases=max_phases, **strain)
    identifier.identify(loaded[:1], elements=elements)  # warm-up: first call pays for lazy imports
    t0 = time.perf_counter()
    results = identifier.identify(loaded, elements=elements, sources=[f.name for f in files])
    wavelengths = {f.name: (p.wavelength, p.metadata.get("wavelength_origin")) for f, p in zip(files, loaded)}
    seconds = time.perf_counter() - t0
    scores = score({r.source: r.formulas for r in results}, truth)
    per_pattern = []
    for r in results:
        per_pattern.append({"file": r.source, "truth": sorted(truth[r.source]), "predicted": list(r.formulas),
                            "wavelength_angstrom": wavelengths[r.source][0],
                            "wavelength_origin": wavelengths[r.source][1],
                            "out_of_library": r.out_of_library,
                            "phases": [{"formula": p.formula, "reference": p.reference,
                                        "probability": p.probability, "explained": p.explained,
                                        "proposed_by": p.proposed_by}
                                       for p in r.phases]})
    by_file = {s.file: s for s in scores["patterns"]}
    for entry in per_pattern:
        s = by_file[entry["file"]]
        entry.update({"recall": s.recall, "precision": s.precision, "exact": s.exact})
    open_set = open_set_check(identifier, library, unknown, seed) if unknown and library is not None else None
    mixtures = mixture_check(model, library, seed=seed, max_phases=max_phases, **strain) if library else None
    return {"n_patterns": len(results), "recall": scores["recall"], "precision": scores["precision"],
            "exact_match": scores["exact_match"], "seconds_per_pattern": seconds / max(len(results), 1),
            "build_seconds": round(build_seconds, 2), "model_reused": reused, "model": str(folder),
            "device": describe_device("cpu"),
            "n_references": len(library) if library is not None else len(model.sticks),
            "n_classes": len(model.classes), "max_strain": identifier.max_strain, "patterns": per_pattern,
            "open_set": open_set, "simulated_mixtures": mixtures}

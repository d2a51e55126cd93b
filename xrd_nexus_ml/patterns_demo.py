"""The end-to-end demo of the foundation: simulate, augment, make measured data model-ready.

1. Simulates reference structures (pyFAI calibrants and AFLOW prototypes) in one batch on the
   canonical q grid, clean and with the "measured" augmentation pipeline.
2. Reads real measured Cu Kα patterns shipped with the package, subtracts their background
   (SNIP), puts them on the canonical grid with their mask, and ranks the 56 shipped candidate
   phases by cosine similarity to
   them: a transparent baseline that shows the model input is right, not the ML model.
3. Identifies the same patterns with the shipped mixture-of-experts model of those 56 phases
   (`data/models/identification/li-mn-ti-o-f`): phases, probabilities, out-of-library flag.
4. Writes a PNG and a JSON summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from xrd_nexus_ml.classify import classify_patterns
from xrd_nexus_ml.io import read_pattern, read_structure
from xrd_nexus_ml.pattern import CANONICAL_GRID
from xrd_nexus_ml.physics import PeakProfile, PowderSimulator
from xrd_nexus_ml.physics.augment import default_pipeline
from xrd_nexus_ml.plotting import plot_demo
from xrd_nexus_ml.preprocess.background import subtract_background
from xrd_nexus_ml.references import CALIBRANTS, aflow_prototypes, calibrant_structure


def example_dir() -> Path:
    """The folder of measured patterns and reference CIFs shipped with the package."""
    return Path(str(resources.files("xrd_nexus_ml") / "data" / "examples"))


@dataclass
class MatchResult:
    file: str
    true_phase: str
    ranking: list[tuple[str, float]]  # (reference, cosine) best first

    @property
    def best(self) -> str:
        return self.ranking[0][0]


def formula_of(reference_name: str) -> str:
    """'MnO2_136' -> 'MnO2': reference CIFs are named formula_spacegroup."""
    return reference_name.rsplit("_", 1)[0]


def rank_references(measured, reference_patterns: np.ndarray, names: list[str]) -> list[tuple[str, float]]:
    """Cosine similarity on the measured points (background already subtracted), best first."""
    mask = measured.mask
    y = measured.intensity[mask]
    refs = reference_patterns[:, mask]
    cosine = refs @ y / (np.linalg.norm(refs, axis=1) * np.linalg.norm(y) + 1e-30)
    order = np.argsort(cosine)[::-1]
    return [(names[i], float(cosine[i])) for i in order]


def run_demo(out_dir: Path, seed: int = 0, n_augmented: int = 4, device: str | None = None) -> dict:
    """Run the demo, write demo.png and summary.json into `out_dir`, return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    profile = PeakProfile(shape="pseudo_voigt", eta=0.3, caglioti_uvw=(0.004, -0.002, 0.004))
    sim = PowderSimulator(wavelength="CuKa1", grid=CANONICAL_GRID, profile=profile, device=device)

    # 1. clean and augmented simulations of reference structures, one batch
    named = [(f"{name} (calibrant)", calibrant_structure(name)) for name in CALIBRANTS]
    named += [(label, s) for label, s in list(aflow_prototypes())[:: 288 // 4]]
    structures = [s for _, s in named]
    clean = sim.run(structures, augment=default_pipeline("clean"), generator=generator)
    augmented = sim.run(structures[:1] * n_augmented, augment=default_pipeline("measured"), generator=generator)

    # 2. measured patterns on the canonical grid, ranked against the shipped candidate phases
    examples = example_dir()
    cif_paths = sorted((examples / "references").glob("*.cif"))
    ref_names = [p.stem for p in cif_paths]
    ref_patterns = sim.simulate_all([read_structure(p) for p in cif_paths])
    matches = []
    measured_patterns = {}
    for path in sorted(examples.glob("*.xy")):
        measured = subtract_background(read_pattern(path, wavelength="CuKa1")).on_canonical_grid()
        measured_patterns[path.name] = measured
        matches.append(MatchResult(path.name, path.stem, rank_references(measured, ref_patterns, ref_names)))

    # 3. the same patterns identified by the shipped model of these references

    identified = {Path(r["source"]).name: r for r in classify_patterns(
        sorted(examples.glob("*.xy")), model="li-mn-ti-o-f", wavelength="CuKa")}

    summary = {
        "canonical_grid": CANONICAL_GRID.to_dict(),
        "simulated": [name for name, _ in named],
        "augmentations": default_pipeline("measured").to_config(),
        "measured": [
            {
                "file": m.file,
                "true_phase": m.true_phase,
                "best_reference": m.best,
                "correct_formula": formula_of(m.best) == m.true_phase,
                "top3": [{"reference": n, "cosine": round(c, 4)} for n, c in m.ranking[:3]],
                "identified": [{"formula": p["formula"], "reference": p["reference"],
                                "probability": p["probability"]} for p in identified[m.file]["phases"]],
                "out_of_library": identified[m.file]["out_of_library"],
                "q_measured": [
                    float(CANONICAL_GRID.values[measured_patterns[m.file].mask].min()),
                    float(CANONICAL_GRID.values[measured_patterns[m.file].mask].max()),
                ],
            }
            for m in matches
        ],
        "device": str(sim.device),
        "seconds": round(time.perf_counter() - started, 2),
    }

    plot_demo(
        out_dir / "demo.png",
        grid=CANONICAL_GRID.values,
        clean=clean,
        augmented=augmented,
        names=[name for name, _ in named],
        measured=measured_patterns,
        matches={m.file: m.best for m in matches},
        references=dict(zip(ref_names, ref_patterns)),
    )
    summary["png"] = str(out_dir / "demo.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary

"""Which phases are in a measured pattern: the network proposes, a fit of the references confirms.

For each pattern (all patterns of a call go through the network together):
1. Prepare it like the transition models do (onto the model's q grid, SNIP background
   removed, max 1) and ask the network for calibrated class probabilities and the cosine of
   the pattern's embedding to each class prototype.
2. The `shortlist` most probable classes whose prototype cosine reaches the model's open-set
   threshold (and whose probability is at least `min_shortlist_probability`) are candidates;
   with none, or none whose fit (step 3) explains `min_explained_first` of the signal, the
   pattern is out of library and no phase is named (the nearest classes are still listed).
   The first phase found is the major one: a library phase that explains less than that
   (30 %) is a coincidental partial match. Measured on the Li-Mn-Ti-O-F references: their own
   simulated draws' first phase explains 0.75-0.99, the 8 measured patterns' 0.66-0.96, while
   about a quarter of the foreign Li-La-Zr-O draws were named a phase explaining 0.05-0.3.
3. Each candidate class's references (its polymorphs) are fitted to what is left of the
   pattern: lattice scale by cross-correlation on a log-q axis (±4 %), peak width from four
   candidates, height by a robust ratio on the reference's strong peaks. The candidate whose
   fit removes the most signal is the phase (the network proposes, the physics decides); its
   best polymorph names the space group. The fitted pattern is subtracted (clipped at 0).
4. The residual goes back to step 1 for the next phase, up to `max_phases`, while a
   candidate is probable (`min_probability`), inside the library and its fit explains at
   least `min_explained` of the pattern's signal (sum of squares). This is the iterative
   subtraction of XRD-AutoAnalyzer (Szymanski et al. 2021), with the classes of this model.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from xrd_nexus_ml.identification.model import IdentificationModel
from xrd_nexus_ml.preprocess import model_input

#: Peak widths (FWHM in Å^-1) tried when a reference is fitted to a measured pattern.
FIT_WIDTHS_Q = (0.005, 0.01, 0.02, 0.04)
#: Largest lattice mismatch the fit searches (relative).
MAX_STRAIN = 0.04


@dataclass(frozen=True)
class PhaseMatch:
    """One identified phase."""

    formula: str
    probability: float  # calibrated, at the round the phase was found
    similarity: float  # cosine of the embedding to the class prototype
    reference: str  # best-fitting reference (polymorph) of the class
    space_group_number: int
    space_group_symbol: str
    strain: float  # fitted lattice scale - 1 (positive: larger cell than the reference)
    explained: float  # fraction of the pattern's signal (sum of squares) the fitted phase removed


@dataclass(frozen=True)
class Identification:
    """What one pattern holds, by one model."""

    source: str
    phases: tuple[PhaseMatch, ...]
    out_of_library: bool
    candidates: tuple[tuple[str, float], ...]  # first round's top classes (formula, probability)
    seconds: float  # this pattern's share of the call's wall time
    flag: str | None = None  # why the pattern was not usable (see PreparedFrames), else None
    model: str = ""
    residual: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def formulas(self) -> tuple[str, ...]:
        return tuple(p.formula for p in self.phases)

    def to_dict(self) -> dict:
        return {"source": self.source, "phases": [asdict(p) for p in self.phases],
                "out_of_library": self.out_of_library,
                "candidates": [{"formula": f, "probability": p} for f, p in self.candidates],
                "seconds": self.seconds, "flag": self.flag, "model": self.model}


@dataclass
class _Fit:
    phase: int
    strain: float
    pattern: np.ndarray  # fitted, scaled pattern on the grid
    cosine: float


def _gaussian_sum(grid: np.ndarray, q: np.ndarray, intensity: np.ndarray, fwhm: float) -> np.ndarray:
    """Σ I_k exp(-4 ln2 (g - q_k)² / fwhm²) on `grid` (uniform), each peak only within ±3 FWHM."""
    step = grid[1] - grid[0]
    half = int(math.ceil(3.0 * fwhm / step))
    offsets = np.arange(-half, half + 1)
    centre = np.rint((q - grid[0]) / step).astype(np.int64)
    idx = centre[:, None] + offsets[None, :]
    ok = (idx >= 0) & (idx < grid.size)
    values = intensity[:, None] * np.exp(-4.0 * math.log(2.0) * ((grid[np.clip(idx, 0, grid.size - 1)] - q[:, None])
                                                                 / fwhm) ** 2)
    return np.bincount(idx[ok], weights=values[ok], minlength=grid.size)


class Identifier:
    """Identify the phases of measured patterns with an `IdentificationModel`."""

    def __init__(self, model: IdentificationModel, max_phases: int = 3, min_probability: float = 0.2,
                 min_explained: float = 0.05, min_residual: float = 0.08, shortlist: int = 3,
                 min_shortlist_probability: float = 0.02, min_explained_first: float = 0.3):
        if max_phases < 1:
            raise ValueError(f"max_phases must be at least 1, got {max_phases}")
        self.model = model
        self.max_phases = int(max_phases)
        self.min_probability = float(min_probability)
        self.min_explained = float(min_explained)
        self.min_explained_first = float(min_explained_first)
        self.min_residual = float(min_residual)
        self.shortlist = int(shortlist)
        self.min_shortlist_probability = float(min_shortlist_probability)
        self.grid = model.grid.values
        self._class_phases: dict[int, list[int]] = {}
        for i, p in enumerate(model.phases):
            self._class_phases.setdefault(int(p["class_id"]), []).append(i)
        # log-q axis for the strain search
        self._log_grid = np.linspace(math.log(model.grid.q_min), math.log(model.grid.q_max), model.grid.n_points)
        self._dlog = self._log_grid[1] - self._log_grid[0]
        self._max_lag = int(math.ceil(math.log(1.0 + MAX_STRAIN) / self._dlog))

    @classmethod
    def from_bundle(cls, path, **options) -> Identifier:
        return cls(IdentificationModel.load(path), **options)

    # -- the fit of one class's references to a residual -----------------------------------
    def _fit(self, class_id: int, residual: np.ndarray, mask: np.ndarray) -> _Fit | None:
        measured = np.flatnonzero(mask)
        if measured.size < 8:
            return None
        lo, hi = self.grid[measured[0]], self.grid[measured[-1]]
        y_log = np.interp(self._log_grid, np.log(self.grid), np.where(mask, residual, 0.0))
        in_range = (self._log_grid >= math.log(lo)) & (self._log_grid <= math.log(hi))
        y_log = np.where(in_range, y_log, 0.0)
        padded = np.pad(y_log, self._max_lag)
        best = None
        for phase in self._class_phases.get(class_id, []):
            q, inten = self.model.sticks[phase]
            keep = (q > lo * (1 - MAX_STRAIN)) & (q < hi * (1 + MAX_STRAIN))
            if not keep.any():
                continue
            q, inten = q[keep].astype(float), inten[keep].astype(float)
            ref_log = _gaussian_sum(self._log_grid, np.log(q), inten, 0.004)
            # scores[j] = Σ_i y(i + lag_j) ref(i) for lags -max_lag..max_lag (zero-padded residual)
            scores = np.correlate(padded, ref_log, mode="valid")
            lag = int(np.argmax(scores)) - self._max_lag
            scale = math.exp(lag * self._dlog)  # measured q = reference q × scale
            q_fit = q * scale
            for fwhm in FIT_WIDTHS_Q:
                r = _gaussian_sum(self.grid, q_fit, inten, fwhm) * mask
                norm = float(np.linalg.norm(r))
                if norm == 0:
                    continue
                cosine = float(np.dot(r, residual) / (norm * max(float(np.linalg.norm(residual)), 1e-12)))
                if best is None or cosine > best.cosine:
                    best = _Fit(phase=phase, strain=1.0 / scale - 1.0, pattern=r, cosine=cosine)
        if best is None:
            return None
        r = best.pattern
        strong = r > 0.3 * r.max()
        height = float(np.median(residual[strong] / r[strong])) if strong.any() else 0.0
        best.pattern = max(height, 0.0) * r
        return best

    # -- the whole call ----------------------------------------------------------------------
    def identify(self, patterns, elements=None, sources=None) -> list[Identification]:
        """One `Identification` per pattern (`Diffractogram`s or arrays on the model grid)."""
        from xrd_nexus_ml.transitions.frames import prepare_frames

        started = time.perf_counter()
        prepared = prepare_frames(patterns, grid=self.model.grid)
        n = len(prepared)
        sources = list(sources) if sources is not None else [
            str(getattr(p, "source", None) or getattr(p, "metadata", {}).get("source", f"pattern {i}"))
            for i, p in enumerate(patterns)]
        allowed_experts, allowed_classes = self.model.restriction(elements)
        residual = prepared.x.astype(float).copy()
        mask = prepared.mask
        total = (residual**2).sum(1)
        found: list[list[PhaseMatch]] = [[] for _ in range(n)]
        candidates: list[tuple] = [()] * n
        out_of_library = np.zeros(n, bool)
        active = prepared.ok.copy()
        names = self.model.classes
        for round_ in range(self.max_phases):
            rows = np.flatnonzero(active)
            if not rows.size:
                break
            inputs = torch.from_numpy(model_input(residual[rows], mask[rows]))
            probs, sims = self.model.predict(inputs, allowed_experts, allowed_classes)
            for j, row in enumerate(rows):
                p = probs[j].copy()
                taken = [names.index(m.formula) for m in found[row]]
                p[taken] = 0.0
                order = np.argsort(-p)
                if round_ == 0:
                    candidates[row] = tuple((names[c], round(float(p[c]), 4)) for c in order[:5] if p[c] > 0)
                floor = self.min_probability if round_ else self.min_shortlist_probability
                shortlist = [int(c) for c in order[:self.shortlist]
                             if p[c] >= floor and sims[j, c] >= self.model.open_set_threshold]
                if round_ == 0 and not shortlist:
                    out_of_library[row] = True
                best = None
                for c in shortlist:  # the network proposes, the fit of the references decides
                    fit = self._fit(c, residual[row], mask[row])
                    if fit is None:
                        continue
                    after = np.clip(residual[row] - fit.pattern, 0.0, None)
                    explained = float(((residual[row] ** 2).sum() - (after**2).sum()) / max(total[row], 1e-12))
                    if best is None or explained > best[2]:
                        best = (c, fit, explained, after)
                if best is None or best[2] < (self.min_explained_first if round_ == 0 else self.min_explained):
                    if round_ == 0:  # no library phase explains the pattern
                        out_of_library[row] = True
                    active[row] = False
                    continue
                c, fit, explained, after = best
                phase = self.model.phases[fit.phase]
                found[row].append(PhaseMatch(
                    formula=names[c], probability=round(float(p[c]), 4), similarity=round(float(sims[j, c]), 4),
                    reference=phase["name"], space_group_number=int(phase["space_group_number"]),
                    space_group_symbol=phase["space_group_symbol"], strain=round(fit.strain, 5),
                    explained=round(explained, 4)))
                residual[row] = after
                if after.max() < self.min_residual:
                    active[row] = False
        seconds = (time.perf_counter() - started) / max(n, 1)
        model_id = self.model.source or "identification model"
        return [Identification(source=sources[i], phases=tuple(found[i]), out_of_library=bool(out_of_library[i]),
                               candidates=candidates[i], seconds=seconds, flag=prepared.flags[i], model=model_id,
                               residual=residual[i] if prepared.ok[i] else None)
                for i in range(n)]

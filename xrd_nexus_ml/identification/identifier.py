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
   pattern: lattice scale by cross-correlation on a log-q axis (within ±`max_strain`, 4 % by
   default), peak width from four candidates, height by a robust ratio on the reference's
   strong peaks. The candidate whose fit removes the most signal is the phase (the network
   proposes, the physics decides); its best polymorph names the space group. The fitted
   pattern is subtracted (clipped at 0).
4. The residual goes back to step 1 for the next phase, up to `max_phases`, while a
   candidate is probable (`min_probability`), inside the library and its fit explains at
   least `min_explained` of the pattern's signal (sum of squares). This is the iterative
   subtraction of XRD-AutoAnalyzer (Szymanski et al. 2021), with the classes of this model.
5. The network never saw what a subtraction leaves behind, and under a strong major phase it
   may not propose a minor one at all. So when none of its proposals for a later phase passes,
   a screen scores every allowed class (up to `max_screened_references` references) by the
   normalised log-q cross-correlation of its references with the residual, and the `screen`
   best are fitted as in step 3. A screened phase has only the fit as evidence, so its fit
   must also follow the residual's shape (a reference with a dense forest of lines absorbs the
   noise floor without matching any peak) and explain `min_explained` of the signal where no
   phase found so far has peaks: a fit that only absorbs the misfit of phases already found
   (a wrong peak shape, a polymorph's shared lines) is not a new phase.
6. The phases named must together explain `min_explained_total` (half) of the signal, else
   the pattern is out of library and none is named (`explained` still says what they removed).
   A foreign phase is often fitted by a library phase of another structure or of the same
   type with a lattice inside the fit's window, but its intensities differ and much of its
   signal stays. In-library patterns are explained far better: on the Li-Mn-Ti-O-F and
   Li-La-Zr-O references, at least 0.64 of their own simulated draws, 0.68 of simulated 1-3
   phase mixtures and 0.66 of the 9 measured patterns. (With `max_phases` 1, a mixture whose
   major phase holds less than half of the signal is flagged too.)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.fft
import torch

from xrd_nexus_ml.identification.model import IdentificationModel
from xrd_nexus_ml.preprocess.background import model_input
from xrd_nexus_ml.preprocess.frames import prepare_frames

#: Peak widths (FWHM in Å^-1) tried when a reference is fitted to a measured pattern.
FIT_WIDTHS_Q = (0.005, 0.01, 0.02, 0.04)
#: Largest lattice mismatch the fit searches by default (relative): wide enough for in-situ
#: pressure or temperature series and solid solutions; `Identifier(max_strain=...)` narrows it.
MAX_STRAIN = 0.04
#: A found phase's fitted pattern above this fraction of its maximum marks its peaks' points.
COVERED_FRACTION = 0.05
#: Least Pearson correlation of a screened phase's fit with the residual. On simulated mixtures
#: and single-reference patterns, fits of true minor phases reached 0.42-0.74 and fits of
#: line-rich references absorbing the noise floor at most 0.2; this is the midpoint.
MIN_SCREEN_CORRELATION = 0.3
#: Log-q points summed into one bin for the screen of all classes (peaks there are ~5 points wide).
SCREEN_BINNING = 4


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
    proposed_by: str = "network"  # or "screen": a later phase the network did not propose (see Identifier)


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
    explained: float = 0.0  # fraction of the signal the fitted phases removed (also when too little to name them)
    residual: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def formulas(self) -> tuple[str, ...]:
        return tuple(p.formula for p in self.phases)

    def to_dict(self) -> dict:
        return {"source": self.source, "phases": [asdict(p) for p in self.phases],
                "out_of_library": self.out_of_library,
                "candidates": [{"formula": f, "probability": p} for f, p in self.candidates],
                "explained": self.explained, "seconds": self.seconds, "flag": self.flag, "model": self.model}


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
    """Identify the phases of measured patterns with an `IdentificationModel`.

    screen: classes fitted for a later phase when none of the network's proposals passes (0:
    network proposals only); the screen is skipped when the allowed classes hold more than
    `max_screened_references` references (one matrix row each, per pattern and round).
    max_strain: largest relative lattice mismatch a reference may be fitted with. Ex-situ
    laboratory patterns of library phases fit within about 1 %; a narrower window leaves
    fewer library phases of a foreign phase's structure type within reach."""

    def __init__(self, model: IdentificationModel, max_phases: int = 3, min_probability: float = 0.2,
                 min_explained: float = 0.05, min_residual: float = 0.08, shortlist: int = 3,
                 min_shortlist_probability: float = 0.02, min_explained_first: float = 0.3,
                 min_explained_total: float = 0.5, screen: int = 3, max_screened_references: int = 4096,
                 max_strain: float = MAX_STRAIN):
        if max_phases < 1:
            raise ValueError(f"max_phases must be at least 1, got {max_phases}")
        if not 0.0 < max_strain < 0.5:
            raise ValueError(f"max_strain must lie in (0, 0.5), got {max_strain}")
        self.max_strain = float(max_strain)
        self.model = model
        self.max_phases = int(max_phases)
        self.min_probability = float(min_probability)
        self.min_explained = float(min_explained)
        self.min_explained_first = float(min_explained_first)
        self.min_explained_total = float(min_explained_total)
        self.min_residual = float(min_residual)
        self.shortlist = int(shortlist)
        self.min_shortlist_probability = float(min_shortlist_probability)
        self.screen = int(screen)
        self.max_screened_references = int(max_screened_references)
        self._ref_logs: dict[int, np.ndarray] = {}
        self._coarse_references: np.ndarray | None = None
        self._width_kernels = None
        self.grid = model.grid.values
        self._class_phases: dict[int, list[int]] = {}
        for i, p in enumerate(model.phases):
            self._class_phases.setdefault(int(p["class_id"]), []).append(i)
        self._class_sizes = np.array([len(self._class_phases.get(c, ())) for c in range(len(model.classes))])
        # log-q axis for the strain search
        self._log_grid = np.linspace(math.log(model.grid.q_min), math.log(model.grid.q_max), model.grid.n_points)
        self._dlog = self._log_grid[1] - self._log_grid[0]
        self._max_lag = int(math.ceil(math.log(1.0 + self.max_strain) / self._dlog))

    @classmethod
    def from_bundle(cls, path, **options) -> Identifier:
        return cls(IdentificationModel.load(path), **options)

    # -- the fit of one class's references to a residual -----------------------------------
    def _reference_log(self, phase: int) -> np.ndarray:
        """Reference `phase`'s sticks as narrow peaks on the log-q axis (computed once)."""
        ref = self._ref_logs.get(phase)
        if ref is None:
            q, inten = self.model.sticks[phase]
            keep = q > 0
            ref = _gaussian_sum(self._log_grid, np.log(q[keep].astype(float)), inten[keep].astype(float), 0.004)
            self._ref_logs[phase] = ref
        return ref

    def _log_residual(self, residual: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(residual on the log-q axis, zero-padded by the largest lag; measured span on that axis)."""
        measured = np.flatnonzero(mask)
        lo, hi = self.grid[measured[0]], self.grid[measured[-1]]
        y_log = np.interp(self._log_grid, np.log(self.grid), np.where(mask, residual, 0.0))
        in_range = (self._log_grid >= math.log(lo)) & (self._log_grid <= math.log(hi))
        return np.pad(np.where(in_range, y_log, 0.0), self._max_lag), in_range

    def _screen_matrix(self) -> np.ndarray:
        """Every reference on the coarse log-q axis of the screen (rows; built once)."""
        if self._coarse_references is None:
            n = len(self._log_grid) // SCREEN_BINNING * SCREEN_BINNING
            self._coarse_references = np.stack(
                [self._reference_log(i)[:n].reshape(-1, SCREEN_BINNING).sum(1) for i in range(len(self.model.phases))]
            ).astype(np.float32)
        return self._coarse_references

    def _screened(self, residual: np.ndarray, mask: np.ndarray, classes: np.ndarray) -> list[int]:
        """The `screen` classes among `classes` whose references best match the residual's peaks:
        the largest Pearson correlation over the lattice scales the fit searches (at least
        MIN_SCREEN_CORRELATION), on a log-q axis binned by SCREEN_BINNING (one matrix product
        for all references)."""
        phases = [ph for c in classes for ph in self._class_phases.get(int(c), ())]
        if not phases or np.flatnonzero(mask).size < 8:
            return []
        padded, in_range = self._log_residual(residual, mask)
        n = len(self._log_grid) // SCREEN_BINNING * SCREEN_BINNING
        y = padded[self._max_lag:self._max_lag + n].reshape(-1, SCREEN_BINNING).sum(1)
        span = in_range[:n].reshape(-1, SCREEN_BINNING).any(1)
        # centred: a noise floor (the residual is clipped at 0) matches a dense forest of lines, not peaks
        y = np.where(span, y - y[span].mean(), 0.0)
        lag = int(math.ceil(self._max_lag / SCREEN_BINNING))
        shifted = np.lib.stride_tricks.sliding_window_view(np.pad(y, lag), y.size)  # (2 lag + 1, bins)
        refs = self._screen_matrix()[phases] * span.astype(np.float32)
        # Pearson correlation with the centred residual: Σ ref·y over the norm of the centred ref
        centred_norms = np.sqrt(np.maximum((refs**2).sum(1) - refs.sum(1) ** 2 / max(int(span.sum()), 1), 0.0))
        # torch, not numpy: a threaded BLAS product leaves OpenBLAS threads spinning, which slowed
        # the network's next forward pass sevenfold on two cores
        products = torch.from_numpy(refs) @ torch.from_numpy(np.ascontiguousarray(shifted.T, dtype=np.float32))
        scores = products.max(1).values.numpy() / (np.maximum(centred_norms, 1e-12)
                                                   * max(float(np.linalg.norm(y)), 1e-12))
        per_class = np.full(len(classes), -np.inf)  # a class scores as its best reference
        np.maximum.at(per_class, np.repeat(np.arange(len(classes)), self._class_sizes[classes]), scores)
        order = np.argsort(-per_class, kind="stable")[:self.screen]
        return [int(classes[i]) for i in order if per_class[i] >= MIN_SCREEN_CORRELATION]

    def _rendered_widths(self, q: np.ndarray, intensity: np.ndarray):
        """Sticks rendered as Gaussians of each width of FIT_WIDTHS_Q: the narrowest directly,
        the wider ones by convolving it with a Gaussian (FWHMs add in quadrature) through one
        FFT, as a line-rich reference has thousands of sticks. Peak heights fall with width;
        the fit is scale-free (cosine, then a fitted height)."""
        n = self.grid.size
        narrow = _gaussian_sum(self.grid, q, intensity, FIT_WIDTHS_Q[0])
        yield narrow
        if self._width_kernels is None:
            step = self.grid[1] - self.grid[0]
            widest = int(math.ceil(3.0 * FIT_WIDTHS_Q[-1] / step))
            # long enough that no kernel tail wraps onto the grid, and a fast FFT length (4320, not
            # the 8192 of a power of two: the wider widths cost 1.5x less)
            size = scipy.fft.next_fast_len(n + widest, real=True)
            kernels = []
            for fwhm in FIT_WIDTHS_Q[1:]:
                extra = math.sqrt(fwhm**2 - FIT_WIDTHS_Q[0] ** 2)
                half = int(math.ceil(3.0 * extra / step))
                offsets = np.arange(-half, half + 1)
                kernel = np.exp(-4.0 * math.log(2.0) * (offsets * step / extra) ** 2)
                circular = np.zeros(size)
                circular[offsets % size] = kernel / kernel.sum()
                kernels.append(np.fft.rfft(circular))
            self._width_kernels = (size, kernels)
        size, kernels = self._width_kernels
        spectrum = np.fft.rfft(narrow, size)
        for kernel in kernels:
            yield np.clip(np.fft.irfft(spectrum * kernel, size)[:n], 0.0, None)

    def _fit(self, class_id: int, residual: np.ndarray, mask: np.ndarray, padded: np.ndarray) -> _Fit | None:
        """The best-fitting reference of `class_id` (padded: `_log_residual` of the residual)."""
        measured = np.flatnonzero(mask)
        lo, hi = self.grid[measured[0]], self.grid[measured[-1]]
        best = None
        for phase in self._class_phases.get(class_id, []):
            q, inten = self.model.sticks[phase]
            keep = (q > lo * (1 - self.max_strain)) & (q < hi * (1 + self.max_strain))
            if not keep.any():
                continue
            q, inten = q[keep].astype(float), inten[keep].astype(float)
            ref_log = self._reference_log(phase)
            # scores[j] = Σ_i y(i + lag_j) ref(i) for lags -max_lag..max_lag (zero-padded residual)
            scores = np.correlate(padded, ref_log, mode="valid")
            lag = int(np.argmax(scores)) - self._max_lag
            scale = math.exp(lag * self._dlog)  # measured q = reference q × scale
            for rendered in self._rendered_widths(q * scale, inten):
                r = rendered * mask
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

    def _best_fit(self, classes, residual: np.ndarray, mask: np.ndarray, total: float):
        """(class, fit, fraction of the signal explained, residual after) of the class among
        `classes` whose fitted references remove the most signal; None if none fits."""
        best = None
        if not len(classes) or np.count_nonzero(mask) < 8:
            return None
        padded, _ = self._log_residual(residual, mask)  # once for every class
        signal = float((residual**2).sum())
        for c in classes:
            fit = self._fit(c, residual, mask, padded)
            if fit is None:
                continue
            after = np.clip(residual - fit.pattern, 0.0, None)
            explained = (signal - float((after**2).sum())) / max(total, 1e-12)
            if best is None or explained > best[2]:
                best = (c, fit, explained, after)
        return best

    def _new_peaks(self, best, residual: np.ndarray, mask: np.ndarray, covered: np.ndarray, total: float) -> bool:
        """Whether a screened phase's fit is evidence of peaks of its own: its shape follows the
        residual's (Pearson correlation over the measured points at least MIN_SCREEN_CORRELATION:
        a phase with a dense forest of lines only absorbs the noise floor and scores about 0), and
        it explains `min_explained` of the signal where no phase found so far has peaks (not only
        the misfit of those phases)."""
        fitted, after = best[1].pattern[mask], best[3]
        if fitted.std() == 0 or residual[mask].std() == 0:
            return False
        correlation = float(np.corrcoef(fitted, residual[mask])[0, 1])
        elsewhere = float(((residual**2 - after**2) * ~covered).sum() / max(total, 1e-12))
        return correlation >= MIN_SCREEN_CORRELATION and elsewhere >= self.min_explained

    def _screened_fit(self, residual: np.ndarray, mask: np.ndarray, covered: np.ndarray, total: float,
                      classes: np.ndarray):
        """`_best_fit` of the `screen` classes among `classes` that best match the residual away
        from the peaks found so far (a new phase shows new peaks), if it passes `_new_peaks`."""
        if float((residual**2 * ~covered).sum()) < self.min_explained * max(total, 1e-12):
            return None  # too little signal left away from the phases found to make a new one
        screened = self._screened(residual * ~covered, mask, classes)
        best = self._best_fit(screened, residual, mask, total)
        return best if best is not None and self._new_peaks(best, residual, mask, covered, total) else None

    # -- the whole call ----------------------------------------------------------------------
    def identify(self, patterns, elements=None, sources=None) -> list[Identification]:
        """One `Identification` per pattern (`Diffractogram`s or arrays on the model grid)."""
        started = time.perf_counter()
        prepared = prepare_frames(patterns, grid=self.model.grid)
        n = len(prepared)
        sources = list(sources) if sources is not None else [
            str(getattr(p, "source", None) or getattr(p, "metadata", {}).get("source", f"pattern {i}"))
            for i, p in enumerate(patterns)]
        allowed_experts, allowed_classes = self.model.restriction(elements)
        pool = (np.flatnonzero(allowed_classes.numpy()) if allowed_classes is not None
                else np.arange(len(self.model.classes)))
        if self._class_sizes[pool].sum() > self.max_screened_references:
            pool = pool[:0]  # too many references to screen each pattern against: the network alone proposes
        residual = prepared.x.astype(float).copy()
        mask = prepared.mask
        total = (residual**2).sum(1)
        found: list[list[PhaseMatch]] = [[] for _ in range(n)]
        covered = np.zeros_like(residual, dtype=bool)  # where a phase found so far has peaks
        candidates: list[tuple] = [()] * n
        out_of_library = np.zeros(n, bool)
        active = prepared.ok.copy()
        names = self.model.classes
        for round_ in range(self.max_phases):
            if round_:  # a phase explains at most what is left: stop where that is under min_explained
                active &= (residual**2).sum(1) >= self.min_explained * np.maximum(total, 1e-12)
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
                needed = self.min_explained_first if round_ == 0 else self.min_explained
                best = self._best_fit(shortlist, residual[row], mask[row], total[row])
                proposed_by = "network"
                if round_ and self.screen and (best is None or best[2] < needed):
                    # the network never saw what a subtraction leaves: fit the classes that match it
                    best = self._screened_fit(residual[row], mask[row], covered[row], total[row],
                                              np.setdiff1d(pool, taken + shortlist))
                    proposed_by = "screen"
                if best is None or best[2] < needed:
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
                    explained=round(explained, 4), proposed_by=proposed_by))
                residual[row] = after
                covered[row] |= fit.pattern > COVERED_FRACTION * fit.pattern.max()
                if after.max() < self.min_residual:
                    active[row] = False
        explained_total = 1.0 - (residual**2).sum(1) / np.maximum(total, 1e-12)
        partial = prepared.ok & (explained_total < self.min_explained_total) & np.array([bool(f) for f in found])
        for row in np.flatnonzero(partial):  # mostly unexplained: these phases are not what the pattern holds
            found[row] = []
            out_of_library[row] = True
        seconds = (time.perf_counter() - started) / max(n, 1)
        model_id = self.model.source or "identification model"
        return [Identification(source=sources[i], phases=tuple(found[i]), out_of_library=bool(out_of_library[i]),
                               candidates=candidates[i], seconds=seconds, flag=prepared.flags[i], model=model_id,
                               explained=round(float(explained_total[i]), 4) if prepared.ok[i] else 0.0,
                               residual=residual[i] if prepared.ok[i] else None)
                for i in range(n)]

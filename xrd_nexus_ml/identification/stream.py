"""An endless stream of augmented training patterns of a library's reference phases.

Enumerating reflections and their structure factors is by far the dearest step of a simulation
(~15 ms per structure on the canonical grid, q <= 8 Å^-1); everything an augmentation changes
comes after it. So `PeakCache` computes each reference's merged peaks once (Debye-Waller
factor B = 0), and every draw re-applies what varies: an isotropic Debye-Waller factor
(I × exp(-B q² / 8π²)), then the peak- and pattern-stage transforms of `physics.augment`
(strain, peak loss, intensity scaling, shifts, crystallite size, background, noise, measured
range). Each draw is new: there is no fixed set of augmented copies to leak from.

Two ways to draw the same distribution: "fft" (the default) keeps a batch's peaks as one flat
list, applies the transforms there and on float32 NumPy patterns (`flat_augment`), and renders by
FFT (`render`): thousands of patterns per second on two cores, so training waits on the network,
not on its data (`xrd-nexus-ml bench train-identify`). "windowed" runs the transforms themselves
on padded peak lists and `physics.profiles.render`, the reference the fast path is tested against.

Preferred orientation acts here on merged peaks with their representative hkl (the reflections
of a merged peak are symmetry equivalents, so one March-Dollase factor per peak is an
approximation that is adequate for augmentation).

`prepare_inputs` turns patterns into model input: smooth background removed by SNIP over the
measured span (outside it the pattern is held at its edge values, so SNIP sees no step), then
max-normalised, then square-rooted (weak peaks carry the identity of minor phases). Measured
patterns go through `preprocess.prepare_frames` (the same SNIP width) and then
`model_input`, so training and measurement see the same transformation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from xrd_nexus_ml.identification.flat_augment import FlatPeaks, FlatState, apply_flat
from xrd_nexus_ml.identification.render import render_flat
from xrd_nexus_ml.physics import CrystalBatch, PeakList, PowderSimulator
from xrd_nexus_ml.physics.augment import (
    Background,
    Compose,
    CrystalliteSize,
    GaussianNoise,
    ImpurityPhase,
    IntensityScaling,
    LatticeStrain,
    PeakLoss,
    PeakShift,
    PoissonNoise,
    PreferredOrientation,
    RangeMask,
)
from xrd_nexus_ml.physics.profiles import render
from xrd_nexus_ml.physics.simulator import SimulatedBatch
from xrd_nexus_ml.preprocess.background import model_input, snip_background
from xrd_nexus_ml.preprocess.frames import SNIP_WIDTH_Q  # the SNIP window of training and inference

#: λ(Kα2)/λ(Kα1) of a copper tube: a Kα2 line sits at q × this ratio on the Kα1 q axis.
CU_KALPHA2_RATIO = 1.54439 / 1.54056


def identification_pipeline(impurity_pool: PeakList | None = None) -> Compose:
    """Augmentations for identifying phases of a reference library in laboratory or beamline data.

    Wider than the space-group defaults where references and measurements disagree most:
    cells of database (often DFT-relaxed) structures are off by up to a few per cent
    (isotropic strain ±3 %, with ±1 % per edge on top), texture is strong in flat-plate lab
    samples (March-Dollase r 0.5-1.5), and measured peaks are often broad (crystallites
    5-150 nm, log-uniform).
    impurity_pool: the library's own peaks; half the patterns then carry a second phase at
    2-80 % of the main phase's strongest line, so the classifier names the dominant phase of a
    mixture, even of a nearly even one (the identifier finds the others by subtraction).
    """
    impurity = ([ImpurityPhase(probability=0.5, pool=impurity_pool, fraction=(0.02, 0.8))]
                if impurity_pool is not None else [])
    return Compose((
        PreferredOrientation(probability=0.5, r_range=(0.5, 1.5)),
        LatticeStrain(strain_range=(-0.03, 0.03), mode="isotropic"),
        LatticeStrain(probability=0.5, strain_range=(-0.01, 0.01), mode="anisotropic"),
        PeakLoss(probability=0.3, drop_probability=(0.0, 0.15)),
        IntensityScaling(probability=0.7, spread=0.3),
        *impurity,
        PeakShift(zero_offset_deg=(-0.1, 0.1), displacement_mm=(-0.15, 0.15), goniometer_radius_mm=240.0),
        CrystalliteSize(size_nm=(5.0, 150.0)),
        Background(),
        PoissonNoise(max_counts=(3e2, 1e5)),
        GaussianNoise(probability=0.3, sigma=(0.0, 0.01)),
        RangeMask(q_min=(0.3, 1.2), q_max=(3.5, 8.0)),
    ))


@dataclass
class PeakCache:
    """Merged peaks (q, intensity at B = 0, representative hkl) of each reference, computed once."""

    q: list[torch.Tensor]
    intensity: list[torch.Tensor]
    hkl: list[torch.Tensor]
    reciprocal_lattice: torch.Tensor  # (n, 3, 3)
    lattice: torch.Tensor  # (n, 3, 3)
    _flat: tuple | None = field(default=None, init=False, repr=False, compare=False)  # flat_peaks' arrays

    @classmethod
    def build(cls, structures: Sequence, simulator: PowderSimulator, chunk: int = 32) -> PeakCache:
        """The peaks of `structures`, computed on the simulator's device (a GPU builds 10^5 references
        in a fraction of the CPU's time) and kept on the CPU, where the stream draws from them."""
        q, intensity, hkl, recip, lattice = [], [], [], [], []
        for start in range(0, len(structures), chunk):
            crystals = simulator.batch(structures[start:start + chunk])
            crystals = crystals.with_b_factors(torch.zeros_like(crystals.b_factors))
            peaks = simulator.reflections(crystals).merged().without_weak()
            p_q, p_i, p_h = peaks.q.cpu(), peaks.intensity.cpu(), peaks.hkl.cpu()
            for row in range(len(crystals)):
                live = p_i[row] > 0
                q.append(p_q[row][live].clone())
                intensity.append(p_i[row][live].clone())
                hkl.append(p_h[row][live].clone())
            recip.append(peaks.reciprocal_lattice.cpu())
            lattice.append(crystals.lattice.cpu())
        return cls(q, intensity, hkl, torch.cat(recip), torch.cat(lattice))

    def __len__(self) -> int:
        return len(self.q)

    def peaks(self, indices: Sequence[int], b_factor: torch.Tensor | None = None) -> PeakList:
        """Padded peaks of references `indices`, each damped by its Debye-Waller B (Å²) if given."""
        n_max = max(1, max(len(self.q[i]) for i in indices))
        b = len(indices)
        dtype = self.reciprocal_lattice.dtype
        q = torch.zeros(b, n_max, dtype=dtype)
        inten = torch.zeros(b, n_max, dtype=dtype)
        hkl = torch.zeros(b, n_max, 3, dtype=torch.long)
        for row, i in enumerate(indices):
            m = len(self.q[i])
            q[row, :m], inten[row, :m], hkl[row, :m] = self.q[i], self.intensity[i], self.hkl[i]
        if b_factor is not None:
            inten = inten * torch.exp(-b_factor.to(dtype).unsqueeze(1) * q**2 / (8.0 * math.pi**2))
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return PeakList(q=q, intensity=inten, hkl=hkl, reciprocal_lattice=self.reciprocal_lattice[index])

    def lattices(self, indices: Sequence[int]) -> torch.Tensor:
        return self.lattice[torch.as_tensor(list(indices), dtype=torch.long)]

    def flat_peaks(self, indices: Sequence[int], b_factor: np.ndarray | None = None) -> FlatPeaks:
        """The peaks of references `indices` as one flat list (no padding), each damped by its
        Debye-Waller B (Å²) if given."""
        if self._flat is None or len(self._flat[3]) != len(self.q):
            counts = np.array([len(q) for q in self.q], dtype=np.int64)
            cat = lambda ts, shape: (torch.cat(ts).double().numpy() if ts else np.zeros(shape))  # noqa: E731
            self._flat = (cat(self.q, (0,)), cat(self.intensity, (0,)),
                          torch.cat(self.hkl).long().numpy() if self.hkl else np.zeros((0, 3), dtype=np.int64),
                          counts, np.concatenate([[0], np.cumsum(counts)[:-1]]),
                          self.reciprocal_lattice.double().numpy())
        q_all, i_all, hkl_all, counts, starts, recip = self._flat
        indices = np.asarray(indices, dtype=np.int64)
        n = counts[indices]
        row = np.repeat(np.arange(len(indices)), n)
        take = np.repeat(starts[indices] - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(int(n.sum()))
        q, intensity = q_all[take], i_all[take]
        if b_factor is not None:
            intensity = intensity * np.exp(-np.asarray(b_factor, dtype=float)[row] * q**2 / (8.0 * math.pi**2))
        return FlatPeaks(row=row, q=q, intensity=intensity, hkl=hkl_all[take],
                         reciprocal_lattice=recip[indices], n_rows=len(indices))


def _fill_outside(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rows of `y` with unmeasured points set to the nearest measured value (a flat extension),
    and detector gaps inside the measured span bridged linearly."""
    n, g = y.shape
    out = y.copy()
    measured = mask.any(1)
    first = mask.argmax(1)
    last = g - 1 - mask[:, ::-1].argmax(1)
    for row in np.flatnonzero(measured & ((first > 0) | (last < g - 1))):  # slice fills: cheap per row
        lo, hi = first[row], last[row]
        out[row, :lo] = y[row, lo]
        out[row, hi + 1:] = y[row, hi]
    gaps = measured & (np.count_nonzero(mask, axis=1) < last - first + 1)
    if gaps.any():  # detector gaps: interpolate across each from its measured neighbours
        index = np.arange(g)
        m, yg = mask[gaps], y[gaps]
        before = np.maximum.accumulate(np.where(m, index, 0), axis=1)
        after = np.minimum.accumulate(np.where(m, index, g - 1)[:, ::-1], axis=1)[:, ::-1]
        y0, y1 = np.take_along_axis(yg, before, 1), np.take_along_axis(yg, after, 1)
        bridged = y0 + (y1 - y0) * (index - before) / np.maximum(after - before, 1)
        inside = ~m & (index > first[gaps, None]) & (index < last[gaps, None])
        out[gaps] = np.where(inside, bridged, out[gaps])
    return out


def prepare_inputs(intensity: np.ndarray, mask: np.ndarray, step_q: float,
                   snip_width_q: float = SNIP_WIDTH_Q, dtype=float) -> np.ndarray:
    """(n, 2, G) float32 model input of raw patterns on the model grid: SNIP, normalise, √, mask.
    dtype: of the arithmetic before the input is made (float32: the fast stream's)."""
    y = np.where(mask, np.asarray(intensity, dtype=dtype), dtype(0))
    width = max(1, int(round(snip_width_q / step_q)))
    background = snip_background(_fill_outside(y, mask), width, dtype)
    y = np.where(mask, np.clip(y - background, 0.0, None), 0.0)
    return model_input(y, mask)


@dataclass
class Draw:
    """One batch of the stream: model input, and which reference each row shows."""

    inputs: torch.Tensor  # (B, 2, G)
    reference: np.ndarray  # (B,) index into the cache's references


class ReferenceStream:
    """Endless batches of augmented patterns of `references` (indices into the cache), seeded.

    b_range: isotropic Debye-Waller B in Å² per pattern. pipeline: peak- and pattern-stage
    transforms (crystal-stage ones are not applied: the peaks are cached). kalpha2_probability:
    share of batches rendered with a Cu Kα2 doublet (half the Kα1 height), as an unmonochromated
    laboratory tube gives; the rest are monochromatic, as at a beamline.
    renderer: "fft" (flat stick lists, `flat_augment` and `render.render_flat`: thousands of patterns
    per second) or "windowed" (padded peak lists through the transforms themselves and
    `physics.profiles.render`: the reference the fast path is checked against)."""

    def __init__(self, cache: PeakCache, simulator: PowderSimulator, references: Sequence[int],
                 batch_size: int = 64, seed: int = 0, pipeline: Compose | None = None,
                 b_range: tuple[float, float] = (0.0, 1.5), kalpha2_probability: float = 0.5,
                 renderer: str = "fft"):
        if renderer not in ("fft", "windowed"):
            raise ValueError(f"renderer must be 'fft' or 'windowed', got {renderer!r}")
        if renderer == "fft" and simulator.grid.axis != "q":
            raise ValueError("the fft renderer draws on a q grid; use renderer='windowed' for a 2θ grid")
        self.renderer = renderer
        if not len(references):
            raise ValueError("a reference stream needs at least one reference")
        self.cache, self.simulator = cache, simulator
        self.references = np.asarray(references, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.pipeline = pipeline if pipeline is not None else identification_pipeline()
        stages = {t.stage for t in self.pipeline}
        if "crystal" in stages:
            raise ValueError("the reference stream caches peaks: crystal-stage transforms cannot apply; "
                             "use b_range for the Debye-Waller factor")
        self.b_range = b_range
        self.kalpha2_probability = float(kalpha2_probability)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self._memo: dict = {}  # the flat transforms' prepared state (the impurity pool as a flat list)

    def config(self) -> dict:
        """The recipe for a model card (an impurity pool is named, not listed: it is the library)."""
        transforms = []
        for t in self.pipeline:
            entry = t.to_config()
            if isinstance(t, ImpurityPhase):
                entry["pool"] = "the library's references"
                entry.pop("names", None)
            transforms.append(entry)
        return {"transforms": transforms, "debye_waller_b_range": list(self.b_range),
                "batch_size": self.batch_size, "snip_width_q": SNIP_WIDTH_Q,
                "kalpha2_probability": self.kalpha2_probability, "kalpha2_ratio": 0.5, "input": "sqrt(max-normalised)",
                "renderer": self.renderer}

    def draw(self, references: np.ndarray | None = None) -> Draw:
        """One batch: `references` (indices into the cache) or a balanced random choice."""
        if references is None:
            references = self.rng.choice(self.references, size=self.batch_size, replace=True)
        if self.renderer == "fft":
            return self._draw_flat(np.asarray(references, dtype=np.int64))
        lo, hi = self.b_range
        b = lo + (hi - lo) * torch.rand(len(references), generator=self.generator)
        peaks = self.cache.peaks(references, b)
        lattice = self.cache.lattices(references)
        n = len(references)
        crystals = CrystalBatch(lattice=lattice, frac_coords=torch.zeros(n, 0, 3), atomic_numbers=torch.zeros(n, 0,
                                dtype=torch.long), occupancy=torch.zeros(n, 0), b_factors=torch.zeros(n, 0))
        settings = self._settings(float(torch.rand((), generator=self.generator)) < self.kalpha2_probability)
        state = SimulatedBatch(crystals=crystals, settings=settings, reflections=peaks)
        state = self.pipeline.apply("reflections", state, self.generator)
        state.peaks = state.reflections
        state = self.pipeline.apply("peaks", state, self.generator)
        state.intensity = render(state.peaks, state.settings)
        state.mask = torch.ones_like(state.intensity, dtype=torch.bool)
        state = self.pipeline.apply("pattern", state, self.generator)
        inputs = prepare_inputs(state.intensity.numpy(), state.mask.numpy(), self.simulator.grid.step)
        return Draw(inputs=torch.from_numpy(inputs), reference=np.asarray(references))

    def _settings(self, kalpha2: bool):
        """The simulator's render settings, with a Cu Kα2 doublet at half height if asked."""
        settings = self.simulator.settings
        if kalpha2:
            profile = settings.profile.replace(kalpha2_ratio=0.5,
                                               kalpha2_wavelength=settings.wavelength * CU_KALPHA2_RATIO)
            settings = replace(settings, profile=profile)
        return settings

    def _draw_flat(self, references: np.ndarray) -> Draw:
        """`draw` on flat stick lists: the same stages and transforms, drawn from the NumPy generator."""
        lo, hi = self.b_range
        peaks = self.cache.flat_peaks(references, self.rng.uniform(lo, hi, len(references)))
        state = FlatState(peaks=peaks, settings=self._settings(self.rng.random() < self.kalpha2_probability),
                          memo=self._memo)
        for stage in ("reflections", "peaks"):
            for t in self.pipeline:
                if t.stage == stage:
                    apply_flat(t, state, self.rng, self.generator)
        p = state.peaks
        state.intensity = render_flat(p.row, p.q, p.intensity, p.n_rows, state.settings)
        state.mask = np.ones(state.intensity.shape, dtype=bool)
        for t in self.pipeline:
            if t.stage == "pattern":
                apply_flat(t, state, self.rng, self.generator)
        inputs = prepare_inputs(state.intensity, state.mask, self.simulator.grid.step, dtype=np.float32)
        return Draw(inputs=torch.from_numpy(inputs), reference=references)

    def __iter__(self) -> Iterator[Draw]:
        while True:
            yield self.draw()


def library_stream(cache: PeakCache, references: Sequence[int], batch_size: int, seed: int,
                   wavelength: str | float = "CuKa1") -> ReferenceStream:
    """The stream an identification model trains and is calibrated on: `identification_pipeline`
    with the library's own peaks as the pool of second phases (when it has more than one)."""
    simulator = PowderSimulator(wavelength=wavelength, device="cpu")
    pool = cache.peaks(range(len(cache))) if len(cache) > 1 else None
    return ReferenceStream(cache, simulator, references, batch_size, seed, identification_pipeline(pool))

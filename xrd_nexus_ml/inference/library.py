"""Open-set check: does a frame look like any phase the model was trained on?

A softmax classifier always names one of its phases, even for a sample it has never seen.
`LibraryGate` compares the frame, after the same compression alignment the phase model uses
(a unit-cell scale search, so a compressed lattice still matches), with the model's reference
patterns (the cosine-baseline bundle: the single-phase training patterns) and calls the frame
out of library when the best cosine similarity falls below `threshold`.

Measured on simulated (Mg0.2Fe0.8)O ramps, 2-70 GPa, noise 0.01-0.05: in-library frames score
0.85-1.0; 17 of 20 foreign phases of the shipped Li-Mn-Ti-O-F references score 0.09-0.75. Other
rock-salt (B1) phases such as LiF score ~0.96: the gate knows structure types, not chemistry.
"""

from __future__ import annotations

import numpy as np

from xrd_nexus_ml.preprocess.frames import PreparedFrames
from xrd_nexus_ml.transitions.alignment import CompressionAlignment

DEFAULT_THRESHOLD = 0.82


class LibraryGate:
    """Best aligned cosine similarity of a frame to a set of reference patterns.

    `references` and `reference_mask` are read once at construction (the matrices the
    similarity multiplies with are derived from them then)."""

    def __init__(self, references: np.ndarray, reference_mask: np.ndarray, alignment: CompressionAlignment | None,
                 threshold: float = DEFAULT_THRESHOLD):
        if references.ndim != 2 or references.shape != reference_mask.shape:
            raise ValueError(f"references and mask must be (n, G) of one shape, got {references.shape}, "
                             f"{reference_mask.shape}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        self.alignment = alignment
        self.threshold = float(threshold)
        if alignment is not None:
            references, reference_mask, _ = alignment.apply(references, reference_mask)
        self.references = np.where(reference_mask, references, 0.0).astype(np.float32)
        self.reference_mask = reference_mask
        # only the points some reference measured contribute: every product below is zero elsewhere
        measured = np.flatnonzero(reference_mask.any(0))
        self._span = (int(measured[0]), int(measured[-1]) + 1) if measured.size else (0, 0)
        lo, hi = self._span
        r = self.references[:, lo:hi]
        rm = reference_mask[:, lo:hi].astype(np.float32)
        self._r_t = np.ascontiguousarray(r.T)  # (S, R): x @ r.T
        self._rm_t = np.ascontiguousarray(rm.T)  # x² @ rm.T: the frame's energy on each reference's points
        self._m_t = np.ascontiguousarray(np.concatenate([rm, r**2]).T)  # m @ [rm | r²].T: overlap, ref energy

    @classmethod
    def from_models(cls, cosine_baseline, phase_model, threshold: float = DEFAULT_THRESHOLD) -> LibraryGate:
        """References of a trained `CosineBaseline`, aligned like `phase_model` (if it aligns)."""
        lo, hi = cosine_baseline.span
        n, g = cosine_baseline.references.shape[0], cosine_baseline.grid.n_points
        refs = np.zeros((n, g), np.float32)
        refs[:, lo:hi] = cosine_baseline.references.numpy()
        mask = np.zeros((n, g), bool)
        mask[:, lo:hi] = True
        alignment = phase_model.alignment if getattr(phase_model, "align", False) else None
        return cls(refs, mask, alignment, threshold)

    def accepts_inputs_of(self, phase_model) -> bool:
        """Whether `phase_model.inputs(prepared)` are what this gate compares (aligned the same
        way), so that they can be passed as `similarity(prepared, inputs=...)`."""
        aligns = bool(getattr(phase_model, "align", False))
        return self.alignment is (phase_model.alignment if aligns else None)

    def similarity(self, prepared: PreparedFrames, inputs: tuple | None = None) -> np.ndarray:
        """(n,) best cosine similarity over the points both the frame and a reference measured;
        NaN for flagged frames.

        inputs: (x, mask, index) of the usable frames already aligned with this gate's alignment,
        e.g. from `phase_model.predict_proba_prepared(prepared, return_inputs=True)` when
        `accepts_inputs_of(phase_model)`: the frames are then not aligned a second time."""
        out = np.full(len(prepared), np.nan)
        if inputs is None:
            ok = np.flatnonzero(prepared.ok)
            if not len(ok):
                return out
            x, mask = prepared.x[ok], prepared.mask[ok]
            if self.alignment is not None:
                x, mask, _ = self.alignment.apply(x, mask)
        else:
            x, mask, ok = inputs
            if not len(ok):
                return out
        out[ok] = self.scores(x, mask)
        return out

    def scores(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(n,) best cosine similarity of frames (x, mask) already aligned like the references."""
        if not len(x):
            return np.zeros(0)
        lo, hi = self._span
        m = mask[:, lo:hi]
        xs = np.where(m, x[:, lo:hi], 0.0).astype(np.float32)
        mf = m.astype(np.float32)
        n_refs = self.references.shape[0]
        num = xs @ self._r_t  # r is zero off its mask, x off its own
        norm_x = np.sqrt(np.square(xs, out=xs) @ self._rm_t)  # frame energy on each reference's points
        shared = mf @ self._m_t
        both = shared[:, :n_refs]  # shared points, used only to reject empty overlaps
        norm_r = np.sqrt(shared[:, n_refs:])  # reference energy on the frame's points
        cosine = num / np.maximum(norm_x * norm_r, 1e-30)
        cosine[both < 8] = -1.0
        return cosine.max(1)

    def out_of_library(self, similarity: np.ndarray) -> np.ndarray:
        return np.asarray(similarity) < self.threshold

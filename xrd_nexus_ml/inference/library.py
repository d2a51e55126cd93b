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

from xrd_nexus_ml.transitions.models import CompressionAlignment, PreparedFrames

DEFAULT_THRESHOLD = 0.82


class LibraryGate:
    """Best aligned cosine similarity of a frame to a set of reference patterns."""

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

    def similarity(self, prepared: PreparedFrames) -> np.ndarray:
        """(n,) best cosine similarity over the points both the frame and a reference measured;
        NaN for flagged frames."""
        out = np.full(len(prepared), np.nan)
        ok = np.flatnonzero(prepared.ok)
        if not len(ok):
            return out
        x, mask = prepared.x[ok], prepared.mask[ok]
        if self.alignment is not None:
            x, mask, _ = self.alignment.apply(x, mask)
        x = np.where(mask, x, 0.0).astype(np.float32)
        m = mask.astype(np.float32)
        r, rm = self.references, self.reference_mask.astype(np.float32)
        both = m @ rm.T  # (n, R) shared points, used only to reject empty overlaps
        num = x @ (r * 1.0).T  # r is zero off its mask, x off its own
        norm_x = np.sqrt((x**2) @ rm.T)  # frame energy on each reference's points
        norm_r = np.sqrt(m @ (r**2).T)  # reference energy on the frame's points
        cosine = num / np.maximum(norm_x * norm_r, 1e-30)
        cosine[both < 8] = -1.0
        out[ok] = cosine.max(1)
        return out

    def out_of_library(self, similarity: np.ndarray) -> np.ndarray:
        return np.asarray(similarity) < self.threshold

"""Stick patterns of a batch: peak positions (q) and integrated intensities, padded to M peaks.

Positions are kept in q = 2π/d (Å^-1), which does not depend on the wavelength; 2θ is derived
for whatever wavelength the pattern is rendered at. Padding peaks have intensity 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class PeakList:
    """B stick patterns of M peaks each. `hkl` is one representative reflection per peak.

    `orbit_rotations` (B, R, 3, 3), when set, says that each row stands for the whole orbit
    {hkl·R} of its pattern's rotations (tiled so every distinct reflection appears equally often)
    and its intensity is the orbit's sum: orientation-dependent effects average over the rows.
    None: each row is one reflection (or Friedel pair, or merged peak).
    """

    q: torch.Tensor  # (B, M) Å^-1
    intensity: torch.Tensor  # (B, M), 0 for padding
    hkl: torch.Tensor  # (B, M, 3) long
    reciprocal_lattice: torch.Tensor  # (B, 3, 3) rows a*, b*, c* (no 2π), for orientation-dependent effects
    orbit_rotations: torch.Tensor | None = None  # (B, R, 3, 3) long

    def __len__(self) -> int:
        return int(self.q.shape[0])

    @property
    def d_spacing(self) -> torch.Tensor:
        return 2.0 * math.pi / self.q.clamp_min(1e-12)

    def two_theta(self, wavelength: float) -> torch.Tensor:
        """2θ in degrees at `wavelength` Å; NaN for peaks the wavelength cannot reach."""
        s = self.q * wavelength / (4.0 * math.pi)
        s = torch.where(s <= 1.0, s, torch.full_like(s, float("nan")))
        return torch.rad2deg(2.0 * torch.asin(s))

    def replace(self, **changes) -> PeakList:
        return replace(self, **changes)

    def concatenate(self, other: PeakList) -> PeakList:
        """Peaks of both lists per pattern (e.g. a main phase and an impurity); lists of single
        reflections or merged peaks only (an orbit's rotations belong to its own list)."""
        if self.orbit_rotations is not None or other.orbit_rotations is not None:
            raise ValueError("concatenate merged peak lists, not per-orbit reflections")
        return replace(
            self,
            q=torch.cat([self.q, other.q], dim=1),
            intensity=torch.cat([self.intensity, other.intensity], dim=1),
            hkl=torch.cat([self.hkl, other.hkl], dim=1),
        )

    def merged(self, tolerance: float = 1e-5) -> PeakList:
        """Sum reflections at the same q (symmetry equivalents) into one peak each and drop padding.

        Cubic structures have up to 48 equivalent reflections per peak, so merging before
        rendering cuts the profile work by that factor. `tolerance` is relative in q.
        """
        live_q = torch.where(self.intensity > 0, self.q, torch.full_like(self.q, float("inf")))
        q, order = torch.sort(live_q, dim=1, stable=True)  # stable: the representative hkl is reproducible
        intensity = torch.gather(self.intensity, 1, order)
        hkl = torch.gather(self.hkl, 1, order.unsqueeze(-1).expand(-1, -1, 3))
        finite = torch.isfinite(q)
        gap = torch.ones_like(finite)
        gap[:, 1:] = (q[:, 1:] - q[:, :-1]) > tolerance * q[:, 1:].abs().nan_to_num(posinf=1.0)
        starts = gap & finite
        group = torch.cumsum(starts.long(), dim=1) - 1  # index of the merged peak, per row
        n_groups = int(starts.sum(1).max().item()) if finite.any() else 0
        n_groups = max(n_groups, 1)
        group = torch.where(finite, group, torch.full_like(group, n_groups))  # padding -> spill column
        merged_i = torch.zeros(q.shape[0], n_groups + 1, dtype=intensity.dtype, device=q.device)
        merged_i.scatter_add_(1, group, torch.where(finite, intensity, torch.zeros_like(intensity)))
        first = torch.zeros(q.shape[0], n_groups + 1, dtype=torch.long, device=q.device)
        idx = torch.arange(q.shape[1], device=q.device).expand_as(group)
        # the first reflection of each group gives the position and the representative hkl
        first.scatter_reduce_(1, group, idx, reduce="amin", include_self=False)
        first = first[:, :n_groups].clamp_max(q.shape[1] - 1)
        merged_q = torch.gather(q, 1, first)
        valid = merged_i[:, :n_groups] > 0
        return replace(
            self,
            q=torch.where(valid, merged_q, torch.zeros_like(merged_q)),
            intensity=torch.where(valid, merged_i[:, :n_groups], torch.zeros_like(merged_q)),
            hkl=torch.gather(hkl, 1, first.unsqueeze(-1).expand(-1, -1, 3)) * valid.unsqueeze(-1),
            orbit_rotations=None,
        )

    def without_weak(self, relative: float = 1e-6) -> PeakList:
        """Zero peaks weaker than `relative` × the strongest of their pattern (numerical extinctions)."""
        peak_max = self.intensity.amax(1, keepdim=True)
        keep = self.intensity > relative * peak_max
        return replace(self, intensity=torch.where(keep, self.intensity, torch.zeros_like(self.intensity)))

    def normalised(self) -> PeakList:
        """Strongest peak of each pattern = 1."""
        peak_max = self.intensity.amax(1, keepdim=True).clamp_min(1e-30)
        return replace(self, intensity=self.intensity / peak_max)

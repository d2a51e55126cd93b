"""Cosine-margin metric-learning heads and the hierarchical expert built from them.

Background:

* CosFace (Wang et al. 2018, "CosFace: Large Margin Cosine Loss for Deep Face Recognition"):
  classes are unit prototypes; logits are s * cos(theta_j), and in training the target's cosine
  is lowered by a margin m, which forces compact classes with angular gaps between them.
* AdaCos (Zhang et al. 2019, "AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning
  Deep Face Representations"): no margin, and the scale s is set from the data: initially
  sqrt(2) * log(C - 1), then at each training batch s = log(B_avg) / cos(min(pi/4, theta_med)),
  with B_avg the batch mean of sum_{j != y} exp(s cos_j) and theta_med the median target angle.
* Adachi, "Mixture-of-Experts Ensemble with Hierarchical Deep Metric Learning for Spectroscopic
  Identification": a "hierarchical expert" stacks two metric heads on one embedding, AdaCos for
  the coarse level (e.g. a structure family) and CosFace for the fine level (the phase); the
  fine cosine to the class prototypes doubles as an open-set (distance-to-prototype) signal.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: Scale used where AdaCos's formula degenerates (C <= 2: log(C - 1) <= 0 would give s <= 0).
FIXED_SCALE_FEW_CLASSES = 10.0
#: Lower bound on the adapted AdaCos scale: log(B_avg) can turn negative when every non-target
#: cosine is strongly negative, and a non-positive scale would stop all learning.
MIN_ADACOS_SCALE = 1.0


class _CosineHead(nn.Module):
    """Unit-norm class prototypes; forward gives the cosine of each embedding to each class."""

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        if in_dim < 1 or n_classes < 1:
            raise ValueError(f"a cosine head needs in_dim >= 1 and n_classes >= 1, got {in_dim}, {n_classes}")
        self.n_classes = n_classes
        self.weight = nn.Parameter(torch.empty(n_classes, in_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, n_classes) of the embeddings to the class prototypes."""
        return F.linear(F.normalize(embedding, dim=-1), F.normalize(self.weight, dim=-1)).clamp(-1.0, 1.0)


class AdaCosHead(_CosineHead):
    """AdaCos head (Zhang et al. 2019): cosine logits with a data-driven, margin-free scale.

    The scale is a buffer (saved in the state_dict), adapted only in training mode when a target
    is given. With fewer than three classes the formula degenerates (log(C - 1) <= 0), so the
    scale stays fixed at `FIXED_SCALE_FEW_CLASSES`; with one class the loss is zero anyway."""

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__(in_dim, n_classes)
        self.adaptive = n_classes >= 3
        s0 = math.sqrt(2.0) * math.log(n_classes - 1) if self.adaptive else FIXED_SCALE_FEW_CLASSES
        self.register_buffer("scale", torch.tensor(float(s0)))

    @torch.no_grad()
    def _adapt(self, cosine: torch.Tensor, target: torch.Tensor) -> None:
        onehot = F.one_hot(target, self.n_classes).bool()
        b_avg = torch.where(onehot, torch.zeros_like(cosine), torch.exp(self.scale * cosine)).sum(dim=1).mean()
        theta = torch.acos(cosine[onehot].clamp(-1 + 1e-7, 1 - 1e-7))
        theta_med = torch.clamp(theta.median(), max=math.pi / 4)  # lower median for an even batch
        s = torch.log(b_avg) / torch.cos(theta_med)
        self.scale.copy_(torch.clamp(s, min=MIN_ADACOS_SCALE))

    def logits(self, cosine: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``s * cosine``; in training with a target, s is first re-estimated from this batch."""
        if self.training and target is not None and self.adaptive and cosine.shape[0] > 0:
            self._adapt(cosine.detach(), target)
        return self.scale * cosine


class CosFaceHead(_CosineHead):
    """CosFace head (Wang et al. 2018): fixed scale, additive cosine margin on the target class."""

    def __init__(self, in_dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.35) -> None:
        super().__init__(in_dim, n_classes)
        if scale <= 0 or margin < 0:
            raise ValueError(f"CosFace needs scale > 0 and margin >= 0, got {scale}, {margin}")
        self.scale = float(scale)
        self.margin = float(margin)

    def logits(self, cosine: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``scale * (cos - margin * onehot(target))``; without a target (inference) no margin."""
        if target is None:
            return self.scale * cosine
        return self.scale * (cosine - self.margin * F.one_hot(target, self.n_classes).to(cosine.dtype))


class ExpertOutput(NamedTuple):
    """What a hierarchical expert computes for a batch."""

    embedding: torch.Tensor  # (B, D), unit norm
    coarse_cosine: torch.Tensor  # (B, n_coarse)
    fine_cosine: torch.Tensor  # (B, n_fine)


class HierarchicalExpert(nn.Module):
    """Encoder -> linear+BN -> unit embedding, with an AdaCos coarse head and a CosFace fine head.

    `encoder` maps its input to pooled features (B, feature_dim). Both heads read the same
    embedding, so the coarse level shapes the embedding space the fine prototypes live in."""

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        embedding_dim: int,
        n_coarse: int,
        n_fine: int,
        fine_scale: float = 30.0,
        fine_margin: float = 0.35,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.project = nn.Linear(feature_dim, embedding_dim, bias=False)
        self.norm = nn.BatchNorm1d(embedding_dim)
        self.coarse = AdaCosHead(embedding_dim, n_coarse)
        self.fine = CosFaceHead(embedding_dim, n_fine, fine_scale, fine_margin)

    @property
    def n_fine(self) -> int:
        """Number of fine classes."""
        return self.fine.n_classes

    @property
    def n_coarse(self) -> int:
        """Number of coarse classes."""
        return self.coarse.n_classes

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm embedding (B, embedding_dim).

        A training batch of one row cannot give batch statistics, so it is normalised with the
        running statistics instead (an expert may receive a single routed row)."""
        z = self.project(self.encoder(x))
        n = self.norm
        if self.training and z.shape[0] == 1 and n.track_running_stats:
            z = F.batch_norm(z, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
        else:
            z = n(z)
        return F.normalize(z, dim=-1)

    def forward(self, x: torch.Tensor) -> ExpertOutput:
        """Embedding and the coarse and fine cosines of a batch."""
        e = self.embed(x)
        return ExpertOutput(e, self.coarse(e), self.fine(e))

    def loss(self, out: ExpertOutput, coarse_target: torch.Tensor, fine_target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the AdaCos coarse logits plus that of the CosFace (margin) fine logits."""
        coarse = F.cross_entropy(self.coarse.logits(out.coarse_cosine, coarse_target), coarse_target)
        fine = F.cross_entropy(self.fine.logits(out.fine_cosine, fine_target), fine_target)
        return coarse + fine

    def fine_log_probs(self, out: ExpertOutput, temperature: float = 1.0) -> torch.Tensor:
        """log_softmax(fine_scale * cos / temperature) over the fine classes, without margin."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        return F.log_softmax(self.fine.scale * out.fine_cosine / temperature, dim=-1)

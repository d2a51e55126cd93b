"""A sparsely gated mixture of hierarchical metric-learning experts over a shared 1D-RegNet trunk.

Background:

* Sparsely gated mixture of experts (Shazeer et al. 2017, "Outrageously Large Neural Networks:
  The Sparsely-Gated Mixture-of-Experts Layer"): a gate computes H(x) = x W_g + N(0, 1) *
  softplus(x W_noise) (noise in training only), keeps the top k entries and softmaxes them
  (eq. 3-5); only the k chosen experts run. Balance is encouraged by the squared coefficient of
  variation of the experts' importance (summed gate weights) and of their load, the latter
  through a smooth estimate P(x, i) = Phi((x W_g)_i - kth_excluding(H(x), k, i)) /
  softplus((x W_noise)_i)) of the chance that expert i is picked (eq. 8-10).
* Adachi, "Mixture-of-Experts Ensemble with Hierarchical Deep Metric Learning for Spectroscopic
  Identification": one hierarchical expert (AdaCos coarse + CosFace fine heads on a 1D-RegNet
  embedding) per chemical element, each trained on the samples of its own classes (teacher
  routing), combined by a gate; the fine cosines to the class prototypes give an open-set
  signal. Here the first RegNet stages form a trunk shared by the gate and all experts, and each
  expert is only the last stages, which keeps the whole model cheap at inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xrd_nexus_ml.models.metric import CosFaceHead, HierarchicalExpert
from xrd_nexus_ml.models.regnet1d import RegNet1D, RegNetConfig

#: Floor added to the noise standard deviation (keeps the load estimator's division finite).
NOISE_EPSILON = 1e-2


def default_trunk_config() -> RegNetConfig:
    """Shared trunk: stem k7/s4 with 8 position channels (L 4096 -> 1024), then three one-block
    stages to L/32 at 48 channels (about 3.5 M multiply-adds per pattern of 4096 points)."""
    return RegNetConfig(
        stem_width=16, widths=(24, 32, 48), depths=(1, 1, 1), group_width=8, position_channels=8
    )


def default_expert_config() -> RegNetConfig:
    """Expert tail: one more stage (to L/64, 64 channels) on the trunk's 48-channel map, about
    1 M multiply-adds per pattern; ~17 k parameters per expert with its heads."""
    return RegNetConfig(stem_width=48, widths=(64,), depths=(1,), group_width=8)


def _cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation (population variance / mean^2); 0 for a single value."""
    x = x.float()
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var(unbiased=False) / (x.mean() ** 2 + 1e-10)


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


@dataclass
class GateOutput:
    """Result of the noisy top-k gate for a batch.

    `indices` holds k expert ids per row; where fewer than k experts are allowed, the surplus
    slots point at disallowed experts and carry zero weight (`selected` is False there)."""

    weights: torch.Tensor  # (B, E), zero outside the kept experts, rows sum to 1
    indices: torch.Tensor  # (B, k)
    logits: torch.Tensor  # (B, E) clean logits x W_g (no noise, no masking)
    load_balancing_loss: torch.Tensor  # scalar
    selected: torch.Tensor  # (B, E) bool, the experts that really run for each row


class NoisyTopKGate(nn.Module):
    """Noisy top-k gate of Shazeer et al. 2017 (eq. 3-5) with their load-balancing loss.

    Both weight matrices start at zero, as in the paper, so the experts start evenly used."""

    def __init__(self, in_dim: int, n_experts: int, k: int = 2, noise: bool = True) -> None:
        super().__init__()
        if in_dim < 1 or n_experts < 1:
            raise ValueError(f"gate needs in_dim >= 1 and n_experts >= 1, got {in_dim}, {n_experts}")
        if not 1 <= k <= n_experts:
            raise ValueError(f"gate needs 1 <= k <= n_experts ({n_experts}), got k={k}")
        self.n_experts = n_experts
        self.k = k
        self.noise = noise
        self.w_gate = nn.Parameter(torch.zeros(in_dim, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_dim, n_experts))

    def _allowed_rows(self, allowed: torch.Tensor, batch: int) -> torch.Tensor:
        allowed = allowed.to(torch.bool)
        if allowed.shape == (self.n_experts,):
            allowed = allowed.unsqueeze(0).expand(batch, -1)
        if allowed.shape != (batch, self.n_experts):
            raise ValueError(
                f"allowed must be ({self.n_experts},) or ({batch}, {self.n_experts}), got {tuple(allowed.shape)}"
            )
        empty = (~allowed.any(dim=1)).nonzero().flatten()
        if empty.numel():
            raise ValueError(f"no expert is allowed for batch rows {empty.tolist()[:10]}")
        return allowed

    def forward(self, features: torch.Tensor, allowed: torch.Tensor | None = None) -> GateOutput:
        """Sparse gate weights for features (B, in_dim); `allowed` (E,) or (B, E) bool restricts the choice."""
        clean = features @ self.w_gate
        batch = clean.shape[0]
        allowed_rows = None if allowed is None else self._allowed_rows(allowed.to(clean.device), batch)
        noisy = self.training and self.noise
        if noisy:
            std = F.softplus(features @ self.w_noise) + NOISE_EPSILON
            h = clean + torch.randn_like(clean) * std
        else:
            h = clean
        if allowed_rows is not None:
            h = h.masked_fill(~allowed_rows, float("-inf"))
        k = self.k
        smooth_load = noisy and k < self.n_experts
        top_vals, top_idx = h.topk(k + 1 if smooth_load else k, dim=1)
        vals, idx = top_vals[:, :k], top_idx[:, :k]
        weights = torch.zeros_like(clean).scatter(1, idx, torch.softmax(vals, dim=1))
        selected = torch.zeros_like(clean, dtype=torch.bool).scatter(1, idx, torch.isfinite(vals))

        importance = weights.sum(dim=0)
        if smooth_load:
            in_top = torch.zeros_like(selected).scatter(1, idx, True)
            thresh = torch.where(in_top, top_vals[:, k : k + 1], top_vals[:, k - 1 : k])
            finite = torch.isfinite(thresh)
            # -inf threshold (fewer than k + 1 allowed experts): picked for sure; avoid inf * 0 grads.
            z = (clean - torch.where(finite, thresh, torch.zeros_like(thresh))) / std
            prob = torch.where(finite, _normal_cdf(z), torch.ones_like(z))
            if allowed_rows is not None:
                prob = prob.masked_fill(~allowed_rows, 0.0)
            load = prob.sum(dim=0)
        else:
            load = selected.sum(dim=0).to(clean.dtype)
        balance = _cv_squared(importance) + _cv_squared(load)
        return GateOutput(weights, idx, clean, balance, selected)


class PrototypeRouter(nn.Module):
    """A gate that routes through the classes: an embedding of its own, cosines to one prototype
    per class (CosFace, as the experts' fine heads), and each expert scored by its best class.

    Which elements a pattern holds is nearly as hard to tell from the pattern as the phase
    itself when chemically similar elements share a structure type (a learned multi-label
    element gate reached 40 % routing recall on element-substituted libraries); a class
    ranking's top few, and with them the experts that hold those classes, are easier to get
    right than its first place."""

    def __init__(self, encoder: nn.Module, feature_dim: int, embedding_dim: int, n_classes: int,
                 scale: float = 30.0, margin: float = 0.35) -> None:
        super().__init__()
        self.encoder = encoder
        self.project = nn.Linear(feature_dim, embedding_dim, bias=False)
        self.norm = nn.BatchNorm1d(embedding_dim)
        self.head = CosFaceHead(embedding_dim, n_classes, scale, margin)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Cosines (B, n_classes) of the trunk map's embedding to the class prototypes."""
        return self.head(F.normalize(self.norm(self.project(self.encoder(feats))), dim=-1))

    def loss(self, cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head.logits(cosine, target), target)


@dataclass
class MoEOutput:
    """Combined prediction of the mixture for a batch."""

    probs: torch.Tensor  # (B, n_classes), rows sum to 1 (all zeros where nothing contributed)
    similarity: torch.Tensor  # (B, n_classes), max fine cosine over the run experts holding it, else -1
    gate: GateOutput
    experts_run: torch.Tensor  # (E,) long, rows each expert processed


class MixtureOfExperts(nn.Module):
    """Shared trunk, noisy top-k gate, and hierarchical experts that run only on their routed rows.

    `trunk` maps (B, 2, L) to a feature map (B, trunk_width, L'); the gate reads the map
    average-pooled into `gate_bins` equal position bins (1: the global average), and every
    expert's encoder continues from the map. Several bins let the linear gate see where along
    the pattern the trunk's features are (peak positions identify phases); with the global
    average alone it only sees which local shapes occur. `expert_classes[e]` lists the
    global class ids of expert e's fine classes in the expert's order; a class may belong to
    several experts (e.g. a compound under each of its elements). `expert_coarse`, if given,
    holds the coarse id of each of those classes and enables `routing_targets`."""

    def __init__(
        self,
        trunk: nn.Module,
        trunk_width: int,
        experts: Sequence[HierarchicalExpert],
        expert_classes: Sequence[Sequence[int]],
        n_classes: int,
        k: int = 2,
        gate_noise: bool = True,
        *,
        expert_coarse: Sequence[Sequence[int]] | None = None,
        gate_bins: int = 1,
        gate_hidden: int = 0,
        router: PrototypeRouter | None = None,
    ) -> None:
        super().__init__()
        n_experts = len(experts)
        if n_experts < 1:
            raise ValueError("a mixture needs at least one expert")
        if len(expert_classes) != n_experts:
            raise ValueError(f"expert_classes has {len(expert_classes)} entries for {n_experts} experts")
        if n_classes < 1:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        if gate_bins < 1:
            raise ValueError(f"gate_bins must be positive, got {gate_bins}")
        if expert_coarse is not None and len(expert_coarse) != n_experts:
            raise ValueError(f"expert_coarse has {len(expert_coarse)} entries for {n_experts} experts")
        self.trunk = trunk
        self.trunk_width = trunk_width
        self.experts = nn.ModuleList(experts)
        self.n_classes = n_classes
        self.gate_bins = gate_bins
        # gate_hidden > 0: one hidden layer before the gate (which elements a pattern holds is not
        # a linear function of the pooled trunk features; a linear gate routed the default model's
        # patterns to an expert holding their class only 43 % of the time)
        self.gate_hidden = (nn.Sequential(nn.Linear(trunk_width * gate_bins, gate_hidden), nn.ReLU())
                            if gate_hidden else nn.Identity())
        # with a router the gate only holds k and the allowed-expert check (its weights are unused)
        self.gate = NoisyTopKGate(gate_hidden or trunk_width * gate_bins, n_experts, k, gate_noise)

        counts = [len(c) for c in expert_classes]
        width = max(counts)
        table = torch.full((n_experts, width), -1, dtype=torch.long)
        to_local = torch.full((n_experts, n_classes), -1, dtype=torch.long)
        coarse = torch.full((n_experts, width), -1, dtype=torch.long)
        for e, (expert, cls) in enumerate(zip(experts, expert_classes)):
            ids = [int(c) for c in cls]
            if len(ids) != expert.n_fine:
                raise ValueError(
                    f"expert {e} has {expert.n_fine} fine classes but expert_classes[{e}] lists {len(ids)}"
                )
            if len(set(ids)) != len(ids) or any(not 0 <= c < n_classes for c in ids):
                raise ValueError(f"expert_classes[{e}] must list distinct class ids in [0, {n_classes}), got {ids}")
            table[e, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            to_local[e, ids] = torch.arange(len(ids))
            if expert_coarse is not None:
                co = [int(c) for c in expert_coarse[e]]
                if len(co) != len(ids) or any(not 0 <= c < expert.n_coarse for c in co):
                    raise ValueError(
                        f"expert_coarse[{e}] must give one coarse id in [0, {expert.n_coarse}) per fine class, got {co}"
                    )
                coarse[e, : len(co)] = torch.tensor(co, dtype=torch.long)
        self._counts = counts
        # router: route by class prototypes (`PrototypeRouter`) instead of the noisy top-k gate
        self.router = router
        held = (to_local >= 0).nonzero()  # (pairs, 2): expert, class
        self.register_buffer("pair_expert", held[:, 0].contiguous(), persistent=False)
        self.register_buffer("pair_class", held[:, 1].contiguous(), persistent=False)
        self.has_coarse_map = expert_coarse is not None
        self.register_buffer("expert_class_table", table)  # (E, max n_fine), -1 padded
        self.register_buffer("class_to_local", to_local)  # (E, n_classes), -1 where not held
        self.register_buffer("expert_coarse_table", coarse)  # (E, max n_fine), -1 padded / unknown

    @property
    def n_experts(self) -> int:
        """Number of experts."""
        return len(self.experts)

    def expert_classes(self, e: int) -> torch.Tensor:
        """Global class ids of expert e's fine classes, in its order."""
        return self.expert_class_table[e, : self._counts[e]]

    def experts_for_classes(self, allowed_classes: torch.Tensor) -> torch.Tensor:
        """(E,) bool: experts holding at least one of the allowed classes; pass it as
        `allowed_experts` to route only to experts that can answer."""
        allowed_classes = self._check_classes(allowed_classes)
        return ((self.class_to_local >= 0) & allowed_classes.unsqueeze(0)).any(dim=1)

    def routing_targets(self, fine_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(coarse_targets (B, E), expert_targets (B, E)) for global class ids, as `training_loss`
        wants them; needs the model built with `expert_coarse`."""
        if not self.has_coarse_map:
            raise ValueError("this mixture was built without expert_coarse; pass coarse targets explicitly")
        local = self.class_to_local[:, fine_targets].t()  # (B, E)
        held = local >= 0
        experts = torch.arange(self.n_experts, device=local.device).unsqueeze(0)
        coarse = self.expert_coarse_table[experts, local.clamp_min(0)]
        return torch.where(held, coarse, torch.full_like(coarse, -1)), held

    def _check_classes(self, allowed_classes: torch.Tensor) -> torch.Tensor:
        if allowed_classes.shape != (self.n_classes,):
            raise ValueError(f"allowed_classes must have shape ({self.n_classes},), got {tuple(allowed_classes.shape)}")
        return allowed_classes.to(device=self.class_to_local.device, dtype=torch.bool)

    def gate_input(self, feats: torch.Tensor) -> torch.Tensor:
        """Gate features from the trunk map (B, trunk_width, L'): `gate_bins` position-bin averages
        (B, trunk_width * gate_bins), through the hidden layer when there is one."""
        if self.gate_bins == 1:
            return self.gate_hidden(feats.mean(dim=-1))
        return self.gate_hidden(F.adaptive_avg_pool1d(feats, self.gate_bins).flatten(1))

    def _route(self, feats: torch.Tensor, allowed: torch.Tensor | None) -> tuple[GateOutput, torch.Tensor | None]:
        """(gate output, router cosines or None) for a trunk map: the noisy top-k gate, or with a
        router each expert's score is the router's best cosine among the classes it holds."""
        if self.router is None:
            return self.gate(self.gate_input(feats), allowed), None
        cosine = self.router(feats)
        batch = cosine.shape[0]
        scores = cosine.new_full((batch, self.n_experts), -2.0).scatter_reduce(
            1, self.pair_expert.expand(batch, -1), cosine[:, self.pair_class], "amax", include_self=True)
        if allowed is not None:
            scores = scores.masked_fill(~self.gate._allowed_rows(allowed.to(scores.device), batch), float("-inf"))
        vals, idx = scores.topk(self.gate.k, dim=1)
        scale = self.router.head.scale
        weights = torch.zeros_like(scores).scatter(1, idx, torch.softmax(vals * scale, dim=1))
        selected = torch.zeros_like(scores, dtype=torch.bool).scatter(1, idx, torch.isfinite(vals))
        return GateOutput(weights, idx, scores, scores.new_zeros(()), selected), cosine

    @staticmethod
    def _routes(mask: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """(expert, row indices) for every expert with at least one True row in mask (B, E)."""
        counts = mask.sum(dim=0).tolist()
        rows = mask.t().nonzero()[:, 1]  # sorted by expert, then row
        out, start = [], 0
        for e, n in enumerate(counts):
            if n:
                out.append((e, rows[start : start + n]))
                start += n
        return out

    def forward(
        self,
        x: torch.Tensor,
        allowed_experts: torch.Tensor | None = None,
        allowed_classes: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> MoEOutput:
        """Class probabilities of a batch (B, 2, L), running each selected expert on its rows only.

        probs = sum over a row's selected experts of gate weight * softmax(fine_scale * cos / T)
        placed at the global class ids, then renormalised per row. Classes outside
        `allowed_classes` get zero probability and similarity -1; an expert with no allowed
        class is not run and contributes nothing, so the renormalisation hands its gate weight
        to the row's other experts (a row left with nothing keeps all-zero probs)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        feats = self.trunk(x)
        gate, _ = self._route(feats, allowed_experts)
        batch = feats.shape[0]
        probs = feats.new_zeros(batch, self.n_classes)
        similarity = feats.new_full((batch, self.n_classes), -1.0)
        experts_run = torch.zeros(self.n_experts, dtype=torch.long)
        allowed = None if allowed_classes is None else self._check_classes(allowed_classes)
        for e, rows in self._routes(gate.selected):
            cls = self.expert_classes(e)
            ok = None
            if allowed is not None:
                ok = allowed[cls]
                if not bool(ok.any()):
                    continue
            expert = self.experts[e]
            out = expert(feats.index_select(0, rows))
            experts_run[e] = rows.numel()
            cos = out.fine_cosine
            logits = cos * (expert.fine.scale / temperature)
            if ok is not None:
                logits = logits.masked_fill(~ok, float("-inf"))
                cos = cos.masked_fill(~ok, -1.0)
            p = torch.softmax(logits, dim=-1) * gate.weights[rows, e].unsqueeze(1)
            r = rows.unsqueeze(1).expand(-1, cls.numel())
            c = cls.unsqueeze(0).expand(rows.numel(), -1)
            probs.index_put_((r, c), p, accumulate=True)
            similarity[r, c] = torch.maximum(similarity[r, c], cos)
        total = probs.sum(dim=1, keepdim=True)
        probs = torch.where(total > 0, probs / total.clamp_min(torch.finfo(probs.dtype).tiny), probs)
        return MoEOutput(probs, similarity, gate, experts_run)

    def training_loss(
        self,
        x: torch.Tensor,
        fine_targets: torch.Tensor,
        coarse_targets: torch.Tensor,
        expert_targets: torch.Tensor,
        balance_weight: float = 0.01,
        *,
        parts: str = "joint",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher-routed training loss: each expert learns from the rows of its own classes.

        parts="joint": mean over experts with rows of HierarchicalExpert.loss + BCE(gate clean
        logits, expert_targets) + balance_weight * load-balancing loss of the noisy gate.
        parts="experts": the experts' term alone (trunk and experts learn; the gate is not run,
        but a router, which has an encoder of its own, learns beside them from the trunk's
        features taken as they are, so the experts' stage is not a wasted stage for it).
        parts="gate": the gate's terms alone, on trunk features taken as they are (no gradient
        reaches the trunk), so a gate trained after the experts cannot undo what they learned.
        The last two are the stages of the expert-first recipe (`training.moe_recipe`)."""
        if parts not in ("joint", "experts", "gate"):
            raise ValueError(f"parts must be 'joint', 'experts' or 'gate', got {parts!r}")
        batch = x.shape[0]
        shape = (batch, self.n_experts)
        if fine_targets.shape != (batch,) or coarse_targets.shape != shape or expert_targets.shape != shape:
            raise ValueError(
                f"targets must be fine ({batch},), coarse and expert {shape}; got {tuple(fine_targets.shape)}, "
                f"{tuple(coarse_targets.shape)}, {tuple(expert_targets.shape)}"
            )
        expert_targets = expert_targets.to(torch.bool)
        if parts == "gate":
            with torch.no_grad():
                feats = self.trunk(x)
        else:
            feats = self.trunk(x)
        zero = feats.sum() * 0.0
        expert_loss = zero
        if parts != "gate":
            losses = []
            for e, rows in self._routes(expert_targets):
                expert = self.experts[e]
                local = self.class_to_local[e, fine_targets[rows]]
                coarse = coarse_targets[rows, e]
                if bool((local < 0).any()):
                    raise ValueError(
                        f"expert_targets routes rows to expert {e} whose classes do not include their target")
                if bool((coarse < 0).any() | (coarse >= expert.n_coarse).any()):
                    raise ValueError(f"coarse_targets for expert {e} must lie in [0, {expert.n_coarse}) on its rows")
                losses.append(expert.loss(expert(feats.index_select(0, rows)), coarse, local))
            expert_loss = torch.stack(losses).mean() if losses else zero
        gate_bce = balance = zero
        if self.router is not None:  # the router learns the classes themselves
            routed = feats.detach() if parts == "experts" else feats
            gate_bce = self.router.loss(self.router(routed), fine_targets)
        elif parts != "experts":
            gate = self.gate(self.gate_input(feats))
            gate_bce = F.binary_cross_entropy_with_logits(gate.logits, expert_targets.to(gate.logits.dtype))
            balance = gate.load_balancing_loss
        total = expert_loss + gate_bce + balance_weight * balance
        out = {"expert": expert_loss.detach(), "gate_bce": gate_bce.detach(), "balance": balance.detach()}
        return total, out


class BinnedEncoder(nn.Module):
    """A RegNet tail whose feature map is summarised per position bin instead of globally.

    Global average pooling keeps what a peak looks like but hardly where it is, and in
    diffraction the positions identify the phase (LiF and MnO are both rock salt; their
    lattices differ by 10 %). Here a 1x1 convolution narrows the map to `channels`, it is
    averaged over `bins` equal slices of the pattern, and the slices are concatenated:
    `out_width` = channels × bins features that say what lies where."""

    def __init__(self, body: RegNet1D, channels: int, bins: int) -> None:
        super().__init__()
        if channels < 1 or bins < 1:
            raise ValueError(f"channels and bins must be positive, got {channels}, {bins}")
        self.body = body
        self.narrow = nn.Sequential(nn.Conv1d(body.out_width, channels, 1, bias=False), nn.BatchNorm1d(channels),
                                    nn.ReLU(inplace=True))
        self.bins = bins
        self.out_width = channels * bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool1d(self.narrow(self.body.features(x)), self.bins).flatten(1)


def build_moe(
    expert_classes: Sequence[Sequence[int]],
    expert_coarse: Sequence[Sequence[int]],
    n_classes: int,
    trunk_config: RegNetConfig | None = None,
    expert_config: RegNetConfig | None = None,
    embedding_dim: int = 64,
    k: int = 2,
    *,
    gate_bins: int = 8,
    gate_hidden: int = 0,
    expert_bins: int = 1,
    expert_bin_channels: int = 8,
    router: bool = False,
) -> MixtureOfExperts:
    """A mixture with a RegNet1D trunk and one RegNet1D-tail hierarchical expert per entry of
    `expert_classes`; expert e has max(expert_coarse[e]) + 1 coarse classes. None configs mean
    the tuned defaults; `gate_bins` as in `MixtureOfExperts` (8 here: a linear gate on the global
    average alone learned the routing of even a toy problem poorly). `expert_bins` > 1 gives every
    expert a `BinnedEncoder` (position bins of `expert_bin_channels` channels) instead of global
    average pooling. `router` routes through class prototypes (`PrototypeRouter`, on an encoder
    of its own built like an expert's) instead of the noisy top-k gate; gate_hidden is then 0.
    (A noisy top-k gate reading such an encoder of its own did no better than the bins: 40 %
    routing recall on 100 substituted classes.)"""
    trunk_config = trunk_config or default_trunk_config()
    expert_config = expert_config or default_expert_config()
    if len(expert_coarse) != len(expert_classes):
        raise ValueError(f"expert_coarse has {len(expert_coarse)} entries for {len(expert_classes)} experts")
    trunk = RegNet1D(trunk_config, pool=False)
    experts = []
    for e, (cls, co) in enumerate(zip(expert_classes, expert_coarse)):
        if len(cls) == 0 or len(co) != len(cls):
            raise ValueError(f"expert {e} needs at least one class and one coarse id per class")
        encoder = RegNet1D(expert_config, with_stem=False, in_width=trunk.out_width)
        if expert_bins > 1:
            encoder = BinnedEncoder(encoder, expert_bin_channels, expert_bins)
        n_coarse = max(int(c) for c in co) + 1
        experts.append(HierarchicalExpert(encoder, encoder.out_width, embedding_dim, n_coarse, len(cls)))
    route = None
    if router:
        encoder = RegNet1D(expert_config, with_stem=False, in_width=trunk.out_width)
        encoder = BinnedEncoder(encoder, expert_bin_channels, expert_bins) if expert_bins > 1 else encoder
        route = PrototypeRouter(encoder, encoder.out_width, embedding_dim, n_classes)
        gate_hidden = 0
    return MixtureOfExperts(
        trunk, trunk.out_width, experts, expert_classes, n_classes, k, expert_coarse=expert_coarse, gate_bins=gate_bins,
        gate_hidden=gate_hidden, router=route,
    )


class FlatClassifier(nn.Module):
    """Baseline: one RegNet1D encoder and a linear softmax layer over all classes."""

    def __init__(self, config: RegNetConfig, n_classes: int) -> None:
        super().__init__()
        self.encoder = RegNet1D(config)
        self.head = nn.Linear(self.encoder.out_width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes) of a batch (B, 2, L)."""
        return self.head(self.encoder(x))

"""How identification accuracy scales with the number of classes: flat vs hierarchical vs MoE.

    xrd-nexus-ml evaluate scaling [--sizes 100,1000,10000] [--steps N] [--batch-size B] [--device cuda]

A real reference library has a few hundred compositions at most, too few to see how the
models behave at 10^3-10^5 classes. `substituted_library` makes a library of that size from
pymatgen's 288 AFLOW prototypes by element substitution: every element of a prototype is
replaced by a chemically similar one (same family of the periodic table, see `FAMILIES`), so
the structure type is kept, the cell is rescaled by the change of atomic radii, and every
phase is a composition no earlier phase had (one phase per class).

`evaluate_scaling` then trains three models on the same stream of augmented patterns with the
same optimiser, schedule and step budget, and measures top-1/top-5 on fresh draws of every
class (their own stream seed, never trained on):

* flat: one RegNet1D and a softmax layer over all classes (`FlatClassifier`), cross-entropy;
* hierarchical: one `HierarchicalExpert` over all classes (AdaCos coarse head on the structure
  type, CosFace fine head on the composition);
* moe: the mixture of element experts of `build_moe` on `PhaseLibrary.experts()`, trained with
  its teacher-routed `training_loss` as in `training/identify.py`.

The two single models use the encoder of one routed path through the mixture (the trunk's
stages followed by an expert's stage, with the experts' position-binned summary), so the three
differ in their heads and routing, not in depth or in what the encoder may see.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pymatgen.core import Composition, Element, Structure
from torch import nn

from training.loop import gradient_step, warmup_cosine
from training.moe_recipe import make_recipe
from xrd_nexus_ml.device import cpu_name, resolve_device
from xrd_nexus_ml.identification.library import (
    LibraryError,
    PhaseLibrary,
    ReferencePhase,
    canonical_formula,
)
from xrd_nexus_ml.identification.stream import PeakCache, ReferenceStream, identification_pipeline
from xrd_nexus_ml.models import (
    BinnedEncoder,
    FlatClassifier,
    HierarchicalExpert,
    RegNet1D,
    RegNetConfig,
    build_moe,
    default_expert_config,
    default_trunk_config,
)
from xrd_nexus_ml.physics import PowderSimulator
from xrd_nexus_ml.references import aflow_prototypes

# -- a large library by element substitution ----------------------------------------------------

#: Substitution families: an element is only ever replaced by a member of its own family, so a
#: cation stays a cation of similar valence and an anion an anion (a rock-salt oxide stays a
#: rock-salt oxide or chalcogenide). Families follow the groups of the periodic table, with the
#: transition metals split into early (groups 3-6) and late (7-12) and the lanthanides joined by
#: Th and U. Only common, stable elements are used; all have X-ray form factors in pymatgen's
#: table (`physics.form_factors`). H maps only onto itself (a hydride stays a hydride).
FAMILIES: dict[str, tuple[str, ...]] = {
    "hydrogen": ("H",),
    "alkali": ("Li", "Na", "K", "Rb", "Cs"),
    "alkaline_earth": ("Be", "Mg", "Ca", "Sr", "Ba"),
    "early_transition": ("Sc", "Ti", "V", "Cr", "Y", "Zr", "Nb", "Mo", "Hf", "Ta", "W"),
    "late_transition": ("Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ru", "Rh", "Pd", "Ag", "Cd", "Re", "Os", "Ir",
                        "Pt", "Au", "Hg"),
    "rare_earth": ("La", "Ce", "Pr", "Nd", "Sm", "Gd", "Dy", "Ho", "Er", "Yb", "Lu", "Th", "U"),
    "triel": ("B", "Al", "Ga", "In", "Tl"),
    "tetrel": ("C", "Si", "Ge", "Sn", "Pb"),
    "pnictogen": ("N", "P", "As", "Sb", "Bi"),
    "chalcogen": ("O", "S", "Se", "Te"),
    "halogen": ("F", "Cl", "Br", "I"),
}

#: Every element a substituted library may contain.
SUBSTITUTION_POOL: tuple[str, ...] = tuple(sorted({e for members in FAMILIES.values() for e in members}))

_FAMILY_OF = {e: name for name, members in FAMILIES.items() for e in members}

#: Draws per prototype and round before the prototype counts as exhausted (every draw gave a
#: composition the library already had).
_TRIES = 24


def substitution_family(symbol: str) -> str:
    """The family (key of FAMILIES) whose members may replace `symbol`.

    Prototype elements outside the pool (Po, Np, Pu, Pa, Cf, noble gases) join the family of
    their lanthanide/actinide block or of the nearest pool element of their group."""
    if symbol in _FAMILY_OF:
        return _FAMILY_OF[symbol]
    el = Element(symbol)
    if el.is_lanthanoid or el.is_actinoid:
        return "rare_earth"
    same_group = [Element(e) for e in SUBSTITUTION_POOL if Element(e).group == el.group]
    if not same_group:
        raise LibraryError(f"no substitution family for {symbol} (group {el.group})")
    return _FAMILY_OF[min(same_group, key=lambda e: (abs(e.row - el.row), e.Z)).symbol]


def _radius(symbol: str) -> float | None:
    r = Element(symbol).atomic_radius
    return None if r is None else float(r)


@dataclass
class _Prototype:
    """One AFLOW prototype, prepared once: its elements by family, sites per element, space group."""

    label: str
    structure: Structure
    families: dict[str, list[str]]  # family -> the prototype's elements in it, sorted
    site_counts: dict[str, int]
    composition: dict[str, float]
    space_group: tuple[int, str] | None = None


def _prepare(label: str, structure: Structure) -> _Prototype | None:
    """The prototype ready for substitution; None for one that cannot be substituted."""
    s = structure.copy()
    if any(getattr(sp, "oxi_state", None) for site in s for sp in site.species):
        s.remove_oxidation_states()
    if not s.is_ordered:  # a partial occupancy would make compositions collide unpredictably
        return None
    counts: dict[str, int] = {}
    for site in s:
        symbol = str(site.specie)
        counts[symbol] = counts.get(symbol, 0) + 1
    families: dict[str, list[str]] = {}
    for symbol in sorted(counts):
        families.setdefault(substitution_family(symbol), []).append(symbol)
    if any(len(members) > len(FAMILIES[f]) for f, members in families.items()):
        return None
    composition = {str(k): float(v) for k, v in s.composition.element_composition.items()}
    return _Prototype(label, s, families, counts, composition)


def _draw_mapping(proto: _Prototype, rng: np.random.Generator) -> dict[str, str]:
    """old -> new element, one distinct new element per old one (an injective map keeps the
    symmetry: no two sites that differed become alike). The original element may be drawn."""
    mapping: dict[str, str] = {}
    for family, olds in proto.families.items():
        pool = FAMILIES[family]
        picks = rng.choice(len(pool), size=len(olds), replace=False)
        for old, i in zip(olds, picks):
            mapping[old] = pool[int(i)]
    return mapping


def _substitute(proto: _Prototype, mapping: dict[str, str], scale_volume: bool) -> Structure:
    """The prototype with `mapping` applied, its cell scaled isotropically by the site-summed
    change of atomic radius (cubed for the volume) so neighbours stay roughly in contact."""
    s = proto.structure.copy()
    s.replace_species({Element(old): Element(new) for old, new in mapping.items()})
    if scale_volume:
        old_r = new_r = 0.0
        for old, n in proto.site_counts.items():
            r_old, r_new = _radius(old), _radius(mapping[old])
            if r_old is None or r_new is None:  # no radius known: that site counts as unchanged
                r_old = r_new = 1.0
            old_r += n * r_old
            new_r += n * r_new
        if old_r > 0 and new_r > 0:
            s.scale_lattice(s.volume * (new_r / old_r) ** 3)
    return s


def substituted_library(n_classes: int, seed: int = 0, scale_volume: bool = True) -> PhaseLibrary:
    """`n_classes` phases of distinct compositions, by element substitution on the AFLOW prototypes.

    Prototypes are visited round-robin (a new seeded order each round), so structure types stay
    balanced; each visit draws substitutions (see FAMILIES) until one gives a composition
    (`canonical_formula`) that no phase has yet. Phase names are 'sub:<AFLOW label>:<formula>',
    sources 'aflow:<label>' (the structure type, used as coarse label by `evaluate_scaling`).
    The space group is the prototype's (an injective substitution keeps it), found once per
    prototype, which keeps 10^4 phases to seconds. Deterministic for a seed, and a smaller
    library is a prefix of a larger one with the same seed. LibraryError when the prototypes run
    out of new compositions before `n_classes`.
    """
    if n_classes < 1:
        raise LibraryError(f"n_classes must be positive, got {n_classes}")
    rng = np.random.default_rng(seed)
    protos = [p for p in (_prepare(label, s) for label, s in aflow_prototypes()) if p is not None]
    seen: set[str] = set()
    phases: list[ReferencePhase] = []
    live = list(range(len(protos)))
    while len(phases) < n_classes and live:
        exhausted = []
        for i in rng.permutation(live):
            if len(phases) >= n_classes:
                break
            proto = protos[int(i)]
            for _ in range(_TRIES):
                mapping = _draw_mapping(proto, rng)
                composition = Composition({mapping[e]: a for e, a in proto.composition.items()})
                formula = canonical_formula(composition)
                if formula not in seen:
                    break
            else:
                exhausted.append(int(i))
                continue
            seen.add(formula)
            structure = _substitute(proto, mapping, scale_volume)
            if proto.space_group is None:
                ref = ReferencePhase.from_structure(proto.label, proto.structure, f"aflow:{proto.label}")
                proto.space_group = (ref.space_group_number, ref.space_group_symbol)
            elements = tuple(sorted(set(mapping.values())))
            phases.append(ReferencePhase(name=f"sub:{proto.label}:{formula}", formula=formula,
                                         space_group_number=proto.space_group[0],
                                         space_group_symbol=proto.space_group[1], elements=elements,
                                         source=f"aflow:{proto.label}", structure=structure))
        gone = set(exhausted)
        live = [i for i in live if i not in gone]
    if len(phases) < n_classes:
        raise LibraryError(f"the AFLOW prototypes gave only {len(phases)} distinct compositions by substitution "
                           f"(asked for {n_classes})")
    return PhaseLibrary(phases)


def structure_types(library: PhaseLibrary) -> tuple[np.ndarray, list[str]]:
    """(coarse id of each class, coarse names): the structure type (phase source) of each class.

    In a substituted library every class is its own composition and nearly every chemical system
    holds one class, so the chemical system would repeat the fine label; the structure type is
    the level above it that a pattern's peak sequence does tell."""
    classes = library.classes
    by_class = {p.formula: p.source for p in library.phases}  # one phase per class here
    names = sorted(set(by_class.values()))
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[by_class[c]] for c in classes], dtype=np.int64), names


# -- the three models ---------------------------------------------------------------------------


@dataclass
class ScalingModels:
    """Architecture of the three models (defaults: those of `training/identify.py`'s BuildConfig)."""

    trunk: Any = None  # RegNetConfig; None: default_trunk_config()
    expert: Any = None  # RegNetConfig; None: default_expert_config()
    embedding_dim: int = 64
    k: int = 2
    gate_bins: int = 8
    expert_bins: int = 16
    expert_bin_channels: int = 8
    gate_hidden: int = 256  # as the shipped recipe (training/identify.py BuildConfig)
    inference_k: int = 4  # experts run per pattern at test time, as the shipped models
    router: bool = True  # route through class prototypes (`models.moe.PrototypeRouter`); False: element gate

    def resolved(self) -> ScalingModels:
        return replace(self, trunk=self.trunk or default_trunk_config(), expert=self.expert or default_expert_config())

    def single_encoder(self):
        """RegNet config of one routed path: the trunk's stem and stages, then the expert's stages."""
        t, e = self.trunk, self.expert
        return RegNetConfig(in_channels=t.in_channels, stem_width=t.stem_width, stem_kernel=t.stem_kernel,
                            stem_stride=t.stem_stride, widths=t.widths + e.widths, depths=t.depths + e.depths,
                            group_width=t.group_width, bottleneck_ratio=t.bottleneck_ratio, se_ratio=t.se_ratio,
                            kernel_size=t.kernel_size, position_channels=t.position_channels)

    def to_dict(self) -> dict[str, Any]:
        return {"trunk": self.trunk.to_dict(), "expert": self.expert.to_dict(), "embedding_dim": self.embedding_dim,
                "k": self.k, "gate_bins": self.gate_bins, "gate_hidden": self.gate_hidden,
                "inference_k": self.inference_k, "router": self.router,
                "expert_bins": self.expert_bins,
                "expert_bin_channels": self.expert_bin_channels}


def _encoder(models: ScalingModels) -> nn.Module:
    """The single models' encoder: one routed path, pooled like the experts (position bins)."""
    body = RegNet1D(models.single_encoder())
    return BinnedEncoder(body, models.expert_bin_channels, models.expert_bins) if models.expert_bins > 1 else body


class _Arm:
    """One model under test: how it is built, trained on a batch and asked for class scores."""

    name = ""

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def start(self, steps: int, lr: float, weight_decay: float) -> None:
        """Optimizer and schedule for `steps` (the mixtures replace this with their recipe)."""
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=lr, weight_decay=weight_decay)
        self.schedule = warmup_cosine(self.optimizer, steps)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.network.train()
        loss = self.loss(x, y)
        gradient_step(loss, self.network, self.optimizer, self.schedule, max_norm=5.0)
        return loss.detach()

    def training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])

    def to(self, device) -> None:
        self.network.to(device)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_classes) scores whose order ranks the classes."""
        raise NotImplementedError


class _Flat(_Arm):
    name = "flat"

    def __init__(self, models: ScalingModels, n_classes: int) -> None:
        network = FlatClassifier(models.single_encoder(), n_classes)
        network.encoder = _encoder(models)  # same encoder and summary as the hierarchical expert
        network.head = nn.Linear(network.encoder.out_width, n_classes)
        super().__init__(network)

    def loss(self, x, y):
        return F.cross_entropy(self.network(x), y)

    def scores(self, x):
        return self.network(x)


class _Hierarchical(_Arm):
    name = "hierarchical"

    def __init__(self, models: ScalingModels, n_classes: int, coarse: np.ndarray) -> None:
        encoder = _encoder(models)
        super().__init__(HierarchicalExpert(encoder, encoder.out_width, models.embedding_dim,
                                            int(coarse.max()) + 1, n_classes))
        self.coarse_of_class = torch.as_tensor(coarse, dtype=torch.long)

    def to(self, device) -> None:
        self.network.to(device)
        self.coarse_of_class = self.coarse_of_class.to(device)

    def loss(self, x, y):
        return self.network.loss(self.network(x), self.coarse_of_class[y], y)

    def scores(self, x):
        return self.network(x).fine_cosine


class _MoE(_Arm):
    """The mixture of element experts, trained by one of `training.moe_recipe`'s recipes."""

    def __init__(self, models: ScalingModels, library: PhaseLibrary, recipe: str) -> None:
        plan = library.experts()
        self.n_experts = len(plan.elements)
        self.recipe_name = recipe
        self.name = "moe" if recipe == "joint" else f"moe_{recipe}"
        self.inference_k = min(models.inference_k, self.n_experts)
        super().__init__(build_moe(plan.expert_classes, plan.expert_coarse, len(library.classes), models.trunk,
                                   models.expert, models.embedding_dim, min(models.k, len(plan.elements)),
                                   gate_bins=models.gate_bins, gate_hidden=models.gate_hidden,
                                   expert_bins=models.expert_bins, expert_bin_channels=models.expert_bin_channels,
                                   router=models.router))
        self.training_k = self.network.gate.k

    def start(self, steps, lr, weight_decay):
        self.recipe = make_recipe(self.recipe_name, self.network, steps, lr=lr, weight_decay=weight_decay)

    def step(self, x, y):
        self.network.gate.k = self.training_k
        return self.recipe.step(x, y)

    def training_state(self):
        return self.recipe.state_dict()

    def load_training_state(self, state):
        self.recipe.load_state_dict(state)

    def scores(self, x):
        self.network.gate.k = self.inference_k
        return self.network(x).probs

    def routed(self, x: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(routing hit (B,) bool: a selected expert holds the true class, top-1 (B,) with perfect
        routing: only the experts holding the true class may run). The two split the mixture's
        error into the gate's and the experts'."""
        self.network.gate.k = self.inference_k
        _, held = self.network.routing_targets(truth)
        hit = (self.network(x).gate.selected & held).any(dim=1)
        oracle = self.network(x, allowed_experts=held).probs.argmax(dim=1)
        return hit, oracle == truth


# -- the measurement ----------------------------------------------------------------------------

#: The arms `evaluate_size` can train: flat and hierarchical single models, and the mixture
#: trained jointly or experts first (`training.moe_recipe`).
ARMS = ("flat", "hierarchical", "moe", "moe_expert_first")


@dataclass
class _Tally:
    """Running top-1/top-5 hits and forward time of one model on the test draws."""

    top1: int = 0
    top5: int = 0
    n: int = 0
    seconds: float = 0.0
    routing_hits: int = 0
    oracle_top1: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _hardware(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on, for the README."""
    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def budget_steps(n_classes: int, batch_size: int, steps: int | None = None,
                 patterns_per_class: int | None = None) -> int:
    """Training steps of one model: `steps`, or enough batches to show each class
    `patterns_per_class` times on average (at 10^4 classes, 100 per class is 10^6 patterns)."""
    if (steps is None) == (patterns_per_class is None):
        raise ValueError("give either steps or patterns_per_class")
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be positive, got {steps}")
        return int(steps)
    if patterns_per_class < 1:
        raise ValueError(f"patterns_per_class must be positive, got {patterns_per_class}")
    return max(1, math.ceil(patterns_per_class * n_classes / batch_size))


def _build_arms(names: Sequence[str], models: ScalingModels, library: PhaseLibrary, coarse: np.ndarray,
                seed: int) -> list[_Arm]:
    unknown = sorted(set(names) - set(ARMS))
    if unknown or not names:
        raise ValueError(f"unknown or no models {unknown}; expected some of {list(ARMS)}")
    n_classes = len(library.classes)
    builders = {"flat": lambda: _Flat(models, n_classes),
                "hierarchical": lambda: _Hierarchical(models, n_classes, coarse),
                "moe": lambda: _MoE(models, library, "joint"),
                "moe_expert_first": lambda: _MoE(models, library, "expert_first")}
    arms = []
    for name in ARMS:  # a fixed order, whatever the order asked
        if name in names:
            torch.manual_seed(seed)  # each model's initialisation is seeded
            arms.append(builders[name]())
    return arms


def _checkpoint_file(checkpoint_dir, library: PhaseLibrary, steps: int, batch_size: int, seed: int,
                     names: Sequence[str], models: ScalingModels) -> Path:
    """One file per library, budget, seed, arms and architecture: a call resumes only its own run."""
    architecture = hashlib.sha256(json.dumps(models.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    key = f"{library.content_hash()[:12]}-{steps}x{batch_size}-s{seed}-{'+'.join(names)}-{architecture}"
    return Path(checkpoint_dir) / f"scaling-{len(library.classes)}-{key}.pt"


def evaluate_size(library: PhaseLibrary, steps: int | None = None, batch_size: int = 64, seed: int = 0,
                  device: str = "cpu", test_patterns: int = 2048, models: ScalingModels | None = None,
                  lr: float = 3e-3, weight_decay: float = 1e-4, impurity_pool_size: int = 512,
                  eval_batch_size: int = 128, *, patterns_per_class: int | None = None,
                  arms: Sequence[str] = ARMS, checkpoint_dir=None, checkpoint_every: int = 200,
                  stop_after: float | None = None, progress: bool = False) -> dict[str, Any]:
    """Train the `arms` on the same augmented stream of `library`; test them on fresh draws.

    Every training batch is drawn once and given to every model in turn (same patterns, same
    order). The single models train with AdamW + warm-up/cosine and gradient clipping at 5, the
    mixtures with their recipe (`training.moe_recipe`) at the same learning rate, so all arms get
    the same budget: `budget_steps(steps, patterns_per_class)` batches of `batch_size`.
    `train_seconds` is a model's own forward/backward/step time; drawing the patterns, shared, is
    reported once as `simulation_seconds`. The test covers every phase (= class in a substituted
    library) equally often, at least once (`test_patterns` rounded up to a multiple of the phase
    count), from a stream of its own seed. For the mixtures the test also reports
    `routing_recall` (a selected expert holds the true class) and `top1_perfect_routing`.
    The impurity pool (second phases in half the patterns) is a seeded subset of at most
    `impurity_pool_size` references: the whole library's padded peaks would not fit in memory
    at 10^4 classes and more.

    checkpoint_dir: models, recipes and step are saved there every `checkpoint_every` steps and
    a call with the same library and budget resumes from them. stop_after: seconds of training
    in this call after which training stops (at a checkpoint, when there is a directory) and the
    models are tested as they are: the result says `"complete": false`, with the steps done and
    the patterns per class actually seen; a later call resumes."""
    models = (models or ScalingModels()).resolved()
    dev = resolve_device(device)
    started = time.perf_counter()
    simulator = PowderSimulator(device="cpu")
    builder = simulator if dev.type == "cpu" else PowderSimulator(device=dev)  # peaks once, where it is fastest
    cache = PeakCache.build([p.structure for p in library.phases], builder, chunk=32 if dev.type == "cpu" else 512)
    cache_seconds = time.perf_counter() - started
    phase_class = library.phase_classes
    n_classes = len(library.classes)
    total_steps = budget_steps(n_classes, batch_size, steps if patterns_per_class is None else None,
                               patterns_per_class)
    coarse, coarse_names = structure_types(library)
    rng = np.random.default_rng(seed + 31)
    pool_refs = np.sort(rng.choice(len(cache), size=min(impurity_pool_size, len(cache)), replace=False))
    pool = cache.peaks(pool_refs.tolist()) if len(cache) > 1 else None

    chosen = _build_arms(arms, models, library, coarse, seed)
    names = [a.name for a in chosen]
    for arm in chosen:
        arm.to(dev)
        arm.start(total_steps, lr, weight_decay)
    train_seconds = [0.0] * len(chosen)
    losses: list[list[float]] = [[] for _ in chosen]
    done, simulation_seconds = 0, 0.0
    ckpt = None if checkpoint_dir is None else _checkpoint_file(checkpoint_dir, library, total_steps, batch_size,
                                                                 seed, names, models)
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        for i, arm in enumerate(chosen):
            arm.network.load_state_dict(state["networks"][i])
            arm.load_training_state(state["training"][i])
        done, simulation_seconds = int(state["done"]), float(state["simulation_seconds"])
        train_seconds = [float(t) for t in state["train_seconds"]]
        losses = [list(map(float, loss)) for loss in state["losses"]]

    def save() -> None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"done": done, "simulation_seconds": simulation_seconds, "train_seconds": train_seconds,
                    "losses": [torch.tensor(loss) for loss in losses],
                    "networks": [a.network.state_dict() for a in chosen],
                    "training": [a.training_state() for a in chosen]}, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)

    resumed_from = done
    # a resumed run continues a stream seeded by where it resumed, so it never replays a batch
    stream = ReferenceStream(cache, simulator, np.arange(len(cache)), batch_size, seed * 1_000_003 + 1 + done,
                             identification_pipeline(pool))
    call_started = time.perf_counter()
    while done < total_steps:
        t0 = time.perf_counter()
        draw = stream.draw()
        x = draw.inputs.to(dev, non_blocking=True)
        y = torch.as_tensor(phase_class[draw.reference], dtype=torch.long, device=dev)
        simulation_seconds += time.perf_counter() - t0
        for i, arm in enumerate(chosen):
            t0 = time.perf_counter()
            loss = arm.step(x, y)
            _sync(dev)
            train_seconds[i] += time.perf_counter() - t0
            losses[i].append(float(loss))
        done += 1
        if progress and (done % 100 == 0 or done == total_steps):
            print(f"  {n_classes} classes: step {done}/{total_steps}", flush=True)
        out_of_time = stop_after is not None and time.perf_counter() - call_started > stop_after
        if ckpt is not None and (done % checkpoint_every == 0 or done == total_steps or out_of_time):
            save()
        if out_of_time:
            break
    complete = done >= total_steps

    n_test = len(cache) * max(1, math.ceil(test_patterns / len(cache)))
    refs = np.resize(rng.permutation(len(cache)), n_test)
    test_stream = ReferenceStream(cache, simulator, np.arange(len(cache)), eval_batch_size, seed + 104729,
                                  identification_pipeline(pool))
    tallies = [_Tally() for _ in chosen]
    k5 = min(5, n_classes)
    for arm in chosen:
        arm.network.eval()
    with torch.inference_mode():
        warm = test_stream.draw(refs[:min(8, n_test)]).inputs.to(dev)
        for arm in chosen:  # first calls pay for lazy set-up (folded batch norms, kernels)
            arm.scores(warm)
        for start in range(0, n_test, eval_batch_size):
            draw = test_stream.draw(refs[start:start + eval_batch_size])
            x = draw.inputs.to(dev)
            truth = torch.as_tensor(phase_class[draw.reference], dtype=torch.long, device=dev)
            for arm, tally in zip(chosen, tallies):
                _sync(dev)
                t0 = time.perf_counter()
                scores = arm.scores(x)
                _sync(dev)
                tally.seconds += time.perf_counter() - t0
                top = scores.topk(k5, dim=1).indices
                tally.top1 += int((top[:, 0] == truth).sum())
                tally.top5 += int((top == truth.unsqueeze(1)).any(dim=1).sum())
                tally.n += len(truth)
                if isinstance(arm, _MoE):
                    hit, oracle = arm.routed(x, truth)
                    tally.routing_hits += int(hit.sum())
                    tally.oracle_top1 += int(oracle.sum())

    results = []
    tail = max(1, total_steps // 10)
    for i, (arm, tally) in enumerate(zip(chosen, tallies)):
        row = {"n_classes": n_classes, "model": arm.name, "top1": tally.top1 / tally.n, "top5": tally.top5 / tally.n,
               "train_seconds": round(train_seconds[i], 2), "ms_per_pattern": 1000.0 * tally.seconds / tally.n,
               "n_parameters": int(sum(p.numel() for p in arm.network.parameters())),
               "final_loss": float(np.mean(losses[i][-tail:])) if losses[i] else None,
               "n_test_patterns": tally.n}
        if isinstance(arm, _MoE):
            row.update(n_experts=arm.n_experts, recipe=arm.recipe.to_dict(), inference_k=arm.inference_k,
                       routing_recall=tally.routing_hits / tally.n, top1_perfect_routing=tally.oracle_top1 / tally.n)
        if isinstance(arm, _Hierarchical):
            row["n_coarse"] = len(coarse_names)
        results.append(row)
    if ckpt is not None and complete:
        ckpt.unlink(missing_ok=True)
    return {"n_classes": n_classes, "complete": complete, "steps": total_steps, "steps_done": done,
            "resumed_from_step": resumed_from, "checkpoint": None if ckpt is None or complete else str(ckpt),
            "patterns_per_class": done * batch_size / n_classes, "results": results,
            "peak_cache_seconds": round(cache_seconds, 2), "simulation_seconds": round(simulation_seconds, 2),
            "n_structure_types": len(coarse_names), "models": models.to_dict()}


def evaluate_scaling(sizes: Sequence[int] = (100, 1000, 10000), steps: int | None = None, batch_size: int = 64,
                     seed: int = 0, device: str = "cpu", test_patterns: int = 2048,
                     models: ScalingModels | None = None, progress: bool = False, *,
                     patterns_per_class: int | None = None, arms: Sequence[str] = ARMS, checkpoint_dir=None,
                     stop_after: float | None = None) -> dict[str, Any]:
    """Top-1/top-5, training time, inference time and size of each arm for each number of classes
    in `sizes`, each on `substituted_library(size, seed)` with the same budget for every arm:
    `steps` batches, or `patterns_per_class` (default 100 when neither is given) patterns per
    class on average (see `evaluate_size`). With `stop_after` (seconds for the whole call) a size
    left unfinished is reported `"complete": false` and later sizes are not started."""
    if steps is None and patterns_per_class is None:
        patterns_per_class = 100
    dev = resolve_device(device)
    out: dict[str, Any] = {"device": str(dev), "hardware": _hardware(dev), "sizes": [int(s) for s in sizes],
                           "steps": steps, "patterns_per_class": patterns_per_class, "batch_size": int(batch_size),
                           "seed": int(seed), "test_patterns": int(test_patterns), "arms": list(arms),
                           "complete": True, "results": [], "libraries": []}
    call_started = time.perf_counter()
    for size in sizes:
        t0 = time.perf_counter()
        library = substituted_library(int(size), seed)
        library_seconds = time.perf_counter() - t0
        if progress:
            print(f"{size} classes: library in {library_seconds:.1f} s; training ...", flush=True)
        left = None if stop_after is None else max(0.0, stop_after - (time.perf_counter() - call_started))
        report = evaluate_size(library, steps, batch_size, seed, device, test_patterns, models,
                               patterns_per_class=patterns_per_class, arms=arms, checkpoint_dir=checkpoint_dir,
                               stop_after=left, progress=progress)
        out["results"].extend(report.pop("results"))
        out["models"] = report.pop("models")
        out["libraries"].append({**report, "library_seconds": round(library_seconds, 2)})
        if not report["complete"]:
            out["complete"] = False
            break
    return out


# -- command line -------------------------------------------------------------------------------


__all__ = [
    "ARMS",
    "FAMILIES",
    "SUBSTITUTION_POOL",
    "ScalingModels",
    "budget_steps",
    "evaluate_scaling",
    "evaluate_size",
    "structure_types",
    "substituted_library",
    "substitution_family",
]

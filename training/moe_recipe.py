"""Two ways to train the mixture of element experts, behind one `step(x, y)`.

* `JointRecipe`: trunk, experts and gate learn together from the first step
  (`MixtureOfExperts.training_loss(parts="joint")`): the gate chases experts that are still
  changing, and at 10^2-10^3 classes on a CPU budget it fell far behind a single model.
* `ExpertFirstRecipe`, the paper's order (Adachi): first every element expert learns from the
  patterns of its own classes only (teacher routing; trunk and experts, no gate), then the gate
  learns which experts hold a pattern's class (a multi-label element-presence problem on the
  trunk's features, trunk frozen in inference mode so the gate sees what it will see at
  inference), then an optional short joint fine-tune at a lower learning rate. Each stage has
  its own warm-up/cosine schedule. A class-prototype router (`models.moe.PrototypeRouter`)
  has an encoder of its own, so it also learns during the experts' stage, from the trunk's
  features without sending a gradient back into them.

Both keep the mixture's sparse execution: training runs each expert on its own rows only.
A recipe's state (optimizer, schedule, stage, step) goes into `state_dict`, so a long run can
stop and resume where it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from training.loop import gradient_step, warmup_cosine
from xrd_nexus_ml.models.moe import MixtureOfExperts


@dataclass(frozen=True)
class ExpertFirstStages:
    """Shares of the step budget: experts, then gate, then joint fine-tune (at `joint_lr_factor` × lr)."""

    experts: float = 0.7
    gate: float = 0.2
    joint: float = 0.1
    joint_lr_factor: float = 0.3

    def __post_init__(self):
        shares = (self.experts, self.gate, self.joint)
        if any(s < 0 for s in shares) or self.experts <= 0 or self.gate <= 0 or abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"stage shares must be non-negative, experts and gate positive, and sum to 1; got "
                             f"experts={self.experts}, gate={self.gate}, joint={self.joint}")

    def lengths(self, steps: int) -> list[tuple[str, int]]:
        """(stage, steps) in order; the joint stage takes the rounding remainder and may be empty."""
        experts = max(1, round(steps * self.experts))
        gate = max(1, min(steps - experts, round(steps * self.gate))) if steps > experts else 0
        return [(name, n) for name, n in (("experts", experts), ("gate", gate),
                                          ("joint", steps - experts - gate)) if n > 0]

    def to_dict(self) -> dict:
        return asdict(self)


class _Recipe:
    """One optimizer step per `step(x, y)`; `stage` names what the step trained."""

    name = ""

    def __init__(self, network: MixtureOfExperts, steps: int, lr: float = 3e-3, weight_decay: float = 1e-4,
                 max_norm: float = 5.0) -> None:
        if steps < 1:
            raise ValueError(f"a recipe needs at least one step, got {steps}")
        self.network, self.steps, self.lr, self.weight_decay, self.max_norm = network, steps, lr, weight_decay, max_norm
        self.done = 0

    def _update(self, loss: torch.Tensor, optimizer, schedule) -> None:
        gradient_step(loss, self.network, optimizer, schedule, self.max_norm)

    def _loss(self, x, y, parts):
        coarse, experts = self.network.routing_targets(y)
        return self.network.training_loss(x, y, coarse, experts, parts=parts)

    def to_dict(self) -> dict:
        return {"recipe": self.name, "steps": self.steps, "lr": self.lr, "weight_decay": self.weight_decay}


class JointRecipe(_Recipe):
    """Everything learns together from the first step (the first recipe this project used)."""

    name = "joint"
    stage = "joint"

    def __init__(self, network, steps, lr=3e-3, weight_decay=1e-4, max_norm=5.0):
        super().__init__(network, steps, lr, weight_decay, max_norm)
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
        self.schedule = warmup_cosine(self.optimizer, steps)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.network.train()
        loss, _ = self._loss(x, y, "joint")
        self._update(loss, self.optimizer, self.schedule)
        self.done += 1
        return loss.detach()

    def state_dict(self) -> dict:
        return {"done": self.done, "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.done = int(state["done"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])


class ExpertFirstRecipe(_Recipe):
    """Experts to convergence on their own classes, then the gate, then a short joint fine-tune."""

    name = "expert_first"

    def __init__(self, network, steps, lr=3e-3, weight_decay=1e-4, max_norm=5.0,
                 stages: ExpertFirstStages | None = None):
        super().__init__(network, steps, lr, weight_decay, max_norm)
        self.stages = stages or ExpertFirstStages()
        self.plan = self.stages.lengths(steps)
        self._open(0)

    def _parameters(self, stage: str):
        net = self.network
        if stage == "experts":  # a router (own encoder, detached trunk features) learns beside the experts
            router = [] if net.router is None else list(net.router.parameters())
            return [*net.trunk.parameters(), *net.experts.parameters(), *router]
        if stage == "gate":
            if net.router is not None:
                return list(net.router.parameters())
            return [*net.gate_hidden.parameters(), *net.gate.parameters()]
        return list(net.parameters())

    def _open(self, index: int) -> None:
        """Optimizer and schedule of stage `index` (each stage starts its own warm-up and decay)."""
        self.stage_index = index
        stage, length = self.plan[index]
        lr = self.lr * (self.stages.joint_lr_factor if stage == "joint" else 1.0)
        self.optimizer = torch.optim.AdamW(self._parameters(stage), lr=lr, weight_decay=self.weight_decay)
        self.schedule = warmup_cosine(self.optimizer, length)
        self.stage_start = sum(n for _, n in self.plan[:index])

    @property
    def stage(self) -> str:
        return self.plan[self.stage_index][0]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        stage, length = self.plan[self.stage_index]
        if self.done - self.stage_start >= length and self.stage_index + 1 < len(self.plan):
            self._open(self.stage_index + 1)
            stage = self.stage
        self.network.train()
        if stage == "gate":  # the gate learns on the features inference will give it
            self.network.trunk.eval()
        loss, _ = self._loss(x, y, stage)
        self._update(loss, self.optimizer, self.schedule)
        self.done += 1
        return loss.detach()

    def to_dict(self) -> dict:
        return {**super().to_dict(), "stages": self.stages.to_dict(), "plan": [list(p) for p in self.plan]}

    def state_dict(self) -> dict:
        return {"done": self.done, "stage_index": self.stage_index, "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._open(int(state["stage_index"]))
        self.done = int(state["done"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])


RECIPES = {"joint": JointRecipe, "expert_first": ExpertFirstRecipe}


def make_recipe(name: str, network: MixtureOfExperts, steps: int, **kwargs) -> _Recipe:
    """The recipe called `name` ('joint' or 'expert_first') for `network` over `steps`."""
    if name not in RECIPES:
        raise ValueError(f"unknown mixture recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name](network, steps, **kwargs)

"""The mixture's two training recipes and the class-prototype router, on a toy problem."""

from __future__ import annotations

import pytest
import torch

from training.moe_recipe import ExpertFirstRecipe, ExpertFirstStages, JointRecipe, make_recipe
from xrd_nexus_ml.models import RegNetConfig, build_moe

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TRUNK = RegNetConfig(stem_width=8, widths=(8, 12), depths=(1, 1), group_width=4, position_channels=6)
EXPERT = RegNetConfig(stem_width=12, widths=(16,), depths=(1,), group_width=4)
EXPERT_CLASSES = [[0, 1, 2], [2, 3], [3, 4, 5], [5, 0]]
EXPERT_COARSE = [[0, 0, 1], [0, 1], [0, 1, 1], [0, 1]]
CENTRES = torch.tensor([[0.12, 0.55], [0.22, 0.70], [0.32, 0.45], [0.40, 0.85], [0.62, 0.18], [0.77, 0.30]])


def _moe(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_moe(EXPERT_CLASSES, EXPERT_COARSE, 6, TRUNK, EXPERT, embedding_dim=16, k=2, gate_bins=8,
                     expert_bins=4, expert_bin_channels=4, **kwargs)


def _patterns(labels, length=192, seed=0):
    """Two jittered Gaussian peaks at class-specific positions, noise, and a full mask channel."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(length, dtype=torch.float32)
    c = CENTRES[labels] * length + torch.randn(labels.numel(), 2, generator=g)
    y = torch.exp(-0.5 * ((grid - c[:, :, None]) / 2.5) ** 2).sum(1) + 0.03 * torch.rand(labels.numel(), length,
                                                                                          generator=g)
    y = y / y.amax(dim=1, keepdim=True)
    return torch.stack([y, torch.ones_like(y)], dim=1)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if v.dtype.is_floating_point and not torch.equal(before[k], v)}


def test_stage_plan_covers_the_budget_in_order():
    assert ExpertFirstStages().lengths(100) == [("experts", 70), ("gate", 20), ("joint", 10)]
    assert ExpertFirstStages(0.6, 0.4, 0.0).lengths(10) == [("experts", 6), ("gate", 4)]
    assert sum(n for _, n in ExpertFirstStages().lengths(7)) == 7
    with pytest.raises(ValueError, match="sum to 1"):
        ExpertFirstStages(0.5, 0.2, 0.1)
    with pytest.raises(ValueError, match="unknown"):
        make_recipe("greedy", _moe(), 5)


@pytest.mark.parametrize("router", [False, True])
def test_each_stage_trains_only_its_own_part(router):
    """Experts stage: trunk and experts move, the element gate does not; gate stage: only the
    gate (or router) moves, the trunk's weights and its batch-norm statistics stay as they were."""
    net = _moe(router=router)
    recipe = ExpertFirstRecipe(net, steps=4, stages=ExpertFirstStages(0.5, 0.5, 0.0))
    gate = net.router if router else net.gate
    y = torch.tensor([0, 1, 2, 3, 4, 5] * 2)
    x = _patterns(y)
    trunk0, gate0, experts0 = _snapshot(net.trunk), _snapshot(gate), _snapshot(net.experts)
    for _ in range(2):
        recipe.step(x, y)
        assert recipe.stage == "experts"
    assert _changed(trunk0, net.trunk) and _changed(experts0, net.experts)
    assert bool(_changed(gate0, gate)) == router  # a router learns beside the experts; the element gate waits
    trunk1, experts1, gate1 = _snapshot(net.trunk), _snapshot(net.experts), _snapshot(gate)
    for _ in range(2):
        recipe.step(x, y)
        assert recipe.stage == "gate"
    assert _changed(gate1, gate)
    assert not _changed(trunk1, net.trunk) and not _changed(experts1, net.experts)


def test_recipe_state_round_trip_resumes_the_same_stage():
    net = _moe()
    recipe = ExpertFirstRecipe(net, steps=10)
    y = torch.arange(12) % 6
    x = _patterns(y)
    for _ in range(8):
        recipe.step(x, y)
    assert recipe.stage == "gate"
    other = ExpertFirstRecipe(net, steps=10)
    other.load_state_dict(recipe.state_dict())
    assert other.stage == "gate" and other.done == 8
    assert other.schedule.get_last_lr() == recipe.schedule.get_last_lr()


@pytest.mark.parametrize("name,router", [("joint", False), ("expert_first", False), ("expert_first", True)])
def test_recipes_learn_the_toy_problem(name, router):
    net = _moe(router=router)
    recipe = make_recipe(name, net, steps=90, lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(90):
        y = torch.randint(0, 6, (48,), generator=g)
        recipe.step(_patterns(y, seed=100 + step), y)
    net.eval()
    y_test = torch.arange(120) % 6
    with torch.no_grad():
        out = net(_patterns(y_test, seed=999))
    _, held = net.routing_targets(y_test)
    assert float((out.gate.selected & held).any(1).float().mean()) > 0.9  # routes to an expert holding the class
    assert float((out.probs.argmax(1) == y_test).float().mean()) > 0.8  # chance is 1/6


def test_router_scores_each_expert_by_its_best_class():
    net = _moe(router=True).eval()
    x = _patterns(torch.tensor([0, 3]))
    with torch.no_grad():
        feats = net.trunk(x)
        cosine = net.router(feats)
        gate, _ = net._route(feats, None)
    for e, classes in enumerate(EXPERT_CLASSES):
        assert torch.allclose(gate.logits[:, e], cosine[:, classes].amax(1))
    assert gate.selected.sum(1).tolist() == [2, 2] and torch.allclose(gate.weights.sum(1), torch.ones(2))
    only = torch.tensor([False, True, False, False])
    with torch.no_grad():
        out = net(x, allowed_experts=only)
    assert out.experts_run.tolist() == [0, 2, 0, 0]  # the router honours the allowed experts


def test_joint_recipe_trains_everything_at_once():
    net = _moe()
    recipe = JointRecipe(net, steps=2)
    before = _snapshot(net)
    y = torch.arange(12) % 6
    recipe.step(_patterns(y), y)
    changed = _changed(before, net)
    assert any(k.startswith("gate.") for k in changed) and any(k.startswith("trunk.") for k in changed)

"""The 1D-RegNet encoder, the AdaCos/CosFace heads, the noisy top-k gate and the sparse mixture of
hierarchical experts: shapes, exact head formulas, routing sparsity, probability bookkeeping,
learning on separable synthetic patterns, and state_dict round trips."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xrd_nexus_ml.models import (
    AdaCosHead,
    BinnedEncoder,
    CosFaceHead,
    FlatClassifier,
    HierarchicalExpert,
    MixtureOfExperts,
    NoisyTopKGate,
    RegNet1D,
    RegNetConfig,
    build_moe,
    default_expert_config,
    default_trunk_config,
)

TINY_TRUNK = RegNetConfig(stem_width=8, widths=(8, 12), depths=(1, 1), group_width=4, position_channels=6)
TINY_EXPERT = RegNetConfig(stem_width=12, widths=(16,), depths=(1,), group_width=4)
# 6 classes, 4 "element" experts; classes 0, 2, 3, 5 belong to two experts each.
EXPERT_CLASSES = [[0, 1, 2], [2, 3], [3, 4, 5], [5, 0]]
EXPERT_COARSE = [[0, 0, 1], [0, 1], [0, 1, 1], [0, 1]]
N_CLASSES = 6


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: one intra-op thread is fastest


def _tiny_moe(seed: int = 0, k: int = 2) -> MixtureOfExperts:
    torch.manual_seed(seed)
    return build_moe(
        EXPERT_CLASSES, EXPERT_COARSE, N_CLASSES, TINY_TRUNK, TINY_EXPERT, embedding_dim=16, k=k, gate_bins=8
    )


def _patterns(labels: torch.Tensor, length: int = 256, seed: int = 0) -> torch.Tensor:
    """(B, 2, L) synthetic patterns: two Gaussian peaks at class-specific positions, jittered,
    with random heights and noise; the measured range is cropped at random so the mask matters."""
    g = torch.Generator().manual_seed(seed)
    b = labels.numel()
    grid = torch.arange(length, dtype=torch.float32)
    centres = torch.tensor([[0.12, 0.55], [0.22, 0.70], [0.32, 0.45], [0.40, 0.85], [0.62, 0.18], [0.77, 0.30]])
    c = centres[labels] * length + torch.randn(b, 2, generator=g) * 1.0
    h = 0.5 + 0.5 * torch.rand(b, 2, generator=g)
    y = (h[:, :, None] * torch.exp(-0.5 * ((grid - c[:, :, None]) / 2.5) ** 2)).sum(1)
    y = y + 0.03 * torch.rand(b, length, generator=g)
    mask = torch.ones(b, length)
    cut = (torch.rand(b, generator=g) * 0.08 * length).long()
    for i in range(b):
        mask[i, length - cut[i] :] = 0
    y = (y / y.amax(dim=1, keepdim=True)) * mask
    return torch.stack([y, mask], dim=1)


# ---------------------------------------------------------------- RegNet1D


def _out_len(length: int, cfg: RegNetConfig, stem: bool = True) -> int:
    if stem:
        length = (length + 2 * (cfg.stem_kernel // 2) - cfg.stem_kernel) // cfg.stem_stride + 1
    for _ in cfg.widths:
        length = (length + 2 * (cfg.kernel_size // 2) - cfg.kernel_size) // 2 + 1
    return length


@pytest.mark.parametrize("length", [64, 100, 257, 4096])
def test_regnet_shapes_for_several_lengths(length):
    torch.manual_seed(0)
    trunk_cfg, expert_cfg = default_trunk_config(), default_expert_config()
    trunk = RegNet1D(trunk_cfg, pool=False).eval()
    tail = RegNet1D(expert_cfg, with_stem=False, in_width=trunk.out_width).eval()
    x = torch.rand(3, 2, length)
    with torch.no_grad():
        fmap = trunk(x)
        assert fmap.shape == (3, trunk.out_width, _out_len(length, trunk_cfg))
        assert tail.features(fmap).shape == (3, tail.out_width, _out_len(fmap.shape[-1], expert_cfg, stem=False))
        assert tail(fmap).shape == (3, tail.out_width)
        pooled = RegNet1D(trunk_cfg).eval()
        pooled.load_state_dict(trunk.state_dict())
        assert torch.allclose(pooled(x), fmap.mean(-1), atol=1e-6)


def test_regnet_eval_chunking_and_bn_folding_match_plain_conv_bn():
    """Eval mode folds BN into the convolutions, runs 1x1 convs as matmuls and large batches in
    chunks; none of it may change the numbers."""
    torch.manual_seed(1)
    net = RegNet1D(TINY_TRUNK)
    x = torch.rand(16, 2, 128)
    net.train()
    for _ in range(3):  # non-trivial running statistics
        net(x)
    net.eval()
    with torch.no_grad():
        fast = net(x)
        net.inference_chunk = 5  # 16 rows -> chunks 5, 5, 5, 1
        chunked = net(x)

    def reference(mod, inp, _):  # replaces the output by plain conv -> bn -> relu, no folding
        out = mod.bn(mod.conv(inp[0]))
        return torch.relu(out) if mod.relu else out

    hooks = [m.register_forward_hook(reference) for m in net.modules() if type(m).__name__ == "_ConvBN"]
    with torch.no_grad():
        plain = net(x)
    for h in hooks:
        h.remove()
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(chunked, plain, atol=1e-5)


def test_fold_cache_follows_parameter_updates():
    torch.manual_seed(2)
    net = RegNet1D(TINY_TRUNK).eval()
    x = torch.rand(2, 2, 96)
    with torch.no_grad():
        before = net(x)
        net.stem.conv.weight.mul_(2.0)  # in-place update: must invalidate the folded cache
        after = net(x)
    with torch.enable_grad():
        fresh = net(x)  # autograd path folds anew each call
    assert not torch.allclose(before, after)
    assert torch.allclose(after, fresh.detach(), atol=1e-6)


def test_regnet_config_round_trip_and_errors():
    cfg = RegNetConfig(stem_width=16, widths=(24, 48), depths=(1, 2), group_width=8, bottleneck_ratio=1.0, se_ratio=0.0)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert RegNetConfig.from_dict(d) == cfg
    assert RegNetConfig.from_dict(default_trunk_config().to_dict()) == default_trunk_config()
    with pytest.raises(ValueError, match="widthz"):
        RegNetConfig.from_dict({**d, "widthz": [1]})
    with pytest.raises(ValueError, match="same length"):
        RegNetConfig(stem_width=16, widths=(24, 48), depths=(1,), group_width=8)
    with pytest.raises(ValueError, match="group_width"):
        RegNetConfig(stem_width=16, widths=(24, 44), depths=(1, 1), group_width=8)
    with pytest.raises(ValueError, match="depths"):
        RegNetConfig(stem_width=16, widths=(24,), depths=(0,), group_width=8)
    with pytest.raises(ValueError, match="stem_stride"):
        RegNetConfig(stem_width=16, stem_stride=0, widths=(24,), depths=(1,), group_width=8)
    with pytest.raises(ValueError, match="odd"):
        RegNetConfig(stem_width=16, widths=(24,), depths=(1,), group_width=8, kernel_size=4)
    with pytest.raises(ValueError, match="in_width"):
        RegNet1D(cfg, with_stem=False)


# ---------------------------------------------------------------- metric heads


def test_adacos_scale_follows_the_adacos_update_and_is_saved():
    torch.manual_seed(0)
    head = AdaCosHead(8, 5)
    s0 = math.sqrt(2.0) * math.log(4)
    assert float(head.scale) == pytest.approx(s0)
    cos = torch.rand(7, 5) * 1.6 - 0.8
    target = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    # target angles mostly below pi/4, so the median (not the pi/4 cap) sets the scale
    cos[torch.arange(7), target] = torch.tensor([0.95, 0.9, 0.99, 0.8, 0.85, 0.97, 0.75])
    head.eval()
    assert torch.allclose(head.logits(cos, target), s0 * cos)  # no adaptation in eval
    head.train()
    out = head.logits(cos, target)
    c = cos.double().numpy()
    t = target.numpy()
    onehot = np.eye(5, dtype=bool)[t]
    b_avg = np.where(onehot, 0.0, np.exp(s0 * c)).sum(1).mean()
    theta_med = np.median(np.arccos(c[onehot]))  # 7 rows: the median is one of them
    assert theta_med < np.pi / 4
    expected = np.log(b_avg) / np.cos(min(np.pi / 4, theta_med))
    assert float(head.scale) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(out, head.scale * cos)
    head.logits(cos * 0.5, target)
    s2 = float(head.scale)
    assert s2 != pytest.approx(expected)
    state = head.state_dict()
    assert "scale" in state and float(state["scale"]) == s2  # the adapted scale, not the initial one
    other = AdaCosHead(8, 5)
    other.load_state_dict(state)
    assert float(other.scale) == s2


def test_adacos_with_few_classes_keeps_a_fixed_positive_scale():
    for n in (1, 2):
        head = AdaCosHead(4, n).train()
        cos = torch.rand(3, n)
        head.logits(cos, torch.zeros(3, dtype=torch.long))
        assert float(head.scale) == 10.0


def test_cosface_margin_lowers_exactly_the_target_logit():
    torch.manual_seed(0)
    head = CosFaceHead(8, 4, scale=30.0, margin=0.35)
    with torch.no_grad():
        cos = head(torch.randn(5, 8))
    assert cos.shape == (5, 4) and float(cos.abs().max()) <= 1.0
    target = torch.tensor([0, 3, 1, 1, 2])
    diff = head.logits(cos, target) - head.logits(cos)
    expected = -30.0 * 0.35 * F.one_hot(target, 4).float()
    assert torch.allclose(diff, expected, atol=1e-5)


def test_hierarchical_expert_outputs_loss_and_single_row_training():
    torch.manual_seed(0)
    enc = RegNet1D(TINY_TRUNK)
    ex = HierarchicalExpert(enc, enc.out_width, 16, n_coarse=3, n_fine=5)
    x = torch.rand(4, 2, 128)
    out = ex(x)
    assert out.embedding.shape == (4, 16)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(4), atol=1e-5)
    assert out.coarse_cosine.shape == (4, 3) and out.fine_cosine.shape == (4, 5)
    loss = ex.loss(out, torch.tensor([0, 1, 2, 0]), torch.tensor([4, 3, 2, 1]))
    loss.backward()
    assert torch.isfinite(loss) and enc.stem.conv.weight.grad is not None
    lp = ex.fine_log_probs(out, temperature=2.0)
    assert torch.allclose(lp.exp().sum(1), torch.ones(4), atol=1e-5)
    assert torch.allclose(lp, F.log_softmax(30.0 * out.fine_cosine / 2.0, dim=1))
    one = ex(x[:1])  # a single routed row in training mode must work
    assert torch.isfinite(ex.loss(one, torch.tensor([1]), torch.tensor([2])))


# ---------------------------------------------------------------- gate


def test_gate_selects_exactly_k_and_respects_allowed():
    torch.manual_seed(0)
    gate = NoisyTopKGate(10, 6, k=2)
    with torch.no_grad():
        gate.w_gate.normal_()
        gate.w_noise.normal_()
    feats = torch.randn(50, 10)
    allowed = torch.rand(50, 6) < 0.6
    allowed[:, 0] = True
    allowed[:5] = False
    allowed[:5, 4] = True  # rows 0-4: a single allowed expert
    for mode in (gate.train, gate.eval):
        mode()
        out = gate(feats)
        assert out.weights.shape == (50, 6) and out.indices.shape == (50, 2)
        assert torch.equal((out.weights > 0).sum(1), torch.full((50,), 2))
        assert torch.allclose(out.weights.sum(1), torch.ones(50))
        assert torch.equal(out.selected, out.weights > 0)
        assert torch.equal(out.logits, feats @ gate.w_gate)
        out = gate(feats, allowed)
        assert not (out.selected & ~allowed).any()
        assert not ((out.weights > 0) & ~allowed).any()
        assert torch.allclose(out.weights.sum(1), torch.ones(50))
        assert torch.equal(out.selected.sum(1), allowed.sum(1).clamp(max=2))
        assert torch.equal(out.weights[:5, 4], torch.ones(5))
        assert torch.isfinite(out.load_balancing_loss)
    mask = torch.tensor([False, True, False, False, True, False])
    out = gate(feats, mask)
    assert set(out.indices.flatten().tolist()) == {1, 4}
    bad = allowed.clone()
    bad[7] = False
    with pytest.raises(ValueError, match="7"):
        gate(feats, bad)


def test_gate_noise_only_in_training_and_balance_loss_has_finite_grads():
    torch.manual_seed(0)
    gate = NoisyTopKGate(4, 5, k=2)
    with torch.no_grad():
        gate.w_gate.normal_()
    feats = torch.randn(64, 4)
    gate.eval()
    assert torch.equal(gate(feats).indices, gate(feats).indices)
    gate.train()
    torch.manual_seed(1)
    a = gate(feats)
    b = gate(feats)
    assert not torch.equal(a.weights, b.weights)  # noisy logits differ between calls
    allowed = torch.ones(64, 5, dtype=torch.bool)
    allowed[:10, 2:] = False  # fewer than k + 1 allowed experts in some rows
    out = gate(feats, allowed)
    (out.load_balancing_loss + out.weights.sum()).backward()
    assert torch.isfinite(gate.w_gate.grad).all() and torch.isfinite(gate.w_noise.grad).all()
    assert gate.w_noise.grad.abs().sum() > 0  # the smooth load estimate reaches the noise weights


def test_gate_balance_loss_is_cv_squared_of_importance_and_load():
    gate = NoisyTopKGate(4, 4, k=2).eval()
    feats = torch.eye(4)
    with torch.no_grad():  # row i: equal logits for experts i and i + 1 -> perfectly balanced
        gate.w_gate.copy_(torch.eye(4) + torch.roll(torch.eye(4), 1, dims=1))
    with torch.no_grad():
        out = gate(feats)
    assert float(out.load_balancing_loss) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # every row: experts 0 and 1 -> importance (2, 2, 0, 0), load (4, 4, 0, 0)
        gate.w_gate.zero_()
        gate.w_gate[:, :2] = 1.0
        out = gate(feats)
    assert set(out.indices.flatten().tolist()) == {0, 1}
    assert float(out.load_balancing_loss) == pytest.approx(2.0, rel=1e-5)


# ---------------------------------------------------------------- mixture


def _count_calls(model: MixtureOfExperts):
    calls = [0] * model.n_experts
    rows = [0] * model.n_experts

    def hook(e):
        def f(mod, inp, out):
            calls[e] += 1
            rows[e] += inp[0].shape[0]

        return f

    handles = [ex.register_forward_hook(hook(e)) for e, ex in enumerate(model.experts)]
    return calls, rows, handles


def test_moe_runs_only_the_selected_experts_on_their_rows():
    model = _tiny_moe().eval()
    with torch.no_grad():
        model.gate.w_gate.normal_()
    x = _patterns(torch.arange(12) % 6, length=128)
    calls, rows, handles = _count_calls(model)
    allowed = torch.tensor([True, True, True, False])
    with torch.no_grad():
        out = model(x, allowed_experts=allowed)
    assert calls[3] == 0 and int(out.experts_run[3]) == 0
    assert torch.equal(out.experts_run, out.gate.selected.sum(0))
    assert rows == out.experts_run.tolist()
    assert all(c == (r > 0) for c, r in zip(calls, rows))  # each used expert called once
    assert int(out.experts_run.sum()) == 12 * 2
    for h in handles:
        h.remove()


def test_moe_probs_match_the_weighted_expert_softmaxes_and_masks():
    model = _tiny_moe(seed=3).eval()
    with torch.no_grad():
        model.gate.w_gate.normal_()
    x = _patterns(torch.arange(8) % 6, length=128, seed=1)
    with torch.no_grad():
        out = model(x, temperature=2.0)
        feats = model.trunk(x)
        expected = torch.zeros(8, N_CLASSES)
        sim = torch.full((8, N_CLASSES), -1.0)
        for b in range(8):
            for e in out.gate.selected[b].nonzero().flatten().tolist():
                ex = model.experts[e]
                eo = ex(feats[b : b + 1])
                cls = torch.tensor(EXPERT_CLASSES[e])
                expected[b, cls] += out.gate.weights[b, e] * ex.fine_log_probs(eo, 2.0)[0].exp()
                sim[b, cls] = torch.maximum(sim[b, cls], eo.fine_cosine[0])
    assert torch.allclose(out.probs.sum(1), torch.ones(8), atol=1e-5)
    assert torch.allclose(out.probs, expected / expected.sum(1, keepdim=True), atol=1e-5)
    assert torch.allclose(out.similarity, sim, atol=1e-5)

    allowed = torch.tensor([True, False, False, True, True, False])  # expert 1 {2, 3} keeps class 3
    with torch.no_grad():
        masked = model(x, allowed_classes=allowed)
    assert torch.allclose(masked.probs.sum(1), torch.ones(8), atol=1e-5)
    assert (masked.probs[:, ~allowed] == 0).all()
    assert (masked.similarity[:, ~allowed] == -1).all()

    # experts 1 {2, 3} and 3 {5, 0} hold no allowed class: they are skipped and their gate
    # weight goes to the row's other expert
    allowed = torch.tensor([False, True, False, False, True, False])
    calls, _, handles = _count_calls(model)
    with torch.no_grad():
        masked = model(x, allowed_classes=allowed)
    for h in handles:
        h.remove()
    assert calls[1] == 0 and calls[3] == 0
    held = out.gate.selected[:, [0, 2]].any(1)  # rows with an expert that can answer
    assert held.any() and not held.all()
    assert torch.allclose(masked.probs[held].sum(1), torch.ones(int(held.sum())), atol=1e-5)
    assert (masked.probs[~held] == 0).all()
    assert (masked.probs[:, ~allowed] == 0).all()
    for b in held.nonzero().flatten().tolist():
        e = 0 if out.gate.selected[b, 0] else 2
        if out.gate.selected[b, 0] and out.gate.selected[b, 2]:
            continue  # both can answer: mixture of two, checked by the unmasked test above
        with torch.no_grad():
            eo = model.experts[e](feats[b : b + 1])
        cls = torch.tensor(EXPERT_CLASSES[e])
        p = torch.softmax((30.0 * eo.fine_cosine[0]).masked_fill(~allowed[cls], float("-inf")), 0)
        assert torch.allclose(masked.probs[b, cls], p, atol=1e-5)  # renormalised to this expert alone

    only5 = torch.zeros(N_CLASSES, dtype=torch.bool)
    only5[5] = True  # held by experts 2 and 3 only
    calls, _, handles = _count_calls(model)
    with torch.no_grad():
        res = model(x, allowed_experts=torch.tensor([True, True, False, False]), allowed_classes=only5)
    for h in handles:
        h.remove()
    assert sum(calls) == 0 and int(res.experts_run.sum()) == 0  # no routed expert can answer
    assert (res.probs == 0).all() and (res.similarity == -1).all()
    assert torch.equal(model.experts_for_classes(only5), torch.tensor([False, False, True, True]))


def test_routing_targets_and_target_validation():
    model = _tiny_moe()
    coarse, held = model.routing_targets(torch.tensor([0, 3, 4]))
    assert held.tolist() == [[True, False, False, True], [False, True, True, False], [False, False, True, False]]
    assert coarse.tolist() == [[0, -1, -1, 1], [-1, 1, 0, -1], [-1, -1, 1, -1]]
    x = _patterns(torch.tensor([0, 3, 4]), length=96)
    bad = held.clone()
    bad[2, 0] = True  # class 4 is not one of expert 0's classes
    with pytest.raises(ValueError, match="expert 0"):
        model.training_loss(x, torch.tensor([0, 3, 4]), coarse, bad)


def test_tiny_moe_learns_separable_patterns():
    model = _tiny_moe(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    first = last = None
    for step in range(80):
        y = torch.randint(0, N_CLASSES, (48,), generator=g)
        x = _patterns(y, seed=100 + step)
        coarse, held = model.routing_targets(y)
        loss, parts = model.training_loss(x, y, coarse, held)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert set(parts) == {"expert", "gate_bce", "balance"}
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
    assert last < 0.5 * first
    model.eval()
    y_test = torch.arange(120) % N_CLASSES
    with torch.no_grad():
        out = model(_patterns(y_test, seed=999))
    acc = float((out.probs.argmax(1) == y_test).float().mean())
    assert acc > 0.8  # chance is 1/6
    # the gate learned the teacher routing: the true class is held by a selected expert
    _, held = model.routing_targets(y_test)
    assert float((out.gate.selected & held).any(1).float().mean()) > 0.9


def test_state_dict_round_trip_gives_identical_outputs():
    src = _tiny_moe(seed=0)
    opt = torch.optim.SGD(src.parameters(), lr=0.05)
    y = torch.arange(24) % N_CLASSES
    x = _patterns(y, length=128)
    coarse, held = src.routing_targets(y)
    for _ in range(3):  # move weights, BN statistics and AdaCos scales off their initial values
        loss, _ = src.training_loss(x, y, coarse, held)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(src.experts[0].coarse.scale) != pytest.approx(math.sqrt(2) * math.log(1), abs=1e-3)
    dst = _tiny_moe(seed=7).eval()
    src.eval()
    with torch.no_grad():
        dst(x)  # fill the folded-weight caches before loading
        dst.load_state_dict(src.state_dict())
        a, b = src(x), dst(x)
    assert torch.equal(a.probs, b.probs) and torch.equal(a.similarity, b.similarity)
    assert torch.equal(a.gate.indices, b.gate.indices)
    with torch.no_grad():
        c = copy.deepcopy(dst)(x)  # derived (folded) tensors are not copied, but rebuilt
    assert torch.equal(a.probs, c.probs)


def test_construction_and_training_are_deterministic_under_seed():
    y = torch.arange(12) % N_CLASSES
    x = _patterns(y, length=96)
    results = []
    for _ in range(2):
        model = _tiny_moe(seed=5).train()
        coarse, held = model.routing_targets(y)
        torch.manual_seed(11)
        loss, _ = model.training_loss(x, y, coarse, held)
        out = model(x)  # training mode: noisy gate
        results.append((float(loss.detach()), out.probs.detach()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_default_moe_size_and_shapes():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n_experts, n_classes = 80, 300
    classes = [[] for _ in range(n_experts)]
    for c in range(n_classes):
        for e in rng.choice(n_experts, size=int(rng.integers(1, 4)), replace=False):
            classes[int(e)].append(c)
    coarse = [[i % 3 for i in range(len(cl))] for cl in classes]
    model = build_moe(classes, coarse, n_classes).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 3_000_000
    x = torch.rand(2, 2, 4096)
    x[:, 1] = 1.0
    with torch.inference_mode():
        out = model(x)
    assert out.probs.shape == (2, n_classes) and out.similarity.shape == (2, n_classes)
    assert int(out.experts_run.sum()) == 4 and int((out.experts_run > 0).sum()) <= 4


def test_flat_classifier_and_constructor_errors():
    torch.manual_seed(0)
    flat = FlatClassifier(TINY_TRUNK, 9)
    assert flat(torch.rand(3, 2, 64)).shape == (3, 9)
    with pytest.raises(ValueError, match="k"):
        NoisyTopKGate(4, 3, k=4)
    with pytest.raises(ValueError, match="coarse id per class"):
        build_moe([[0, 1]], [[0]], 2, TINY_TRUNK, TINY_EXPERT)
    trunk = RegNet1D(TINY_TRUNK, pool=False)
    enc = RegNet1D(TINY_EXPERT, with_stem=False, in_width=trunk.out_width)
    expert = HierarchicalExpert(enc, enc.out_width, 8, n_coarse=1, n_fine=3)
    with pytest.raises(ValueError, match="fine classes"):
        MixtureOfExperts(trunk, trunk.out_width, [expert], [[0, 1]], 3, k=1)
    with pytest.raises(ValueError, match="distinct"):
        build_moe([[0, 0]], [[0, 0]], 2, TINY_TRUNK, TINY_EXPERT, k=1)


def test_binned_encoder_tells_where_a_peak_is():
    """Global pooling of a (nearly) translation-invariant net hardly moves when a peak moves;
    the position bins must: the same peak at two places gives clearly different summaries."""
    torch.manual_seed(0)
    body = RegNet1D(RegNetConfig(stem_width=8, widths=(16,), depths=(1,), group_width=8), pool=False)
    encoder = BinnedEncoder(body, channels=4, bins=16).eval()
    assert encoder.out_width == 64
    x = torch.zeros(2, 2, 1024)
    x[:, 1] = 1.0
    x[0, 0, 300:306] = 1.0
    x[1, 0, 700:706] = 1.0
    with torch.no_grad():
        binned = encoder(x)
        pooled = body.features(x).mean(-1)
    assert binned.shape == (2, 64)
    binned_change = (binned[0] - binned[1]).norm() / binned[0].norm()
    pooled_change = (pooled[0] - pooled[1]).norm() / pooled[0].norm()
    assert binned_change > 5 * pooled_change
    moe = build_moe([[0, 1], [1, 2]], [[0, 0], [0, 1]], 3, expert_bins=8, expert_bin_channels=4, gate_hidden=16)
    assert isinstance(moe.experts[0].encoder, BinnedEncoder)
    assert moe.gate_input(torch.rand(3, moe.trunk_width, 64)).shape == (3, 16)
    out = moe.eval()(torch.rand(3, 2, 2048))
    torch.testing.assert_close(out.probs.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        BinnedEncoder(body, channels=0, bins=4)

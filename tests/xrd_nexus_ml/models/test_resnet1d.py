"""The 1D ResNet family of the space-group classifier: logits for every head, depth, position bins, config."""

from __future__ import annotations

import pytest
import torch

from xrd_nexus_ml.models.resnet1d import ResNet1D, ResNetConfig, SymmetryClassifier
from xrd_nexus_ml.physics import symmetry
from xrd_nexus_ml.spacegroup.model import head_sizes


# -- network ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["resnet10", "resnet18", "resnet34"])
def test_resnet_family_gives_logits_for_every_head(size):
    config = ResNetConfig.named(size, widths=(8, 8, 16, 16))
    net = SymmetryClassifier(config, head_sizes()).eval()
    out = net(torch.rand(3, 2, 1024))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "space_group": (3, 230), "extinction_group": (3, symmetry.N_EXTINCTION_GROUPS), "crystal_system": (3, 7)}


def test_deeper_members_have_more_parameters():
    counts = [sum(p.numel() for p in SymmetryClassifier(ResNetConfig.named(n), head_sizes()).parameters())
              for n in ("resnet10", "resnet18", "resnet34")]
    assert counts[0] < counts[1] < counts[2]


def test_position_bins_let_the_features_tell_where_a_peak_is():
    # the total stride is 32: a peak moved by a multiple of it looks the same to global pooling
    x = torch.zeros(2, 2, 2048)
    x[:, 1] = 1.0  # mask
    x[0, 0, 640:643] = 1.0
    x[1, 0, 1280:1283] = 1.0
    torch.manual_seed(0)
    pooled = ResNet1D(ResNetConfig.named("resnet10", widths=(8, 8, 16, 16))).eval()
    binned = ResNet1D(ResNetConfig.named("resnet10", widths=(8, 8, 16, 16), position_bins=8, position_width=4)).eval()
    with torch.no_grad():
        a, b = pooled(x), binned(x)
    assert a.shape == (2, 16) and b.shape == (2, 16 + 8 * 4)
    torch.testing.assert_close(a[0], a[1])
    assert not torch.allclose(b[0, 16:], b[1, 16:], atol=1e-4)


def test_resnet_config_rejects_bad_designs():
    with pytest.raises(ValueError, match="unknown ResNet size"):
        ResNetConfig.named("resnet7")
    with pytest.raises(ValueError, match="equal length"):
        ResNetConfig(depths=(1, 1), widths=(8,))
    with pytest.raises(ValueError, match="unknown ResNet config keys"):
        ResNetConfig.from_dict({"depths": [1], "widths": [8], "kernel": 5})
    assert ResNetConfig.from_dict(ResNetConfig.named("resnet18").to_dict()) == ResNetConfig.named("resnet18")
    with pytest.raises(ValueError, match="position_bins"):
        ResNetConfig(position_bins=-1)
    with pytest.raises(ValueError, match="position_bins"):
        ResNetConfig(position_bins=4, position_width=0)
    # a card written before position bins existed loads as global pooling only
    old_card = {k: v for k, v in ResNetConfig.named("resnet10").to_dict().items() if not k.startswith("position")}
    assert ResNetConfig.from_dict(old_card).position_bins == 0

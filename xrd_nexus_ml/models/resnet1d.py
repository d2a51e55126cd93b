"""A one-dimensional ResNet family with space-group, extinction-group and crystal-system heads.

Schopmans, Reiser and Friederich (Digital Discovery 2023) classify space groups of powder
patterns with 1D ResNets trained on an endless stream of synthetic crystals; this is that
family (He et al. 2016, basic residual blocks: two k=3 convolutions with batch norm and an
identity or 1x1 projection shortcut), sized by the number of blocks per stage:

    resnet10 (1,1,1,1)   resnet18 (2,2,2,2)   resnet34 (3,4,6,3)

The input is (B, 2, L): the square root of the max-normalised intensity and the mask. One
shared trunk ends in global average pooling, and three linear heads give logits for the 230
space groups, the extinction groups and the 7 crystal systems.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

#: Blocks per stage of the named sizes.
RESNET_DEPTHS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


@dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    """Design of a 1D ResNet: blocks per stage, stage widths, stem (kernel and stride)."""

    depths: tuple[int, ...] = RESNET_DEPTHS["resnet10"]
    widths: tuple[int, ...] = (32, 64, 128, 256)
    in_channels: int = 2
    stem_kernel: int = 7
    stem_stride: int = 2
    dropout: float = 0.1
    position_bins: int = 0  # > 0: also summarise the final map in this many position bins
    position_width: int = 32  # channels of that summary (a 1x1 projection of the final map)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.depths) != len(self.widths) or not self.depths:
            raise ValueError(f"depths {self.depths} and widths {self.widths} must be non-empty and of equal length")
        if min(self.depths) < 1 or min(self.widths) < 1 or self.stem_stride < 1 or self.stem_kernel < 1:
            raise ValueError("depths, widths, stem_kernel and stem_stride must be positive")
        if min(self.position_bins, self.position_width) < 0 or (self.position_bins and not self.position_width):
            raise ValueError(f"position_bins ({self.position_bins}) must be >= 0 and position_width "
                             f"({self.position_width}) positive when bins are used")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def named(cls, name: str, widths: tuple[int, ...] = (32, 64, 128, 256), **kwargs) -> ResNetConfig:
        """A family member by name (resnet10, resnet18, resnet34)."""
        if name not in RESNET_DEPTHS:
            raise ValueError(f"unknown ResNet size {name!r}; known: {', '.join(RESNET_DEPTHS)}")
        return cls(depths=RESNET_DEPTHS[name], widths=widths, **kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> ResNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ResNet config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class BasicBlock1D(nn.Module):
    """Two k=3 convolutions with batch norm; the shortcut projects when shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.shortcut = (nn.Identity() if c_in == c_out and stride == 1 else
                         nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm1d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet1D(nn.Module):
    """Trunk: stem convolution, max-pool, stages (first block of each later stage halves L).

    Global average pooling makes the features blind to where peaks are, yet a space group is
    read from peak positions (their ratios) across the whole pattern, farther apart than a
    small net's receptive field. `position_bins` > 0 adds the final map averaged in that many
    position bins (after a 1x1 projection to `position_width` channels), as the
    identification experts do."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        w0 = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv1d(config.in_channels, w0, config.stem_kernel, config.stem_stride, config.stem_kernel // 2,
                      bias=False),
            nn.BatchNorm1d(w0), nn.ReLU(inplace=True), nn.MaxPool1d(3, 2, 1))
        blocks, c_in = [], w0
        for stage, (depth, width) in enumerate(zip(config.depths, config.widths)):
            for i in range(depth):
                blocks.append(BasicBlock1D(c_in, width, 2 if (i == 0 and stage > 0) else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.out_features = c_in
        self.positions = None
        if config.position_bins:
            self.positions = nn.Sequential(nn.Conv1d(c_in, config.position_width, 1, bias=False),
                                           nn.BatchNorm1d(config.position_width), nn.ReLU(inplace=True),
                                           nn.AdaptiveAvgPool1d(config.position_bins), nn.Flatten())
            self.out_features = c_in + config.position_width * config.position_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, L) -> (B, out_features) pooled features."""
        y = self.blocks(self.stem(x))
        if self.positions is None:
            return y.mean(dim=2)
        return torch.cat([y.mean(dim=2), self.positions(y)], dim=1)


class SymmetryClassifier(nn.Module):
    """ResNet trunk plus one linear head per label: {name: logits} for each of `heads`."""

    def __init__(self, config: ResNetConfig, heads: dict[str, int]):
        super().__init__()
        if not heads or min(heads.values()) < 2:
            raise ValueError(f"heads must name at least one label with >= 2 classes, got {heads}")
        self.trunk = ResNet1D(config)
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(self.trunk.out_features, n) for name, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.trunk(x))
        return {name: head(features) for name, head in self.heads.items()}

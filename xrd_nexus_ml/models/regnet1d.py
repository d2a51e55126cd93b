"""A one-dimensional RegNet encoder for powder diffraction patterns.

Background:

* RegNet (Radosavovic et al. 2020, "Designing Network Design Spaces"): a stem convolution,
  then stages of residual bottleneck blocks (1x1 conv -> grouped kxk conv -> 1x1 conv), the
  first block of each stage halving the resolution; widths, depths, group width and bottleneck
  ratio are the only design parameters. The "Y" variant adds squeeze-excitation.
* Squeeze-excitation (Hu et al. 2018, "Squeeze-and-Excitation Networks"): a per-channel gate
  computed from the globally pooled block activations.
* Position channels (CoordConv, Liu et al. 2018, "An intriguing failing of convolutional neural
  networks and the CoordConv solution"; sinusoidal encoding as in Vaswani et al. 2017): a
  convolutional net ending in global average pooling is nearly blind to absolute position, yet
  in diffraction the peak positions identify the phase; fixed position channels in the stem let
  the features depend on where along the pattern they occur.
* Adachi, "Mixture-of-Experts Ensemble with Hierarchical Deep Metric Learning for Spectroscopic
  Identification": a 1D-RegNet as the encoder of spectra; here a trunk (with the stem) is
  shared by all experts and each expert continues with the last stages (``with_stem=False``).

Input patterns are (B, 2, L): channel 0 the preprocessed intensity in [0, 1], channel 1 the
mask (1 where measured). Points outside the measured range carry zero intensity, so the plain
global average pooling used here treats them like empty signal; the mask channel lets the
network tell "no peak" from "not measured" where that matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class RegNetConfig:
    """Design parameters of a 1D RegNet (X when ``se_ratio == 0``, Y otherwise).

    The stem convolution maps ``in_channels`` to ``stem_width`` with stride ``stem_stride``;
    stage i has ``depths[i]`` blocks of output width ``widths[i]``; inside a block the grouped
    convolution has ``round(width * bottleneck_ratio)`` channels in groups of ``group_width``.
    ``position_channels`` > 0 gives the stem that many fixed position features (see
    `position_features`), so that globally pooled features can still tell where peaks are."""

    in_channels: int = 2
    stem_width: int
    stem_kernel: int = 7
    stem_stride: int = 4
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    group_width: int
    bottleneck_ratio: float = 1.0
    se_ratio: float = 0.25
    kernel_size: int = 3
    position_channels: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        for name in ("in_channels", "stem_width", "stem_kernel", "stem_stride", "group_width", "kernel_size"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"RegNetConfig.{name} must be a positive integer, got {value!r}")
        for name in ("stem_kernel", "kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"RegNetConfig.{name} must be odd ('same' padding), got {getattr(self, name)}")
        if len(self.widths) == 0:
            raise ValueError("RegNetConfig.widths must name at least one stage")
        if len(self.widths) != len(self.depths):
            raise ValueError(
                f"RegNetConfig.widths and depths must have the same length, got {len(self.widths)} widths "
                f"and {len(self.depths)} depths"
            )
        if any(w < 1 for w in self.widths):
            raise ValueError(f"RegNetConfig.widths must be positive, got {self.widths}")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"RegNetConfig.depths must be positive, got {self.depths}")
        if not self.bottleneck_ratio > 0:
            raise ValueError(f"RegNetConfig.bottleneck_ratio must be positive, got {self.bottleneck_ratio}")
        if int(self.position_channels) != self.position_channels or self.position_channels < 0:
            raise ValueError(
                f"RegNetConfig.position_channels must be a non-negative integer, got {self.position_channels!r}"
            )
        if not 0 <= self.se_ratio <= 1:
            raise ValueError(f"RegNetConfig.se_ratio must lie in [0, 1], got {self.se_ratio}")
        for w in self.widths:
            inner = self.inner_width(w)
            if inner < self.group_width or inner % self.group_width:
                raise ValueError(
                    f"RegNetConfig: stage width {w} with bottleneck ratio {self.bottleneck_ratio} gives {inner} "
                    f"inner channels, which is not a positive multiple of group_width {self.group_width}"
                )

    def inner_width(self, width: int) -> int:
        """Channels of the grouped convolution in a block of output width `width`."""
        return max(1, int(round(width * self.bottleneck_ratio)))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly dict (tuples as lists) that `from_dict` turns back into this config."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["depths"] = list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RegNetConfig:
        """Config from a dict as written by `to_dict`; unknown keys raise ValueError (likely typos)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown RegNetConfig keys: {', '.join(unknown)}")
        return cls(**dict(d))


class _ConvBN(nn.Module):
    """Convolution + batch norm (+ ReLU).

    In eval mode the norm is folded into the convolution weights (same result, one pass over the
    activations instead of two), and 1x1 convolutions run as matrix products, which PyTorch's
    CPU backend does several times faster than `conv1d` for the small channel counts used here."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm1d(c_out)
        self.relu = relu

        self._cache: dict[Any, Any] = {}
        self._cache_key: tuple | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # pickle / deepcopy without the derived tensors
        state["_cache"], state["_cache_key"] = {}, None
        return state

    def _fold_tensors(self) -> list[torch.Tensor]:
        bn = self.bn
        return [self.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var]

    def _cached(self, name: Any, build: Callable[[], Any]) -> Any:
        """`build()`, reused while no parameter or statistic changed and autograd is off.

        In-place updates (optimizer steps, load_state_dict) bump the tensors' version counters
        and so invalidate the cache; with autograd on, results are always built anew."""
        if torch.is_grad_enabled():
            return build()
        try:
            key = tuple((id(t), t.data_ptr(), t._version) for t in self._fold_tensors()) + (self.bn.eps,)
        except RuntimeError:  # inference tensors carry no version counter: do not cache
            return build()
        if key != self._cache_key:
            self._cache, self._cache_key = {}, key
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    def _bn_scale(self) -> torch.Tensor:
        return self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolution weight and bias with the (eval-mode) batch norm folded in; cached without
        autograd, which saves ~8 small ops per layer per call."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            scale = self._bn_scale()
            return self.conv.weight * scale[:, None, None], self.bn.bias - self.bn.running_mean * scale

        return self._cached("folded", build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        if bn.training or not bn.track_running_stats:
            y = bn(conv(x))
            return torch.relu(y) if self.relu else y
        weight, bias = self.folded()
        if conv.kernel_size[0] == 1 and conv.groups == 1:
            stride = conv.stride[0]
            y = torch.matmul(weight[:, :, 0], x[..., ::stride] if stride > 1 else x).add_(bias[:, None])
        else:
            y = F.conv1d(x, weight, bias, conv.stride, conv.padding, 1, conv.groups)
        return y.relu_() if self.relu else y


def position_features(
    length: int, n: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """(1, n, length) fixed position channels over the relative position u in [0, 1]: 2u - 1,
    then sin and cos of 2^j * pi * u for j = 0, 1, ... (CoordConv, Liu et al. 2018, with a
    Fourier encoding as in Vaswani et al. 2017). Positions are relative to the pattern length,
    so patterns must share a grid (the canonical grid) for positions to mean the same angle."""
    u = torch.linspace(0.0, 1.0, length, dtype=torch.float64)
    feats = [2.0 * u - 1.0]
    j = 0
    while len(feats) < n:
        f = math.pi * 2.0**j
        feats.append(torch.sin(f * u))
        if len(feats) < n:
            feats.append(torch.cos(f * u))
        j += 1
    return torch.stack(feats[:n]).unsqueeze(0).to(dtype=dtype, device=device)


class _Stem(_ConvBN):
    """Stem conv+BN+ReLU, optionally with fixed position channels.

    The position channels are the same for every row, so their convolution is one (1, C, L')
    map added to the batch's convolution, never a concatenated (B, 2 + P, L) input."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, position_channels: int) -> None:
        super().__init__(c_in, c_out, kernel, stride)
        self.position_channels = position_channels
        self.pos_conv = (
            nn.Conv1d(position_channels, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
            if position_channels
            else None
        )

    def _fold_tensors(self) -> list[torch.Tensor]:
        extra = [self.pos_conv.weight] if self.pos_conv is not None else []
        return super()._fold_tensors() + extra

    def _position_map(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, L') eval-mode contribution of the position channels, batch-norm bias included."""
        assert self.pos_conv is not None
        conv = self.conv

        def build() -> torch.Tensor:
            _, bias = self.folded()
            weight = self.pos_conv.weight * self._bn_scale()[:, None, None]
            pos = position_features(x.shape[-1], self.position_channels, x.dtype, x.device)
            return F.conv1d(pos, weight, bias, conv.stride, conv.padding)

        return self._cached(("position", x.shape[-1], x.dtype, x.device), build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_conv is None:
            return super().forward(x)
        conv, bn = self.conv, self.bn
        if bn.training or not bn.track_running_stats:
            pos = position_features(x.shape[-1], self.position_channels, x.dtype, x.device)
            return torch.relu(bn(conv(x) + self.pos_conv(pos)))
        weight, _ = self.folded()
        return F.conv1d(x, weight, None, conv.stride, conv.padding).add_(self._position_map(x)).relu_()


class _SqueezeExcite(nn.Module):
    """Channel gate from the pooled activations (Hu et al. 2018)."""

    def __init__(self, width: int, se_width: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(width, se_width)
        self.expand = nn.Linear(se_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean(dim=-1)))))
        return x * s.unsqueeze(-1)


class _Bottleneck(nn.Module):
    """RegNet residual bottleneck block: 1x1 -> grouped kxk (strided) -> SE -> 1x1, plus shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, config: RegNetConfig) -> None:
        super().__init__()
        inner = config.inner_width(c_out)
        groups = inner // config.group_width
        layers: list[nn.Module] = [
            _ConvBN(c_in, inner, 1),
            _ConvBN(inner, inner, config.kernel_size, stride, groups),
        ]
        if config.se_ratio > 0:
            layers.append(_SqueezeExcite(inner, max(1, int(round(config.se_ratio * c_in)))))
        layers.append(_ConvBN(inner, c_out, 1, relu=False))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module
        if stride != 1 or c_in != c_out:
            self.shortcut = _ConvBN(c_in, c_out, 1, stride, relu=False)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.body(x) + self.shortcut(x))


class RegNet1D(nn.Module):
    """1D RegNet: optional stem (conv+BN+ReLU), then the stages of `config`.

    ``with_stem=False`` builds only the stages, continuing from a feature map of ``in_width``
    channels (an expert on top of a shared trunk). ``pool=False`` makes `forward` return the
    feature map instead of the pooled vector, so the network can serve as a trunk."""

    def __init__(
        self, config: RegNetConfig, with_stem: bool = True, in_width: int | None = None, *, pool: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.pool = pool
        if with_stem:
            if in_width is not None and in_width != config.in_channels:
                raise ValueError(
                    f"RegNet1D with a stem reads config.in_channels={config.in_channels} channels; "
                    f"in_width={in_width} contradicts it"
                )
            self.stem: nn.Module = _Stem(
                config.in_channels, config.stem_width, config.stem_kernel, config.stem_stride, config.position_channels
            )
            c = config.stem_width
        else:
            if in_width is None or in_width < 1:
                raise ValueError("RegNet1D without a stem needs the positive in_width of the feature map it continues")
            self.stem = nn.Identity()
            c = in_width
        self.in_width = config.in_channels if with_stem else int(in_width)  # type: ignore[arg-type]
        stages = []
        for width, depth in zip(config.widths, config.depths):
            blocks = []
            for i in range(depth):
                blocks.append(_Bottleneck(c, width, 2 if i == 0 else 1, config))
                c = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self._out_width = c
        #: Rows per chunk in eval mode (0: no chunking); see `features`.
        self.inference_chunk = 32

    @property
    def out_width(self) -> int:
        """Channels of the feature map (= length of the pooled vector)."""
        return self._out_width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (B, out_width, L') of a batch (B, in_width, L).

        In eval mode large batches run in chunks of `inference_chunk` rows: the result is the
        same (batch norm uses running statistics), but the activations stay in the CPU caches."""
        if x.dim() != 3 or x.shape[1] != self.in_width:
            raise ValueError(f"RegNet1D expects (B, {self.in_width}, L) input, got {tuple(x.shape)}")
        chunk = self.inference_chunk
        if not self.training and chunk > 0 and x.shape[0] > chunk:
            return torch.cat([self.stages(self.stem(part)) for part in x.split(chunk)])
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features (B, out_width), or the map when built with ``pool=False``."""
        f = self.features(x)
        return f.mean(dim=-1) if self.pool else f

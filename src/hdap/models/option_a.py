"""He et al.'s CIFAR ResNets in the paper's own form ("option A"), as the widely shared
checkpoints were trained: where a stage changes width or stride the shortcut takes every
second pixel and pads the new channels with zeros, with no 1x1 convolution.

Module names follow those checkpoints (`conv1`, `bn1`, `layer{1,2,3}.{i}.conv{1,2}`, `linear`),
so their state dicts load as they are. The shortcut is `ZeroPadShortcut`: a fixed channel map
(which input channel lands on which output channel; the rest are zeros) that pruning rewrites
(`hdap.compress.pruners`), because the channels on its two sides are pruned independently.
"""

from __future__ import annotations

import torch
from torch import nn


class ZeroPadShortcut(nn.Module):
    """Output channel `targets[i]` is input channel `sources[i]`, subsampled by `stride`; every other
    output channel is zero. Unpruned, this is the paper's pad of `(out - in) / 2` channels each side."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        pad = (out_channels - in_channels) // 2
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.sources, self.targets = list(range(in_channels)), [pad + c for c in range(in_channels)]
        self.register_buffer("gather_index", self._gather_index(), persistent=False)

    def _gather_index(self) -> torch.Tensor:
        """For every output channel, the channel of [input..., one zero channel] it copies."""
        index = torch.full((self.out_channels,), self.in_channels, dtype=torch.long)
        index[self.targets] = torch.tensor(self.sources, dtype=torch.long)
        return index

    def remap(self, kept_in: list[int], kept_out: list[int]) -> None:
        """Keep only these input and output channels (in their original numbering)."""
        new_in = {c: i for i, c in enumerate(kept_in)}
        new_out = {c: i for i, c in enumerate(kept_out)}
        pairs = [(new_in[s], new_out[t]) for s, t in zip(self.sources, self.targets) if s in new_in and t in new_out]
        self.sources, self.targets = [s for s, _ in pairs], [t for _, t in pairs]
        self.in_channels, self.out_channels = len(kept_in), len(kept_out)
        self.gather_index = self._gather_index().to(self.gather_index.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        padded = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        return padded.index_select(1, self.gather_index)

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}, {len(self.sources)} copied"


class BasicBlockA(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = ZeroPadShortcut(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetA(nn.Module):
    """6n+2 layers (ResNet-20: n=3, ResNet-56: n=9), stages of 16/32/64 channels."""

    def __init__(self, blocks_per_stage: int, in_channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for stage, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlockA(cin, cout, stride if index == 0 else 1))
                cin = cout
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.pool(x), 1))

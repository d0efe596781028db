"""Models defined in the project: nothing is downloaded at run time."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hdap.errors import HdapError


def small_cnn(in_channels: int = 3, classes: int = 10) -> nn.Module:
    """Six 3x3 convolutions (32-64-128 channels, two stride-2 stages) and a classifier, for 32x32 inputs."""
    widths = [(in_channels, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)]
    layers: list[nn.Module] = []
    for cin, cout, stride in widths:
        layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (6n+2 layers: ResNet-20 is n=3, ResNet-56 n=9)."""

    def __init__(self, blocks_per_stage: int, in_channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for index in range(blocks_per_stage):
                stages.append(BasicBlock(cin, cout, stride if index == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "small-cnn": small_cnn,
    "resnet20": lambda **kw: CifarResNet(3, **kw),
    "resnet56": lambda **kw: CifarResNet(9, **kw),
}


def build_model(name: str, **options) -> nn.Module:
    try:
        factory = MODELS[name]
    except KeyError:
        raise HdapError(f"unknown model '{name}': use one of {', '.join(MODELS)}.") from None
    return factory(**options)

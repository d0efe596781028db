"""Models defined in the project: nothing is downloaded at run time."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hdap.errors import HdapError
from hdap.models.option_a import ResNetA


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


class MobileNetV1(nn.Module):
    """Howard et al.'s MobileNetV1 for small inputs: depthwise-separable blocks, stride 1 stem."""

    # (output channels, stride) of each depthwise-separable block
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
              (512, 1), (1024, 2), (1024, 1))

    def __init__(self, in_channels: int = 3, classes: int = 10, width: float = 1.0) -> None:
        super().__init__()

        def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        cin = int(32 * width)
        layers = conv_bn(in_channels, cin, 3, 1)
        for cout, stride in self.BLOCKS:
            cout = int(cout * width)
            layers += conv_bn(cin, cin, 3, stride, groups=cin) + conv_bn(cin, cout, 1, 1)
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# torchvision's ImageNet models, adapted where the input is small (CIFAR-sized or less): a 3x3,
# stride-1 stem without the max pool, so 32x32 inputs do not shrink to 1x1 before the last stage.
SMALL_INPUT = 64


def _stem(conv: nn.Conv2d, in_channels: int, small: bool) -> nn.Conv2d:
    if not small and in_channels == conv.in_channels:
        return conv
    kernel, stride = (3, 1) if small else (conv.kernel_size[0], conv.stride[0])
    return nn.Conv2d(in_channels, conv.out_channels, kernel, stride, kernel // 2, bias=conv.bias is not None)


def torchvision_resnet(depth: int, in_channels: int = 3, classes: int = 10, input_size: int = 32) -> nn.Module:
    from torchvision import models

    model = {18: models.resnet18, 50: models.resnet50}[depth](weights=None, num_classes=classes)
    small = input_size <= SMALL_INPUT
    model.conv1 = _stem(model.conv1, in_channels, small)
    if small:
        model.maxpool = nn.Identity()
    return model


def torchvision_mobilenet_v2(in_channels: int = 3, classes: int = 10, input_size: int = 32) -> nn.Module:
    from torchvision import models

    model = models.mobilenet_v2(weights=None, num_classes=classes)
    model.features[0][0] = _stem(model.features[0][0], in_channels, input_size <= SMALL_INPUT)
    return model


def torchvision_vgg16_bn(in_channels: int = 3, classes: int = 10, input_size: int = 32) -> nn.Module:
    """VGG16-BN with a global-pool classifier (one linear layer) as is usual for small inputs."""
    from torchvision import models

    model = models.vgg16_bn(weights=None, num_classes=classes)
    if in_channels != 3:
        model.features[0] = nn.Conv2d(in_channels, 64, 3, 1, 1)
    if input_size <= SMALL_INPUT:
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Linear(512, classes)
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    "small-cnn": small_cnn,
    "resnet20": lambda **kw: CifarResNet(3, **kw),
    "resnet56": lambda **kw: CifarResNet(9, **kw),
    # The paper's option-A form, as the widely shared CIFAR-10 checkpoints were trained (their keys load as they are).
    "resnet20-a": lambda **kw: ResNetA(3, **kw),
    "resnet56-a": lambda **kw: ResNetA(9, **kw),
    "mobilenetv1": MobileNetV1,
    "resnet18": lambda **kw: torchvision_resnet(18, **kw),
    "resnet50": lambda **kw: torchvision_resnet(50, **kw),
    "mobilenetv2": torchvision_mobilenet_v2,
    "vgg16-bn": torchvision_vgg16_bn,
}
# Models whose layout depends on the input size (the torchvision ones adapt their stem).
SIZE_AWARE = {"resnet18", "resnet50", "mobilenetv2", "vgg16-bn"}


def build_model(name: str, input_shape: tuple[int, ...] | None = None, classes: int = 10, **options) -> nn.Module:
    """A freshly initialised model for inputs of `input_shape` (channels, height, width): a zoo
    name, `torchvision:<name>`, or a factory `package.module:function` (see `hdap.models.factory`)."""
    if ":" in name:
        from hdap.models.factory import factory_model

        return factory_model(name, classes)
    try:
        factory = MODELS[name]
    except KeyError:
        raise HdapError(f"unknown model '{name}': use one of {', '.join(MODELS)}, torchvision:<name>, or a factory "
                        "package.module:function.") from None
    if input_shape is not None:
        options.setdefault("in_channels", input_shape[0])
        if name in SIZE_AWARE:
            options.setdefault("input_size", min(input_shape[1:]))
    return factory(classes=classes, **options)


def check_input_shape(name: str, input_shape: tuple[int, int, int]) -> None:
    """Refuse, in one sentence and before any stage runs, an input shape the model cannot compute on
    (one image through the freshly built model: the search would otherwise fail in its first step)."""
    model = build_model(name, input_shape).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HdapError(f"model '{name}' cannot take inputs of shape {','.join(map(str, input_shape))} ({first_line}): "
                        "set --input-shape to the channels,height,width it was built for.") from None

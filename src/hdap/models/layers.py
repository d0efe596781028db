"""A model's prunable layers, found by running it once with hooks on its convolutions and linears."""

from __future__ import annotations

import torch
from torch import nn

from hdap.errors import HdapError
from hdap.latency.layers import LayerShape


def prunable_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerShape]:
    """Every Conv2d and Linear in execution order, with the feature-map size it sees."""
    shapes: list[LayerShape] = []
    hooks = []

    def record(name: str, module: nn.Module):
        def hook(_module, inputs, _output):
            x = inputs[0]
            if isinstance(module, nn.Conv2d):
                if module.kernel_size[0] != module.kernel_size[1] or module.stride[0] != module.stride[1]:
                    raise HdapError(f"layer {name} has a non-square kernel or stride {module.kernel_size}/{module.stride}: hdap cannot model it yet.")
                depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
                if module.groups > 1 and not depthwise:
                    raise HdapError(f"layer {name} is a grouped convolution (groups={module.groups}): hdap supports dense and depthwise ones.")
                shapes.append(LayerShape(name, "depthwise" if depthwise else "conv", module.in_channels, module.out_channels,
                                         module.kernel_size[0], module.stride[0], x.shape[-2], x.shape[-1]))
            else:
                shapes.append(LayerShape(name, "linear", module.in_features, module.out_features))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(record(name, module)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return shapes

"""The dependency graph hdap prunes with: Torch-Pruning's DepGraph, told about hdap's own
parameter-free layers whose two sides are pruned independently.

`ZeroPadShortcut` (the option-A CIFAR ResNets) copies some input channels onto some output
channels and pads the rest with zeros. DepGraph alone takes it for an element-wise layer and ties
the channels of all three stages into one group; pruning that group breaks the model. Here its
input and output channels belong to different groups (a pruned input channel is no longer
copied; a pruned output channel is no longer written), as a convolution's do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from hdap.models.option_a import ZeroPadShortcut


class ZeroPadShortcutPruner(tp.pruner.function.BasePruningFunc):
    TARGET_MODULES = ZeroPadShortcut

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        removed = set(int(i) for i in idxs)
        layer.remap(list(range(layer.in_channels)), [c for c in range(layer.out_channels) if c not in removed])
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        removed = set(int(i) for i in idxs)
        layer.remap([c for c in range(layer.in_channels) if c not in removed], list(range(layer.out_channels)))
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


# Parameter-free layers that read a channel group without being element-wise: the search masks
# their inputs as it masks a convolution's, so the masked model computes what the pruned one does.
CHANNEL_MAPS = (ZeroPadShortcut,)
PRUNERS = {ZeroPadShortcut: ZeroPadShortcutPruner()}


def dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """DepGraph of `model` for inputs of `input_shape`, with hdap's pruners registered."""
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape, device=next(model.parameters()).device),
                                                 customized_pruners=PRUNERS)

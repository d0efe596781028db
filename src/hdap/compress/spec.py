"""The search's result as a plain, serialisable architecture spec, and applying it to a model.

A spec names the zoo model and its input, and per layer the output channels kept (indices
into the original layer) and its weight and activation precision. `apply_spec` rebuilds the
model and removes the other channels physically with Torch-Pruning, group by group, so tied
channels (residual adds, depthwise convolutions) go together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from hdap.artifacts import Contract
from hdap.compress.pruners import dependency_graph
from hdap.compress.quantize import activation_precision
from hdap.compress.searchable import SearchableModel
from hdap.errors import HdapError
from hdap.latency.layers import LayerConfig, LayerShape
from hdap.models import build_model


@dataclass
class LayerSpec:
    name: str
    op: str
    in_channels: int
    out_channels: int
    kept_out_channels: list[int]  # indices into the original layer's outputs
    weight_precision: str
    activation_precision: str
    removed: bool = False  # its residual branch is gone: the layer is not in the model at all


@dataclass
class ArchitectureSpec(Contract):
    FORMAT = "hdap.architecture/1"
    model: str
    input_shape: list[int]
    classes: int
    precisions: list[str]  # the menu searched
    layers: list[LayerSpec]
    groups: list[dict] = field(default_factory=list)  # {"root", "channels", "kept", "layers"}: what was tied
    metrics: dict = field(default_factory=dict)  # accuracy and costs of this point

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise HdapError(f"the architecture spec has no layer {name}.")


def export_spec(searchable: SearchableModel, model_name: str, input_shape: tuple[int, ...], classes: int,
                metrics: dict | None = None) -> ArchitectureSpec:
    """The hard decisions of a searchable model (as if frozen) as a spec."""
    space = searchable.space
    kept_by_layer: dict[str, list[int]] = {}
    groups = []
    for group in space.groups:
        kept_roots = group.kept_channels(searchable.kept_granules(group.index))
        for member in group.members:
            if member.side == "out":
                kept_by_layer[member.layer] = sorted(member.channel_of_root[c] for c in kept_roots)
        groups.append({"root": group.root, "channels": group.channels, "kept": kept_roots,
                       "layers": sorted({m.layer for m in group.members}), "collapsible": group.collapsible})
    layers = []
    for shape, config in searchable.hard_layers():
        if config is None:
            layers.append(LayerSpec(shape.name, shape.op, 0, 0, [], "", "", removed=True))
            continue
        layers.append(LayerSpec(shape.name, shape.op, config.in_channels, config.out_channels,
                                kept_by_layer.get(shape.name, list(range(shape.out_channels))), config.precision,
                                activation_precision(config.precision)))
    return ArchitectureSpec(model_name, list(input_shape), classes, list(space.precisions), layers, groups, metrics or {})


class RemovedBranch(nn.Module):
    """What a removed residual branch computes before its batch norm: zeros of its output shape."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.shape = (channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], *self.shape)


def apply_spec(spec: ArchitectureSpec, model: nn.Module | None = None) -> nn.Module:
    """The spec's model with the unkept channels removed, and removed residual branches cut out
    of the graph (a torch.fx GraphModule then). Pass `model` to prune trained weights; without it
    a fresh zoo model is built. Precisions are attached as `hdap_precision` on each layer."""
    shape = tuple(spec.input_shape)
    if model is None:
        model = build_model(spec.model, shape, classes=spec.classes)
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    graph = dependency_graph(model, shape)
    dead = [g for g in spec.groups if not g["kept"]]
    for group in spec.groups:
        removed = sorted(set(range(group["channels"])) - set(group["kept"]))
        if not removed or not group["kept"]:
            continue
        root = modules.get(group["root"])
        if root is None:
            raise HdapError(f"the spec prunes layer {group['root']}, which model {spec.model} does not have.")
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, removed).prune()
    if dead:
        model = _cut_branches(model, spec, dead, shape)
    model.train(was_training)
    modules = dict(model.named_modules())
    for layer in spec.layers:
        module = modules.get(layer.name)
        if layer.removed:
            if module is not None:
                raise HdapError(f"layer {layer.name} should have been removed with its residual branch but is still there.")
            continue
        out = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        if out != len(layer.kept_out_channels):
            raise HdapError(f"applying the spec left layer {layer.name} with {out} outputs, not {len(layer.kept_out_channels)}: "
                            "the spec does not match this model.")
        module.hdap_precision = (layer.weight_precision, layer.activation_precision)
    return model


def _cut_branches(model: nn.Module, spec: ArchitectureSpec, dead: list[dict], shape: tuple[int, ...]) -> fx.GraphModule:
    """Replace each removed branch's last layer by zeros fed from the branch's input; dead-code
    elimination then drops the branch's other layers."""
    traced = fx.symbolic_trace(model)
    ShapeProp(traced).propagate(torch.zeros(1, *shape))
    calls = {n.target: n for n in traced.graph.nodes if n.op == "call_module"}
    order = {layer.name: index for index, layer in enumerate(spec.layers)}
    for index, group in enumerate(dead):
        writers = sorted((name for name in group["layers"] if name not in group["collapsible"]), key=order.__getitem__)
        branch_input = calls[writers[0]].all_input_nodes[0]
        for layer in group["collapsible"]:
            node = calls[layer]
            _, channels, height, width = node.meta["tensor_meta"].shape
            name = f"hdap_removed_{index}_{layer.replace('.', '_')}"
            traced.add_submodule(name, RemovedBranch(channels, height, width))
            with traced.graph.inserting_before(node):
                zeros = traced.graph.call_module(name, (branch_input,))
            node.replace_all_uses_with(zeros)
    traced.graph.eliminate_dead_code()
    traced.recompile()
    traced.delete_all_unused_submodules()
    return traced


def spec_layer_configs(spec: ArchitectureSpec, shapes: list[LayerShape]) -> list[LayerConfig]:
    """The layers the spec's model runs, as the latency model sees them (removed ones left out)."""
    by_name = {layer.name: layer for layer in spec.layers}
    configs = []
    for shape in shapes:
        layer = by_name.get(shape.name)
        if layer is None:
            raise HdapError(f"the architecture spec has no layer {shape.name}: it was searched for another model.")
        if not layer.removed:
            configs.append(shape.config(layer.in_channels, layer.out_channels, layer.weight_precision))
    return configs

"""The search space of a model: which channels can be pruned together, and which layers choose a precision.

Channels tied by residual adds, concatenations and depthwise convolutions must be pruned
together; Torch-Pruning's DepGraph finds these *groups*. A group's channels are cut into
granules (8 or 32, the hardware's tile) ordered by magnitude, so the search decides how many
granules to keep, the least important first to go.

Every prunable layer (convolution, depthwise convolution, linear) picks one precision from the
target's menu. The 0-bit "pruned" choice of DESIGN.md is the per-channel keep decision; the
non-zero precision is per layer because an inference engine runs a layer at one precision. By
default the first and last layers keep the menu's highest precision (quantising them costs the
most accuracy for the least time) and the last layer's outputs (the classes) are never pruned.
"""

from __future__ import annotations

import logging
import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import fx, nn

from hdap.compress.pruners import CHANNEL_MAPS, dependency_graph
from hdap.errors import HdapError
from hdap.latency.fleet_cost import BITS
from hdap.latency.layers import LayerShape
from hdap.models.layers import prunable_layers

log = logging.getLogger("hdap")
# Modules with parameters that the search understands; anything else with weights is refused.
SUPPORTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)
# Layers a residual branch may pass through between its last convolution and the add.
ELEMENTWISE = (nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.Identity)


@dataclass
class GroupMember:
    layer: str  # module name
    side: str  # "out": the group prunes its outputs; "in": its inputs
    channel_of_root: list[int]  # the module's channel index for each root channel (several when flattened)


@dataclass
class ChannelGroup:
    index: int
    root: str  # the layer whose output channels index the group
    channels: int
    granule: int
    members: list[GroupMember]
    order: list[int]  # root channels, most important first: granule i holds order[i*granule:(i+1)*granule]
    # Layers whose every input comes from this group and whose output joins a residual add: if
    # the whole group is pruned they compute a constant, and with the group's own layers they
    # drop out of the network (a residual branch removed: fewer kernels, what launch-bound
    # devices need). Empty: the group always keeps at least one granule.
    collapsible: list[str] = field(default_factory=list)
    # The module whose output is the branch's contribution to the add (e.g. its last batch
    # norm): where the search scales the branch by the probability it stays. "" if not a module.
    branch_end: str = ""

    @property
    def removable(self) -> bool:
        return bool(self.collapsible)

    @property
    def granules(self) -> int:
        return -(-self.channels // self.granule)

    def granule_of_channel(self) -> torch.Tensor:
        """For every root channel, the granule it belongs to."""
        granule = torch.empty(self.channels, dtype=torch.long)
        for rank, channel in enumerate(self.order):
            granule[channel] = rank // self.granule
        return granule

    def kept_channels(self, kept_granules: list[bool]) -> list[int]:
        return sorted(c for rank, c in enumerate(self.order) if kept_granules[rank // self.granule])


@dataclass
class ChannelMapReader:
    """A parameter-free layer that reads a group's channels without being element-wise (the
    option-A shortcut): the search masks its input, since the pruned model no longer has the
    channels it would copy."""

    layer: str
    in_channels: int
    group: int
    channel_of_root: list[int]


@dataclass
class SearchSpace:
    layers: list[LayerShape]  # prunable layers in execution order
    groups: list[ChannelGroup]
    precisions: tuple[str, ...]  # the target's menu
    protected: set[str] = field(default_factory=set)  # layers held at the default precision
    channel_maps: list[ChannelMapReader] = field(default_factory=list)

    @property
    def default_precision(self) -> str:
        return max(self.precisions, key=lambda p: BITS[p])

    def out_group(self, layer: str) -> tuple[ChannelGroup, GroupMember] | None:
        for group in self.groups:
            for member in group.members:
                if member.layer == layer and member.side == "out":
                    return group, member
        return None

    def in_groups(self, layer: str) -> list[tuple[ChannelGroup, GroupMember]]:
        return [(g, m) for g in self.groups for m in g.members if m.layer == layer and m.side == "in"]

    def describe(self) -> str:
        prunable = sum(g.channels for g in self.groups)
        return (f"{len(self.layers)} layers, {len(self.groups)} channel groups ({prunable} prunable channels), "
                f"precisions {'/'.join(self.precisions)}")


def check_supported(model: nn.Module) -> None:
    """Refuse a model with a layer whose weights the search cannot prune or quantise."""
    for name, module in model.named_modules():
        if list(module.parameters(recurse=False)) and not isinstance(module, SUPPORTED):
            raise HdapError(f"layer {name} ({type(module).__name__}) is not supported by the search: hdap prunes and "
                            "quantises Conv2d and Linear layers (with BatchNorm); replace it or leave this model out.")


def build_search_space(model: nn.Module, input_shape: tuple[int, ...], precisions: tuple[str, ...],
                       granule: int = 8, protect_first_and_last: bool = True) -> SearchSpace:
    unknown = [p for p in precisions if p not in BITS]
    if unknown or not precisions:
        raise HdapError(f"precision menu {precisions} is not usable: choose from {', '.join(BITS)}.")
    check_supported(model)
    layers = prunable_layers(model, input_shape)
    names = {module: name for name, module in model.named_modules()}
    modules = dict(model.named_modules())
    last = modules[layers[-1].name]
    was_training = model.training
    model.eval()
    try:
        graph = dependency_graph(model, input_shape)
        raw_groups = list(graph.get_all_groups(ignored_layers=[last], root_module_types=[nn.Conv2d, nn.Linear]))
    except Exception as err:  # noqa: BLE001 - any failure of the tracer means the graph is beyond it
        raise HdapError(f"the dependency analysis could not follow this model's graph ({type(err).__name__}: {err}); "
                        "hdap needs a model Torch-Pruning can trace.") from None
    finally:
        model.train(was_training)
    prunable = {shape.name for shape in layers}
    groups, maps = [], []
    for raw in raw_groups:
        root_module = raw.items[0].dep.target.module
        channels = len(raw.items[0].idxs)
        members, readers = [], []
        for item in raw.items:
            module = item.dep.target.module
            name = names.get(module)
            side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            if isinstance(module, CHANNEL_MAPS) and side == "in":
                readers.append(ChannelMapReader(name, module.in_channels, -1, list(item.idxs)))
            if name not in prunable:
                continue  # batch norms and element-wise ops follow their layer
            members.append(GroupMember(name, side, list(item.idxs)))
        if not any(m.side == "out" for m in members):
            continue
        for reader in readers:
            reader.group = len(groups)
        maps += readers
        importance = tp.importance.GroupMagnitudeImportance(p=2)(raw)
        order = [int(c) for c in torch.argsort(importance, descending=True, stable=True)]
        groups.append(ChannelGroup(len(groups), names[root_module], channels, min(granule, channels), members, order))
    _check_one_owner(layers, groups)
    _mark_collapsible(model, layers, groups)
    protected = {layers[0].name, layers[-1].name} if protect_first_and_last else set()
    return SearchSpace(layers, groups, tuple(precisions), protected, maps)


_ADDS = {operator.add, operator.iadd, torch.add}


def _mark_collapsible(model: nn.Module, layers: list[LayerShape], groups: list[ChannelGroup]) -> None:
    """A group is removable when every layer reading it feeds, through element-wise layers only,
    an add whose other operand carries the group's own input (a residual branch beside its skip)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - a model fx cannot trace just has no removable branches
        log.info("no residual branches can be removed: torch.fx cannot trace the model (%s)", err)
        return
    calls = {n.target: n for n in graph.nodes if n.op == "call_module"}
    calls_per_module = Counter(n.target for n in graph.nodes if n.op == "call_module")
    modules = dict(model.named_modules())
    position = {shape.name: index for index, shape in enumerate(layers)}

    def descends_from(node: fx.Node, ancestor: fx.Node) -> bool:
        seen, stack = set(), [node]
        while stack:
            current = stack.pop()
            if current is ancestor:
                return True
            if current not in seen:
                seen.add(current)
                stack.extend(current.all_input_nodes)
        return False

    def branch_end(layer: str, block_input: fx.Node) -> fx.Node | None:
        """The node whose output `layer`'s branch adds to the skip, or None if it does not join one."""
        node = calls.get(layer)
        while node is not None and len(node.users) == 1:
            user = next(iter(node.users))
            if user.op == "call_function" and user.target in _ADDS:
                others = [a for a in user.args if isinstance(a, fx.Node) and a is not node]
                return node if len(others) == 1 and descends_from(others[0], block_input) else None
            passthrough = (user.op == "call_module" and isinstance(modules.get(user.target), ELEMENTWISE)) or (
                user.op == "call_function" and user.target in (torch.relu, nn.functional.relu))
            node = user if passthrough else None
        return None

    for group in groups:
        readers = [m for m in group.members if m.side == "in"]
        writers = sorted((m.layer for m in group.members if m.side == "out"), key=position.__getitem__)
        first = calls.get(writers[0])
        if not readers or first is None or not first.all_input_nodes:
            continue
        block_input = first.all_input_nodes[0]
        # A removed branch computes zeros before its batch norm: only bias-free convolutions may vanish.
        if not all(m.layer in position and layers[position[m.layer]].op == "conv" and modules[m.layer].bias is None
                   for m in readers):
            continue
        ends = [branch_end(m.layer, block_input) for m in readers]
        if all(end is not None for end in ends):
            group.collapsible = sorted(m.layer for m in readers)
            # The search scales the branch at its end module: one the branch alone calls (a ReLU
            # module shared with the stem would scale the stem too).
            if len(ends) == 1 and ends[0].op == "call_module" and calls_per_module[ends[0].target] == 1:
                group.branch_end = str(ends[0].target)


def _check_one_owner(layers: list[LayerShape], groups: list[ChannelGroup]) -> None:
    """Each layer's outputs belong to one group that covers all of them, each member maps root
    channels to distinct channels of its layer: anything else means the dependency analysis
    mis-read the graph (e.g. a concatenation before a flatten)."""
    shapes = {shape.name: shape for shape in layers}
    owners: dict[str, int] = {}
    for group in groups:
        for member in group.members:
            shape = shapes[member.layer]
            mapped = member.channel_of_root
            width = shape.out_channels if member.side == "out" else shape.in_channels
            wrong = (len(mapped) % group.channels or len(set(mapped)) != len(mapped) or max(mapped, default=0) >= width
                     or (member.side == "out" and len(mapped) != width))
            if wrong or (member.side == "out" and member.layer in owners):
                raise HdapError(f"the dependency analysis mis-read the channels of layer {member.layer} (a concatenation "
                                "or reshape Torch-Pruning cannot follow?): hdap cannot follow this graph.")
            if member.side == "out":
                owners[member.layer] = group.index

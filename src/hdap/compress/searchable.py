"""A model whose training also trains its architecture.

    searchable = SearchableModel(model, space)
    loss = task_loss(searchable(x), y) + strength * cost(searchable.decisions()) / baseline_cost
    searchable.freeze(); spec = export_spec(searchable, ...)   # hdap.compress.spec

Three parts, each in its own place:
- the architecture's logits and the probabilities and hard choices they give
  (`hdap.compress.architecture.ArchitectureLogits`);
- the soft masks, here: hooks and parametrisations on the wrapped model that make its forward
  the searched architecture's. A granule's keep probability scales its channels where other
  layers read them (through their weights, where those are the smaller), a branch's probability
  scales what it adds to the skip (after its batch norm, which would undo a scale applied before
  it), and a layer's weights and inputs are the precision mix of their fake-quantised versions,
  as in Motetti et al. and PLiNIO's MPS. What one forward needs is computed once, at its start,
  into a `ForwardState` that lives for that forward only;
- what the latency cost sees (`hdap.compress.cost_view.CostView`): `decisions()` and
  `cost_inputs()`, so the cost's gradient reaches every logit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from hdap.compress.architecture import ArchitectureLogits
from hdap.compress.cost_view import CostView, InputMask
from hdap.compress.quantize import EXACT_IN_SEARCH, mix, mix_offsets, round_activation, round_weight, weight_rounding_offsets
from hdap.compress.space import SearchSpace
from hdap.latency.layers import LayerConfig, LayerShape
from hdap.latency.surrogate import LayerDecision

AMAX_MOMENTUM = 0.1


def plain_key(key: str) -> str:
    """A state-dict key of a parametrised (fake-quantised, branch-scaled) model as the plain model names it."""
    return re.sub(r"parametrizations\.(\w+)\.original", r"\1", key)


@dataclass
class ForwardState:
    """What one forward of the searched model reads, computed once at its start."""

    channel_keep: torch.Tensor  # every root channel's keep probability, then a 1 (for channels no group masks)
    precisions: dict[str, torch.Tensor] = field(default_factory=dict)  # searched layers' soft precision mixes
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # their weights, mixed (`_searched_weights`)
    masked_on_weights: set[str] = field(default_factory=set)  # the layers whose input mask rides on those weights


def _on_device(precisions: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The layers' precision mixes on `device`, in one copy (they share the menu's length)."""
    if not precisions or device.type == "cpu":
        return precisions
    names = list(precisions)
    return dict(zip(names, torch.stack([precisions[n] for n in names]).to(device, non_blocking=True).unbind(0)))


class _MixedPrecisionWeight(nn.Module):
    """Parametrisation: the layer's weight as its precision mix (in the soft search, the one
    `SearchableModel` computed for all layers at the forward's start)."""

    def __init__(self, precisions: tuple[str, ...], probabilities, precomputed) -> None:
        super().__init__()
        self.precisions = precisions
        object.__setattr__(self, "probabilities", probabilities)  # callables, not submodules
        object.__setattr__(self, "precomputed", precomputed)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        ready = self.precomputed()
        return ready if ready is not None else mix(weight, self.probabilities(), self.precisions, round_weight)


class _BranchScale(nn.Module):
    """Parametrisation of a branch's last batch norm's weight and bias: both times the branch's
    probability, which scales the branch's output exactly (BN(x) * p = x_hat * (gamma * p) + beta * p)
    for two 16-element products instead of a pass over the feature map and its gradient."""

    def __init__(self, probability) -> None:
        super().__init__()
        object.__setattr__(self, "probability", probability)  # a callable: None once frozen

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        probability = self.probability()
        return value if probability is None else value * probability


class SearchableModel(nn.Module):
    def __init__(self, model: nn.Module, space: SearchSpace) -> None:
        super().__init__()
        self.model = model
        self.space = space
        # Only a branch whose contribution can be scaled gets a logit: one the task loss cannot see
        # would be decided by the cost alone.
        self.architecture = ArchitectureLogits(space, [g.index for g in space.groups if g.removable and g.branch_end])
        self._state: ForwardState | None = None  # set for the duration of one forward
        modules = dict(model.named_modules())
        self._input_masks = {shape.name: self._input_mask(shape) for shape in space.layers}
        self._handles = []
        for shape in space.layers:
            module = modules[shape.name]
            module.register_buffer("hdap_input_amax", torch.zeros(()))
            self._handles.append(module.register_forward_pre_hook(self._input_hook(shape)))
            parametrize.register_parametrization(module, "weight", _MixedPrecisionWeight(
                space.precisions, lambda name=shape.name: self.precision_probabilities(name),
                lambda name=shape.name: self._state.weights.get(name) if self._state is not None else None))
        for reader in space.channel_maps:
            self._handles.append(modules[reader.layer].register_forward_pre_hook(self._channel_map_hook(reader.layer)))
        self._scaled_norms = self._scale_branches(modules)
        self._build_mask_indices()
        self._build_weight_tables(modules)
        self.cost_view = CostView(space, self.architecture, self._input_masks)
        self.to(next(model.parameters()).device)  # the hooks' buffers and mask indices beside the weights

    def _apply(self, fn, recurse: bool = True):
        """Moving the model (`.to("cuda")`) moves its weights, activations and channel masks; the
        architecture's logits and its cost stay on the CPU: they are a few hundred scalars, which the
        CPU computes in microseconds where a GPU would launch a kernel for each, and each forward
        copies the probabilities it needs to the device once (`forward_state`)."""
        self.model._apply(fn, recurse)
        self._mask_index = {name: fn(index) for name, index in self._mask_index.items()}
        return self
    def _input_mask(self, shape: LayerShape) -> list[InputMask]:
        feeds = []
        for group, member in self.space.in_groups(shape.name):
            per_root = len(member.channel_of_root) // group.channels  # >1 where a feature map was flattened
            roots = torch.arange(len(member.channel_of_root)) // per_root
            feeds.append((group.index, torch.tensor(member.channel_of_root), roots))
        return feeds

    def _scale_branches(self, modules: dict[str, nn.Module]) -> list[nn.Module]:
        """Scale each branch with a logit by its probability at its end: its batch norm's affine
        parameters where it ends in one, else its output (a hook)."""
        scaled = []
        for group in self.space.groups:
            if str(group.index) not in self.branch_logits:
                continue
            end = modules[group.branch_end]
            if isinstance(end, nn.modules.batchnorm._BatchNorm) and end.affine:
                scale = _BranchScale(lambda index=group.index: None if self.frozen else self.branch_probability(index))
                for name in ("weight", "bias"):
                    parametrize.register_parametrization(end, name, scale)
                scaled.append(end)
            else:
                self._handles.append(end.register_forward_hook(self._branch_hook(group.index)))
        return scaled

    # -- the architecture (hdap.compress.architecture) ----------------------------------------
    @property
    def keep_logits(self) -> nn.ParameterList:
        return self.architecture.keep_logits

    @property
    def branch_logits(self) -> nn.ParameterDict:
        return self.architecture.branch_logits

    @property
    def precision_logits(self) -> nn.ParameterDict:
        return self.architecture.precision_logits

    @property
    def temperature(self) -> float:
        return self.architecture.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.architecture.temperature = value

    @property
    def frozen(self) -> bool:
        return self.architecture.frozen

    @property
    def keep_threshold(self) -> float:
        return self.architecture.keep_threshold

    @keep_threshold.setter
    def keep_threshold(self, value: float) -> None:
        self.architecture.keep_threshold = value

    def keep_probabilities(self, group: int) -> torch.Tensor:
        return self.architecture.keep_probabilities(group)

    def alive_probability(self, group: int) -> torch.Tensor:
        return self.architecture.alive_probability(group)

    def branch_probability(self, group: int) -> torch.Tensor:
        return self.architecture.branch_probability(group)

    def precision_probabilities(self, layer: str) -> torch.Tensor:
        """The layer's precision mix: the forward's own while one is in flight."""
        if self._state is not None and layer in self._state.precisions:
            return self._state.precisions[layer]
        return self.architecture.precision_probabilities(layer)

    def architecture_parameters(self) -> list[nn.Parameter]:
        return self.architecture.parameters_to_search()

    def kept_granules(self, group: int) -> list[bool]:
        return self.architecture.kept_granules(group)

    def reorder_branches(self, order: list[str]) -> None:
        self.architecture.reorder_branches(order)

    def freeze(self) -> None:
        self.architecture.freeze()

    # -- what the cost sees (hdap.compress.cost_view) -----------------------------------------
    def decisions(self) -> list[LayerDecision]:
        return self.cost_view.decisions()

    def cost_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.cost_view.cost_inputs()

    def hard_layers(self) -> list[tuple[LayerShape, LayerConfig | None]]:
        return self.cost_view.hard_layers()

    # -- the soft masks ------------------------------------------------------------------------
    def _build_mask_indices(self) -> None:
        """Index tables that give every layer's input mask in one gather from one vector of all
        groups' root channels (the search's forward is many small operations: fewer is faster)."""
        groups = self.space.groups
        root_start = [sum(g.channels for g in groups[:i]) for i in range(len(groups))]
        granule_start = [sum(g.granules for g in groups[:i]) for i in range(len(groups))]
        ones_slot = sum(g.channels for g in groups)  # where the appended 1 sits: channels no group masks
        self.register_buffer("granule_of_root", torch.cat(
            [granule_start[i] + self.architecture.granule_of_channel(i) for i in range(len(groups))]
            or [torch.zeros(0, dtype=torch.long)]), persistent=False)
        self._mask_index: dict[str, torch.Tensor] = {}
        for shape in self.space.layers:
            feeds = self._input_masks[shape.name]
            if not feeds:
                continue
            index = torch.full((shape.in_channels,), ones_slot, dtype=torch.long)
            for group, channels, roots in feeds:
                index[channels] = root_start[group] + roots
            self._mask_index[shape.name] = index
        for reader in self.space.channel_maps:
            index = torch.full((reader.in_channels,), ones_slot, dtype=torch.long)
            index[torch.tensor(reader.channel_of_root)] = root_start[reader.group] + torch.arange(len(reader.channel_of_root))
            self._mask_index[reader.layer] = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._forward(self.forward_state(x.shape[0])):
            return self.model(x)

    def forward_state(self, batch: int) -> ForwardState:
        """What a forward of `batch` examples reads: the channels' keep probabilities and, in the
        soft search, every searched layer's precision mix and mixed weight."""
        if self.frozen or not len(self.keep_logits):
            keep = [self.keep_probabilities(g) for g in range(len(self.space.groups))]
        else:  # all groups at once: one sigmoid, one gather
            keep = [torch.sigmoid(torch.cat(list(self.keep_logits)) / self.temperature)[self.granule_of_root]]
        device = next(self.model.parameters()).device
        keep_all = torch.cat([*keep, torch.ones(1, device=self.granule_of_root.device)])
        state = ForwardState(keep_all.to(device, non_blocking=True), _on_device(self.architecture.soft_precisions(), device))
        # Soft mixes only: without a gradient to the logits each layer takes `mix`'s hard path.
        if state.precisions and next(iter(state.precisions.values())).requires_grad:
            state.weights, state.masked_on_weights = self._searched_weights(state, batch)
        return state

    @contextmanager
    def _forward(self, state: ForwardState) -> Iterator[None]:
        self._state = state
        try:
            yield
        finally:
            self._state = None

    def _build_weight_tables(self, modules: dict[str, nn.Module]) -> None:
        """What `_searched_weights` needs: the searched layers, the shape each one's input mask
        takes on its weight, the sizes of its weight and of one example's input, and the layers
        whose weights have one shape."""
        shapes = {s.name: s for s in self.space.layers}
        self._searched_layers = [(s.name, modules[s.name]) for s in self.space.layers if s.name not in self.space.protected]
        self._weight_mask_shape: dict[str, tuple[int, ...]] = {}
        self._weight_elements: dict[str, int] = {}
        self._input_elements: dict[str, int] = {}
        same_shape: dict[tuple[int, ...], list[int]] = {}
        for index, (name, module) in enumerate(self._searched_layers):
            weight, shape = module.parametrizations.weight.original, shapes[name]
            depthwise = shape.op == "depthwise"  # output channel c reads input channel c only
            self._weight_mask_shape[name] = (-1, *[1] * (weight.dim() - 1)) if depthwise else (1, -1, *[1] * (weight.dim() - 2))
            self._weight_elements[name] = weight.numel()
            self._input_elements[name] = shape.in_channels * shape.height * shape.width
            same_shape.setdefault(tuple(weight.shape), []).append(index)
        self._same_shape = list(same_shape.values())

    def _searched_weights(self, state: ForwardState, batch: int) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Every searched layer's weight as its soft precision mix, and the layers whose input
        mask it carries.

        Scaling an input channel's weights is scaling the channel (a convolution is linear in each
        input channel), so where a layer's weight is smaller than its input batch the keep
        probabilities scale the weight instead; layers of one weight shape are rounded as one
        stack. On small inputs a search step is a few dozen small operations per layer; this saved
        ~2.7 ms of a 37 ms step (ResNet-20 on 8x8, batches of 64, both cores). One difference remains: a
        weight-masked layer's int8 input is rounded before its channels are scaled, on a range
        measured over all of them (`hdap_input_amax`), so the soft search sees a slightly coarser
        grid while channels are being dropped; the frozen model masks inputs again."""
        originals = [module.parametrizations.weight.original for _, module in self._searched_layers]
        rounded = [p for p in self.space.precisions if p not in EXACT_IN_SEARCH]
        offsets: dict[tuple[str, int], torch.Tensor] = {}  # (precision, layer): its rounding's offset
        for members in self._same_shape if rounded else []:
            stack = torch.stack([originals[i].detach() for i in members])
            for precision in rounded:
                offsets.update(((precision, i), offset) for i, offset in zip(members, weight_rounding_offsets(stack, precision).unbind(0)))
        weights, masked = {}, set()
        for index, (name, _module) in enumerate(self._searched_layers):
            mixed = mix_offsets(originals[index], state.precisions[name],
                                [offsets.get((precision, index)) for precision in self.space.precisions])
            mask = self._mask_index.get(name)
            if mask is not None and self._weight_elements[name] <= batch * self._input_elements[name]:
                mixed = mixed * state.channel_keep[mask].view(self._weight_mask_shape[name])
                masked.add(name)
            weights[name] = mixed
        return weights, masked

    def _input_hook(self, shape: LayerShape):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
            x = inputs[0]
            index = self._mask_index.get(shape.name)
            state = self._state
            # Unless the weights carry it (`_searched_weights`); a frozen mask always zeroes the
            # input, so activation ranges cover the kept channels, as the pruned model's engine's do.
            if index is not None and state is not None and shape.name not in state.masked_on_weights:
                x = x * state.channel_keep[index].view(1, -1, *([1] * (x.dim() - 2)))
            if module.training:
                with torch.no_grad():
                    low, high = torch.aminmax(x.detach())  # one pass, no |x| copy
                    batch_max = torch.maximum(high, -low)
                    amax = module.hdap_input_amax
                    if amax.item() == 0:
                        amax.copy_(batch_max)
                    else:
                        amax.lerp_(batch_max, AMAX_MOMENTUM)
            amax = module.hdap_input_amax
            mixed = mix(x, self.precision_probabilities(shape.name), self.space.precisions,
                        lambda value, precision: round_activation(value, precision, amax))
            return (mixed, *inputs[1:])
        return hook

    def _channel_map_hook(self, layer: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
            state = self._state
            if state is None:
                return None
            x = inputs[0]
            return (x * state.channel_keep[self._mask_index[layer]].view(1, -1, *([1] * (x.dim() - 2))), *inputs[1:])
        return hook

    def _branch_hook(self, group: int):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            # Frozen, a removed branch's channels are masked where they are read, so the branch adds
            # its batch norm's constant, as the pruned model's RemovedBranch does; the soft scale
            # (adding nothing at probability 0) is only the search's view of it.
            return output if self.frozen else output * self.branch_probability(group)
        return hook

    # -- weights in and out --------------------------------------------------------------------
    def load_plain_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a plain model's weights (the zoo model's keys) and forget the activation ranges,
        which the next batches measure afresh."""
        own = self.model.state_dict()
        mapped = {key: state_dict[plain_key(key)] for key in own if not key.endswith("hdap_input_amax")}
        self.model.load_state_dict(mapped, strict=False)
        for module in self.model.modules():
            if hasattr(module, "hdap_input_amax"):
                module.hdap_input_amax.zero_()

    def remove(self) -> nn.Module:
        """The plain model with its trained weights (parametrisations and hooks removed)."""
        for handle in self._handles:
            handle.remove()
        self._searched_layers, self._same_shape = [], []
        for shape in self.space.layers:
            module = dict(self.model.named_modules())[shape.name]
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for norm in self._scaled_norms:
            for name in ("weight", "bias"):
                parametrize.remove_parametrizations(norm, name, leave_parametrized=False)
        return self.model

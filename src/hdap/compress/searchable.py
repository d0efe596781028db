"""A model whose training also trains its architecture.

    searchable = SearchableModel(model, space)
    loss = task_loss(searchable(x), y) + strength * cost(searchable.decisions()) / baseline_cost
    searchable.freeze(); spec = export_spec(searchable, ...)   # hdap.compress.spec

Each channel granule has a keep logit, each removable residual branch a branch logit, each layer
a logit per precision of the menu. In training, a granule's keep probability (sigmoid of logit /
temperature) scales its channels where other layers read them (through their weights, where
those are the smaller), a branch's probability scales what it adds to the skip (after its batch
norm, which would undo a scale applied before it), and a layer's weights and inputs are the
precision mix of their fake-quantised versions (softmax of logits / temperature), as in Motetti
et al. and PLiNIO's MPS. Lowering the temperature makes the choices crisp; `freeze()` makes them
hard (keep if logit > threshold, argmax precision) for the final fine-tune and export. The same
soft quantities feed the latency surrogates through `decisions()`, so the cost's gradient
reaches every logit.

The branch logit is what lets the search remove the right branches on launch-bound devices, where
only a branch removed as a whole saves time: without it a branch lives while any of its granules
does, so narrow branches (few granules) vanish first whatever they are worth to the task.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from hdap.compress.quantize import EXACT_IN_SEARCH, mix, mix_offsets, round_activation, round_weight, weight_rounding_offsets
from hdap.compress.space import SearchSpace
from hdap.latency.fleet_cost import stack_decisions
from hdap.latency.layers import LayerConfig, LayerShape
from hdap.latency.surrogate import LayerDecision


def plain_key(key: str) -> str:
    """A state-dict key of a parametrised (fake-quantised, branch-scaled) model as the plain model names it."""
    return re.sub(r"parametrizations\.(\w+)\.original", r"\1", key)


KEEP_LOGIT_INIT = 2.0  # every channel starts kept (probability 0.88 at temperature 1)
AMAX_MOMENTUM = 0.1


class _MixedPrecisionWeight(nn.Module):
    """Parametrisation: the layer's weight as its precision mix (in the soft search, the one
    `SearchableModel.forward` computed for all layers at once)."""

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


def _key(layer: str) -> str:
    return layer.replace(".", "__")


class SearchableModel(nn.Module):
    def __init__(self, model: nn.Module, space: SearchSpace) -> None:
        super().__init__()
        self.model = model
        self.space = space
        self.temperature = 1.0
        self.frozen = False
        self.keep_threshold = 0.0  # a granule is kept when its logit is above this, once frozen
        self._forward_precisions: dict[str, torch.Tensor] = {}  # the precision mixes of the forward in flight
        self._forward_weights: dict[str, torch.Tensor] = {}  # its searched layers' weights, mixed (`_searched_weights`)
        self._masked_on_weights: set[str] = set()  # the layers whose soft input mask rides on those weights
        self.keep_logits = nn.ParameterList(
            [nn.Parameter(torch.full((g.granules,), KEEP_LOGIT_INIT)) for g in space.groups])
        # Only a branch whose contribution can be scaled gets a logit: one the task loss cannot
        # see would be decided by the cost alone. (ParameterDicts sort plain dicts' keys: look
        # logits up by name, never by position.)
        self.branch_logits = nn.ParameterDict(
            {str(g.index): nn.Parameter(torch.tensor(KEEP_LOGIT_INIT)) for g in space.groups if g.removable and g.branch_end})
        self.precision_logits = nn.ParameterDict(
            {_key(s.name): nn.Parameter(torch.zeros(len(space.precisions))) for s in space.layers if s.name not in space.protected})
        for index, group in enumerate(space.groups):
            self.register_buffer(f"granule_of_channel_{index}", group.granule_of_channel(), persistent=False)
        modules = dict(model.named_modules())
        self._handles = []
        self._input_masks: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for shape in space.layers:
            module = modules[shape.name]
            feeds = []
            for group, member in space.in_groups(shape.name):
                per_root = len(member.channel_of_root) // group.channels  # >1 where a feature map was flattened
                roots = torch.arange(len(member.channel_of_root)) // per_root
                feeds.append((group.index, torch.tensor(member.channel_of_root), roots))
            self._input_masks[shape.name] = feeds
            module.register_buffer("hdap_input_amax", torch.zeros(()))
            self._handles.append(module.register_forward_pre_hook(self._input_hook(shape)))
            parametrize.register_parametrization(module, "weight", _MixedPrecisionWeight(
                space.precisions, lambda name=shape.name: self.precision_probabilities(name),
                lambda name=shape.name: self._forward_weights.get(name)))
        self._scaled_norms: list[nn.Module] = []
        for group in space.groups:
            if str(group.index) not in self.branch_logits:
                continue
            end = modules[group.branch_end]
            if isinstance(end, nn.modules.batchnorm._BatchNorm) and end.affine:
                scale = _BranchScale(lambda index=group.index: None if self.frozen else self.branch_probability(index))
                for name in ("weight", "bias"):
                    parametrize.register_parametrization(end, name, scale)
                self._scaled_norms.append(end)
            else:
                self._handles.append(end.register_forward_hook(self._branch_hook(group.index)))
        self._build_mask_indices()
        self._build_weight_tables(modules)
        self._channel_keep: torch.Tensor | None = None  # every root channel's keep probability, then a 1
        # The layers that vanish with a removable group: its own and the ones reading it.
        self._branch_of = {layer: g.index for g in space.groups if g.removable
                           for layer in [m.layer for m in g.members if m.side == "out"] + g.collapsible}
        self._build_cost_tables()

    # -- the architecture's probabilities ------------------------------------------------------
    def keep_probabilities(self, group: int) -> torch.Tensor:
        """Per root channel of a group: the probability it is kept."""
        if self.frozen:
            per_granule = torch.tensor(self.kept_granules(group), dtype=torch.float32)
        else:
            per_granule = torch.sigmoid(self.keep_logits[group] / self.temperature)
        return per_granule[getattr(self, f"granule_of_channel_{group}")]

    def alive_probability(self, group: int) -> torch.Tensor:
        """The probability a group keeps any granule (1 for groups that may not vanish)."""
        if not self.space.groups[group].removable:
            return torch.ones((), dtype=torch.float64)
        if self.frozen:
            return torch.tensor(float(any(self.kept_granules(group))), dtype=torch.float64)
        dropped = 1 - torch.sigmoid(self.keep_logits[group] / self.temperature).to(torch.float64)
        return self.branch_probability(group).to(torch.float64) * (1 - dropped.prod())

    def branch_probability(self, group: int) -> torch.Tensor:
        """The soft probability a removable group's branch stays by its branch logit (1 without one)."""
        if str(group) not in self.branch_logits:
            return torch.ones(())
        return torch.sigmoid(self.branch_logits[str(group)] / self.temperature)

    def precision_probabilities(self, layer: str) -> torch.Tensor:
        if layer in self._forward_precisions:
            return self._forward_precisions[layer]
        precisions = self.space.precisions
        if layer in self.space.protected:
            return torch.tensor([float(p == self.space.default_precision) for p in precisions])
        logits = self.precision_logits[_key(layer)]
        if self.frozen:
            return nn.functional.one_hot(logits.argmax(), len(precisions)).float()
        return torch.softmax(logits / self.temperature, dim=0)

    def architecture_parameters(self) -> list[nn.Parameter]:
        return list(self.keep_logits) + list(self.branch_logits.values()) + list(self.precision_logits.values())

    def reorder_branches(self, order: list[str]) -> None:
        """Hand the branches' removal values to the branches in `order` (its first gets the lowest):
        any threshold then removes as many branches as before, the first ones of `order`.
        A branch goes when its logit or every one of its granules' logits is at or below the
        threshold, so its value is min(branch logit, best granule logit); a branch handed a value
        above its best granule has its granule logits raised by the difference (their ranking kept)."""
        with torch.no_grad():
            def value(key: str) -> float:
                return min(float(self.branch_logits[key]), float(self.keep_logits[int(key)].max()))
            for key, target in zip(order, sorted(value(key) for key in order)):
                self.branch_logits[key].fill_(target)
                best_granule = float(self.keep_logits[int(key)].max())
                if best_granule < target:
                    self.keep_logits[int(key)].add_(target - best_granule)

    def freeze(self) -> None:
        """Hard decisions from now on: the architecture the fine-tune and export see."""
        self.frozen = True
        for parameter in self.architecture_parameters():
            parameter.requires_grad_(False)

    def load_plain_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a plain model's weights (the zoo model's keys) and forget the activation ranges,
        which the next batches measure afresh."""
        own = self.model.state_dict()
        mapped = {key: state_dict[plain_key(key)] for key in own if not key.endswith("hdap_input_amax")}
        self.model.load_state_dict(mapped, strict=False)
        for module in self.model.modules():
            if hasattr(module, "hdap_input_amax"):
                module.hdap_input_amax.zero_()

    # -- forward ------------------------------------------------------------------------------
    def _build_mask_indices(self) -> None:
        """Index tables that give every layer's input mask in one gather from one vector of all
        groups' root channels (the search's forward is many small operations: fewer is faster)."""
        groups = self.space.groups
        root_start = [sum(g.channels for g in groups[:i]) for i in range(len(groups))]
        granule_start = [sum(g.granules for g in groups[:i]) for i in range(len(groups))]
        ones_slot = sum(g.channels for g in groups)  # where the appended 1 sits: channels no group masks
        self.register_buffer("granule_of_root", torch.cat(
            [granule_start[i] + getattr(self, f"granule_of_channel_{i}") for i in range(len(groups))] or [torch.zeros(0, dtype=torch.long)]),
            persistent=False)
        self._mask_index: dict[str, torch.Tensor] = {}
        for shape in self.space.layers:
            feeds = self._input_masks[shape.name]
            if not feeds:
                continue
            index = torch.full((shape.in_channels,), ones_slot, dtype=torch.long)
            for group, channels, roots in feeds:
                index[channels] = root_start[group] + roots
            self._mask_index[shape.name] = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen or not len(self.keep_logits):
            keep = [self.keep_probabilities(g) for g in range(len(self.space.groups))]
        else:  # all groups at once: one sigmoid, one gather
            keep = [torch.sigmoid(torch.cat(list(self.keep_logits)) / self.temperature)[self.granule_of_root]]
        self._channel_keep = torch.cat([*keep, torch.ones(1, device=self.granule_of_root.device)])
        self._forward_precisions = self._all_precision_probabilities()
        # Soft mixes only: without a gradient to the logits each layer takes `mix`'s hard path, as before.
        if self._forward_precisions and next(iter(self._forward_precisions.values())).requires_grad:
            self._forward_weights, self._masked_on_weights = self._searched_weights(x.shape[0])
        try:
            return self.model(x)
        finally:
            self._forward_precisions, self._forward_weights, self._masked_on_weights = {}, {}, set()

    def _all_precision_probabilities(self) -> dict[str, torch.Tensor]:
        """Every searched layer's precision mix from one softmax (soft, not frozen; else empty)."""
        if self.frozen or not len(self.precision_logits):
            return {}
        names = [s.name for s in self.space.layers if s.name not in self.space.protected]
        soft = torch.softmax(torch.stack([self.precision_logits[_key(n)] for n in names]) / self.temperature, dim=1)
        return dict(zip(names, soft.unbind(0)))

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

    def _searched_weights(self, batch: int) -> tuple[dict[str, torch.Tensor], set[str]]:
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
            mixed = mix_offsets(originals[index], self._forward_precisions[name],
                                [offsets.get((precision, index)) for precision in self.space.precisions])
            mask = self._mask_index.get(name)
            if mask is not None and self._weight_elements[name] <= batch * self._input_elements[name]:
                mixed = mixed * self._channel_keep[mask].view(self._weight_mask_shape[name])
                masked.add(name)
            weights[name] = mixed
        return weights, masked

    def _input_hook(self, shape: LayerShape):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
            x = inputs[0]
            index = self._mask_index.get(shape.name)
            # Unless the weights carry it (`_searched_weights`); a frozen mask always zeroes the
            # input, so activation ranges cover the kept channels, as the pruned model's engine's do.
            if index is not None and self._channel_keep is not None and shape.name not in self._masked_on_weights:
                x = x * self._channel_keep[index].view(1, -1, *([1] * (x.dim() - 2)))
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

    def _branch_hook(self, group: int):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            # Frozen, a removed branch's channels are masked where they are read, so the branch adds
            # its batch norm's constant, as the pruned model's RemovedBranch does; the soft scale
            # (adding nothing at probability 0) is only the search's view of it.
            return output if self.frozen else output * self.branch_probability(group)
        return hook

    # -- what the cost sees -------------------------------------------------------------------
    def _channels(self, shape: LayerShape, keep: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.tensor(float(shape.out_channels), dtype=torch.float64)
        owner = self.space.out_group(shape.name)
        if owner is not None:
            out = keep[owner[0].index].to(torch.float64).sum()
        cin = torch.tensor(float(shape.in_channels), dtype=torch.float64)
        for group, _channels, roots in self._input_masks[shape.name]:
            cin = cin - (1 - keep[group][roots].to(torch.float64)).sum()
        return cin, out

    def decisions(self) -> list[LayerDecision]:
        """Every layer's soft (or, once frozen, hard) channel counts and precision choice."""
        keep = [self.keep_probabilities(g) for g in range(len(self.space.groups))]
        present = {layer: self.alive_probability(group) for layer, group in self._branch_of.items()}
        decisions = []
        for shape in self.space.layers:
            cin, out = self._channels(shape, keep)
            decisions.append(LayerDecision(shape.config(precision=self.space.default_precision), cin, out,
                                           self.precision_probabilities(shape.name).to(torch.float64),
                                           present.get(shape.name, 1.0)))
        return decisions

    def _build_cost_tables(self) -> None:
        """Constant matrices that turn the granules' keep probabilities into every layer's channel
        counts and presence in a few tensor operations (`cost_inputs`)."""
        space = self.space
        sizes = [g.granules for g in space.groups]
        start = [sum(sizes[:i]) for i in range(len(sizes))]
        layers, total = len(space.layers), sum(sizes)
        out_counts = torch.zeros(layers, total, dtype=torch.float64)
        in_counts = torch.zeros(layers, total, dtype=torch.float64)
        fixed_out = torch.zeros(layers, dtype=torch.float64)
        removable = [g.index for g in space.groups if g.removable]
        in_branch = torch.zeros(layers, len(removable), dtype=torch.float64)
        default = torch.zeros(layers, len(space.precisions))
        for index, shape in enumerate(space.layers):
            owner = space.out_group(shape.name)
            if owner is None:
                fixed_out[index] = shape.out_channels
            else:
                group = owner[0]
                out_counts[index].index_add_(0, start[group.index] + group.granule_of_channel(),
                                             torch.ones(group.channels, dtype=torch.float64))
            for group, _channels, roots in self._input_masks[shape.name]:
                granules = start[group] + getattr(self, f"granule_of_channel_{group}")[roots]
                in_counts[index].index_add_(0, granules, torch.ones(len(roots), dtype=torch.float64))
            if shape.name in self._branch_of:
                in_branch[index, removable.index(self._branch_of[shape.name])] = 1.0
            default[index, space.precisions.index(space.default_precision)] = 1.0
        # For `cost_inputs`' survival of each removable group, the product of its granules' drop
        # probabilities: its granules' indices in a row, padded with the index of an appended drop
        # probability of 1 (which leaves the product alone). And where each group's branch logit
        # sits among the stacked branch logits; a group without one reads an appended probability 1.
        widest = max([sizes[g] for g in removable], default=0)
        granule_rows = torch.full((len(removable), widest), total, dtype=torch.long)
        for row, g in enumerate(removable):
            granule_rows[row, :sizes[g]] = torch.arange(start[g], start[g] + sizes[g])
        branch_keys = [str(g) for g in removable if str(g) in self.branch_logits]
        branch_slot = torch.tensor([branch_keys.index(str(g)) if str(g) in branch_keys else len(branch_keys) for g in removable],
                                   dtype=torch.long)
        self._cost_tables = {
            "out_counts": out_counts, "in_counts": in_counts, "fixed_out": fixed_out,
            "in_channels": torch.tensor([float(s.in_channels) for s in space.layers], dtype=torch.float64),
            "in_branch": in_branch, "removable": removable, "granule_rows": granule_rows,
            "branch_keys": branch_keys, "branch_slot": branch_slot,
            "default_precision": default,
            "searched": torch.tensor([i for i, s in enumerate(space.layers) if s.name not in space.protected], dtype=torch.long),
        }

    def cost_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What `CompiledFleetCost` takes: per layer in channels, out channels, precision
        probabilities and presence; `stack_decisions(self.decisions())` in a few operations
        (the search costs its architecture on every batch)."""
        if self.frozen or not len(self.keep_logits):
            return stack_decisions(self.decisions())
        t = self._cost_tables
        keep = torch.sigmoid(torch.cat(list(self.keep_logits)) / self.temperature).to(torch.float64)
        out_channels = t["out_counts"] @ keep + t["fixed_out"]
        in_channels = t["in_channels"] - t["in_counts"] @ (1 - keep)
        present = torch.ones(len(self.space.layers), dtype=torch.float64)
        if t["removable"]:
            branch_logits = (torch.stack([self.branch_logits[key] for key in t["branch_keys"]]) if t["branch_keys"]
                             else torch.zeros(0))
            branches = torch.cat([torch.sigmoid(branch_logits / self.temperature), torch.ones(1)])[t["branch_slot"]]
            survives = 1 - torch.cat([1 - keep, torch.ones(1, dtype=keep.dtype)])[t["granule_rows"]].prod(dim=1)
            alive = branches.to(torch.float64) * survives
            present = present - t["in_branch"].sum(1) + t["in_branch"] @ alive
        probs = t["default_precision"]
        if len(self.precision_logits):
            searched = [self.precision_logits[_key(s.name)] for s in self.space.layers if s.name not in self.space.protected]
            soft = torch.softmax(torch.stack(searched) / self.temperature, dim=1)
            probs = probs.index_put((t["searched"],), soft.to(probs.dtype))
        return in_channels, out_channels, probs.to(torch.float64), present

    def hard_layers(self) -> list[tuple[LayerShape, LayerConfig | None]]:
        """Every layer as the frozen architecture runs it (integer channels, one precision), or
        None where its residual branch is removed."""
        was_frozen = self.frozen
        self.frozen = True
        try:
            with torch.no_grad():
                layers = []
                for shape, d in zip(self.space.layers, self.decisions()):
                    if float(d.present) == 0.0:
                        layers.append((shape, None))
                        continue
                    precision = self.space.precisions[int(d.precision_probs.argmax())]
                    sized = d.config.with_channels(round(float(d.in_channels)), round(float(d.out_channels)))
                    layers.append((shape, replace(sized, precision=precision)))
                return layers
        finally:
            self.frozen = was_frozen

    def kept_granules(self, group: int) -> list[bool]:
        """The hard decision: keep granules with a logit above the threshold. A group that is not
        removable keeps at least its most important granule; a removable one may lose them all, and
        loses them all when its branch logit is at or below the threshold."""
        kept = [bool(v > self.keep_threshold) for v in self.keep_logits[group].detach()]
        if str(group) in self.branch_logits and not float(self.branch_logits[str(group)].detach()) > self.keep_threshold:
            return [False] * len(kept)
        if not any(kept) and not self.space.groups[group].removable:
            kept[0] = True
        return kept

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

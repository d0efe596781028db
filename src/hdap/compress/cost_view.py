"""What the latency cost sees of a searched architecture: every layer's channels, precision and presence.

`decisions()` gives each layer as a `LayerDecision` (soft while searching, hard once frozen);
`cost_inputs()` gives the same numbers as the four tensors `CompiledFleetCost` takes, in a few
tensor operations (the search prices its architecture on every batch); `hard_layers()` gives the
frozen architecture as the latency model and the export see it.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from hdap.compress.architecture import ArchitectureLogits, layer_key
from hdap.compress.space import SearchSpace
from hdap.latency.fleet_cost import stack_decisions
from hdap.latency.layers import LayerConfig, LayerShape
from hdap.latency.surrogate import LayerDecision

InputMask = tuple[int, torch.Tensor, torch.Tensor]  # (group, the layer's input channels it feeds, their root channels)


class CostView:
    def __init__(self, space: SearchSpace, logits: ArchitectureLogits, input_masks: dict[str, list[InputMask]]) -> None:
        self.space, self.logits, self.input_masks = space, logits, input_masks
        # The layers that vanish with a removable group: its own and the ones reading it.
        self.branch_of = {layer: g.index for g in space.groups if g.removable
                          for layer in [m.layer for m in g.members if m.side == "out"] + g.collapsible}
        self.tables = self._tables()

    def _channels(self, shape: LayerShape, keep: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.tensor(float(shape.out_channels), dtype=torch.float64)
        owner = self.space.out_group(shape.name)
        if owner is not None:
            out = keep[owner[0].index].to(torch.float64).sum()
        cin = torch.tensor(float(shape.in_channels), dtype=torch.float64)
        for group, _channels, roots in self.input_masks[shape.name]:
            cin = cin - (1 - keep[group][roots].to(torch.float64)).sum()
        return cin, out

    def decisions(self) -> list[LayerDecision]:
        """Every layer's soft (or, once frozen, hard) channel counts and precision choice."""
        keep = [self.logits.keep_probabilities(g) for g in range(len(self.space.groups))]
        present = {layer: self.logits.alive_probability(group) for layer, group in self.branch_of.items()}
        decisions = []
        for shape in self.space.layers:
            cin, out = self._channels(shape, keep)
            decisions.append(LayerDecision(shape.config(precision=self.space.default_precision), cin, out,
                                           self.logits.precision_probabilities(shape.name).to(torch.float64),
                                           present.get(shape.name, 1.0)))
        return decisions

    def _tables(self) -> dict:
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
            for group, _channels, roots in self.input_masks[shape.name]:
                granules = start[group] + self.logits.granule_of_channel(group)[roots]
                in_counts[index].index_add_(0, granules, torch.ones(len(roots), dtype=torch.float64))
            if shape.name in self.branch_of:
                in_branch[index, removable.index(self.branch_of[shape.name])] = 1.0
            default[index, space.precisions.index(space.default_precision)] = 1.0
        # For `cost_inputs`' survival of each removable group, the product of its granules' drop
        # probabilities: its granules' indices in a row, padded with the index of an appended drop
        # probability of 1 (which leaves the product alone). And where each group's branch logit
        # sits among the stacked branch logits; a group without one reads an appended probability 1.
        widest = max([sizes[g] for g in removable], default=0)
        granule_rows = torch.full((len(removable), widest), total, dtype=torch.long)
        for row, g in enumerate(removable):
            granule_rows[row, :sizes[g]] = torch.arange(start[g], start[g] + sizes[g])
        branch_keys = [str(g) for g in removable if str(g) in self.logits.branch_logits]
        branch_slot = torch.tensor([branch_keys.index(str(g)) if str(g) in branch_keys else len(branch_keys) for g in removable],
                                   dtype=torch.long)
        return {
            "out_counts": out_counts, "in_counts": in_counts, "fixed_out": fixed_out,
            "in_channels": torch.tensor([float(s.in_channels) for s in space.layers], dtype=torch.float64),
            "in_branch": in_branch, "removable": removable, "granule_rows": granule_rows,
            "branch_keys": branch_keys, "branch_slot": branch_slot,
            "default_precision": default,
            "searched": torch.tensor([i for i, s in enumerate(space.layers) if s.name not in space.protected], dtype=torch.long),
        }

    def cost_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What `CompiledFleetCost` takes: per layer in channels, out channels, precision
        probabilities and presence; `stack_decisions(self.decisions(...))` in a few operations."""
        logits = self.logits
        if logits.frozen or not len(logits.keep_logits):
            return stack_decisions(self.decisions())
        t = self.tables
        keep = torch.sigmoid(torch.cat(list(logits.keep_logits)) / logits.temperature).to(torch.float64)
        out_channels = t["out_counts"] @ keep + t["fixed_out"]
        in_channels = t["in_channels"] - t["in_counts"] @ (1 - keep)
        present = torch.ones(len(self.space.layers), dtype=torch.float64)
        if t["removable"]:
            branch_logits = (torch.stack([logits.branch_logits[key] for key in t["branch_keys"]]) if t["branch_keys"]
                             else torch.zeros(0))
            branches = torch.cat([torch.sigmoid(branch_logits / logits.temperature), torch.ones(1)])[t["branch_slot"]]
            survives = 1 - torch.cat([1 - keep, torch.ones(1, dtype=keep.dtype)])[t["granule_rows"]].prod(dim=1)
            alive = branches.to(torch.float64) * survives
            present = present - t["in_branch"].sum(1) + t["in_branch"] @ alive
        probs = t["default_precision"]
        if len(logits.precision_logits):
            searched = [logits.precision_logits[layer_key(s.name)] for s in self.space.layers if s.name not in self.space.protected]
            soft = torch.softmax(torch.stack(searched) / logits.temperature, dim=1)
            probs = probs.index_put((t["searched"],), soft.to(probs.dtype))
        return in_channels, out_channels, probs.to(torch.float64), present

    def hard_layers(self) -> list[tuple[LayerShape, LayerConfig | None]]:
        """Every layer as the frozen architecture runs it (integer channels, one precision), or
        None where its residual branch is removed."""
        was_frozen = self.logits.frozen
        self.logits.frozen = True
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
            self.logits.frozen = was_frozen

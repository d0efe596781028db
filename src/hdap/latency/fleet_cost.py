"""The fleet's cost of a model: what the search minimises.

    fleet_weighted_latency = sum over clusters k of weight_k * latency_k(model)

with latency_k from cluster k's surrogate and weight_k its share of the fleet (HDAP's
objective), and the memory footprint (bits x parameters) as a second cost. Both are torch
expressions of the search's soft decisions, so they back-propagate into channel and precision
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hdap.errors import HdapError
from hdap.fleet.sku import QdqPlacement
from hdap.latency.layers import LayerConfig
from hdap.latency.surrogate import GroupModel, LatencySurrogate, LayerDecision, layer_work, roofline_ms, transition_key

if TYPE_CHECKING:
    from hdap.stages.surrogate import SurrogateIndex

BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4, "int2": 2}


@dataclass
class FleetCost:
    surrogates: list[LatencySurrogate]
    weights: list[float]  # share of the fleet per cluster
    precisions: tuple[str, ...]
    placement: QdqPlacement = QdqPlacement.TENSORRT  # how the fleet's engine is given int8 (the SKU's)

    def __post_init__(self) -> None:
        if len(self.surrogates) != len(self.weights) or not self.surrogates:
            raise HdapError("the fleet cost needs one surrogate per cluster and a weight for each.")
        total = sum(self.weights)
        self.weights = [w / total for w in self.weights]

    @classmethod
    def from_index(cls, index: SurrogateIndex, directory: Path, placement: QdqPlacement = QdqPlacement.TENSORRT) -> FleetCost:
        """The clusters' surrogates and weights as the surrogate stage wrote them into `directory`."""
        surrogates = [LatencySurrogate.load(directory / c.surrogate) for c in index.clusters]
        return cls(surrogates, [c.weight for c in index.clusters], tuple(index.precisions), placement)

    def per_cluster_latency(self, decisions: list[LayerDecision]) -> torch.Tensor:
        return torch.stack([s.model_cost(decisions, self.precisions) for s in self.surrogates])

    def fleet_weighted_latency(self, decisions: list[LayerDecision]) -> torch.Tensor:
        weights = torch.tensor(self.weights, dtype=torch.float64)
        return (weights * self.per_cluster_latency(decisions)).sum()

    def memory_bits(self, decisions: list[LayerDecision]) -> torch.Tensor:
        return weight_bits(decisions, self.precisions)


def weight_bits(decisions: list[LayerDecision], precisions: tuple[str, ...]) -> torch.Tensor:
    """Weight memory: parameters kept times the expected bits per parameter (precision
    probabilities over `precisions`)."""
    bits = torch.tensor([BITS[p] for p in precisions], dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for d in decisions:
        k2 = d.config.kernel_size**2
        fan_in = 1 if d.config.op == "depthwise" else d.in_channels
        total = total + d.present * k2 * fan_in * d.out_channels * (d.precision_probs.to(torch.float64) * bits).sum()
    return total


class CompiledFleetCost:
    """The fleet cost of one fixed list of layers, as a few tensor operations.

    `FleetCost` walks clusters, layers and precisions in Python; a search evaluates the cost on
    every batch, so this gathers every surrogate's coefficients into (cluster, precision, layer)
    tensors once. It computes exactly what `LatencySurrogate.model_cost` does (a test holds the
    two together)."""

    def __init__(self, cost: FleetCost, layers: list[LayerConfig]) -> None:
        self.precisions = cost.precisions
        self.weights = torch.tensor(cost.weights, dtype=torch.float64)
        fields = ("tile", "input_tile", "in_unpadded_below_tile", "overhead_ms", "compute_ms_per_gmac", "input_ms_per_melement",
                  "output_ms_per_melement", "weight_ms_per_melement", "sharpness")
        table = {f: torch.zeros(len(cost.surrogates), len(self.precisions), len(layers), dtype=torch.float64) for f in fields}
        for s, surrogate in enumerate(cost.surrogates):
            for p, precision in enumerate(self.precisions):
                for layer, config in enumerate(layers):
                    group = surrogate.group(config, precision)
                    for f in fields:
                        table[f][s, p, layer] = float(getattr(group, f))
        self.table = table
        # Every cluster x precision x layer's roofline as one group model of (clusters, precisions, layers) tensors.
        self.models = GroupModel(table["tile"], table["overhead_ms"], table["compute_ms_per_gmac"], table["input_ms_per_melement"],
                                 table["output_ms_per_melement"], table["weight_ms_per_melement"], table["sharpness"])
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
        self.depthwise = torch.tensor([c.op == "depthwise" for c in layers])
        self.kernel_area = as_tensor([c.kernel_size**2 for c in layers])
        self.in_area = as_tensor([c.height * c.width for c in layers])
        self.out_area = as_tensor([c.out_height * c.out_width for c in layers])
        self.scale = as_tensor([[s.scale_of(p) for p in self.precisions] for s in cost.surrogates])  # (clusters, precisions)
        self.floor = as_tensor([s.layer_floor_ms for s in cost.surrogates])
        self.offset = as_tensor([s.model_offset_ms for s in cost.surrogates])
        self.layer_offset = as_tensor([s.layer_offset_ms for s in cost.surrogates])
        self.transitions = torch.zeros(len(cost.surrogates), len(self.precisions), len(self.precisions), dtype=torch.float64)
        for s, surrogate in enumerate(cost.surrogates):
            for i, before in enumerate(self.precisions):
                for j, after in enumerate(self.precisions):
                    self.transitions[s, i, j] = surrogate.transition_ms_per_melement.get(transition_key(before, after), 0.0)

    def per_cluster_latency(self, in_channels: torch.Tensor, out_channels: torch.Tensor, precision_probs: torch.Tensor,
                            present: torch.Tensor | None = None) -> torch.Tensor:
        """Latency (ms) per cluster for soft channel counts (layers,), precision probabilities
        (layers, precisions) and the probability each layer exists (layers,; default all 1)."""
        t = self.table
        work = layer_work(self.depthwise, self.kernel_area, self.in_area, self.out_area, in_channels.to(torch.float64),
                          out_channels.to(torch.float64), t["tile"], t["input_tile"], t["in_unpadded_below_tile"] > 0)
        above_floor = roofline_ms(self.models, work) - self.floor[:, None, None]  # (clusters, precisions, layers)
        probs = precision_probs.to(torch.float64)
        present = torch.ones(len(probs), dtype=torch.float64) if present is None else present.to(torch.float64)
        layers = torch.einsum("spl,lp,l,sp->s", above_floor, probs, present, self.scale)
        elements = work.out_channels[:-1] * self.out_area[:-1] / 1e6
        boundaries = torch.einsum("spq,lp,lq,l->s", self.transitions, probs[:-1], probs[1:], elements)
        return layers + self.offset + self.layer_offset * present.sum() + boundaries

    def fleet_weighted_latency(self, in_channels: torch.Tensor, out_channels: torch.Tensor, precision_probs: torch.Tensor,
                               present: torch.Tensor | None = None) -> torch.Tensor:
        return (self.weights * self.per_cluster_latency(in_channels, out_channels, precision_probs, present)).sum()


def stack_decisions(decisions: list[LayerDecision]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (in channels, out channels, precision probabilities, presence) tensors `CompiledFleetCost` takes."""
    return (torch.stack([torch.as_tensor(d.in_channels, dtype=torch.float64) for d in decisions]),
            torch.stack([torch.as_tensor(d.out_channels, dtype=torch.float64) for d in decisions]),
            torch.stack([d.precision_probs.to(torch.float64) for d in decisions]),
            torch.stack([torch.as_tensor(d.present, dtype=torch.float64) for d in decisions]))

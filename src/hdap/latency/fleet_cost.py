"""The fleet's cost of a model: what the search minimises.

    fleet_weighted_latency = sum over clusters k of weight_k * latency_k(model)

with latency_k from cluster k's surrogate and weight_k its share of the fleet (HDAP's
objective), and the memory footprint (bits x parameters) as a second cost. Both are torch
expressions of the search's soft decisions, so they back-propagate into channel and precision
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hdap.errors import HdapError
from hdap.latency.surrogate import LatencySurrogate, LayerDecision

BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4, "int2": 2}


@dataclass
class FleetCost:
    surrogates: list[LatencySurrogate]
    weights: list[float]  # share of the fleet per cluster
    precisions: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.surrogates) != len(self.weights) or not self.surrogates:
            raise HdapError("the fleet cost needs one surrogate per cluster and a weight for each.")
        total = sum(self.weights)
        self.weights = [w / total for w in self.weights]

    def per_cluster_latency(self, decisions: list[LayerDecision]) -> torch.Tensor:
        return torch.stack([s.model_cost(decisions, self.precisions) for s in self.surrogates])

    def fleet_weighted_latency(self, decisions: list[LayerDecision]) -> torch.Tensor:
        weights = torch.tensor(self.weights, dtype=torch.float64)
        return (weights * self.per_cluster_latency(decisions)).sum()

    def memory_bits(self, decisions: list[LayerDecision]) -> torch.Tensor:
        """Weight memory: parameters kept times the expected bits per parameter."""
        bits = torch.tensor([BITS[p] for p in self.precisions], dtype=torch.float64)
        total = torch.zeros((), dtype=torch.float64)
        for d in decisions:
            k2 = d.config.kernel_size**2
            fan_in = 1 if d.config.op == "depthwise" else d.in_channels
            total = total + k2 * fan_in * d.out_channels * (d.precision_probs.to(torch.float64) * bits).sum()
        return total

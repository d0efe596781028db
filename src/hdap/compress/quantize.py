"""Fake quantisation with straight-through gradients: how a layer's numbers look at a precision.

Weights are quantised per output channel (symmetric), activations per tensor with a scale
from a running maximum, as TensorRT's explicit-quantisation (Q/DQ) graphs do. fp16 is a round
trip through half precision. Going forward the values are rounded; going backward the
gradient passes through unchanged (the straight-through estimator).
"""

from __future__ import annotations

import torch

INTEGER_LEVELS = {"int8": 127, "int4": 7, "int2": 1}


def straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    return x + (rounded - x).detach()


def round_weight(weight: torch.Tensor, precision: str) -> torch.Tensor:
    """The weight as stored at `precision` (no gradient)."""
    if precision == "fp32":
        return weight
    if precision == "fp16":
        return weight.half().float()
    levels = INTEGER_LEVELS[precision]
    scale = weight.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-8) / levels
    zero = torch.zeros(len(scale), dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -levels, levels)


def activation_precision(precision: str) -> str:
    """What a layer's inputs run at: its own precision, but int8 under weight-only int4/int2
    (engines quantise only the weights below 8 bits)."""
    return precision if precision in ("fp32", "fp16", "int8") else "int8"


def round_activation(x: torch.Tensor, precision: str, amax: torch.Tensor) -> torch.Tensor:
    """The activation as the engine sees it in a layer at `precision`; `amax` is the layer's
    running maximum of |x| (a 0-d tensor)."""
    precision = activation_precision(precision)
    if precision == "fp32":
        return x
    if precision == "fp16":
        return x.half().float()
    levels = INTEGER_LEVELS["int8"]
    scale = (amax.clamp_min(1e-8) / levels).reshape(1).float()
    # Saturate as QuantizeLinear does (to -128, not -127): inputs below -amax are common with a moving maximum.
    return torch.fake_quantize_per_tensor_affine(x, scale, torch.zeros(1, dtype=torch.int32), -levels - 1, levels)


def mix(x: torch.Tensor, probs: torch.Tensor, precisions: tuple[str, ...], rounding) -> torch.Tensor:
    """sum_p probs[p] * rounding(x, p) with straight-through gradients, in few autograd steps:
    as the probabilities sum to one this is x + sum_p probs[p] * (r_p - x), the rounding
    differences computed without autograd. A hard choice (no gradient) rounds once."""
    if not probs.requires_grad:
        return straight_through(x, rounding(x.detach(), precisions[int(probs.argmax())]))
    with torch.no_grad():
        offsets = [rounding(x, p) - x for p in precisions]
    mixed = x
    for index, offset in enumerate(offsets):
        mixed = mixed + probs[index].to(x.dtype) * offset
    return mixed

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
    weight = weight.detach()
    return _quantise(weight, _per_channel_scale(weight, levels, channel_dim=0), -levels, levels)


def weight_rounding_offsets(stack: torch.Tensor, precision: str) -> torch.Tensor:
    """`round_weight(w, precision) - w` for each weight w of a stack of same-shaped weights
    (stack[i] one layer's), for an integer precision: one pass for several layers (no gradient)."""
    levels = INTEGER_LEVELS[precision]
    stack = stack.detach()
    return _quantise(stack, _per_channel_scale(stack, levels, channel_dim=1), -levels, levels).sub_(stack)


def _per_channel_scale(weights: torch.Tensor, levels: int, channel_dim: int) -> torch.Tensor:
    """The symmetric scale of each output channel (dimension `channel_dim`): its largest |w| over
    `levels`, kept broadcastable against `weights`."""
    dims = tuple(range(channel_dim + 1, weights.dim()))
    return weights.abs().amax(dim=dims, keepdim=True).clamp_min_(1e-8).div_(levels)


def _quantise(x: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """x rounded to the integer grid of `scale` (half to even, as QuantizeLinear) and saturated.
    Written out rather than torch.fake_quantize_*: those also build a gradient mask the
    straight-through estimator here never uses, and cost several times as much on small tensors."""
    return torch.div(x, scale).round_().clamp_(low, high).mul_(scale)  # in place: one new tensor, not four


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
    scale = (amax.clamp_min(1e-8) / levels).float()
    # Saturate as QuantizeLinear does (to -128, not -127): inputs below -amax are common with a moving maximum.
    return _quantise(x.detach(), scale, -levels - 1, levels)


# Precisions whose rounding the soft search leaves out: fp16 moves values by ~1e-3 of themselves,
# a hundred times less than int8, so its offset would only cost two passes over every tensor. The
# hard choice (fine-tune, export) rounds them as the engine does.
EXACT_IN_SEARCH = ("fp32", "fp16")


def mix(x: torch.Tensor, probs: torch.Tensor, precisions: tuple[str, ...], rounding) -> torch.Tensor:
    """sum_p probs[p] * rounding(x, p) with straight-through gradients: as the probabilities sum
    to one this is x + sum_p probs[p] * (r_p - x), the rounding differences computed without
    autograd (zero for `EXACT_IN_SEARCH`, and left out), so x's gradient passes unchanged and
    probs[p]'s is <grad, r_p - x>. Plain tensor operations rather than a custom autograd Function:
    on one thread, forward and backward of an fp16/int8 activation mix took 194 against 252 us
    on 64x16x8x8 and 2.9 against 4.8 ms on 64x16x32x32 (a one-off measurement), and an all-exact
    menu costs nothing. A hard choice (no gradient) rounds once, at its precision."""
    if not probs.requires_grad:
        return straight_through(x, rounding(x.detach(), precisions[int(probs.argmax())]))
    with torch.no_grad():
        offsets = [None if p in EXACT_IN_SEARCH else rounding(x, p).sub_(x) for p in precisions]
    return mix_offsets(x, probs, offsets)


def mix_offsets(x: torch.Tensor, probs: torch.Tensor, offsets: list[torch.Tensor | None]) -> torch.Tensor:
    """`mix`'s soft result from the roundings' offsets (r_p - x, no gradient; None for a precision
    left out): x + sum_p probs[p] * offsets[p]."""
    mixed = x
    for probability, offset in zip(probs.unbind(0), offsets):
        if offset is not None:
            mixed = mixed + probability.to(x.dtype) * offset
    return mixed

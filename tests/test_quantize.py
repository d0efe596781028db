"""Fake quantisation: the written-out rounding matches PyTorch's fake-quantize ops, and the
one-step precision mix has the gradients of the sum it stands for."""

from __future__ import annotations

import torch

from hdap.compress.quantize import EXACT_IN_SEARCH, mix, round_activation, round_weight, weight_rounding_offsets


def test_weight_rounding_matches_per_channel_fake_quantisation() -> None:
    weight = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    scale = weight.abs().flatten(1).amax(dim=1) / 127
    expected = torch.fake_quantize_per_channel_affine(weight, scale, torch.zeros(16, dtype=torch.int32), 0, -127, 127)
    assert torch.allclose(round_weight(weight, "int8"), expected, atol=1e-6)


def test_activation_rounding_matches_per_tensor_fake_quantisation_and_saturates_at_minus_128() -> None:
    x = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(1)) * 3
    amax = torch.tensor(2.0)
    expected = torch.fake_quantize_per_tensor_affine(x, 2.0 / 127, 0, -128, 127)
    rounded = round_activation(x, "int8", amax)
    assert torch.allclose(rounded, expected, atol=1e-6)
    assert float(x.min()) < -2.1 and abs(float(rounded.min()) + 128 * 2.0 / 127) < 1e-6


def test_the_precision_mix_has_the_gradients_of_its_weighted_sum_with_fp16_exact_in_the_search() -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, 3, 3, generator=generator, requires_grad=True)
    logits = torch.randn(3, generator=generator, requires_grad=True)
    upstream = torch.randn(8, 4, 3, 3, generator=generator)
    precisions = ("fp16", "int8", "int4")

    probs = torch.softmax(logits, dim=0)
    (mix(x, probs, precisions, round_weight) * upstream).sum().backward()
    fused_x, fused_logits = x.grad.clone(), logits.grad.clone()
    x.grad, logits.grad = None, None
    probs = torch.softmax(logits, dim=0)
    # fp16's rounding is left out of the soft mix (EXACT_IN_SEARCH): its offset is zero.
    offsets = [torch.zeros_like(x) if p in EXACT_IN_SEARCH else round_weight(x.detach(), p) - x.detach() for p in precisions]
    reference = x + sum(probs[i] * offsets[i] for i in range(3))  # straight through: d/dx = 1
    (reference * upstream).sum().backward()
    assert torch.allclose(mix(x, torch.softmax(logits, 0), precisions, round_weight), reference, atol=1e-6)
    assert torch.allclose(fused_x, x.grad) and torch.allclose(fused_logits, logits.grad, atol=1e-5)


def test_a_hard_precision_choice_rounds_fp16_as_the_engine_does() -> None:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(3)) * 1e-3 + 1.0
    hard = mix(x, torch.tensor([1.0, 0.0]), ("fp16", "int8"), round_weight)
    assert torch.equal(hard, x.half().float()) and not torch.equal(hard, x)


def test_the_stacked_weight_rounding_equals_each_layers_own() -> None:
    """The search rounds same-shaped layers as one stack: each layer's offset is its own rounding's."""
    torch.manual_seed(0)
    weights = [torch.randn(16, 8, 3, 3) * scale for scale in (0.1, 1.0, 7.0)]
    for precision in ("int8", "int4", "int2"):
        offsets = weight_rounding_offsets(torch.stack(weights), precision)
        for weight, offset in zip(weights, offsets):
            assert torch.equal(offset, round_weight(weight, precision) - weight)

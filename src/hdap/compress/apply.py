"""The searched architecture as a real model: channels removed, precisions attached as fake quantisation.

    model = build_pruned_model(spec, weights)        # a plain, smaller torch model (Torch-Pruning)
    attach_fake_quantization(model, spec)            # per-layer Q/DQ numbers, trainable (QAT)
    ...train...
    amax, weights = activation_amax(model), plain_state_dict(model)    # what the export needs

Weights are quantised per output channel and symmetric, activations per tensor with a scale from
a moving maximum of the layer's input, zero-point 0 throughout: what TensorRT's explicit
quantisation accepts and what `hdap.deploy.export` writes into the ONNX graph. fp16 layers are a
round trip through half precision. The rounding itself is `hdap.compress.quantize`'s, the same
the search trained with.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from hdap.compress.quantize import straight_through, round_activation, round_weight
from hdap.compress.searchable import plain_key
from hdap.compress.spec import ArchitectureSpec, apply_spec
from hdap.errors import HdapError

AMAX_MOMENTUM = 0.1


class _QuantizedWeight(nn.Module):
    """Parametrisation: the weight as stored at one precision, with a straight-through gradient."""

    def __init__(self, precision: str) -> None:
        super().__init__()
        self.precision = precision

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return straight_through(weight, round_weight(weight.detach(), self.precision))


def build_pruned_model(spec: ArchitectureSpec, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The spec's model, its unkept channels removed physically. `weights` are the full-size
    model's (the search's fine-tuned weights); without them the model is freshly initialised."""
    from hdap.models import build_model

    model = build_model(spec.model, tuple(spec.input_shape), classes=spec.classes)
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise HdapError(f"the searched weights do not fit model {spec.model} (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}): run the search and the fine-tune with the same model.")
    return apply_spec(spec, model)


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers that carry a precision (`hdap_precision`, set by `apply_spec`)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "hdap_precision")}


def _observe_and_quantize(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
    x = inputs[0]
    if module.training:
        with torch.no_grad():
            batch_max = x.detach().abs().max()
            amax = module.hdap_input_amax
            amax.copy_(batch_max if amax.item() == 0 else (1 - AMAX_MOMENTUM) * amax + AMAX_MOMENTUM * batch_max)
    activation = module.hdap_precision[1]
    return (straight_through(x, round_activation(x.detach(), activation, module.hdap_input_amax)), *inputs[1:])


def attach_fake_quantization(model: nn.Module, amax: dict[str, float] | None = None) -> nn.Module:
    """Fake-quantise every layer's weights and inputs at its precision, in place. `amax` restores
    saved activation ranges (from `activation_amax`); without it they are observed in training."""
    layers = quantized_layers(model)
    if not layers:
        raise HdapError("the model has no layer precisions: build it with build_pruned_model from an architecture spec.")
    for name, module in layers.items():
        weight_precision, _ = module.hdap_precision
        module.register_buffer("hdap_input_amax", torch.tensor(float((amax or {}).get(name, 0.0))))
        module.register_forward_pre_hook(_observe_and_quantize)
        parametrize.register_parametrization(module, "weight", _QuantizedWeight(weight_precision))
    return model


def calibrate(model: nn.Module, batches) -> None:
    """Fill the activation ranges from a few batches. Only the quantised layers observe (their
    training flag); batch norms keep their statistics and no weight changes."""
    was_training = model.training
    model.eval()
    layers = quantized_layers(model).values()
    for layer in layers:
        layer.train()
    device = next(model.parameters()).device
    with torch.no_grad():
        for x, _ in batches:
            model(x.to(device))
    model.train(was_training)


def activation_amax(model: nn.Module) -> dict[str, float]:
    """Each quantised layer's input range: the scale of its activation Q/DQ is amax / 127."""
    return {name: float(m.hdap_input_amax) for name, m in quantized_layers(model).items() if hasattr(m, "hdap_input_amax")}


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A fake-quantised model's weights as the plain pruned model names them (unrounded; no ranges)."""
    return {plain_key(key): value for key, value in model.state_dict().items()
            if not key.endswith("hdap_input_amax")}

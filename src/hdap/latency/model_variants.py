"""Whole variants of the real model, pruned at random and exported as the build exports them.

A layer timed alone pays a whole run's overhead; inside the model it does not, while the model
pays for what lies between its layers (residual adds, pooling, layout reorders) and for every
change of precision (a dequantize and a quantize where an int8 region meets fp32 layers). A
device times a dozen and a half variants of the model itself (channels and residual branches
removed at random, the whole model at each precision first) so the surrogate can fit its per-model
terms on them (`fit_model_overhead`: scale, offset, a per-layer offset and a cost per precision
boundary). Variants take each precision of the menu in turn, all layers alike, then a random mix of
them: without mixed variants no boundary is ever timed, and a search that alternates precisions
layer by layer looks free of the conversions it pays for. The whole model quantised is timed too:
it is the front's quantised-only point, often the one published. Fitted on pruned variants
only, the surrogates over-predicted it by 7-27% (ResNet-20 on this machine's CPU states); fitted
with it weighted as one of eighteen, still by 1-36% (both CIFAR ResNets), hence its weight in the fit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import torch

from hdap.fleet.sku import QdqPlacement
from hdap.latency.layers import LayerConfig


def model_variants(model_name: str, input_shape: tuple[int, ...], precisions: tuple[str, ...], count: int,
                   seed: int = 0, placement: QdqPlacement = QdqPlacement.TENSORRT) -> list[tuple[onnx.ModelProto, list[LayerConfig]]]:
    """`count` variants of the model as ONNX graphs, each with its layers as the surrogate sees them,
    its int8 written for the engine (`placement`; random images calibrate ONNX Runtime's)."""
    from hdap.compress.apply import build_pruned_model, quantized_layers
    from hdap.compress.searchable import SearchableModel
    from hdap.compress.space import build_search_space
    from hdap.compress.spec import export_spec, spec_layer_configs
    from hdap.deploy.export import export_qdq_onnx
    from hdap.models import build_model, prunable_layers

    model = build_model(model_name, input_shape)
    layers = prunable_layers(model, input_shape)
    searchable = SearchableModel(model, build_search_space(model, input_shape, precisions))
    generator = torch.Generator().manual_seed(seed)
    variants = []
    mixed = len(precisions) > 1
    for index in range(count):
        turn = index % (len(precisions) + mixed)
        whole = index < len(precisions)  # the first variant at each precision keeps everything; the others keep
        with torch.no_grad():  # each granule and branch at random
            for logits in searchable.keep_logits:
                logits.copy_(torch.full(logits.shape, 10.0) if whole else torch.rand(logits.shape, generator=generator) * 4 - 1.5)
            for logit in searchable.branch_logits.values():
                logit.copy_(torch.tensor(10.0) if whole else torch.rand((), generator=generator) * 6 - 2)
        spec = export_spec(searchable, model_name, input_shape, layers[-1].out_channels)
        rng = np.random.default_rng((seed, index))
        spec.layers = [layer if layer.removed else _at(layer, precisions[turn] if turn < len(precisions) else str(rng.choice(precisions)))
                       for layer in spec.layers]
        pruned = build_pruned_model(spec).eval()
        with torch.no_grad():  # statistics of a trained model: folded biases that differ (the exporter merges equal ones)
            for module in pruned.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.1, generator=generator)
        calibration = np.random.default_rng(seed).normal(size=(8, *input_shape)).astype(np.float32)
        graph = export_qdq_onnx(pruned, {name: 4.0 for name in quantized_layers(pruned)}, input_shape, placement, calibration)
        variants.append((graph, spec_layer_configs(spec, layers)))
    return variants


def _at(layer, precision: str):
    """A spec layer at one precision (weights and activations alike)."""
    from hdap.compress.quantize import activation_precision

    return replace(layer, weight_precision=precision, activation_precision=activation_precision(precision))

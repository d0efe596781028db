"""ONNX graphs of layer configurations: one layer to profile it, a chain of layers to time a model.

Quantized layers are written the way the exporter writes them for the target's engine
(`QdqPlacement`): activations in and out through QuantizeLinear/DequantizeLinear with zero-point
0 (signed int8 for TensorRT; unsigned for ONNX Runtime, whose Conv -> ReLU -> QuantizeLinear then
becomes one QLinearConv), int8 weights per output channel behind a DequantizeLinear. Float layers
keep float weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hdap.fleet.sku import QdqPlacement
from hdap.latency.layers import LayerConfig

OPSET = 17
ACTIVATION_SCALE = 0.05


class _GraphBuilder:
    def __init__(self, seed: int, placement: QdqPlacement) -> None:
        self.activation_type = np.uint8 if placement is QdqPlacement.ONNXRUNTIME else np.int8
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def constant(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def quantize_dequantize(self, tensor: str) -> str:
        """Fake-quantize an activation to 8 bits, zero-point 0."""
        scale = self.constant("act_scale", np.array(ACTIVATION_SCALE, np.float32))
        zero = self.constant("act_zero", np.array(0, self.activation_type))
        quantized, dequantized = self.name("q"), self.name("dq")
        self.nodes.append(helper.make_node("QuantizeLinear", [tensor, scale, zero], [quantized]))
        self.nodes.append(helper.make_node("DequantizeLinear", [quantized, scale, zero], [dequantized]))
        return dequantized

    def weight(self, shape: tuple[int, ...], precision: str) -> str:
        fan_in = int(np.prod(shape[1:]))
        values = self.rng.normal(0, 1 / np.sqrt(max(fan_in, 1)), size=shape).astype(np.float32)
        if precision != "int8":
            return self.constant("w", values.astype(np.float16) if precision == "fp16" else values)
        # Symmetric per-output-channel int8 weights.
        scales = np.abs(values).reshape(shape[0], -1).max(axis=1) / 127 + 1e-8
        quantized = np.round(values / scales.reshape(-1, *([1] * (len(shape) - 1)))).astype(np.int8)
        w = self.constant("w_int8", quantized)
        s = self.constant("w_scale", scales.astype(np.float32))
        z = self.constant("w_zero", np.zeros(shape[0], np.int8))
        out = self.name("w_dq")
        self.nodes.append(helper.make_node("DequantizeLinear", [w, s, z], [out], axis=0))
        return out

    def cast(self, tensor: str, to: int, stem: str) -> str:
        out = self.name(stem)
        self.nodes.append(helper.make_node("Cast", [tensor], [out], to=to))
        return out

    def pool_and_flatten(self, tensor: str) -> str:
        pooled, flat = self.name("pool"), self.name("flat")
        self.nodes.append(helper.make_node("GlobalAveragePool", [tensor], [pooled]))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat]))
        return flat

    def layer(self, tensor: str, config: LayerConfig) -> str:
        if config.precision == "int8":
            tensor = self.quantize_dequantize(tensor)
        elif config.precision == "fp16":
            tensor = self.cast(tensor, TensorProto.FLOAT16, "to_fp16")
        bias_type = np.float16 if config.precision == "fp16" else np.float32
        out = self.name(config.op)
        if config.op == "linear":
            w = self.weight((config.out_channels, config.in_channels), config.precision)
            b = self.constant("b", np.zeros(config.out_channels, bias_type))
            self.nodes.append(helper.make_node("Gemm", [tensor, w, b], [out], transB=1))
        else:
            groups = config.out_channels if config.op == "depthwise" else 1
            w = self.weight((config.out_channels, config.in_channels // groups, config.kernel_size, config.kernel_size), config.precision)
            b = self.constant("b", np.zeros(config.out_channels, bias_type))
            pad = config.kernel_size // 2
            self.nodes.append(
                helper.make_node(
                    "Conv", [tensor, w, b], [out],
                    kernel_shape=[config.kernel_size] * 2, strides=[config.stride] * 2, pads=[pad] * 4, group=groups,
                )
            )
        relu = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [out], [relu]))
        if config.precision == "int8":
            # Quantized output too: the runtime then fuses the layer into one integer kernel,
            # alone or in a chain, so a layer costs the same profiled alone as inside a model.
            relu = self.quantize_dequantize(relu)
        if config.precision == "fp16":
            relu = self.cast(relu, TensorProto.FLOAT, "to_fp32")
        return relu


def layers_graph(configs: list[LayerConfig], classes: int | None = None, seed: int = 0,
                 placement: QdqPlacement = QdqPlacement.TENSORRT) -> onnx.ModelProto:
    """A chain of layers (each output feeding the next), optionally pooled into a classifier."""
    first = configs[0]
    builder = _GraphBuilder(seed, placement)
    if first.op == "linear":
        input_shape = [1, first.in_channels]
    else:
        input_shape = [1, first.in_channels, first.height, first.width]
    tensor = "input"
    for index, config in enumerate(configs):
        if config.op == "linear" and index > 0 and configs[index - 1].op != "linear":
            tensor = builder.pool_and_flatten(tensor)
        tensor = builder.layer(tensor, config)
    if classes is not None:
        last = configs[-1]
        if last.op != "linear":
            tensor = builder.pool_and_flatten(tensor)
        w = builder.constant("fc_w", builder.rng.normal(0, 0.1, (classes, last.out_channels)).astype(np.float32))
        b = builder.constant("fc_b", np.zeros(classes, np.float32))
        logits = builder.name("logits")
        builder.nodes.append(helper.make_node("Gemm", [tensor, w, b], [logits], transB=1))
        tensor = logits
    builder.nodes.append(helper.make_node("Identity", [tensor], ["output"]))
    last = configs[-1]
    if classes is not None:
        output_shape = [1, classes]
    elif last.op == "linear":
        output_shape = [1, last.out_channels]
    else:
        output_shape = [1, last.out_channels, last.out_height, last.out_width]
    graph = helper.make_graph(
        builder.nodes,
        "hdap_layers",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_shape)],
        builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hdap")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model

"""The fine-tuned model as a QDQ ONNX graph: each layer's precision written into the graph.

    onnx_model = export_qdq_onnx(model, amax, input_shape)

Batch norms are folded into the convolutions first (torch.fx), the plain float model is exported
(the TorchScript exporter: it keeps the layers' parameter names, and needs no onnxscript), and
then every layer is rewritten by its precision, as TensorRT's explicit quantisation wants it:

- int8: the input goes through QuantizeLinear/DequantizeLinear (per tensor, scale amax/127,
  zero-point 0); the weight is stored as int8 with a per-output-channel DequantizeLinear.
- fp16: the weight and bias are stored in half precision; the input is cast to fp16 and the
  output back to fp32 (a strongly typed network then runs the layer in fp16).
- fp32: left as exported.

Writing the Q/DQ nodes ourselves (rather than exporting fake-quantize ops) stores int8 weights
as int8, puts fp16 layers in the same graph, and makes "Q/DQ exactly on the quantised layers"
a property we construct, not one we hope an exporter keeps.

For ONNX Runtime (`QdqPlacement.ONNXRUNTIME`, a CPU fleet) the placement differs: its CPU provider
fuses only complete DequantizeLinear -> op -> QuantizeLinear patterns, with unsigned activations
so a ReLU folds into the quantisation. There the float graph is quantised by ONNX Runtime's own
static quantiser: the int8 layers, and the adds and pools between int8 layers, with activation
ranges calibrated on training images (unsigned, asymmetric) and the same symmetric per-channel
int8 weights; fp32 layers and what lies between them keep no Q/DQ. What the gate reads is this
graph's accuracy in ONNX Runtime, so the extra quantisation points are measured, not assumed. Per-channel symmetric
quantisation is unchanged by folding a batch norm's per-channel scale into the weight, so the
folded int8 weights are the ones the fake-quantised model trained with.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from hdap.compress.apply import quantized_layers
from hdap.compress.quantize import INTEGER_LEVELS
from hdap.errors import HdapError
from hdap.fleet.sku import QdqPlacement

OPSET = 17
INPUT, OUTPUT = "input", "logits"


def fold_batch_norms(plain: nn.Module) -> nn.Module:
    """A copy of a plain model (no fake quantisation) with every conv -> batch norm pair folded
    into one conv; the convs keep their names and precisions."""
    plain = plain.eval()
    precisions = {name: m.hdap_precision for name, m in quantized_layers(plain).items()}
    try:
        folded = fuse(plain if isinstance(plain, fx.GraphModule) else fx.symbolic_trace(plain))
    except Exception as err:  # fx reports untraceable code as many types
        raise HdapError(f"the model cannot be traced to fold its batch norms ({type(err).__name__}: {err}).") from None
    modules = dict(folded.named_modules())
    for name, precision in precisions.items():
        modules[name].hdap_precision = precision
    return folded


def export_float_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The model as a float ONNX graph, batch dimension dynamic, parameter names kept."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model.eval(), torch.zeros(1, *input_shape), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT], do_constant_folding=True,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def _layer_nodes(graph: onnx.GraphProto, layers: list[str]) -> dict[str, onnx.NodeProto]:
    """The Conv/Gemm node of each layer, found by its weight initializer's name."""
    by_weight = {node.input[1]: node for node in graph.node if node.op_type in ("Conv", "Gemm") and len(node.input) > 1}
    nodes = {}
    for layer in layers:
        node = by_weight.get(f"{layer}.weight")
        if node is None:
            raise HdapError(f"layer {layer} is not a Conv or Gemm reading '{layer}.weight' in the exported graph: "
                            "hdap cannot place its precision.")
        nodes[layer] = node
    return nodes


class _GraphEditor:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.added: list[onnx.NodeProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def replace_initializer(self, name: str, value: np.ndarray) -> None:
        self.graph.initializer.remove(self.initializers[name])
        self.initializers[name] = numpy_helper.from_array(value, name)
        self.graph.initializer.append(self.initializers[name])

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.added.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def _quantize_int8(editor: _GraphEditor, layer: str, node: onnx.NodeProto, amax: float) -> None:
    levels = INTEGER_LEVELS["int8"]
    if amax <= 0:
        raise HdapError(f"layer {layer} is int8 but has no activation range: calibrate the model before exporting it.")
    scale = editor.constant(f"{layer}.input_scale", np.array(amax / levels, np.float32))
    zero = editor.constant(f"{layer}.input_zero_point", np.array(0, np.int8))
    quantized = editor.node("QuantizeLinear", [node.input[0], scale, zero], f"{layer}.input_quantized")
    node.input[0] = editor.node("DequantizeLinear", [quantized, scale, zero], f"{layer}.input_dequantized")

    weight = editor.array(node.input[1])
    channel_max = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
    channel_scale = (np.maximum(channel_max, 1e-8) / levels).astype(np.float32)
    broadcast = channel_scale.reshape(-1, *([1] * (weight.ndim - 1)))
    integers = np.clip(np.round(weight / broadcast), -levels, levels).astype(np.int8)
    name = node.input[1]
    editor.graph.initializer.remove(editor.initializers.pop(name))
    stored = editor.constant(f"{layer}.weight_int8", integers)
    w_scale = editor.constant(f"{layer}.weight_scale", channel_scale)
    w_zero = editor.constant(f"{layer}.weight_zero_point", np.zeros(weight.shape[0], np.int8))
    node.input[1] = editor.node("DequantizeLinear", [stored, w_scale, w_zero], f"{layer}.weight_dequantized", axis=0)


def _to_fp16(editor: _GraphEditor, layer: str, node: onnx.NodeProto) -> None:
    for index in range(1, len(node.input)):
        editor.replace_initializer(node.input[index], editor.array(node.input[index]).astype(np.float16))
    node.input[0] = editor.node("Cast", [node.input[0]], f"{layer}.input_fp16", to=TensorProto.FLOAT16)
    output = node.output[0]
    node.output[0] = f"{layer}.output_fp16"
    editor.node("Cast", [node.output[0]], output, to=TensorProto.FLOAT)


def export_qdq_onnx(model: nn.Module, amax: dict[str, float], input_shape: tuple[int, ...],
                    placement: QdqPlacement = QdqPlacement.TENSORRT, calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """The fine-tuned model, plain (`load_finetuned(..., fake_quantized=False)`: its layers carry
    `hdap_precision`), and its activation ranges as a checked QDQ ONNX graph, placed for the
    target's engine (ONNX Runtime's needs `calibration`: preprocessed training images, N x C x H x W)."""
    folded = fold_batch_norms(model)
    precisions = {name: m.hdap_precision for name, m in quantized_layers(folded).items()}
    exported = export_float_onnx(folded, input_shape)
    if placement is QdqPlacement.ONNXRUNTIME:
        from hdap.deploy.onnxruntime_quantize import quantize_for_onnxruntime

        return quantize_for_onnxruntime(exported, _layer_nodes(exported.graph, list(precisions)), precisions, calibration)
    editor = _GraphEditor(exported)
    nodes = _layer_nodes(exported.graph, list(precisions))
    for layer, (weight_precision, _activation) in precisions.items():
        if weight_precision == "int8":
            _quantize_int8(editor, layer, nodes[layer], amax.get(layer, 0.0))
        elif weight_precision == "fp16":
            _to_fp16(editor, layer, nodes[layer])
        elif weight_precision != "fp32":
            raise HdapError(f"layer {layer} is searched at {weight_precision}, which the ONNX export does not write yet "
                            "(int8, fp16 and fp32 are supported): search with the target's latency menu.")
    ordered = _topological(list(exported.graph.node) + editor.added)
    del exported.graph.node[:]
    exported.graph.node.extend(ordered)
    exported.producer_name = "hdap"
    onnx.checker.check_model(exported, full_check=True)
    return exported


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before it is read (ONNX requires it)."""
    producer = {output: index for index, node in enumerate(nodes) for output in node.output}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(index: int) -> None:
        stack = [(index, False)]
        while stack:
            current, expanded = stack.pop()
            if current in done:
                continue
            if expanded:
                done.add(current)
                order.append(nodes[current])
                continue
            stack.append((current, True))
            for name in nodes[current].input:
                if name in producer and producer[name] not in done:
                    stack.append((producer[name], False))

    for index in range(len(nodes)):
        visit(index)
    return order


def quantized_layer_names(model: onnx.ModelProto) -> dict[str, str]:
    """Per Conv/Gemm node of a graph hdap wrote: 'int8' when its input and weight come through
    DequantizeLinear, 'fp16' when it runs on half-precision tensors, else 'fp32'. Keyed by layer."""
    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight = producers.get(node.input[1])
        source = producers.get(node.input[0])
        if weight is not None and weight.op_type == "DequantizeLinear" and source is not None and source.op_type == "DequantizeLinear":
            # ours: <layer>.weight_int8; ONNX Runtime's quantiser: <layer>.weight_quantized
            layer, precision = weight.input[0].removesuffix(".weight_int8").removesuffix(".weight_quantized"), "int8"
        elif node.input[1] in initializers and initializers[node.input[1]].data_type == TensorProto.FLOAT16:
            layer, precision = node.input[1].removesuffix(".weight"), "fp16"
        else:
            layer, precision = node.input[1].removesuffix(".weight"), "fp32"
        found[layer] = precision
    return found

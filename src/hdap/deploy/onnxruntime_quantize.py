"""Int8 the way ONNX Runtime's CPU provider runs it fast: its own static quantiser, on the chosen layers.

    graph = quantize_for_onnxruntime(float_graph, layer_nodes, precisions, calibration)

ONNX Runtime turns DequantizeLinear -> Conv -> QuantizeLinear into one QLinearConv (and Add,
pooling, Concat likewise) only when the pattern is complete, and folds a ReLU into the next
quantisation only when that is unsigned with zero-point 0. So an int8 region is quantised whole:
its layers, and every add or pool whose nearest layers upstream and downstream are all int8.
Nothing is quantised around an fp32 layer except where it borders an int8 region, and a model
with no int8 layer is returned as it came.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from hdap.errors import HdapError

log = logging.getLogger(__name__)
LAYER_OPS = ("Conv", "Gemm")
CALIBRATION_BATCH = 32


def quantize_for_onnxruntime(graph: onnx.ModelProto, layer_nodes: dict[str, onnx.NodeProto], precisions: dict[str, tuple[str, str]],
                             calibration: np.ndarray | None) -> onnx.ModelProto:
    """`graph` (float, batch norms folded) with its int8 layers and the ops between them quantised for
    ONNX Runtime; `precisions` maps each layer to (weights, activations) as the fine-tune chose."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    unsupported = sorted({weights for weights, _ in precisions.values()} - {"fp32", "int8"})
    if unsupported:
        raise HdapError(f"layers are searched at {', '.join(unsupported)}, which ONNX Runtime's CPU provider does not run fast: "
                        "search with the CPU fleet's menu (fp32 and int8).")
    int8 = {layer for layer, (weights, _) in precisions.items() if weights == "int8"}
    if not int8:
        return graph
    if calibration is None or not len(calibration):
        raise HdapError("an int8 model for ONNX Runtime needs calibration images to set its activation ranges.")
    _name_nodes(graph)
    int8_nodes = {layer_nodes[layer].name for layer in int8}
    fp32_nodes = {node.name for layer, node in layer_nodes.items() if layer not in int8}
    excluded = sorted(fp32_nodes | _outside_int8_regions(graph, int8_nodes, fp32_nodes))
    with tempfile.TemporaryDirectory() as folder, _quantiser_notes_to_debug():
        source, target = Path(folder, "float.onnx"), Path(folder, "int8.onnx")
        onnx.save(graph, source)
        quantize_static(str(source), str(target), _Images(calibration, graph.graph.input[0].name), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        quantized = onnx.load(target)
    quantized.producer_name = "hdap"
    onnx.checker.check_model(quantized, full_check=True)
    log.info("quantised %d layers for ONNX Runtime (%d fp32 layers and %d other ops left float)", len(int8), len(fp32_nodes),
             len(excluded) - len(fp32_nodes))
    return quantized


@contextlib.contextmanager
def _quantiser_notes_to_debug():
    """ONNX Runtime's quantiser warns on the root logger about what it leaves alone (a batch norm's
    axis, a bias it does not own, pre-processing it suggests): hdap's log keeps them, at debug level."""

    def demote(record: logging.LogRecord) -> bool:
        if "onnxruntime" in record.pathname and "quantization" in record.pathname:
            log.debug("onnxruntime quantiser: %s", record.getMessage())
            return False
        return True

    root = logging.getLogger()
    root.addFilter(demote)
    try:
        yield
    finally:
        root.removeFilter(demote)


class _Images:
    """ONNX Runtime's calibration reader over an array of preprocessed images, in batches."""

    def __init__(self, images: np.ndarray, input_name: str) -> None:
        self.batches = iter([{input_name: images[i:i + CALIBRATION_BATCH].astype(np.float32)}
                             for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _name_nodes(graph: onnx.ModelProto) -> None:
    for index, node in enumerate(graph.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"


def _outside_int8_regions(graph: onnx.ModelProto, int8_nodes: set[str], fp32_nodes: set[str]) -> set[str]:
    """Ops that are not layers and have an fp32 layer among their nearest layers, upstream or
    downstream: quantising them would only add Q/DQ around float work."""
    producers = {output: node for node in graph.graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def nearest_layers(start: onnx.NodeProto, upstream: bool) -> set[str]:
        found, seen, stack = set(), {start.name}, [start]
        while stack:
            node = stack.pop()
            tensors = node.input if upstream else node.output
            neighbours = [producers[t] for t in tensors if t in producers] if upstream else \
                [c for t in tensors for c in consumers.get(t, [])]
            for neighbour in neighbours:
                if neighbour.name in seen:
                    continue
                seen.add(neighbour.name)
                if neighbour.name in int8_nodes or neighbour.name in fp32_nodes:
                    found.add(neighbour.name)
                else:
                    stack.append(neighbour)
        return found

    outside = set()
    for node in graph.graph.node:
        if node.name in int8_nodes or node.name in fp32_nodes:
            continue
        if (nearest_layers(node, upstream=True) | nearest_layers(node, upstream=False)) & fp32_nodes:
            outside.add(node.name)
    return outside

"""Where the Q/DQ nodes go decides whether int8 pays on a CPU: the same int8 model, written for
TensorRT and for ONNX Runtime, timed against its fp32 self in every CPU state of this machine.

For each model (ResNet-20 and ResNet-56, option A, 3x32x32, random weights: latency only), the
whole model is exported three ways as the build exports it: fp32; int8 placed for TensorRT
(symmetric Q/DQ on each layer's input, hdap's export before the CPU fleet had its own placement);
int8 placed for ONNX Runtime (its static quantiser: unsigned activations, whole int8 regions, so
Conv, ReLU and Add become QLinearConv and QLinearAdd). Each int8 graph is timed side by side with
the fp32 one (alternating rounds, batch 1, medians; `compare_latency`, as the build times), and
the integer kernels ONNX Runtime runs after optimisation are counted. Saves
bench/results/qdq_placement.json.

    .venv/bin/python bench/qdq_placement.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort

from record import record  # bench/record.py

from hdap.deploy.onnxruntime_build import compare_latency
from hdap.fleet.sku import QdqPlacement
from hdap.latency.cpu_states import DEFAULT_CPU_STATES, parse_cpu_states
from hdap.latency.model_variants import model_variants

SHAPE = (3, 32, 32)


def optimised_operators(graph: onnx.ModelProto) -> dict[str, int]:
    """How many of each operator ONNX Runtime's CPU provider runs, for the ones that say where int8 went."""
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(folder) / "optimised.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        operators = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    kept = ("QLinearConv", "QLinearAdd", "QGemm", "Conv", "FusedConv", "QuantizeLinear", "DequantizeLinear", "Transpose")
    return {op: operators.count(op) for op in kept if op in operators}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", default=DEFAULT_CPU_STATES, help="CPU states to time in (hdap's cpu_states grammar)")
    parser.add_argument("--quick", action="store_true", help="ResNet-20 only, 3 rounds (a smoke run, not saved)")
    args = parser.parse_args()
    started = time.perf_counter()
    states = parse_cpu_states(args.states)
    models = {}
    for name in ("resnet20-a",) if args.quick else ("resnet20-a", "resnet56-a"):
        (fp32, _), = model_variants(name, SHAPE, ("fp32",), 1)
        rows = {}
        for placement in QdqPlacement:
            (int8, _), = model_variants(name, SHAPE, ("int8",), 1, placement=placement)
            timing = compare_latency(int8, fp32, SHAPE, states, rounds=3 if args.quick else 7)
            rows[placement.value] = {
                "operators": optimised_operators(int8),
                "states": [{"state": s.state, "description": s.description, "int8_ms": s.latency_ms, "fp32_ms": s.uncompressed_latency_ms,
                            "speedup": s.speedup} for s in timing.states],
                "weighted_speedup": timing.speedup,
            }
            print(f"{name}, int8 placed for {placement.value}: " + ", ".join(
                f"{s.state} {s.speedup:.2f}x" for s in timing.states) + f" as fast as fp32 ({timing.speedup:.2f}x weighted)")
        models[name] = rows
    record("qdq_placement", {"input_shape": list(SHAPE), "cpu_states": args.states, "weights": "random (latency only)",
                             "models": models}, args.quick, started)


if __name__ == "__main__":
    main()

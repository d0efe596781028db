"""The TensorRT build (GPU, where present): a strongly typed engine from the QDQ ONNX graph.

Precision comes from the graph (Q/DQ for int8 layers, fp16 tensors for fp16 layers); no builder
precision flags, as TensorRT 10+ wants. A timing cache makes rebuilds fast. Engines are not
portable between GPUs or TensorRT versions, so the build runs on (a node of) the target; where
TensorRT or a GPU is missing `tensorrt_unavailable_reason()` says why and callers skip it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from hdap.errors import HdapError
from hdap.latency.backends.tensorrt import engine_latency_ms, tensorrt_unavailable_reason

__all__ = ["EngineBuild", "build_engine", "tensorrt_unavailable_reason"]
MAX_BATCH = 256


@dataclass
class EngineBuild:
    plan: bytes
    latency_ms: float  # batch 1, CUDA events, median
    predictions: torch.Tensor  # of the dataset it was given, in order
    gpu: str
    version: str


def _engine_plan(trt, logger, model: onnx.ModelProto, input_shape: tuple[int, ...], timing_cache: Path | None) -> bytes:
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HdapError(f"TensorRT could not parse the exported graph: {errors}")
    config = builder.create_builder_config()
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, *input_shape), (1, *input_shape), (MAX_BATCH, *input_shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise HdapError("TensorRT could not build an engine from the exported graph (see its log above).")
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _bind(context, images: torch.Tensor) -> torch.Tensor:
    """Point the engine at `images` and a fresh output buffer (returned; keep it alive)."""
    context.set_input_shape("input", tuple(images.shape))
    output = torch.empty(tuple(context.get_tensor_shape("logits")), dtype=torch.float32, device="cuda")
    context.set_tensor_address("input", images.data_ptr())
    context.set_tensor_address("logits", output.data_ptr())
    return output


def build_engine(model: onnx.ModelProto, input_shape: tuple[int, ...], dataset, timing_cache: Path | None = None,
                 warmup: int = 20, repeats: int = 100) -> EngineBuild:
    """Build, time at batch 1 and predict every image of `dataset`. Raises HdapError where it cannot run."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise HdapError(f"TensorRT is not available here: {reason}.")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    plan = _engine_plan(trt, logger, model, input_shape, timing_cache)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    # Every copy and allocation on the engine's stream, so it never reads a half-copied batch.
    with torch.cuda.stream(stream):
        one = torch.randn(1, *input_shape, device="cuda")
        output = _bind(context, one)  # bound (and kept alive) while timing
        latency = engine_latency_ms(context, stream, warmup, repeats)  # only the engine is timed
        images = torch.stack([x for x, _ in dataset])
        predicted = []
        for i in range(0, len(images), MAX_BATCH):
            batch = images[i:i + MAX_BATCH].contiguous().cuda(non_blocking=False)
            output = _bind(context, batch)
            context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
            predicted.append(output.argmax(1).cpu())
    return EngineBuild(plan, latency, torch.cat(predicted), torch.cuda.get_device_name(0), trt.__version__)

"""TensorRT on a GPU: the same layer graphs, built as strongly typed engines, timed with CUDA events.

Precision comes from the graph itself (Q/DQ for int8, fp16 weights and casts for fp16), as
TensorRT 10+ wants; no builder precision flags. Where TensorRT or a GPU is missing, creating
the backend raises BackendUnavailable with the reason, and callers skip it.
"""

from __future__ import annotations

import statistics

from hdap.latency.backends.base import BackendUnavailable, MeasurementFailed
from hdap.latency.layers import LayerConfig
from hdap.latency.onnx_graphs import layers_graph


def tensorrt_unavailable_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (it ships in the GPU step image only)"
    try:
        import torch
    except ImportError:
        return "torch is needed to hold CUDA buffers"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def engine_latency_ms(context, stream, warmup: int, repeats: int) -> float:
    """Median time of one engine run, by CUDA events on `stream` (its tensors already bound)."""
    import torch

    for _ in range(warmup):
        context.execute_async_v3(stream.cuda_stream)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        context.execute_async_v3(stream.cuda_stream)
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


class TensorRTBackend:
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")

    def __init__(self, warmup: int = 10, repeats: int = 50) -> None:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise BackendUnavailable(f"TensorRT profiling is not possible here: {reason}.")
        import tensorrt as trt
        import torch

        self.trt = trt
        self.torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.warmup = warmup
        self.repeats = repeats

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "gpu": self.torch.cuda.get_device_name(0),
            "tensorrt": self.trt.__version__,
        }

    def build_engine(self, onnx_bytes: bytes):
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise MeasurementFailed(f"TensorRT could not parse the layer: {errors}")
        plan = builder.build_serialized_network(network, builder.create_builder_config())
        if plan is None:
            raise MeasurementFailed("TensorRT could not build an engine for the layer")
        return trt.Runtime(self.logger).deserialize_cuda_engine(plan)

    def measure(self, config: LayerConfig) -> float:
        return self.measure_chain([config])

    def measure_chain(self, configs: list[LayerConfig], classes: int | None = None) -> float:
        torch = self.torch
        engine = self.build_engine(layers_graph(configs, classes=classes).SerializeToString())
        context = engine.create_execution_context()
        stream = torch.cuda.Stream()
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            shape = tuple(context.get_tensor_shape(name))
            buffer = torch.empty(shape, dtype=torch.float32, device="cuda")
            context.set_tensor_address(name, buffer.data_ptr())
            setattr(self, f"_buffer_{index}", buffer)  # keep alive while timing
        return engine_latency_ms(context, stream, self.warmup, self.repeats)

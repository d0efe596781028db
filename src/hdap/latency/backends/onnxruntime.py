"""Real measurements on this machine with ONNX Runtime's CPU provider.

Each configuration becomes a small ONNX graph, run in a session with a pinned thread count,
after a warm-up, as the median of repeated runs. The thread count and an optional background
CPU load (busy processes) make distinct, real "device states" of one machine: a stand-in for a
fleet's clusters when no devices are at hand.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from contextlib import AbstractContextManager

import numpy as np
import onnx
import onnxruntime as ort

from hdap.fleet.sku import QdqPlacement
from hdap.latency.backends.base import MeasurementFailed
from hdap.latency.layers import LayerConfig
from hdap.latency.onnx_graphs import layers_graph


def _spin(cpu: int | None) -> None:  # pragma: no cover - runs in the load processes
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    while True:
        pass


class BackgroundLoad(AbstractContextManager):
    """`processes` busy loops for the duration of a block: a device whose CPU is shared.

    Each loop is pinned to its own core from the last one down: unpinned, the scheduler sometimes
    stacks a loop onto the measuring core and the "busy device" turns into noise instead of a
    state. With `confine`, this process keeps to the cores left (a device with fewer free cores);
    without, its threads share the busy cores with the loops (a device whose services compete).
    """

    def __init__(self, processes: int, confine: bool = True) -> None:
        self.processes = processes
        self.confine = confine
        self.workers: list[multiprocessing.Process] = []
        self.affinity: set[int] | None = None

    def __enter__(self) -> BackgroundLoad:
        if not self.processes:
            return self
        cpus = sorted(os.sched_getaffinity(0))
        pinned = cpus[-self.processes:] if len(cpus) > self.processes else [None] * self.processes
        context = multiprocessing.get_context("spawn")
        self.workers = [context.Process(target=_spin, args=(cpu,), daemon=True) for cpu in pinned]
        for worker in self.workers:
            worker.start()
        if self.confine and len(cpus) > self.processes:
            self.affinity = set(cpus)
            os.sched_setaffinity(0, set(cpus[: -self.processes]))
        time.sleep(1.0)  # let the loops get past their interpreter start-up
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            worker.terminate()
            worker.join()
        if self.affinity is not None:
            os.sched_setaffinity(0, self.affinity)


def session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def time_session(sess: ort.InferenceSession, feed: dict[str, np.ndarray], warmup: int, repeats: int, min_seconds: float) -> float:
    """Median wall time of one run, in milliseconds."""
    for _ in range(warmup):
        sess.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(times) < repeats or time.perf_counter() < deadline:
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
        if len(times) >= 20 * repeats:
            break
    return statistics.median(times) * 1e3


class OnnxRuntimeBackend:
    name = "onnxruntime"
    precisions = ("fp32", "int8")  # fp16 convolutions have no fast CPU kernel on x86

    def __init__(self, threads: int = 1, background_processes: int = 0, warmup: int = 10, repeats: int = 40, min_seconds: float = 0.05) -> None:
        self.threads = threads
        self.background_processes = background_processes
        self.warmup = warmup
        self.repeats = repeats
        self.min_seconds = min_seconds

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "threads": self.threads,
            "background_processes": self.background_processes,
            "cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__,
        }

    def measure(self, config: LayerConfig) -> float:
        return self.measure_chain([config])

    def measure_graph(self, model: onnx.ModelProto) -> float:
        """A whole ONNX model (its input named "input"), at batch 1."""
        sess = session(model.SerializeToString(), self.threads)
        shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
        feed = {"input": np.random.default_rng(0).normal(size=shape).astype(np.float32)}
        return time_session(sess, feed, self.warmup, self.repeats, self.min_seconds)

    def measure_chain(self, configs: list[LayerConfig], classes: int | None = None) -> float:
        """A whole model: layers chained, optionally pooled into a classifier."""
        if any(c.precision not in self.precisions for c in configs):
            raise MeasurementFailed(f"onnxruntime on CPU does not time {[c.precision for c in configs]} layers")
        if any(c.in_channels < 1 or c.out_channels < 1 for c in configs):
            raise MeasurementFailed("a layer with no channels has nothing to time")
        try:
            return self.measure_graph(layers_graph(configs, classes=classes, placement=QdqPlacement.ONNXRUNTIME))
        except MeasurementFailed:
            raise
        except Exception as err:  # ONNX Runtime reports build and run failures as many types
            raise MeasurementFailed(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None

"""The ONNX Runtime build (CPU, always there): accuracy of the exported graph, its agreement with
the fake-quantised PyTorch model, and its latency against the uncompressed model's, measured in
one run.

This machine is shared and noisy, so the two models are timed in alternating rounds (each round
a median of repeated runs after warm-up, threads pinned) and compared round by round: a slow
spell slows both sides of a round alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch

from hdap.latency.backends.onnxruntime import session, time_session
from hdap.progress import progress
from hdap.stages.build import OnnxRuntimeTiming


@dataclass
class LatencyComparison:
    latency_ms: float  # median over rounds
    baseline_latency_ms: float
    speedup: float  # median of per-round ratios
    threads: int
    rounds: int

    def timing(self) -> OnnxRuntimeTiming:
        """As the build's summary records it (latencies to 5 decimals, the speed-up to 3)."""
        return OnnxRuntimeTiming(round(self.latency_ms, 5), round(self.baseline_latency_ms, 5), round(self.speedup, 3), self.threads,
                                 self.rounds)


def inference_session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    return session(model.SerializeToString(), threads)


def onnx_predictions(sess: ort.InferenceSession, dataset, batch_size: int = 256) -> torch.Tensor:
    """The graph's predicted class for every example, in order."""
    images = torch.stack([x for x, _ in dataset]).numpy()
    outputs = [sess.run(None, {"input": images[i:i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return torch.from_numpy(np.concatenate(outputs).argmax(1))


def compare_latency(model: onnx.ModelProto, baseline: onnx.ModelProto, input_shape: tuple[int, ...], threads: int = 1,
                    rounds: int = 7, repeats: int = 50, warmup: int = 20) -> LatencyComparison:
    """Batch-1 latency of `model` and `baseline`, alternating rounds on one machine."""
    feed = {"input": np.random.default_rng(0).normal(size=(1, *input_shape)).astype(np.float32)}
    ours, theirs = inference_session(model, threads), inference_session(baseline, threads)
    mine, base = [], []
    for index in progress(range(rounds), "timing ONNX Runtime (compressed vs uncompressed)"):
        pair = [(ours, mine), (theirs, base)]
        for sess, times in pair if index % 2 == 0 else reversed(pair):
            times.append(time_session(sess, feed, warmup, repeats, min_seconds=0.05))
    ratios = [b / m for m, b in zip(mine, base)]
    return LatencyComparison(statistics.median(mine), statistics.median(base), statistics.median(ratios), threads, rounds)

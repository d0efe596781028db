"""The ONNX Runtime build (CPU, always there): accuracy of the exported graph, its agreement with
the fake-quantised PyTorch model, and its latency against the uncompressed model's, measured in
one run in every CPU state of the fleet (`hdap.latency.cpu_states`).

This machine is shared and noisy, so in each state the two models are timed in alternating
rounds (each round a median of repeated runs after warm-up, threads pinned) and compared round
by round: a slow spell slows both sides of a round alike.
"""

from __future__ import annotations

import statistics

import numpy as np
import onnx
import onnxruntime as ort
import torch

from hdap.latency.backends.onnxruntime import BackgroundLoad, session, time_session
from hdap.latency.cpu_states import CpuState, pinned
from hdap.progress import progress
from hdap.stages.build import OnnxRuntimeTiming, StateTiming


def inference_session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    return session(model.SerializeToString(), threads)


def onnx_predictions(sess: ort.InferenceSession, dataset, batch_size: int = 256) -> torch.Tensor:
    """The graph's predicted class for every example, in order."""
    images = torch.stack([x for x, _ in dataset]).numpy()
    outputs = [sess.run(None, {"input": images[i:i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return torch.from_numpy(np.concatenate(outputs).argmax(1))


def compare_latency(model: onnx.ModelProto, baseline: onnx.ModelProto, input_shape: tuple[int, ...], states: list[CpuState],
                    rounds: int = 7, repeats: int = 50, warmup: int = 20) -> OnnxRuntimeTiming:
    """Batch-1 latency of `model` and `baseline` in every CPU state, alternating rounds within each."""
    feed = {"input": np.random.default_rng(0).normal(size=(1, *input_shape)).astype(np.float32)}
    measured = []
    for state in progress(states, "timing ONNX Runtime (compressed vs uncompressed, per CPU state)"):
        with pinned(state), BackgroundLoad(state.background_processes, confine=False):
            threads = state.thread_count()
            ours, theirs = inference_session(model, threads), inference_session(baseline, threads)
            mine, base = [], []
            for index in range(rounds):
                pair = [(ours, mine), (theirs, base)]
                for sess, times in pair if index % 2 == 0 else reversed(pair):
                    times.append(time_session(sess, feed, warmup, repeats, min_seconds=0.05))
        ratios = [b / m for m, b in zip(mine, base)]
        measured.append(StateTiming(state.name, state.describe(), threads, state.background_processes, round(state.share, 4),
                                    round(statistics.median(mine), 5), round(statistics.median(base), 5),
                                    round(statistics.median(ratios), 3)))
    return OnnxRuntimeTiming.of(measured, rounds)

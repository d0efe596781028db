"""Example artifacts, built through the stages' contracts: for the report's tests and the contracts' round trips."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from hdap.preprocessing import ChannelOrder, DataRecipe, Preprocessing, ValidationSource
from hdap.stages.build import (BuildAccuracy, BuildSummary, ClusterLatency, FleetLatency, GateResult, LayerSummary, ModelSize,
                               OnnxRuntimeTiming, RunRef, StateTiming, TensorRTResult)
from hdap.stages.cluster import ClusterSummary, DeviceCluster
from hdap.stages.search import Front, FrontPoint, Objective, SearchMode, SearchSetting, SettingKind

REGISTRY_URI = "s3://registry/resnet8/20261120-1201"
GATE_PASS = "accuracy 90.50% is within 1 points of the uncompressed model's 91.00%"
GATE_REFUSAL = "accuracy 80.00% lost 11.00 points against the uncompressed model's 91.00%, more than the 1 allowed"
TENSORRT_REASON = "no CUDA device is visible"
PREPROCESSING = Preprocessing([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], ChannelOrder.RGB, [3, 32, 32])
RECIPE = DataRecipe(PREPROCESSING, ValidationSource.TEST)


def fleet_inputs() -> tuple[ClusterSummary, pa.Table, pa.Table]:
    """200 devices in three clusters, apart on the two probes the scatter prefers."""
    rng = np.random.default_rng(7)
    labels = rng.choice(3, size=200, p=[0.5, 0.3, 0.2])
    conv = np.array([2.0, 3.5, 6.0])[labels] * rng.lognormal(0, 0.05, 200)
    launch = np.array([0.05, 0.08, 0.2])[labels] * rng.lognormal(0, 0.05, 200)
    ids = [f"dev-{i:04d}" for i in range(200)]
    features = pa.table({"device_id": ids, "probe_conv3x3_fp16_median_ms": conv, "probe_launch_median_ms": launch,
                         "temperature_c_median": rng.normal(50, 5, 200)})
    assignments = pa.table({"device_id": ids[::-1], "cluster": pa.array(labels[::-1], pa.int32())})  # any row order
    clusters = ClusterSummary(3, "chosen by silhouette in [2, 8]", {}, ["probe_conv3x3_fp16_median_ms", "probe_launch_median_ms"],
                              "KMeans", 200, [
        DeviceCluster(c, int((labels == c).sum()), float((labels == c).mean()), ids[int(np.argmax(labels == c))],
                      {"probe_conv3x3_fp16_median_ms": float(np.median(conv[labels == c])),
                       "probe_launch_median_ms": float(np.median(launch[labels == c]))}, {})
        for c in range(3)])
    return clusters, features, assignments


def front_input() -> Front:
    def point(target: float, accuracy: float, latency: float, pareto: bool, chosen: bool = False) -> FrontPoint:
        return FrontPoint(SearchSetting(SettingKind.TARGET, target), accuracy, accuracy + 0.1, latency,
                          [latency * 0.8, latency, latency * 1.6], 8e5 * target, "fleet", 2, pareto, chosen,
                          true_fleet_latency_ms=latency * 1.05)
    return Front("resnet8", SearchMode.FLEET, Objective.LATENCY, RECIPE, 91.0, 91.2, 91.1, 2.0, 1.6e6, [1.6, 2.0, 3.2], "fp16",
                 {}, 3, 4,
                 [point(0.3, 85.0, 0.7, True), point(0.5, 90.2, 1.0, True, chosen=True), point(0.6, 89.0, 1.3, False),
                  point(0.8, 90.8, 1.6, True)])


def onnxruntime_timing() -> OnnxRuntimeTiming:
    return OnnxRuntimeTiming.of([StateTiming("1", "1 thread", 1, 0, 0.5, 0.8, 1.9, 2.375),
                                 StateTiming("all+load", "every core beside 1 busy process", 2, 1, 0.5, 0.9, 1.7, 1.9)], 7)


def build_input(published: bool) -> BuildSummary:
    layers = [LayerSummary(f"layer{i}.conv", "conv3x3", 16, 16 if i % 2 else 10, 16, "int8" if i % 3 else "fp16", i == 3)
              for i in range(6)]
    tensorrt = (TensorRTResult(True, published=True, latency_ms=0.2, uncompressed_latency_ms=0.5, speedup=2.5, accuracy=90.5,
                               validation_accuracy=90.9, gpu="NVIDIA H100", version="10.3") if published else TensorRTResult(False, reason=TENSORRT_REASON))
    accuracy = BuildAccuracy(91.0, 70.0, 2, 90.6, 90.5 if published else 80.0, 0.995, 91.0, [60.0 + i for i in range(10)],
                             [88.0 + i / 5 for i in range(10)], [90.0 + i / 10 for i in range(10)], 91.2,
                             90.6 if published else 80.1)
    return BuildSummary(
        "resnet8", "20261120-1201", (3, 32, 32), PREPROCESSING, published, REGISTRY_URI if published else "", accuracy,
        ModelSize(320_000, 95_000, 2.5e6, 6e5), onnxruntime_timing(), tensorrt,
        [ClusterLatency(c, w, b, b / 2.1) for c, w, b in ((0, 0.5, 1.5), (1, 0.3, 2.2), (2, 0.2, 3.1))],
        FleetLatency(2.03, 0.97, 2.1, 2.1, 1.05, 2.0), layers, RunRef("20261120-1201", "s3://runs/20261120-1201/"),
        GateResult(published, 1.0, GATE_PASS if published else GATE_REFUSAL))

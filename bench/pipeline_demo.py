"""What the whole pipeline achieves on the `make run` demo, measured end to end.

Starts its own embedded object store, simulates the demo fleet (Jetson Xavier NX, 5,000 devices,
7 days), runs all six stages through kfp.local with the demo's defaults (digits + ResNet-20), and
reads the build step's figures back from the store:
- accuracy of the published ONNX model (ONNX Runtime) against the uncompressed model;
- fleet-weighted latency, uncompressed (default precision) against compressed, as the surrogates
  predict it and as the simulated fleet's truth has it (mean over every device);
- ONNX Runtime latency on this machine, compressed against the uncompressed fp32 ONNX, timed in
  alternating rounds in one run (the ratio is the figure; absolute times drift on shared machines);
- agreement of ONNX Runtime with the fake-quantised PyTorch model; sizes; wall time of the run.

With --fleet cpu the fleet is this machine instead, measured: `hdap profile` in each default CPU
state (1 thread, every core, every core beside a busy process) writes the telemetry and profiles,
the pipeline runs with sku cpu-onnxruntime, and the build's measured speed-up per state is the
figure (saved as pipeline_demo_cpu.json).

    .venv/bin/python bench/pipeline_demo.py               # ~4 minutes on 2 cores
    .venv/bin/python bench/pipeline_demo.py --fleet cpu   # ~5 minutes
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from rich.console import Console

from bench_store import bench_store  # bench/bench_store.py (the scripts run from bench/)
from record import record  # bench/record.py

from hdap.artifacts import plain
from hdap.compress.spec import ArchitectureSpec
from hdap.fleet.simulate import SimulationConfig, simulate_fleet
from hdap.store import join_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small fleet and few epochs (a smoke run, not the quoted figures)")
    parser.add_argument("--fleet", choices=["simulated", "cpu"], default="simulated",
                        help="the simulated Jetson fleet, or this machine's CPU states (measured)")
    args = parser.parse_args()
    started = time.perf_counter()
    with bench_store() as store:
        from hdap.local_run import profile_cpu_fleet, run_pipeline_locally
        from hdap.stages import RunSettings

        fleet_started = time.perf_counter()
        if args.fleet == "cpu":
            parameters = profile_cpu_fleet(store, 0, datetime.now(timezone.utc).date(), Console(quiet=True))
            devices = 3
        else:
            simulation = SimulationConfig(sku="jetson-xavier-nx", devices=500 if args.quick else 5000, days=7, seed=0,
                                          telemetry_uri="s3://hdap/demo/telemetry", truth_uri="s3://hdap/demo/ground-truth")
            simulate_fleet(store, simulation)
            parameters = dict(telemetry_uri=simulation.telemetry_uri, sku=simulation.sku, seed=0, truth_uri=simulation.truth_uri)
            devices = simulation.devices
        fleet_seconds = time.perf_counter() - fleet_started
        if args.quick:
            parameters |= dict(search_targets="0.6,0.3", search_pretrain_epochs=3, search_epochs=3, search_finetune_epochs=1,
                               finetune_epochs=1, accuracy_tolerance=100.0)
        pipeline_started = time.perf_counter()
        run = run_pipeline_locally(RunSettings.from_parameters(parameters), store)
        pipeline_seconds = time.perf_counter() - pipeline_started
        architecture = ArchitectureSpec.get(store, join_uri(run.run_uri, "search", "architecture.json"))
    build = run.build
    accuracy, fleet, timing = build.accuracy, build.fleet, build.onnxruntime
    results = {
        "model": build.model, "fleet": args.fleet, "devices": devices, "clusters": run.clusters.k,
        "fleet_seconds": round(fleet_seconds, 1), "pipeline_seconds": round(pipeline_seconds, 1),
        "accuracy_uncompressed": accuracy.uncompressed, "accuracy_onnxruntime": accuracy.onnxruntime,
        "accuracy_change_points": round(accuracy.onnxruntime - accuracy.uncompressed, 3),
        "onnxruntime_agreement": accuracy.onnxruntime_agreement,
        "predicted_fleet_ms": [round(fleet.predicted_before_ms, 5), round(fleet.predicted_after_ms, 5)],
        "predicted_fleet_speedup": round(fleet.predicted_speedup, 3),
        "true_fleet_ms": [round(fleet.true_before_ms, 5), round(fleet.true_after_ms, 5)] if fleet.true_speedup else None,
        "true_fleet_speedup": round(fleet.true_speedup, 3) if fleet.true_speedup else None,
        "onnxruntime": plain(timing), "onnx_kb": [round(build.size.uncompressed_onnx_bytes / 1e3, 1), round(build.size.onnx_bytes / 1e3, 1)],
        "published": build.published, "gate": build.gate.message, "tensorrt": plain(build.tensorrt),
        "chosen": run.front.chosen[0].setting.label, "pareto_points": run.front.pareto_points,
        "finetune": {"accuracy_before": accuracy.before_finetune, "kept_epoch": accuracy.finetune_kept_epoch},
        # The chosen architecture, layer by layer: kept output channels and weight precision, or removed.
        "architecture": [f"{layer.name}: removed" if layer.removed else f"{layer.name}: {layer.out_channels} {layer.weight_precision}"
                         for layer in architecture.layers],
    }
    print(f"\npipeline: {results['pipeline_seconds']:.0f} s for {devices:,} devices, {run.clusters.k} clusters "
          f"(the fleet's telemetry took {results['fleet_seconds']:.0f} s)")
    print(f"accuracy: {accuracy.uncompressed:.2f}% uncompressed -> {accuracy.onnxruntime:.2f}% ONNX Runtime "
          f"({results['accuracy_change_points']:+.2f} points); agreement with PyTorch {100 * accuracy.onnxruntime_agreement:.1f}%")
    truth = f", simulated truth {results['true_fleet_speedup']:.2f}x lower" if fleet.true_speedup else ""
    print(f"fleet-weighted latency: predicted {results['predicted_fleet_speedup']:.2f}x lower{truth}")
    for state in timing.states:
        predicted = (f"; surrogate {state.predicted_uncompressed_latency_ms:.4f} -> {state.predicted_latency_ms:.4f} ms"
                     if state.predicted_latency_ms is not None else "")
        print(f"ONNX Runtime on this machine, {state.description}: {state.uncompressed_latency_ms:.4f} -> {state.latency_ms:.4f} ms "
              f"({state.speedup:.2f}x, median of {timing.rounds} alternating rounds{predicted})")
    print(f"published: {build.published} ({build.gate.message})")
    record("pipeline_demo", results, args.quick, started, saved_as="pipeline_demo_cpu" if args.fleet == "cpu" else "")


if __name__ == "__main__":
    main()

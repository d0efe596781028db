"""Fleet against one state alone, on real hardware: does optimising for every CPU state this machine
runs in publish a different (faster) model than optimising for its fastest state alone?

Starts its own embedded object store, profiles this machine in its three default CPU states (1
thread, every core, every core beside a busy process: `hdap profile`, ONNX Runtime), runs the
`make run` demo's pipeline (digits, ResNet-20) twice on that fleet, with search_mode fleet and
search_mode nominal (for a measured fleet: its fastest state alone), and times the two published
models side by side in every state (alternating rounds, one run), besides each build's own
measurement against the uncompressed model. Saves bench/results/cpu_fleet_vs_nominal.json.

    .venv/bin/python bench/cpu_fleet_vs_nominal.py     # ~9 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import onnx
from rich.console import Console

from bench_store import bench_store  # bench/bench_store.py (the scripts run from bench/)
from record import record  # bench/record.py

from hdap.artifacts import plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few epochs (a smoke run, not the quoted figures)")
    args = parser.parse_args()
    started = time.perf_counter()
    from hdap.deploy.onnxruntime_build import compare_latency
    from hdap.latency.cpu_states import DEFAULT_CPU_STATES, parse_cpu_states
    from hdap.local_run import profile_cpu_fleet, run_pipeline_locally
    from hdap.stages import RunSettings

    runs = {}
    with bench_store() as store:
        fleet = profile_cpu_fleet(store, 0, datetime.now(timezone.utc).date(), Console(quiet=True))
        for mode in ("fleet", "nominal"):
            parameters = dict(fleet, search_mode=mode)
            if args.quick:
                parameters |= dict(search_targets="0.6", search_pretrain_epochs=3, search_epochs=2, search_finetune_epochs=1,
                                   finetune_epochs=1, accuracy_tolerance=100.0)
            run = run_pipeline_locally(RunSettings.from_parameters(parameters), store)
            graph = onnx.load_from_string(store.get_bytes(f"{run.run_uri.rstrip('/')}/build/model.onnx"))
            runs[mode] = (run, graph)
    fleet_graph, nominal_graph = runs["fleet"][1], runs["nominal"][1]
    # compare_latency(model, baseline): the speed-up is the nominal model's latency over the fleet model's.
    side_by_side = compare_latency(fleet_graph, nominal_graph, (1, 8, 8), parse_cpu_states(DEFAULT_CPU_STATES))
    results = {
        "states": DEFAULT_CPU_STATES,
        "modes": {mode: {"chosen": run.front.chosen[0].setting.label, "accuracy_test": run.build.accuracy.onnxruntime,
                         "accuracy_uncompressed_test": run.build.accuracy.uncompressed,
                         "predicted_fleet_speedup": run.build.fleet.predicted_speedup,
                         "measured_against_uncompressed": plain(run.build.onnxruntime),
                         "layers_removed": sum(layer.removed for layer in run.build.layers),
                         "architecture": [f"{layer.name}: removed" if layer.removed else f"{layer.name}: {layer.out_channels} "
                                          f"{layer.weight_precision}" for layer in run.build.layers],
                         "precisions": sorted({layer.weight_precision for layer in run.build.layers if not layer.removed})}
                  for mode, (run, _) in runs.items()},
        "fleet_model_against_nominal_model": plain(side_by_side),
    }
    for mode, (run, _) in runs.items():
        states = ", ".join(f"{s.description} {s.speedup:.2f}x" for s in run.build.onnxruntime.states)
        print(f"{mode}: chose {run.front.chosen[0].setting.label}, {run.build.accuracy.onnxruntime:.2f}% test accuracy; "
              f"measured against the uncompressed model: {states}")
    for state in side_by_side.states:
        print(f"{state.description}: fleet model {state.latency_ms:.4f} ms, nominal model {state.uncompressed_latency_ms:.4f} ms "
              f"(the fleet model {state.speedup:.2f}x as fast; median of {side_by_side.rounds} alternating rounds)")
    print(f"fleet-weighted: the fleet model {side_by_side.speedup:.2f}x as fast as the nominal one")
    record("cpu_fleet_vs_nominal", results, args.quick, started)


if __name__ == "__main__":
    main()

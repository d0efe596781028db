"""Fleet against one state alone, on real hardware: does optimising for every CPU state this machine
runs in publish a different (faster) model than optimising for its fastest state alone?

Starts its own embedded object store, profiles this machine in its three default CPU states (1
thread, every core, every core beside a busy process: `hdap profile`, ONNX Runtime), runs the
`make run` demo's pipeline (digits, ResNet-20) twice on that fleet, with search_mode fleet and
search_mode nominal (for a measured fleet: its fastest state alone), and times the two published
models side by side in every state (alternating rounds, one run), besides each build's own
measurement against the uncompressed model. Saves bench/results/cpu_fleet_vs_nominal.json.

With --model resnet20-a or resnet56-a it does the same for a third-party CIFAR-10 ResNet, as
bench/cifar_pretrained.py --fleet cpu runs it (CIFAR-10 and the checkpoint uploaded from --data; the
same CPU configuration; accuracy on the test half, chosen on the validation half), and saves
bench/results/cpu_fleet_vs_nominal_<model>.json.

    .venv/bin/python bench/cpu_fleet_vs_nominal.py                                           # ~9 minutes on 2 cores
    .venv/bin/python bench/cpu_fleet_vs_nominal.py --model resnet20-a --data ../shared/data  # ~20 minutes
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import onnx
from rich.console import Console

from bench_store import bench_store  # bench/bench_store.py (the scripts run from bench/)
from cifar_pretrained import CHECKPOINTS, check_data, cpu_configuration, data_option, finished_run, upload_cifar
from record import record  # bench/record.py

from hdap.artifacts import plain
from hdap.errors import HdapError
from hdap.settings import INPUT_SHAPE, MODEL

DEMO_MODEL = MODEL.default  # the digits demo's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few epochs (a smoke run, not the quoted figures)")
    parser.add_argument("--model", choices=[DEMO_MODEL, *CHECKPOINTS], default=DEMO_MODEL,
                        help="the digits demo's model, or a pre-trained CIFAR-10 ResNet from --data")
    data_option(parser)
    args = parser.parse_args()
    cifar = args.model != DEMO_MODEL
    if cifar:
        check_data(args.data, args.model)
    started = time.perf_counter()
    from hdap.deploy.onnxruntime_build import compare_latency
    from hdap.latency.cpu_states import DEFAULT_CPU_STATES, parse_cpu_states
    from hdap.local_run import profile_cpu_fleet, run_pipeline_locally
    from hdap.stages import RunSettings

    runs = {}
    input_shape = (3, 32, 32) if cifar else INPUT_SHAPE.default
    with bench_store() as store:
        model = upload_cifar(store, args.data, args.model) | cpu_configuration(args.quick, True) if cifar else {}
        fleet = profile_cpu_fleet(store, 0, datetime.now(timezone.utc).date(), Console(quiet=True), args.model, input_shape)
        for mode in ("fleet", "nominal"):
            parameters = dict(fleet, **model, search_mode=mode)
            if args.quick and not cifar:
                parameters |= dict(search_targets="0.6", search_pretrain_epochs=3, search_epochs=2, search_finetune_epochs=1,
                                   finetune_epochs=1, accuracy_tolerance=100.0)
            try:
                run = run_pipeline_locally(RunSettings.from_parameters(parameters), store)
            except HdapError as err:  # a model the quality gate refused is still measured
                run = finished_run(store, err, {r.run_uri for r, _ in runs.values()})
            graph = onnx.load_from_string(store.get_bytes(f"{run.run_uri.rstrip('/')}/build/model.onnx"))
            runs[mode] = (run, graph)
    fleet_graph, nominal_graph = runs["fleet"][1], runs["nominal"][1]
    # compare_latency(model, baseline): the speed-up is the nominal model's latency over the fleet model's.
    side_by_side = compare_latency(fleet_graph, nominal_graph, input_shape, parse_cpu_states(DEFAULT_CPU_STATES))
    results = {
        "model": args.model,
        "states": DEFAULT_CPU_STATES,
        "configuration": model,
        "modes": {mode: {"chosen": run.front.chosen[0].setting.label, "accuracy_test": run.build.accuracy.onnxruntime,
                         "accuracy_uncompressed_test": run.build.accuracy.uncompressed,
                         "published": run.build.published, "accuracy_validation": run.build.accuracy.validation_onnxruntime,
                         "predicted_fleet_speedup": run.build.fleet.predicted_speedup,
                         "measured_against_uncompressed": plain(run.build.onnxruntime),
                         "layers_removed": sum(layer.removed for layer in run.build.layers),
                         "architecture": [f"{layer.name}: removed" if layer.removed else f"{layer.name}: {layer.out_channels} "
                                          f"{layer.weight_precision}" for layer in run.build.layers],
                         "precisions": sorted({layer.weight_precision for layer in run.build.layers if not layer.removed}),
                         "front": [{"setting": p.setting.label, "validation_accuracy": p.validation_accuracy, "test_accuracy": p.accuracy,
                                    "fleet_ms_predicted": p.fleet_latency_ms, "layers_removed": p.layers_removed, "chosen": p.chosen}
                                   for p in run.front.points]}
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
    record("cpu_fleet_vs_nominal", results, args.quick, started, saved_as="cpu_fleet_vs_nominal" + (f"_{args.model}" if cifar else ""))


if __name__ == "__main__":
    main()

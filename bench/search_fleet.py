"""What the search achieves on the digits demo, and whether fleet-aware search beats the datasheet.

A simulated Jetson Xavier NX fleet (2,000 devices, 7 days) is clustered; each cluster's
representative is profiled on the simulated backend and gets a surrogate. ResNet-20 is trained on
scikit-learn's digits (1x8x8) and searched with the same cost targets twice: against the fleet-weighted
latency (`fleet`, HDAP) and against one datasheet device (`nominal`). Every point is then costed on
the simulated fleet's truth: the mean latency over all 2,000 devices, deployed.

Prints and saves (bench/results/search_fleet.json):
- the 2x goal: at accuracy within 0.5 points of the uncompressed model, the fleet-weighted latency
  predicted by the surrogates at least 2x below the uncompressed model at the default precision;
- fleet against nominal at equal accuracy: for several accuracy floors, the lowest true fleet
  latency each mode reaches among its points above the floor.

    .venv/bin/python bench/search_fleet.py          # ~6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from record import record  # bench/record.py (the scripts run from bench/)

from hdap.compress.search import run_search
from hdap.compress.spec import spec_layer_configs
from hdap.data import DataConfig, load_dataset
from hdap.fleet.cluster import cluster_devices
from hdap.fleet.simulate import simulate_features
from hdap.latency.fleet_profiling import nominal_fleet_cost, simulated_fleet_cost, simulated_fleet_latency_ms
from hdap.models import build_model, prunable_layers
from hdap.stages.cluster import ClusterConfig
from hdap.settings import to_parameter
from hdap.stages.search import SearchConfig, SearchMode

SKU = "jetson-xavier-nx"
MENU = ("fp16", "int8")
SHAPE = (1, 8, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer devices, targets and epochs (a smoke run, not the quoted figures)")
    args = parser.parse_args()
    started = time.perf_counter()
    devices = 300 if args.quick else 2000
    features, truth = simulate_features(SKU, devices, days=7, seed=0)
    clustering = cluster_devices(features, ClusterConfig(seed=0))
    layers = prunable_layers(build_model("resnet20", SHAPE), SHAPE)
    fleet = simulated_fleet_cost(features, truth, [(c.representative, c.weight) for c in clustering.clusters], layers, MENU)
    nominal = nominal_fleet_cost(SKU, layers, MENU)
    data = load_dataset(DataConfig("digits", input_shape=SHAPE))
    config = SearchConfig(model="resnet20", input_shape=SHAPE)
    if args.quick:
        config = replace(config, targets=(0.7, 0.4), pretrain_epochs=3, epochs=4, finetune_epochs=1)

    baseline_configs = [shape.config(precision="fp16") for shape in layers]
    baseline_true = float(simulated_fleet_latency_ms(baseline_configs, features, truth).mean())
    modes = {}
    for mode in (SearchMode.FLEET, SearchMode.NOMINAL):
        result = run_search(replace(config, mode=mode), data, fleet, nominal)
        points = []
        for p in result.points:
            true = float(simulated_fleet_latency_ms(spec_layer_configs(p.spec, layers), features, truth).mean())
            points.append({"setting": p.label, "accuracy": round(p.accuracy, 3), "fleet_latency_ms": round(p.fleet_latency_ms, 5),
                           "cluster_latency_ms": [round(v, 5) for v in p.cluster_latency_ms], "size_bits": p.size_bits,
                           "optimised_for": p.optimised_for, "pareto": p.pareto, "true_fleet_latency_ms": round(true, 5),
                           "layers_removed": sum(layer.removed for layer in p.spec.layers)})
        modes[mode.value] = {"baseline_accuracy": result.baseline_accuracy, "baseline_fleet_latency_ms": result.baseline_fleet_latency_ms,
                             "chosen": result.chosen[0].label, "points": points, "pareto_points": result.front_size,
                             "seconds": result.seconds}
        print(f"\n{mode}: uncompressed {result.baseline_accuracy:.2f}%, predicted {result.baseline_fleet_latency_ms:.4f} ms, "
              f"true fleet mean {baseline_true:.4f} ms")
        for p in points:
            print(f"  {p['setting']:>10}: {p['accuracy']:6.2f}%  predicted {p['fleet_latency_ms']:.4f} ms "
                  f"({result.baseline_fleet_latency_ms / p['fleet_latency_ms']:.2f}x)  true {p['true_fleet_latency_ms']:.4f} ms "
                  f"({baseline_true / p['true_fleet_latency_ms']:.2f}x)  {p['layers_removed']} layers removed"
                  + ("  <- chosen" if p["setting"] == result.chosen[0].label else ""))
        print(f"  Pareto front: {result.front_size} points ({', '.join(p.label for p in result.front)})")

    hdap = modes["fleet"]
    within = [p for p in hdap["points"] if p["accuracy"] >= hdap["baseline_accuracy"] - 0.5]
    best = min(within, key=lambda p: p["fleet_latency_ms"]) if within else None
    goal = {
        "baseline_accuracy": hdap["baseline_accuracy"],
        "best_within_half_a_point": best,
        "predicted_reduction": round(hdap["baseline_fleet_latency_ms"] / best["fleet_latency_ms"], 3) if best else None,
        "met": bool(best and hdap["baseline_fleet_latency_ms"] / best["fleet_latency_ms"] >= 2.0),
    }
    print(f"\n2x goal (fleet mode, within 0.5 points of {hdap['baseline_accuracy']:.2f}%): "
          + (f"{goal['predicted_reduction']:.2f}x at {best['accuracy']:.2f}%" if best else "no point within 0.5 points"))

    comparison = []
    for drop in (0.5, 1.0, 2.0, 5.0):
        row = {"accuracy_floor_drop": drop}
        for mode, values in modes.items():
            floor = values["baseline_accuracy"] - drop
            eligible = [p for p in values["points"] if p["accuracy"] >= floor]
            row[mode] = min((p["true_fleet_latency_ms"] for p in eligible), default=None)
        if row["fleet"] and row["nominal"]:
            row["fleet_over_nominal"] = round(row["fleet"] / row["nominal"], 4)
        comparison.append(row)
        print(f"accuracy within {drop} points: true fleet mean latency fleet {row['fleet']} ms, nominal {row['nominal']} ms"
              + (f" (fleet/nominal {row['fleet_over_nominal']:.3f})" if "fleet_over_nominal" in row else ""))

    results = {
        "fleet": {"sku": SKU, "devices": devices, "clusters": len(clustering.clusters),
                  "weights": [round(c.weight, 4) for c in clustering.clusters]},
        "model": "resnet20", "dataset": "digits", "input_shape": list(SHAPE), "precisions": list(MENU),
        "config": {k: to_parameter(v) for k, v in config.__dict__.items() if k not in ("mode",)},
        "baseline_true_fleet_latency_ms": round(baseline_true, 5),
        "modes": modes, "two_x_goal": goal, "fleet_vs_nominal": comparison,
    }
    record("search_fleet", results, args.quick, started)


if __name__ == "__main__":
    main()

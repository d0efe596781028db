"""When does searching against the fleet beat searching against the datasheet? No training: the
question is whether the two cost models order candidate architectures differently.

A search that must choose between two equally accurate candidates takes the one its cost model
calls faster. `nominal` mode asks one datasheet device (fastest power mode, cool, idle); `fleet`
mode asks the fleet. For random architectures of a model (random channel keeps, precisions and
removed residual branches, drawn from its real search space) this bench computes each one's true
latency on the datasheet device and its true mean latency over a simulated 2,000-device fleet,
then, over pairs of candidates, how often the datasheet picks the one that is slower on the fleet
and what that costs the fleet (the regret: the fleet latency of the datasheet's pick over the
fleet's own pick, minus one). Pairs within 10% of each other on the datasheet are reported apart:
they are the close calls a search faces near its target.

It also reports the share of each model's latency that is per-kernel launch overhead, on the
datasheet device and across the fleet: where launch dominates everywhere, every device ranks
architectures alike and weighting them cannot change a choice.

    .venv/bin/python bench/fleet_vs_nominal_regimes.py     # ~30 s on 2 cores

Saves bench/results/fleet_vs_nominal_regimes.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import kendalltau

from record import record  # bench/record.py (the scripts run from bench/)

from hdap.compress.searchable import SearchableModel
from hdap.compress.space import build_search_space
from hdap.fleet.simulate import simulate_features
from hdap.latency.backends.simulated import layer_kernel
from hdap.latency.device_model import kernel_latency_ms, launch_seconds
from hdap.latency.fleet_profiling import nominal_device, precisions_for, simulated_fleet_state
from hdap.models import build_model, prunable_layers

CASES = [  # (sku, model, input shape)
    ("jetson-xavier-nx", "resnet20", (1, 8, 8)),  # the demo
    ("jetson-nano", "resnet20", (1, 8, 8)),
    ("jetson-xavier-nx", "resnet20", (3, 32, 32)),  # CIFAR-sized
    ("jetson-nano", "resnet20", (3, 32, 32)),
    ("jetson-xavier-nx", "resnet50", (3, 224, 224)),  # ImageNet-sized, the HDAP paper's setting
    ("jetson-nano", "resnet50", (3, 224, 224)),
    ("jetson-nano", "mobilenetv2", (3, 224, 224)),
]
CLOSE = 0.10  # pairs within 10% on the datasheet: the close calls


def random_architectures(model_name: str, shape: tuple[int, int, int], menu: tuple[str, ...], count: int, seed: int):
    """`count` hard architectures from the model's search space: keep logits, branch logits and
    precision logits drawn at random around a per-architecture bias (from keep almost all to
    keep little), frozen. Each is a list of layer configs (removed layers left out)."""
    model = build_model(model_name, shape)
    searchable = SearchableModel(model, build_search_space(model, shape, menu))
    generator = torch.Generator().manual_seed(seed)
    architectures = []
    for _ in range(count):
        bias = float(torch.rand((), generator=generator)) * 4 - 1.5
        with torch.no_grad():
            for logits in searchable.keep_logits:
                logits.copy_(torch.rand(logits.shape, generator=generator) * 4 - 2 + bias)
            for logit in searchable.branch_logits.values():
                logit.copy_(torch.rand((), generator=generator) * 6 - 3 + bias)
            for logits in searchable.precision_logits.values():
                logits.copy_(torch.rand(logits.shape, generator=generator))
        architectures.append([config for _, config in searchable.hard_layers() if config is not None])  # hard, as frozen
    return architectures


def measure(sku_name: str, model_name: str, shape: tuple[int, int, int], devices: int, count: int) -> dict:
    features, truth = simulate_features(sku_name, devices, days=7, seed=0)
    sku, fleet_state = simulated_fleet_state(features, truth)
    nominal_state = nominal_device(sku_name).state()
    menu = precisions_for(sku_name, sku.precisions)
    architectures = random_architectures(model_name, shape, menu, count, seed=0)

    def latencies(state, configs) -> np.ndarray:  # per device, ms
        return sum(kernel_latency_ms(sku, state, layer_kernel(c)) for c in configs)

    fleet = np.array([float(latencies(fleet_state, a).mean()) for a in architectures])
    nominal = np.array([float(latencies(nominal_state, a)[0]) for a in architectures])

    default = "fp16" if "fp16" in menu else menu[0]
    uncompressed = [layer.config(precision=default) for layer in prunable_layers(build_model(model_name, shape), shape)]
    launch_share_fleet = len(uncompressed) * launch_seconds(sku, fleet_state) * 1e3 / latencies(fleet_state, uncompressed)
    launch_share_nominal = float(len(uncompressed) * launch_seconds(sku, nominal_state)[0] * 1e3 / latencies(nominal_state, uncompressed)[0])

    a, b = np.triu_indices(count, k=1)
    nominal_picks_a = nominal[a] < nominal[b]
    pick, other = np.where(nominal_picks_a, a, b), np.where(nominal_picks_a, b, a)
    regret = fleet[pick] / np.minimum(fleet[pick], fleet[other]) - 1.0  # 0 where the datasheet picked the fleet's faster
    misranked = fleet[pick] > fleet[other]
    close = np.abs(nominal[a] / nominal[b] - 1.0) <= CLOSE

    def summary(mask: np.ndarray) -> dict:
        return {"pairs": int(mask.sum()), "misranked_share": round(float(misranked[mask].mean()), 4) if mask.any() else None,
                "mean_regret": round(float(regret[mask].mean()), 5) if mask.any() else None,
                "p95_regret": round(float(np.quantile(regret[mask], 0.95)), 5) if mask.any() else None,
                "max_regret": round(float(regret[mask].max()), 5) if mask.any() else None}

    result = {
        "sku": sku_name, "model": model_name, "input_shape": list(shape), "precisions": list(menu),
        "uncompressed_ms": {"nominal": round(float(latencies(nominal_state, uncompressed)[0]), 4),
                            "fleet_mean": round(float(latencies(fleet_state, uncompressed).mean()), 4)},
        "launch_share": {"nominal": round(launch_share_nominal, 3),
                         "fleet_p5": round(float(np.quantile(launch_share_fleet, 0.05)), 3),
                         "fleet_median": round(float(np.median(launch_share_fleet)), 3),
                         "fleet_p95": round(float(np.quantile(launch_share_fleet, 0.95)), 3)},
        "kendall_tau": round(float(kendalltau(nominal, fleet).statistic), 4),
        "all_pairs": summary(np.ones_like(close)), "close_pairs": summary(close),
    }
    c = result["close_pairs"]
    print(f"{sku_name:17} {model_name:11} {'x'.join(map(str, shape)):9} launch share: datasheet {launch_share_nominal:.0%}, "
          f"fleet {result['launch_share']['fleet_p5']:.0%}-{result['launch_share']['fleet_p95']:.0%}  tau {result['kendall_tau']:.3f}  "
          f"close calls: {c['misranked_share']:.1%} misranked, mean regret {c['mean_regret']:.2%}, p95 {c['p95_regret']:.2%}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer devices and architectures, two cases (a smoke run)")
    args = parser.parse_args()
    started = time.perf_counter()
    devices, count, cases = (300, 40, CASES[:2]) if args.quick else (2000, 300, CASES)
    results = {"devices": devices, "architectures": count, "close_within": CLOSE,
               "cases": [measure(sku, model, shape, devices, count) for sku, model, shape in cases]}
    record("fleet_vs_nominal_regimes", results, args.quick, started)


if __name__ == "__main__":
    main()

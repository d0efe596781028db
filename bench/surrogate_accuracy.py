"""How well the latency surrogates predict, and what profiling representatives saves.

Prints and saves bench/results/surrogate_accuracy.json:
1. layer level, ONNX Runtime on this machine (real measurements) in three device states
   (1 thread; 2 threads; 1 thread beside a busy process): share of held-out configurations
   predicted within +-10% (goal >= 95%), per state and over all, and how well a second profile
   repeats the first (the machine's own noise);
2. layer level, the simulated fleet's cluster representatives: the same share (goal >= 99%);
3. whole model, ONNX Runtime: 20 random pruned / mixed-precision variants of the small CNN,
   predicted against measured (goal >= 90% within +-10%);
4. profiling cost: device-hours to profile K representatives against every device, and the
   error of the fleet-mean latency estimated from K representatives against the simulated
   all-device truth, over random model variants (goal < 3%).

    python bench/surrogate_accuracy.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from record import record  # bench/record.py (the scripts run from bench/)

from hdap.fleet.cluster import cluster_devices
from hdap.latency.backends.onnxruntime import BackgroundLoad, OnnxRuntimeBackend
from hdap.latency.backends.simulated import SimulatedBackend
from hdap.fleet.simulate import simulate_features
from hdap.latency.fleet_profiling import device_seconds, random_variants, simulated_device, simulated_fleet_latency_ms
from hdap.latency.profiling import plan_profile, profile_configs, run_profile, time_models
from hdap.latency.surrogate import fit_model_overhead, fit_surrogate, within
from hdap.models import build_model, prunable_layers
from hdap.stages.cluster import ClusterConfig



def held_out_accuracy(configs, latencies, seed=0) -> tuple[float, float, int]:
    order = np.random.default_rng(seed).permutation(len(configs))
    cut = int(len(order) * 0.8)
    train, test = order[:cut], order[cut:]
    surrogate = fit_surrogate([configs[i] for i in train], latencies[train])
    predicted = np.array([surrogate.predict(configs[i]) for i in test])
    errors = np.abs(predicted / latencies[test] - 1)
    return within(predicted, latencies[test]), float(np.quantile(errors, 0.95)), len(test)


def onnxruntime_layers(samples: int, rounds: int) -> dict:
    """Each state is profiled twice (different shuffles): the first profile trains and tests the
    surrogate, the second says how far the machine repeats itself (a surrogate cannot be
    closer to a measurement than a second measurement is)."""
    out: dict = {}
    pooled = {"within": 0.0, "held_out": 0}
    states = {"1 thread": (1, 0), "2 threads": (2, 0), "1 thread + busy process": (1, 1)}
    for model in ("small-cnn", "resnet20"):
        layers = prunable_layers(build_model(model), (3, 32, 32))
        plan = plan_profile(layers, ("fp32", "int8"), samples, granule=8, seed=0)
        for state, (threads, busy) in states.items():
            start = time.perf_counter()
            with BackgroundLoad(busy):
                backend = OnnxRuntimeBackend(threads=threads, repeats=10, min_seconds=0)
                profile = run_profile(backend, plan, rounds=rounds)
                seconds = time.perf_counter() - start
                again = run_profile(backend, plan, rounds=rounds, seed=1)
            configs, latencies = profile_configs(profile)
            share, p95, n = held_out_accuracy(configs, latencies)
            first, second = (profile.column("latency_ms").to_numpy(zero_copy_only=False) for profile in (profile, again))
            timed = np.isfinite(first) & np.isfinite(second)
            repeat = float(np.mean(np.abs(second[timed] / first[timed] - 1) <= 0.10))
            pooled["within"] += share * n
            pooled["held_out"] += n
            out[f"{model}, {state}"] = {"held_out_within_10pct": round(share, 4), "p95_error": round(p95, 4), "held_out": n,
                                        "repeat_profile_within_10pct": round(repeat, 4),
                                        "profile_seconds": round(seconds, 1)}
            print(f"onnxruntime {model:9s} {state:24s}: {100 * share:5.1f}% of {n} held-out layers within +-10% "
                  f"(p95 error {100 * p95:.1f}%); a second profile repeats {100 * repeat:.1f}% of the first within +-10%")
    out["all states"] = {"held_out_within_10pct": round(pooled["within"] / pooled["held_out"], 4), "held_out": pooled["held_out"]}
    print(f"onnxruntime, all states: {100 * out['all states']['held_out_within_10pct']:.1f}% of {pooled['held_out']} held-out layers within +-10%")
    return out


def simulated_layers_and_fleet_mean(devices: int, samples: int, variants: int) -> tuple[dict, dict]:
    features, truth = simulate_features("jetson-xavier-nx", devices, days=7, seed=0)
    clustering = cluster_devices(features, ClusterConfig(seed=0))
    layers = prunable_layers(build_model("resnet20"), (3, 224, 224))
    precisions = ("fp16", "int8")
    plan = plan_profile(layers, precisions, samples, granule=1, seed=0)
    layer_results, surrogates, seconds = {}, [], 0.0
    for cluster in clustering.clusters:
        backend = SimulatedBackend(simulated_device(cluster.representative, features, truth))
        profile = run_profile(backend, plan)
        configs, latencies = profile_configs(profile)
        share, p95, n = held_out_accuracy(configs, latencies)
        layer_results[f"cluster {cluster.id} ({cluster.representative})"] = {"held_out_within_10pct": round(share, 4), "p95_error": round(p95, 4), "held_out": n}
        print(f"simulated resnet20@224 cluster {cluster.id}: {100 * share:5.1f}% of {n} held-out layers within +-10% (p95 error {100 * p95:.1f}%)")
        surrogate = fit_surrogate(configs, latencies)
        calibration = random_variants(layers, precisions, 12, 8, seed=1)
        fit_model_overhead(surrogate, [(v, sum(backend.measure(c) for c in v)) for v in calibration])
        surrogates.append((cluster.weight, surrogate))
        seconds += device_seconds(profile)

    # Truth: every device's latency of each variant from the device model (noiseless).
    errors = []
    for variant in random_variants(layers, precisions, variants, 8, seed=7):
        true_mean = float(simulated_fleet_latency_ms(variant, features, truth).mean())
        estimate = sum(w * s.predict_model(variant) for w, s in surrogates)
        errors.append(abs(estimate / true_mean - 1))
    per_device = seconds / len(clustering.clusters)
    fleet = {
        "devices": devices,
        "clusters": len(clustering.clusters),
        "profiling_device_hours_representatives": round(seconds / 3600, 3),
        "profiling_device_hours_every_device": round(per_device * devices / 3600, 1),
        "saving_factor": round(devices / len(clustering.clusters)),
        "fleet_mean_error_mean": round(float(np.mean(errors)), 4),
        "fleet_mean_error_max": round(float(np.max(errors)), 4),
        "variants": variants,
    }
    print(f"profiling {len(clustering.clusters)} representatives: {fleet['profiling_device_hours_representatives']} device-hours, "
          f"every device: {fleet['profiling_device_hours_every_device']} device-hours; fleet-mean latency error from "
          f"representatives: mean {100 * fleet['fleet_mean_error_mean']:.2f}%, max {100 * fleet['fleet_mean_error_max']:.2f}%")
    return layer_results, fleet


def onnxruntime_whole_models(samples: int, rounds: int, variants: int) -> dict:
    layers = prunable_layers(build_model("small-cnn"), (3, 32, 32))
    backend = OnnxRuntimeBackend(threads=1, repeats=10, min_seconds=0)
    profile = run_profile(backend, plan_profile(layers, ("fp32", "int8"), samples, granule=8, seed=0), rounds=rounds)
    surrogate = fit_surrogate(*profile_configs(profile))

    calibration = random_variants(layers, ("fp32", "int8"), 16, 8, seed=1)
    evaluation = random_variants(layers, ("fp32", "int8"), variants, 8, seed=2)
    # Both sets in the same shuffled rounds: a drift of the machine's speed cannot separate them.
    timed = time_models(backend, calibration + evaluation, rounds=rounds)
    fit_model_overhead(surrogate, [(v, t) for v, t in zip(calibration, timed) if t is not None])
    evaluation = [v for v, t in zip(evaluation, timed[len(calibration):]) if t is not None]
    variants = len(evaluation)
    measured = np.array([t for t in timed[len(calibration):] if t is not None])
    predicted = np.array([surrogate.predict_model(v) for v in evaluation])
    share = within(predicted, measured)
    print(f"onnxruntime whole small-cnn variants: {100 * share:.0f}% of {variants} within +-10% "
          f"(errors {', '.join(f'{100 * e:+.0f}%' for e in predicted / measured - 1)})")
    return {"within_10pct": round(share, 4), "variants": variants, "relative_errors": [round(float(e), 4) for e in predicted / measured - 1],
            "model_scale": round(surrogate.model_scale, 4), "model_offset_ms": round(surrogate.model_offset_ms, 4),
            "transition_ms_per_melement": {k: round(v, 4) for k, v in surrogate.transition_ms_per_melement.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples and devices (a smoke run, not the quoted figures)")
    args = parser.parse_args()
    samples, rounds, devices = (12, 2, 3000) if args.quick else (40, 8, 100_000)
    started = time.perf_counter()
    results = {
        "onnxruntime_layers": onnxruntime_layers(samples, rounds),
        "onnxruntime_whole_models": onnxruntime_whole_models(samples, rounds, 20),
    }
    results["simulated_layers"], results["profiling_cost"] = simulated_layers_and_fleet_mean(devices, samples, 20)
    results |= {
        "goals": {"onnxruntime_layers": ">= 95% within +-10%", "simulated_layers": ">= 99% within +-10%",
                  "whole_models": ">= 90% within +-10%", "fleet_mean_error": "< 3%"},
    }
    record("surrogate_accuracy", results, args.quick, started)


if __name__ == "__main__":
    main()

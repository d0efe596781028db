"""Does a busy device rank architectures differently from an idle one? Measured on a real GPU.

`fleet` mode can only beat `nominal` where the fleet's devices order candidate architectures
differently from the datasheet device; in the simulator they do not (bench/fleet_vs_nominal_regimes.py).
This bench asks real hardware: 15 ResNet-20 variants (a third, half or all of every layer's
channels; 0-8 of 9 residual branches removed) are timed at batch 1 in fp16 on an idle GPU, beside
processes that keep every CPU core busy (background apps: kernel launches wait for a core), and
beside a process that keeps the GPU busy with matrix products (another model sharing the GPU).
For each condition it reports how much each variant slowed down and Kendall's tau between the
idle and the loaded orderings. A GPU in a data centre is not a Jetson; this shows whether load
reorders architectures at all, not by how much a fleet's would.

    python bench/gpu_contention.py      # needs CUDA; elsewhere it says so and saves nothing

Saves bench/results/gpu_contention.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch
from scipy.stats import kendalltau

from gpu_launch_bound import measure, variant  # bench/ (the scripts run from there)
from record import record

SHAPES = [(1, 8, 8), (3, 224, 224)]
KEEP_SHARES = (1.0, 0.5, 0.34)
REMOVED_BRANCHES = (0, 2, 4, 6, 8)
BUSY_CPU = "while True: pass"
BUSY_GPU = ("import torch\na = torch.randn(4096, 4096, device='cuda', dtype=torch.half)\n"
            "while True:\n    a @ a\n    torch.cuda.synchronize()")


def with_load(kind: str):
    """Start the background load of a condition; returns the processes to stop."""
    if kind == "idle":
        return []
    if kind == "cpu-busy":
        processes = [subprocess.Popen([sys.executable, "-c", BUSY_CPU]) for _ in range(os.cpu_count() or 2)]
    else:
        processes = [subprocess.Popen([sys.executable, "-c", BUSY_GPU])]
    time.sleep(8)  # let the load start (the GPU one imports torch and starts CUDA first)
    return processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, not the quoted figures)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing measured (run this where one is)")
        sys.exit(0)
    started = time.perf_counter()
    rounds, calls = (2, 10) if args.quick else (5, 20)
    cases = []
    for shape in SHAPES:
        models = {f"{share:.2f} of channels, {removed} branches removed": variant(shape, share, removed)[0]
                  for share in KEEP_SHARES for removed in REMOVED_BRANCHES}
        timings = {}
        for condition in ("idle", "cpu-busy", "gpu-busy"):
            load = with_load(condition)
            try:
                timings[condition] = measure(models, shape, rounds, calls)
            finally:
                for process in load:
                    process.kill()
                    process.wait()
        case = {"input_shape": list(shape), "variants": list(models), "timings": timings, "conditions": {}}
        for condition in ("cpu-busy", "gpu-busy"):
            for how in ("eager", "cuda_graph"):
                idle = [timings["idle"][name][f"{how}_ms"] for name in models]
                loaded = [timings[condition][name][f"{how}_ms"] for name in models]
                slowdown = [b / a for a, b in zip(idle, loaded)]
                tau = float(kendalltau(idle, loaded).statistic)
                case["conditions"][f"{condition}, {how}"] = {
                    "kendall_tau_with_idle": round(tau, 3),
                    "slowdown_min": round(min(slowdown), 3), "slowdown_max": round(max(slowdown), 3)}
                print(f"{'x'.join(map(str, shape)):>9} {condition:>8} {how:>10}: Kendall tau with idle {tau:.3f}, "
                      f"each variant {min(slowdown):.2f}-{max(slowdown):.2f}x slower than idle", flush=True)
        cases.append(case)
    results = {"model": "resnet20", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cpu_cores": os.cpu_count(), "rounds": rounds, "calls_per_round": calls, "cases": cases}
    record("gpu_contention", results, args.quick, started)


if __name__ == "__main__":
    main()

"""Does a busy device rank architectures differently from an idle one? Measured on a real GPU.

`fleet` mode can only beat `nominal` where the fleet's devices order candidate architectures
differently from the datasheet device; in the simulator they do not (bench/fleet_vs_nominal_regimes.py).
This bench asks real hardware: 15 ResNet-20 variants (a third, half or all of every layer's
channels; 0-8 of 9 residual branches removed) are timed at batch 1 in fp16 on an idle GPU, beside
processes that keep every CPU core busy (background apps: kernel launches wait for a core), and
beside a process that keeps the GPU busy with matrix products (another model sharing the GPU),
and idle a second time: two idle measurements disagree only by noise, the floor a load must clear.
The conditions alternate round by round in a shuffled order (the loads are paused, not stopped,
between their turns), so a drifting machine shifts all three alike. For each loaded condition it
reports how much each variant slowed down and Kendall's tau between the idle and loaded
orderings. A GPU in a data centre is not a Jetson; this shows whether load can reorder
architectures on one real device, not whether a fleet's does.

    python bench/gpu_contention.py      # needs CUDA; elsewhere it says so and saves nothing

Saves bench/results/gpu_contention.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import signal
import subprocess
import sys
import time

import torch
from scipy.stats import kendalltau

from gpu_launch_bound import medians, one_round, require_cuda, runners, variant  # bench/ (the scripts run from there)
from record import record

SHAPES = [(1, 8, 8), (3, 224, 224)]
KEEP_SHARES = (1.0, 0.5, 0.34)
REMOVED_BRANCHES = (0, 2, 4, 6, 8)
# "idle again" is a second idle condition, measured like the loaded ones: how far two idle
# measurements disagree is the noise floor a load's reordering must clear.
CONDITIONS = ("idle", "idle again", "cpu-busy", "gpu-busy")
BUSY_CPU = "while True: pass"
BUSY_GPU = ("import torch\na = torch.randn(4096, 4096, device='cuda', dtype=torch.half)\n"
            "while True:\n    a @ a\n    torch.cuda.synchronize()")


class Loads:
    """The background loads, started once and paused (SIGSTOP) except while their condition is
    measured, so conditions can alternate round by round without restarting them."""

    def __init__(self) -> None:
        cores = len(os.sched_getaffinity(0))
        self.processes: dict[str, list[subprocess.Popen]] = {condition: [] for condition in CONDITIONS}
        try:
            self.processes["cpu-busy"] = [subprocess.Popen([sys.executable, "-c", BUSY_CPU]) for _ in range(cores)]
            self.processes["gpu-busy"] = [subprocess.Popen([sys.executable, "-c", BUSY_GPU])]
            time.sleep(15)  # the GPU load imports torch and starts CUDA first
            self.check()
            for condition in CONDITIONS:
                self.pause(condition)
        except BaseException:
            self.stop()
            raise

    def check(self) -> None:
        for condition, processes in self.processes.items():
            if any(p.poll() is not None for p in processes):
                raise RuntimeError(f"the {condition} load stopped: the figures would be of an idle device")

    def resume(self, condition: str) -> None:
        self.check()
        for process in self.processes[condition]:
            process.send_signal(signal.SIGCONT)
        time.sleep(1.0)

    def pause(self, condition: str) -> None:
        for process in self.processes[condition]:
            process.send_signal(signal.SIGSTOP)
        time.sleep(0.5)

    def stop(self) -> None:
        for process in (p for processes in self.processes.values() for p in processes):
            process.kill()  # SIGKILL ends a stopped process too
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, not the quoted figures)")
    args = parser.parse_args()
    require_cuda()
    started = time.perf_counter()
    rounds, calls = (2, 10) if args.quick else (6, 20)
    cases = []
    loads = Loads()
    try:
        for shape in SHAPES:
            models = {f"{share:.2f} of channels, {removed} branches removed": variant(shape, share, removed)[0]
                      for share in KEEP_SHARES for removed in REMOVED_BRANCHES}
            prepared = {name: runners(model, shape) for name, model in models.items()}
            samples: dict[str, list[dict]] = {condition: [] for condition in CONDITIONS}
            order = random.Random(0)
            for _ in range(rounds):  # conditions alternate, in a shuffled order, round by round
                conditions = list(CONDITIONS)
                order.shuffle(conditions)
                for condition in conditions:
                    loads.resume(condition)
                    try:
                        samples[condition].append(one_round(prepared, calls, order))
                    finally:
                        loads.pause(condition)
            timings = {condition: medians(per_round) for condition, per_round in samples.items()}
            case = compare(shape, list(models), timings)
            case["per_round"] = {condition: [{name: {how: round(ms, 4) for how, ms in kinds.items()} for name, kinds in r.items()}
                                             for r in per_round] for condition, per_round in samples.items()}
            cases.append(case)
    finally:
        loads.stop()
    results = {"model": "resnet20", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cpu_cores": len(os.sched_getaffinity(0)), "rounds": rounds, "calls_per_round": calls, "cases": cases}
    record("gpu_contention", results, args.quick, started)


def compare(shape: tuple[int, int, int], names: list[str], timings: dict[str, dict]) -> dict:
    """Per condition and way of launching, against idle: Kendall's tau of the two orderings, the
    pairs of variants they order differently (and how far apart such a pair was when idle), and
    how much slower each variant ran, as a ratio and in milliseconds."""
    case = {"input_shape": list(shape), "variants": names, "timings": timings, "conditions": {}}
    for condition in CONDITIONS[1:]:
        for how in ("eager", "cuda_graph"):
            idle = [timings["idle"][name][f"{how}_ms"] for name in names]
            loaded = [timings[condition][name][f"{how}_ms"] for name in names]
            ratio = [b / a for a, b in zip(idle, loaded)]
            added = [b - a for a, b in zip(idle, loaded)]
            swapped = [(i, j) for i, j in itertools.combinations(range(len(names)), 2)
                       if (idle[i] - idle[j]) * (loaded[i] - loaded[j]) < 0]
            widest = max((abs(idle[i] - idle[j]) / min(idle[i], idle[j]) for i, j in swapped), default=0.0)
            tau = float(kendalltau(idle, loaded).statistic)
            case["conditions"][f"{condition}, {how}"] = {
                "kendall_tau_with_idle": round(tau, 3), "slowdown_min": round(min(ratio), 3), "slowdown_max": round(max(ratio), 3),
                "added_ms_min": round(min(added), 4), "added_ms_max": round(max(added), 4),
                "swapped_pairs": len(swapped), "pairs": len(names) * (len(names) - 1) // 2,
                "widest_idle_gap_of_a_swapped_pair": round(widest, 4)}
            print(f"{'x'.join(map(str, shape)):>9} {condition:>10} {how:>10}: Kendall tau with idle {tau:.3f}, {len(swapped)} pairs "
                  f"swapped (widest {100 * widest:.1f}% apart when idle), each variant {min(ratio):.2f}-{max(ratio):.2f}x its idle "
                  f"time ({min(added):+.3f} to {max(added):+.3f} ms)", flush=True)
    return case


if __name__ == "__main__":
    main()

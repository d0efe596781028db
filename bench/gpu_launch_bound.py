"""Is a batch-1 ResNet-20 launch-bound on a real GPU? The premise of the search's latency model,
measured rather than simulated.

The simulated Jetson fleet makes ResNet-20 at batch 1 launch-bound: each kernel pays tens of
microseconds of CPU-side launch and computes for a few, so pruning channels barely moves latency
and removing whole residual branches does. This bench checks that shape on whatever NVIDIA GPU it
finds (not a Jetson: a data-centre GPU has a faster CPU and far more compute, so it shows the
effect, not the fleet's figures). Physically pruned variants are built with the search's own spec
machinery (`export_spec` + `apply_spec`) and timed in fp16 at batch 1, eagerly (every kernel
launched by the CPU) and replayed as a CUDA graph (launch cost mostly gone, as in a TensorRT engine),
next to what the simulated datasheet Xavier NX predicts for the same layers.

    python bench/gpu_launch_bound.py     # needs CUDA; elsewhere it says so and saves nothing

Saves bench/results/gpu_launch_bound.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch
from torch import nn

from record import record  # bench/record.py (the scripts run from bench/)

from hdap.compress.searchable import SearchableModel
from hdap.compress.space import build_search_space
from hdap.compress.spec import apply_spec, export_spec, spec_layer_configs
from hdap.latency.backends.simulated import SimulatedBackend
from hdap.latency.fleet_profiling import nominal_device
from hdap.models import build_model, prunable_layers

SHAPES = [(1, 8, 8), (3, 32, 32), (3, 224, 224)]
MODEL = "resnet20"


def variant(shape: tuple[int, int, int], keep_share: float, removed_branches: int) -> tuple[nn.Module, float]:
    """ResNet-20 with every prunable group cut to `keep_share` of its granules and the first
    `removed_branches` residual branches (in block order) removed, physically, as the fine-tune gets
    it; and its fp16 latency on the simulated datasheet Xavier NX, in ms (for comparison)."""
    model = build_model(MODEL, shape)
    space = build_search_space(model, shape, ("fp16",))
    searchable = SearchableModel(model, space)
    with torch.no_grad():
        for group in space.groups:
            logits = searchable.keep_logits[group.index]
            kept = max(1, round(keep_share * group.granules))
            logits.fill_(-5.0)
            logits[:kept] = 5.0
        branches = [g for g in space.groups if str(g.index) in searchable.branch_logits]
        for group in branches[:removed_branches]:
            searchable.branch_logits[str(group.index)].fill_(-5.0)
    searchable.freeze()
    spec = export_spec(searchable, MODEL, shape, 10)
    datasheet = SimulatedBackend(nominal_device("jetson-xavier-nx"))
    simulated = sum(datasheet.true_latency_ms(c) for c in spec_layer_configs(spec, prunable_layers(build_model(MODEL, shape), shape)))
    return apply_spec(spec, searchable.remove()).eval(), simulated


def layers(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def calls_ms(run, calls: int) -> float:
    """Median wall time of one call, each synchronised."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def runners(model: nn.Module, shape: tuple[int, int, int]) -> dict:
    """The model in fp16 on the GPU, called eagerly and as a replayed CUDA graph."""
    model = model.cuda().half()
    x = torch.randn(1, *shape, device="cuda", dtype=torch.half)
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as CUDA graph capture asks
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)

    def eager() -> None:
        with torch.no_grad():
            model(x)
    return {"eager": eager, "cuda_graph": graph.replay}


def kernels_per_call(run) -> int | None:
    """GPU operations (kernels, copies) one call launches, as the profiler sees them; None where it cannot."""
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
            run()
            torch.cuda.synchronize()
        return sum(1 for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    except Exception:  # noqa: BLE001 - a count is a nicety; the timings stand without it
        return None


def one_round(prepared: dict[str, dict], calls: int, order: random.Random) -> dict[str, dict[str, float]]:
    """Every variant once, in a shuffled order: its median call, eager and as a CUDA graph."""
    names = list(prepared)
    order.shuffle(names)
    result: dict[str, dict[str, float]] = {name: {} for name in prepared}  # reported in the variants' order
    for name in names:
        for how, run in prepared[name].items():
            calls_ms(run, 10)  # warm
            result[name][how] = calls_ms(run, calls)
    return result


def medians(per_round: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per variant and way of calling it, the median over rounds of a round's median call."""
    return {name: {f"{how}_ms": round(statistics.median(r[name][how] for r in per_round), 4) for how in kinds}
            for name, kinds in per_round[0].items()}


def measure(prepared: dict[str, dict], rounds: int, calls: int) -> dict[str, dict[str, float]]:
    """Every variant in every round, in a shuffled order, so a drifting clock slows all alike."""
    order = random.Random(0)
    return medians([one_round(prepared, calls, order) for _ in range(rounds)])


def require_cuda() -> None:
    """Exit quietly (status 0) where there is no GPU: these benches measure nothing without one."""
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing measured (run this where one is)")
        sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed runs (a smoke run, not the quoted figures)")
    args = parser.parse_args()
    require_cuda()
    started = time.perf_counter()
    rounds, calls = (3, 20) if args.quick else (15, 40)
    variants = {"uncompressed": (1.0, 0), "half the channels of every layer": (0.5, 0),
                "4 of 9 residual branches removed": (1.0, 4), "8 of 9 residual branches removed": (1.0, 8),
                "8 of 9 branches removed and half the channels": (0.5, 8)}
    cases = []
    for shape in SHAPES:
        built = {name: variant(shape, share, removed) for name, (share, removed) in variants.items()}
        prepared = {name: runners(model, shape) for name, (model, _) in built.items()}
        timings = measure(prepared, rounds, calls)
        rows = [{"variant": name, "conv_and_linear_layers": layers(model), "gpu_operations_per_call": kernels_per_call(
                     prepared[name]["eager"]), "parameters": sum(p.numel() for p in model.parameters()),
                 **timings[name], "simulated_xavier_nx_ms": round(simulated, 4)} for name, (model, simulated) in built.items()]
        base = rows[0]
        for row in rows:
            for how in ("eager", "cuda_graph", "simulated_xavier_nx"):
                row[f"{how}_speedup"] = round(base[f"{how}_ms"] / row[f"{how}_ms"], 3)
            print(f"{'x'.join(map(str, shape)):>9}  {row['variant']:<46} {row['conv_and_linear_layers']:>2} layers, "
                  f"{row['gpu_operations_per_call']} GPU operations  "
                  f"eager {row['eager_ms']:.3f} ms ({row['eager_speedup']:.2f}x)  "
                  f"CUDA graph {row['cuda_graph_ms']:.3f} ms ({row['cuda_graph_speedup']:.2f}x)  "
                  f"simulated Xavier NX {row['simulated_xavier_nx_ms']:.3f} ms ({row['simulated_xavier_nx_speedup']:.2f}x)", flush=True)
        cases.append({"input_shape": list(shape), "batch": 1, "precision": "fp16", "rows": rows})
    results = {"model": MODEL, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "rounds": rounds, "calls_per_round": calls, "cases": cases}
    record("gpu_launch_bound", results, args.quick, started)


if __name__ == "__main__":
    main()

"""What the architecture parameters cost: one search epoch against one plain training epoch.

The same model, data, batch size and optimiser, trained plainly and trained as a search (keep and
precision logits, fake quantisation of weights and activations, the fleet-weighted latency from
five cluster surrogates on every batch). Runs alternate (plain, search, plain, search, ...) so a
noisy shared machine slows both alike; the figure is the median over the pairs of their ratio, in one run.

    .venv/bin/python bench/search_cost.py           # ~4 minutes on 2 cores
    .venv/bin/python bench/search_cost.py --cifar ../shared/data/cifar10-png.tar    # + real CIFAR-10 images

With --cifar, a case on real CIFAR-10 32x32 images (2,000 training images, the option-A ResNet-20
as the shared checkpoint has it, the standard augmentation on), on the CPU and, where CUDA is
visible, on the GPU. Saves bench/results/search_cost.json. Goal: a search costs at most 1.5x
plain training.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from record import record  # bench/record.py (the scripts run from bench/)

from hdap.compress.search import ArchitectureCost
from hdap.compress.training import train_epochs
from hdap.compress.searchable import SearchableModel
from hdap.compress.space import build_search_space
from hdap.data import DataConfig, load_dataset
from hdap.latency.backends.simulated import SimulatedDevice
from hdap.latency.fleet_cost import CompiledFleetCost, FleetCost
from hdap.latency.fleet_profiling import simulated_surrogate
from hdap.models import build_model, prunable_layers
from hdap.stages.search import Objective, SearchConfig

MENU = ("fp16", "int8")
CLUSTERS = [SimulatedDevice("jetson-xavier-nx", mode, temperature, load) for mode, temperature, load in
            (("20W", 55, 0.05), ("20W", 89, 0.05), ("15W", 52, 0.05), ("10W", 48, 0.05), ("10W", 50, 0.55))]


def measure(model_name: str, shape: tuple[int, int, int], epochs: int, repeats: int, threads: int, data=None,
            device: str = "cpu") -> dict:
    torch.set_num_threads(threads)
    data = data or load_dataset(DataConfig("digits", input_shape=shape))
    augment = bool(getattr(data, "augment", False))
    config = SearchConfig(model=model_name, input_shape=shape)
    base = build_model(model_name, shape).to(device)
    layers = prunable_layers(base, shape)
    fleet = FleetCost([simulated_surrogate(d, layers, MENU, 12) for d in CLUSTERS], [0.3, 0.12, 0.25, 0.2, 0.13], MENU)
    plain_seconds, search_seconds = [], []
    for _ in range(repeats):
        model = copy.deepcopy(base)
        started = time.perf_counter()
        train_epochs(model, data.train, epochs, config, "plain training", augment=augment)
        plain_seconds.append(time.perf_counter() - started)

        model = copy.deepcopy(base)
        searchable = SearchableModel(model, build_search_space(model, shape, MENU))
        compiled = CompiledFleetCost(fleet, [d.config for d in searchable.decisions()])
        with torch.no_grad():
            baseline = float(compiled.fleet_weighted_latency(*searchable.cost_inputs()))
        cost = ArchitectureCost(Objective.LATENCY, compiled, baseline)
        started = time.perf_counter()
        train_epochs(searchable, data.train, epochs, config, "search", augment=augment, penalty=lambda s=searchable, c=cost: 2.0 * c(s),
                     architecture=searchable.architecture_parameters(), arch_learning_rate=config.arch_learning_rate)
        search_seconds.append(time.perf_counter() - started)
    plain, search = statistics.median(plain_seconds), statistics.median(search_seconds)
    # The figure: the median of each back-to-back pair's ratio. A ratio of medians can pair a plain
    # run from a quiet spell with a search run from a busy one (it read 1.55x in a run whose five
    # pairs were each 1.55-2.0x).
    ratio = statistics.median(s / p for p, s in zip(plain_seconds, search_seconds))
    source = "real CIFAR-10 images" if augment else "digits"
    print(f"{model_name} on {'x'.join(map(str, shape))} {source} ({device}), {threads} thread(s), {epochs} epochs: plain {plain:.2f} s, search {search:.2f} s "
          f"(medians); median ratio of the pairs {ratio:.2f}x (runs: plain {', '.join(f'{v:.2f}' for v in plain_seconds)}; "
          f"search {', '.join(f'{v:.2f}' for v in search_seconds)})")
    return {"model": model_name, "input_shape": list(shape), "data": source, "device": device, "threads": threads, "epochs": epochs, "repeats": repeats,
            "plain_seconds_median": round(plain, 3), "search_seconds_median": round(search, 3), "ratio": round(ratio, 3),
            "ratio_of_medians": round(search / plain, 3),
            "plain_seconds": [round(v, 3) for v in plain_seconds], "search_seconds": [round(v, 3) for v in search_seconds]}


def cifar_subset(tarball: Path, images: int):
    """`images` training images of CIFAR-10 (seeded, stratified), normalised as the shared checkpoints expect."""
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from hdap.data.images import read_local_shard

    if not tarball.exists():
        raise SystemExit(f"{tarball} is missing: pass --cifar <path to cifar10-png.tar>.")
    decoded = read_local_shard(tarball, (3, 32, 32))
    labels = torch.from_numpy(decoded.labels["train"])
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:images]
    x = torch.from_numpy(decoded.images["train"][chosen.numpy()]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return SimpleNamespace(train=TensorDataset((x - mean) / std, labels[chosen]), augment=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat of one epoch (a smoke run, not the quoted figures)")
    parser.add_argument("--cifar", type=Path, help="CIFAR-10's PNG tarball (cifar10-png.tar): adds the real-image case")
    args = parser.parse_args()
    epochs, repeats = (1, 1) if args.quick else (2, 5)
    started = time.perf_counter()
    # Every core (PyTorch's default, what the pipeline uses) and one thread: on small inputs the
    # search's overhead is a fixed cost per step that a second core does not shorten, while plain
    # training's convolutions do get faster, so the ratio depends on the thread count.
    cores = torch.get_num_threads()
    cases = [measure("resnet20", shape, epochs, repeats, threads)
             for threads in dict.fromkeys((cores, 1))
             for shape in ((1, 8, 8), (3, 32, 32))]  # the demo; CIFAR-sized inputs (digits upsampled)
    if args.cifar:
        cifar = cifar_subset(args.cifar, 2000)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        cases += [measure("resnet20-a", (3, 32, 32), epochs, repeats, cores, cifar, device) for device in devices]
    results = {
        "cases": cases,
        "goal": "search <= 1.5x plain training per epoch",
    }
    record("search_cost", results, args.quick, started)


if __name__ == "__main__":
    main()

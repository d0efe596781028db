"""The GPU configuration: a third-party CIFAR-10 ResNet compressed at the library level (no store, no
kfp), with the search, the fine-tune and every evaluation on CUDA, and more data and epochs than
the CPU configuration (bench/cifar_pretrained.py) can afford.

Data comes from a compact, lossless file a GPU machine can be sent (at most ~40 MB): a stated,
stratified subset of CIFAR-10's training split and the whole test split, as a
NumPy archive of lossless WebP images (decoded, and checked, to the same pixels). Make it once where the PNG tarball is:

    .venv/bin/python bench/cifar_pretrained_gpu.py --make-subset 10000 --data ../shared/data   # writes bench/data/
    .venv/bin/python bench/cifar_pretrained_gpu.py --model resnet56-a                          # on the GPU machine
    .venv/bin/python bench/cifar_pretrained_gpu.py --quick --device cpu                        # a smoke run anywhere

The checkpoint (bench/data/<checkpoint>, copied there by --make-subset) was trained on all 50,000
training images: validation is half the test images (seeded, stratified), the other half reports,
and the whole test split shows the baseline matches its published accuracy. The fleet is five
simulated Jetson Xavier NX clusters (their latency surrogates: a prediction, not hardware).
Saves bench/results/cifar_<model>_gpu.json.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from record import record  # bench/record.py (the scripts run from bench/)

from hdap.compress.finetune import quantization_aware_finetune
from hdap.compress.search import distinct_architectures, run_search
from hdap.data.datasets import DataConfig, prepare_dataset
from hdap.latency.backends.simulated import SimulatedDevice
from hdap.latency.fleet_cost import FleetCost
from hdap.latency.fleet_profiling import simulated_surrogate
from hdap.models import build_model, prunable_layers
from hdap.models.weights import read_state_dict
from hdap.preprocessing import ValidationSource
from hdap.stages.finetune import FinetuneConfig
from hdap.stages.search import SearchConfig

HERE = Path(__file__).resolve().parent
SUBSET = HERE / "data" / "cifar10-subset.npz"
CHECKPOINTS = {"resnet56-a": ("resnet56-4bfd9763.th", 93.39), "resnet20-a": ("resnet20-12fca82f.th", 91.73)}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MENU = ("fp16", "int8")
# Five clusters of a Xavier NX fleet (power mode, temperature, background load) and their shares.
CLUSTERS = [SimulatedDevice("jetson-xavier-nx", mode, temperature, load) for mode, temperature, load in
            (("20W", 55, 0.05), ("20W", 89, 0.05), ("15W", 52, 0.05), ("10W", 48, 0.05), ("10W", 50, 0.55))]
WEIGHTS = [0.3, 0.12, 0.25, 0.2, 0.13]
GPU = dict(targets=(0.6, 0.45, 0.35, 0.3, 0.25, 0.2), epochs=20, finetune_epochs=10, batch_size=128, learning_rate=0.02)
FINETUNE = dict(epochs=15, learning_rate=0.005, batch_size=128)
QUICK = dict(targets=(0.5,), epochs=1, finetune_epochs=1, batch_size=128, learning_rate=0.002)


def make_subset(data: Path, images: int) -> None:
    """Write `images` stratified training images and the whole test split as lossless WebP (~1.6 kB an image)."""
    from hdap.data.images import read_local_shard

    decoded = read_local_shard(data / "cifar10-png.tar", (3, 32, 32))
    labels = decoded.labels["train"]
    rng = np.random.default_rng(0)
    chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), images // 10, replace=False) for c in range(10)]))
    SUBSET.parent.mkdir(exist_ok=True)
    train_bytes, train_ends = encode(decoded.images["train"][chosen])
    test_bytes, test_ends = encode(decoded.images["test"])
    np.savez(SUBSET, train_webp=train_bytes, train_ends=train_ends, train_y=labels[chosen],
             test_webp=test_bytes, test_ends=test_ends, test_y=decoded.labels["test"])
    for checkpoint, _ in CHECKPOINTS.values():
        shutil.copy(data / "pretrained" / checkpoint, SUBSET.parent / checkpoint)
    total = sum(p.stat().st_size for p in SUBSET.parent.iterdir())
    print(f"{SUBSET}: {len(chosen):,} training images (stratified, seed 0) and {len(decoded.labels['test']):,} test images, "
          f"{SUBSET.stat().st_size / 1e6:.1f} MB; with the checkpoints {total / 1e6:.1f} MB")


def encode(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lossless WebP of each HxWx3 image, concatenated, and where each ends (checked to decode to the same pixels)."""
    import io

    from PIL import Image

    chunks = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "WEBP", lossless=True, quality=100, method=4)
        chunks.append(np.frombuffer(buffer.getvalue(), np.uint8))
    joined, ends = np.concatenate(chunks), np.cumsum([len(c) for c in chunks])
    if not np.array_equal(decode(joined, ends[:50]), pixels[:50]):
        raise SystemExit("this Pillow's WebP is not lossless here: the subset would not be CIFAR-10's pixels.")
    return joined, ends


def decode(joined: np.ndarray, ends: np.ndarray) -> np.ndarray:
    import io

    from PIL import Image

    starts = np.concatenate([[0], ends[:-1]])
    return np.stack([np.asarray(Image.open(io.BytesIO(joined[a:b].tobytes())).convert("RGB")) for a, b in zip(starts, ends)])


def dataset(train_images: int):
    arrays = np.load(SUBSET, allow_pickle=False)

    def tensor(pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)

    config = DataConfig("imagefolder", "", (3, 32, 32), 0, ValidationSource.TEST, MEAN, STD, train_images=train_images)
    train, test = (tensor(decode(arrays[f"{split}_webp"], arrays[f"{split}_ends"])) for split in ("train", "test"))
    return prepare_dataset(config, train, torch.from_numpy(arrays["train_y"]), test, torch.from_numpy(arrays["test_y"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(CHECKPOINTS), default="resnet56-a")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--make-subset", type=int, metavar="IMAGES", help="write bench/data/ from --data and stop")
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data")
    parser.add_argument("--quick", action="store_true", help="one target, one epoch, 500 images (a smoke run)")
    parser.add_argument("--targets", help="cost targets instead of the GPU configuration's, e.g. 0.6,0.45 (a shorter run)")
    parser.add_argument("--learning-rate", type=float, help="the search's learning rate instead of the GPU configuration's")
    args = parser.parse_args()
    if args.make_subset:
        return make_subset(args.data, args.make_subset)
    if not SUBSET.exists():
        raise SystemExit(f"{SUBSET} is missing: make it with --make-subset 10000 --data <folder with cifar10-png.tar>.")
    started = time.perf_counter()
    checkpoint, published = CHECKPOINTS[args.model]
    data = dataset(500 if args.quick else 0)
    layers = prunable_layers(build_model(args.model, (3, 32, 32)), (3, 32, 32))
    fleet = FleetCost([simulated_surrogate(d, layers, MENU, 12) for d in CLUSTERS], WEIGHTS, MENU)
    settings = dict(QUICK if args.quick else GPU)
    if args.targets:
        settings["targets"] = tuple(float(t) for t in args.targets.split(","))
    if args.learning_rate:
        settings["learning_rate"] = args.learning_rate
    config = SearchConfig(model=args.model, input_shape=(3, 32, 32), weights_uri=f"s3://bench-data/{checkpoint}", device=args.device, **settings)
    result = run_search(config, data, fleet, weights=read_state_dict(SUBSET.parent / checkpoint))
    chosen = result.chosen[0]
    finetune_config = FinetuneConfig(device=args.device, **({"epochs": 1} if args.quick else FINETUNE))
    finetuned = quantization_aware_finetune(chosen.spec, chosen.weights, result.baseline_weights, data, finetune_config)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    results = {
        "model": args.model, "checkpoint": checkpoint, "published_test_accuracy": published, "device": device,
        "configuration": {"train_images": len(data.train), "search": {k: list(v) if isinstance(v, tuple) else v
                                                                      for k, v in settings.items()},
                          "finetune": FINETUNE, "validation": "half the test images (seeded, stratified)"},
        "baseline": {"full_test_accuracy": result.baseline_full_test_accuracy, "validation_accuracy": result.baseline_validation_accuracy,
                     "test_half_accuracy": result.baseline_accuracy},
        "chosen": {"setting": chosen.label, "validation_accuracy": chosen.validation_accuracy, "test_half_accuracy": chosen.accuracy,
                   "after_finetune_test_half_accuracy": finetuned.accuracy_after,
                   "fleet_ms_predicted": [round(result.baseline_fleet_latency_ms, 5), round(chosen.fleet_latency_ms, 5)],
                   "fleet_speedup_predicted": round(result.baseline_fleet_latency_ms / chosen.fleet_latency_ms, 3),
                   "weight_kbit": [round(result.baseline_size_bits / 1e3, 1), round(chosen.size_bits / 1e3, 1)]},
        "front": {"distinct_architectures": distinct_architectures(result.points),
                  "points": [{"setting": p.label, "validation_accuracy": p.validation_accuracy, "test_half_accuracy": p.accuracy,
                              "fleet_ms_predicted": round(p.fleet_latency_ms, 5), "pareto": p.pareto} for p in result.points]},
        "seconds": {**{k: round(v, 1) for k, v in result.seconds.items()}, "finetune": round(finetuned.seconds, 1)},
    }
    print(f"\n{args.model} on {device}: baseline {result.baseline_full_test_accuracy:.2f}% (published {published:.2f}%); chosen "
          f"{chosen.label}: {finetuned.accuracy_after:.2f}% after the fine-tune, {results['chosen']['fleet_speedup_predicted']:.2f}x "
          f"lower predicted fleet latency; {results['front']['distinct_architectures']} distinct architectures")
    record("cifar_pretrained_gpu", results, args.quick, started, saved_as=f"cifar_{args.model}_gpu")


if __name__ == "__main__":
    main()

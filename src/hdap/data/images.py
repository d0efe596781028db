"""Image datasets in the store, decoded once into a local cache.

Two layouts are read, both parsed (never unpickled):
- an ImageFolder tree: `<uri>/[train|val|validation|test/]<class>/<image>`;
- tar shards under `<uri>`: each `.tar` holds such a tree (`train/<class>/<image>`, as
  `cifar10-png.tar` does), or WebDataset samples (`<key>.png` with `<key>.cls`, the label's
  number), the split then taken from the shard's name (`train-000.tar`, `test-000.tar`).

Images are decoded with Pillow, converted to the model's channels and resized to its input,
and kept as uint8 arrays (CIFAR-10's 60,000 images: 184 MB), saved under the cache folder
keyed by the objects' names and sizes, so a second run (a retried step, the fine-tune after the
search) reads them in a second instead of decoding them again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from hdap.errors import HdapError
from hdap.progress import progress

log = logging.getLogger("hdap")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm"}
SPLITS = {"train": "train", "test": "test", "val": "val", "validation": "val"}
TREE_HINT = ("upload a tree <class>/<image> (or train/<class>/..., val/<class>/... and test/<class>/...), or tar shards "
             "of one, e.g. `mc cp --recursive my-images/ <alias>/<bucket>/datasets/my-images/`")


def cache_root() -> Path:
    """HDAP_CACHE, else the project-local .hdap/cache (on a cluster, mount a volume there to share it between steps)."""
    from hdap.config import home_dir

    return Path(os.environ["HDAP_CACHE"] if os.environ.get("HDAP_CACHE") else home_dir() / "cache") / "datasets"


@dataclass
class ImageSplits:
    """Decoded images (N, H, W, C uint8) and labels per split name (train, val, test, or all)."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


@dataclass
class _Sample:
    split: str
    label: str  # a class folder's name, or a WebDataset label number
    data: bytes


def read_image_dataset(store, uri: str, input_shape: tuple[int, int, int]) -> ImageSplits:
    """The images under `uri`, decoded to `input_shape`, from the cache when it has them."""
    objects = sorted(store.list(uri), key=lambda o: o.uri)
    if not objects:
        raise HdapError(f"there are no images under {uri}: {TREE_HINT}.")
    key = hashlib.sha256(json.dumps([[o.uri, o.size] for o in objects] + [list(input_shape)]).encode()).hexdigest()[:24]
    folder = cache_root() / key
    if (folder / "classes.json").exists():
        log.info("images of %s from the cache %s", uri, folder)
        return _load_cache(folder)
    samples = _samples(store, uri, objects)
    splits = _decode(samples, input_shape, uri)
    _save_cache(folder, splits)
    return splits


def read_local_shard(path: Path, input_shape: tuple[int, int, int]) -> ImageSplits:
    """One tar shard on this machine, decoded (what a benchmark uses to make a compact subset)."""
    return _decode(_tar_samples(path, path.name), input_shape, str(path))


def _samples(store, uri: str, objects) -> list[_Sample]:
    prefix = uri.rstrip("/") + "/"
    samples: list[_Sample] = []
    with tempfile.TemporaryDirectory(prefix="hdap-shards-") as scratch:
        for obj in progress(objects, f"reading {uri}"):
            relative = PurePosixPath(obj.uri[len(prefix):])
            if relative.suffix == ".tar":
                path = store.get_file(obj.uri, Path(scratch) / "shard.tar")
                samples += _tar_samples(path, relative.name)
                path.unlink()
            elif relative.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(_tree_sample(relative.parts, store.get_bytes(obj.uri), obj.uri))
    return samples


def _tree_sample(parts: tuple[str, ...], data: bytes, shown_as: str) -> _Sample:
    if len(parts) >= 3 and parts[-3].lower() in SPLITS:
        return _Sample(SPLITS[parts[-3].lower()], parts[-2], data)
    if len(parts) >= 2:
        return _Sample("all", parts[-2], data)
    raise HdapError(f"{shown_as} is not in a class folder: {TREE_HINT}.")


def _tar_samples(path: Path, shard: str) -> list[_Sample]:
    samples, webdataset = [], defaultdict(dict)
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = PurePosixPath(member.name)
                suffix = name.suffix.lower()
                if suffix not in IMAGE_SUFFIXES and suffix != ".cls":
                    continue
                data = archive.extractfile(member).read()
                if suffix == ".cls" or (len(name.parts) == 1 and suffix in IMAGE_SUFFIXES):
                    webdataset[str(name.with_suffix(""))][suffix] = data
                else:
                    samples.append(_tree_sample(name.parts, data, f"{shard}:{member.name}"))
    except (tarfile.TarError, OSError) as err:
        raise HdapError(f"{shard} is not a readable tar shard ({err}): {TREE_HINT}.") from None
    split = next((SPLITS[s] for s in SPLITS if shard.lower().startswith(s)), "all")
    for key, parts in webdataset.items():
        image = next((v for k, v in parts.items() if k != ".cls"), None)
        if image is None or ".cls" not in parts:
            raise HdapError(f"{shard} sample {key} has {'no label (.cls)' if image else 'no image'}: a WebDataset sample "
                            "is <key>.png with <key>.cls holding its class number.")
        samples.append(_Sample(split, parts[".cls"].decode().strip(), image))
    return samples


def _decode(samples: list[_Sample], input_shape: tuple[int, int, int], uri: str) -> ImageSplits:
    from PIL import Image, UnidentifiedImageError

    channels, height, width = input_shape
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise HdapError(f"images can be read as 1 or 3 channels, not {channels}: set input_shape to 3,{height},{width}.")
    names = sorted({s.label for s in samples if s.split in ("train", "all")} or {s.label for s in samples})
    numbered = all(n.isdigit() for n in names)
    index = {n: int(n) if numbered else i for i, n in enumerate(sorted(names, key=int) if numbered else names)}
    unknown = sorted({s.label for s in samples} - set(index))
    if unknown:
        raise HdapError(f"{uri} has classes outside its training images: {', '.join(unknown[:5])}.")
    grouped: dict[str, list[_Sample]] = defaultdict(list)
    for sample in samples:
        grouped[sample.split].append(sample)
    splits = ImageSplits(classes=[str(n) for n in index])
    for split, members in grouped.items():
        images = np.empty((len(members), height, width, channels), dtype=np.uint8)
        for i, sample in enumerate(progress(members, f"decoding {split} images")):
            try:
                with Image.open(io.BytesIO(sample.data)) as image:
                    image = image.convert(mode)
                    if image.size != (width, height):
                        image = image.resize((width, height), Image.Resampling.BILINEAR)
                    images[i] = np.asarray(image).reshape(height, width, channels)
            except (UnidentifiedImageError, OSError) as err:
                raise HdapError(f"an image of class {sample.label} in {uri} cannot be decoded ({err}).") from None
        splits.images[split] = images
        splits.labels[split] = np.array([index[s.label] for s in members], dtype=np.int64)
    return splits


def _save_cache(folder: Path, splits: ImageSplits) -> None:
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    for split in splits.images:
        np.save(partial / f"{split}.images.npy", splits.images[split])
        np.save(partial / f"{split}.labels.npy", splits.labels[split])
    (partial / "classes.json").write_text(json.dumps({"classes": splits.classes, "splits": sorted(splits.images)}))
    if not folder.exists():
        partial.rename(folder)


def _load_cache(folder: Path) -> ImageSplits:
    meta = json.loads((folder / "classes.json").read_text())
    return ImageSplits({s: np.load(folder / f"{s}.images.npy", allow_pickle=False) for s in meta["splits"]},
                       {s: np.load(folder / f"{s}.labels.npy", allow_pickle=False) for s in meta["splits"]}, meta["classes"])

"""Image datasets in the store, decoded once into a local cache.

Two layouts are read, both parsed (never unpickled):
- an ImageFolder tree: `<uri>/[train|val|validation|test/]<class>/<image>`;
- tar shards under `<uri>`: each `.tar` holds such a tree (`train/<class>/<image>`, as
  `cifar10-png.tar` does), or WebDataset samples (`<key>.png` with `<key>.cls`, the label's
  number), the split then taken from the shard's name (`train-000.tar`, `test-000.tar`).

Images are decoded with Pillow, converted to the model's channels and resized to its input,
straight into uint8 .npy files (CIFAR-10's 60,000 images: 184 MB) under the cache folder keyed
by the objects' names and sizes, which are then read as memory maps: no step holds every
decoded image in memory, and a second run (a retried step, the fine-tune after the search)
opens them at once instead of decoding them again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
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
    """Decoded images (N, H, W, C uint8; read-only memory maps when they come from the cache) and labels
    per split name (train, val, test, or all)."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


@dataclass
class _Sample:
    split: str
    label: str  # a class folder's name, or a WebDataset label number
    read: Callable[[], bytes]  # the encoded image, read from local disk when it is decoded


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
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    # the downloads wait on the cache's disk, not in memory, until they are decoded
    with tempfile.TemporaryDirectory(prefix="hdap-downloads-", dir=partial.parent) as scratch, ExitStack() as archives:
        samples = _samples(store, uri, objects, Path(scratch), archives)
        splits = _decode(samples, input_shape, uri, functools.partial(_cache_file, partial))
    _save_cache(folder, partial, splits)
    return _load_cache(folder)


def read_local_shard(path: Path, input_shape: tuple[int, int, int]) -> ImageSplits:
    """One tar shard on this machine, decoded in memory (what a benchmark uses to make a compact subset)."""
    with ExitStack() as archives:
        samples = _tar_samples(path, path.name, archives)
        return _decode(samples, input_shape, str(path), lambda _, shape: np.empty(shape, dtype=np.uint8))


def _samples(store, uri: str, objects, scratch: Path, archives: ExitStack) -> list[_Sample]:
    """Every image under `uri`, downloaded into `scratch`; a tar shard's stay open in `archives`."""
    prefix = uri.rstrip("/") + "/"
    samples: list[_Sample] = []
    for number, obj in enumerate(progress(objects, f"reading {uri}")):
        relative = PurePosixPath(obj.uri[len(prefix):])
        if relative.suffix == ".tar":
            samples += _tar_samples(store.get_file(obj.uri, scratch / f"{number}.tar"), relative.name, archives)
        elif relative.suffix.lower() in IMAGE_SUFFIXES:
            path = store.get_file(obj.uri, scratch / f"{number}{relative.suffix}")
            samples.append(_tree_sample(relative.parts, path.read_bytes, obj.uri))
    return samples


def _tree_sample(parts: tuple[str, ...], read: Callable[[], bytes], shown_as: str) -> _Sample:
    if len(parts) >= 3 and parts[-3].lower() in SPLITS:
        return _Sample(SPLITS[parts[-3].lower()], parts[-2], read)
    if len(parts) >= 2:
        return _Sample("all", parts[-2], read)
    raise HdapError(f"{shown_as} is not in a class folder: {TREE_HINT}.")


def _tar_samples(path: Path, shard: str, archives: ExitStack) -> list[_Sample]:
    """The images of one shard, read from it when decoded (it stays open in `archives`); labels are read now."""
    samples, webdataset = [], defaultdict(dict)
    try:
        archive = archives.enter_context(tarfile.open(path))
        for member in archive:
            if not member.isfile():
                continue
            name = PurePosixPath(member.name)
            suffix = name.suffix.lower()
            if suffix not in IMAGE_SUFFIXES and suffix != ".cls":
                continue
            read = functools.partial(_member_bytes, archive, member)
            if suffix == ".cls" or (len(name.parts) == 1 and suffix in IMAGE_SUFFIXES):
                webdataset[str(name.with_suffix(""))][suffix] = read() if suffix == ".cls" else read
            else:
                samples.append(_tree_sample(name.parts, read, f"{shard}:{member.name}"))
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


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    return archive.extractfile(member).read()


def _decode(samples: list[_Sample], input_shape: tuple[int, int, int], uri: str,
            allocate: Callable[[str, tuple[int, ...]], np.ndarray]) -> ImageSplits:
    """Every sample decoded into the uint8 array `allocate(split, shape)` gives for its split."""
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
        images = allocate(split, (len(members), height, width, channels))
        for i, sample in enumerate(progress(members, f"decoding {split} images")):
            try:
                with Image.open(io.BytesIO(sample.read())) as image:
                    image = image.convert(mode)
                    if image.size != (width, height):
                        image = image.resize((width, height), Image.Resampling.BILINEAR)
                    images[i] = np.asarray(image).reshape(height, width, channels)
            except (UnidentifiedImageError, OSError, tarfile.TarError) as err:
                raise HdapError(f"an image of class {sample.label} in {uri} cannot be decoded ({err}).") from None
        splits.images[split] = images
        splits.labels[split] = np.array([index[s.label] for s in members], dtype=np.int64)
    return splits


def _cache_file(partial: Path, split: str, shape: tuple[int, ...]) -> np.memmap:
    """A split's images as a .npy file being written: decoded images go to disk, not memory."""
    return np.lib.format.open_memmap(partial / f"{split}.images.npy", mode="w+", dtype=np.uint8, shape=shape)


def _save_cache(folder: Path, partial: Path, splits: ImageSplits) -> None:
    """Writes the labels and the split names next to the images decoded into `partial`, then moves it into place
    (one rename: a reader never sees half a cache)."""
    for split in splits.images:
        splits.images[split].flush()
        np.save(partial / f"{split}.labels.npy", splits.labels[split])
    (partial / "classes.json").write_text(json.dumps({"classes": splits.classes, "splits": sorted(splits.images)}))
    if not folder.exists():
        partial.rename(folder)


def _load_cache(folder: Path) -> ImageSplits:
    meta = json.loads((folder / "classes.json").read_text())
    return ImageSplits({s: np.load(folder / f"{s}.images.npy", mmap_mode="r", allow_pickle=False) for s in meta["splits"]},
                       {s: np.load(folder / f"{s}.labels.npy", allow_pickle=False) for s in meta["splits"]}, meta["classes"])

"""Image classification datasets, shaped and normalised for the model, in three splits:
training, validation (what the search's choice and the quality gate decide on) and test (what
reports).

- `digits`: scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn):
  the default demo, small enough to search on a laptop in a minute.
- `cifar10`: CIFAR-10 in its standard python tarball (`cifar-10-python.tar.gz`) in the store.
- `imagefolder`: an ImageFolder tree or tar shards in the store (`hdap.data.images`).

Nothing is downloaded from the internet: a dataset that is not in the store is a clear error
that says how to put it there. Images are resized (and grey/colour converted) to the model's
input shape and normalised with the model's own mean and deviation when it has them (a trained
checkpoint does), else with the training split's. The validation split is held out of the
training images, or, for a checkpoint trained on all of them, taken from half the test images
(the other half then reports, and the whole test split only shows the baseline matches its
published accuracy). A split (`ImageSplit`) is an index array into its images as they come
(splits share them, never copy them) and normalises a batch as it is fetched: an ImageFolder's
images stay the decoded uint8 cache, a memory map, so a dataset larger than memory streams from
disk; digits and CIFAR-10 (737 MB as float) are float tensors in memory. Training batches are
augmented as they are drawn.
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset as TorchDataset

from hdap.errors import HdapError
from hdap.preprocessing import ChannelOrder, DataRecipe, Preprocessing, ValidationSource
from hdap.settings import DatasetName

log = logging.getLogger("hdap")
TEST_SHARE = 0.2  # of a dataset that comes as one pool (digits, an ImageFolder without splits)
VALIDATION_SHARE = 0.1  # of the training images, when the validation split is held out of them
AUGMENT_FROM = 32  # pixels: smaller images (the 8x8 digits) are not shifted by 4 pixels
Images = np.ndarray | torch.Tensor  # decoded uint8 (N, H, W, C), or float32 (N, C, H, W) in [0, 1]


@dataclass(frozen=True)
class DataConfig:
    name: DatasetName = DatasetName.DIGITS
    uri: str = ""  # where cifar10 and imagefolder data live in the store
    input_shape: tuple[int, int, int] = (1, 8, 8)
    seed: int = 0
    validation: ValidationSource = ValidationSource.AUTO
    mean: tuple[float, ...] = ()  # the model's input normalisation; empty: the training split's statistics
    std: tuple[float, ...] = ()
    channel_order: ChannelOrder = ChannelOrder.RGB
    trained_on_all_training_images: bool = False  # a given checkpoint: AUTO validates on half the test images
    train_images: int = 0  # train on a seeded, stratified subset of this many training images; 0: all

    def resolved_validation(self, has_given: bool) -> ValidationSource:
        if self.validation is not ValidationSource.AUTO:
            return self.validation
        if has_given:
            return ValidationSource.GIVEN
        return ValidationSource.TEST if self.trained_on_all_training_images else ValidationSource.TRAIN


class ImageSplit(TorchDataset):
    """One split: the images as they come (a uint8 (N, H, W, C) memory map of an ImageFolder cache, or
    float32 (N, C, H, W) tensors in [0, 1]), every label of them, the positions of this split's examples
    in them, and the normalisation, done as examples are fetched: a DataLoader fetches a whole batch at
    once (`__getitems__`), so a split never holds float copies of its images."""

    def __init__(self, images: Images, labels: torch.Tensor, index: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                 bgr: bool) -> None:
        self.images, self.labels, self.index = images, labels, index
        self.mean, self.std, self.bgr = mean, std, bgr  # mean and std shaped (1, C, 1, 1)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._batch([position])
        return x[0], y[0]

    def __getitems__(self, positions: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A DataLoader's whole batch, converted in one operation (its collate stacks the samples again)."""
        return list(zip(*self._batch(positions)))

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every example, normalised, and its label, materialised: for small data and tests."""
        return self._batch(np.arange(len(self)))

    @property
    def targets(self) -> torch.Tensor:
        """Every example's label, without reading its image."""
        return self.labels[torch.from_numpy(self.index)]

    def _batch(self, positions: list[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.index[positions]
        return (_pixels(self.images, chosen, self.bgr) - self.mean) / self.std, self.labels[torch.from_numpy(chosen)]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap):  # a worker process that is sent the split reopens the file, not a copy
            state["images"] = Path(self.images.filename)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["images"], Path):
            state["images"] = np.load(state["images"], mmap_mode="r", allow_pickle=False)
        self.__dict__.update(state)


class _Part(NamedTuple):
    """Images as they come, every label of them, and the positions in them of the examples a split takes."""

    images: Images
    labels: torch.Tensor
    index: np.ndarray

    def split_labels(self) -> torch.Tensor:
        return self.labels[torch.from_numpy(self.index)]

    def take(self, positions: np.ndarray) -> _Part:
        return self._replace(index=self.index[positions])


@dataclass
class Dataset:
    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit
    classes: int
    input_shape: tuple[int, int, int]
    recipe: DataRecipe
    full_test: ImageSplit | None = None  # every test image, where half of them validate
    augment: bool = False  # random crop (4-pixel padding) and horizontal flip of training batches

    def describe(self) -> str:
        c, h, w = self.input_shape
        return (f"{len(self.train):,} training, {len(self.validation):,} validation ({self.split_note()}) and "
                f"{len(self.test):,} test images, {self.classes} classes, {c}x{h}x{w}")

    def split_note(self) -> str:
        return {ValidationSource.TRAIN: "held out of the training images",
                ValidationSource.TEST: "half the test images; the other half reports",
                ValidationSource.GIVEN: "the dataset's own"}[self.recipe.validation]


def recipe_config(recipe: DataRecipe, name: DatasetName, uri: str, seed: int) -> DataConfig:
    """The data config that repeats a recipe: the same preprocessing and splits (the fine-tune and build use the search's)."""
    pre = recipe.preprocessing
    return DataConfig(name, uri, tuple(pre.input_shape), seed, recipe.validation, tuple(pre.mean), tuple(pre.std),
                      pre.channel_order, train_images=recipe.train_images)


def load_dataset(config: DataConfig, store=None) -> Dataset:
    """The dataset named by `config`, split, resized to its input shape and normalised."""
    given = None
    if config.name == DatasetName.DIGITS:
        train, test = _split(_whole(*_digits(), config.input_shape), config.seed, TEST_SHARE)
    elif config.name == DatasetName.CIFAR10:
        train_x, train_y, test_x, test_y = _cifar10(_require_store(store, config), config.uri)
        train, test = _whole(train_x, train_y, config.input_shape), _whole(test_x, test_y, config.input_shape)
    elif config.name == DatasetName.IMAGEFOLDER:
        train, test, given = _image_folder(_require_store(store, config), config.uri, config.input_shape, config.seed)
    else:
        raise HdapError(f"unknown dataset '{config.name}': use one of {DatasetName.choices()}.")
    return _prepare(config, train, test, given)


def prepare_dataset(config: DataConfig, train_x: Images, train_y: torch.Tensor, test_x: Images, test_y: torch.Tensor,
                    given: tuple[Images, torch.Tensor] | None = None) -> Dataset:
    """Images and their labels, split three ways as `config` says, resized and normalised: what every
    source ends in (a benchmark with its own arrays starts here). Images are float32 (N, C, H, W) in
    [0, 1], or uint8 (N, H, W, C) as decoded (kept as they are, not copied, when of the input's size)."""
    shape = config.input_shape
    return _prepare(config, _whole(train_x, train_y, shape), _whole(test_x, test_y, shape),
                    None if given is None else _whole(*given, shape))


def _prepare(config: DataConfig, train: _Part, test: _Part, given: _Part | None) -> Dataset:
    validation = config.resolved_validation(given is not None)
    full_test = None
    if validation is ValidationSource.GIVEN:
        if given is None:
            raise HdapError(f"validation=given needs a val/ split in {config.uri or config.name.value}: upload one, or use "
                            "train or test.")
        val = given
    elif validation is ValidationSource.TEST:
        full_test = test
        test, val = _split(test, config.seed, 0.5)
    else:
        train, val = _split(train, config.seed, VALIDATION_SHARE)
    if 0 < config.train_images < len(train.index):
        train = _subset(train, config.train_images, config.seed + 1)
    bgr = config.channel_order is ChannelOrder.BGR
    preprocessing = _preprocessing(config, functools.partial(_pixels, train.images, train.index, bgr))
    mean = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, -1, 1, 1)
    train, val, test = (ImageSplit(*part, mean, std, bgr) for part in (train, val, test))
    if full_test is not None:
        full_test = ImageSplit(*full_test, mean, std, bgr)
    classes = int(max(int(split.targets.max()) for split in (train, val, test) if len(split))) + 1
    return Dataset(train, val, test, classes, config.input_shape, DataRecipe(preprocessing, validation, config.train_images), full_test,
                   augment=DatasetName(config.name) is not DatasetName.DIGITS and min(config.input_shape[1:]) >= AUGMENT_FROM)


def _preprocessing(config: DataConfig, train_pixels: Callable[[], torch.Tensor]) -> Preprocessing:
    channels = config.input_shape[0]
    if config.mean or config.std:
        if len(config.mean) != channels or len(config.std) != channels:
            raise HdapError(f"mean {list(config.mean)} and std {list(config.std)} must give one number per input channel "
                            f"({channels}).")
        mean, std = list(config.mean), list(config.std)
    else:  # a model hdap trains itself: the training images' own statistics
        # over the whole split at once, as float32: a sum in chunks would round differently from the recipes recorded so far
        train_x = train_pixels()
        mean = [float(v) for v in train_x.mean(dim=(0, 2, 3))]
        std = [max(float(v), 1e-6) for v in train_x.std(dim=(0, 2, 3))]
    return Preprocessing(mean, std, config.channel_order, list(config.input_shape))


def _whole(images: Images, labels, input_shape: tuple[int, int, int]) -> _Part:
    """All of `images`, as a split holds them (`_as_input`)."""
    return _Part(_as_input(images, input_shape), torch.as_tensor(labels), np.arange(len(labels)))


def _as_input(images: Images, input_shape: tuple[int, int, int]) -> Images:
    """Decoded uint8 (N, H, W, C) images of the input's shape as they are (a memory map stays one); any other
    images as float32 (N, C, H, W) in [0, 1], resized and grey/colour converted to the input's shape."""
    channels, height, width = input_shape
    if isinstance(images, np.ndarray):
        if images.shape[1:] == (height, width, channels):
            return images
        images = _floats(np.array(images))  # decoding resizes to the input, so this is not expected: a float copy of them all
    return _shape(images, input_shape)


def _floats(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) as float32 (N, C, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _pixels(images: Images, chosen: np.ndarray, bgr: bool) -> torch.Tensor:
    """The chosen images as float32 (N, C, H, W) in [0, 1], in the model's channel order: what is normalised."""
    x = images[torch.from_numpy(chosen)] if isinstance(images, torch.Tensor) else _floats(images[chosen])
    return x.flip(1) if bgr else x


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard CIFAR augmentation of a normalised batch: each image shifted by up to 4 pixels
    (the gap filled with zeros, i.e. the mean, as padding before normalising would) and flipped
    left-right half the time."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator, device="cpu").to(x.device)
    dx = torch.randint(0, 9, (n,), generator=generator, device="cpu").to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 8)
    cropped = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    cropped = cropped.gather(3, cols)
    flip = torch.rand(n, generator=generator, device="cpu").to(x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), cropped.flip(3), cropped)


def _require_store(store, config: DataConfig):
    if not config.uri:
        raise HdapError(f"the {config.name} dataset lives in the object store: give its s3:// URI (dataset_uri).")
    if store is None:
        raise HdapError(f"the {config.name} dataset needs the object store: set HDAP_S3_ENDPOINT or start `hdap store up`.")
    return store


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def _split(part: _Part, seed: int, share: float) -> tuple[_Part, _Part]:
    """A seeded, stratified split: `share` of every class goes to the second part."""
    labels = part.split_labels().numpy()
    rng = np.random.default_rng(seed)
    second = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        size = min(len(members) - 1, max(1, round(len(members) * share)))  # each part keeps one of a class, if it can
        second += list(rng.choice(members, size=size, replace=False))
    is_second = np.zeros(len(labels), dtype=bool)
    is_second[second] = True
    return part.take(np.flatnonzero(~is_second)), part.take(np.flatnonzero(is_second))


def _subset(part: _Part, count: int, seed: int) -> _Part:
    """Exactly `count` examples, each class in its share (seeded): the largest remainders get the rounding."""
    labels = part.split_labels().numpy()
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = sizes * count / sizes.sum()
    taken = np.floor(quotas).astype(int)
    taken[np.argsort(taken - quotas)[: count - taken.sum()]] += 1
    return part.take(np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False)
                                             for c, n in zip(classes, taken)])))


def _shape(images: torch.Tensor, input_shape: tuple[int, int, int]) -> torch.Tensor:
    channels, height, width = input_shape
    if images.shape[1] != channels:
        if channels == 1:
            images = images.mean(dim=1, keepdim=True)
        elif images.shape[1] == 1:
            images = images.repeat(1, channels, 1, 1)
        else:
            raise HdapError(f"cannot turn {images.shape[1]}-channel images into {channels}-channel inputs: set input_shape to {images.shape[1]},{height},{width}.")
    if tuple(images.shape[-2:]) != (height, width):
        shrinking = height < images.shape[-2] or width < images.shape[-1]
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)
    return images.contiguous()


CIFAR_HINT = ("upload the standard python tarball from https://www.cs.toronto.edu/~kriz/cifar.html, e.g. "
              "`mc cp cifar-10-python.tar.gz <alias>/<bucket>/datasets/`, and pass its s3:// URI.")


class _CifarBatchUnpickler(pickle.Unpickler):
    """Reads a CIFAR-10 batch (a dict of bytes, lists and numpy arrays) and nothing else: a pickle
    that names any other callable (os.system, say) is refused before it runs."""

    ALLOWED = {(numpy_core, name) for numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which no CIFAR-10 batch holds (refused, not run)")
        return super().find_class(module, name)


def _cifar10(store, uri: str) -> tuple[torch.Tensor, ...]:
    if not store.exists(uri):
        raise HdapError(f"there is no CIFAR-10 tarball at {uri}: {CIFAR_HINT}")
    batches: dict[str, dict] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(store.get_bytes(uri)), mode="r:gz") as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if name.startswith("data_batch_") or name == "test_batch":
                    batches[name] = _CifarBatchUnpickler(archive.extractfile(member), encoding="bytes").load()
    except (tarfile.TarError, OSError, pickle.UnpicklingError, EOFError) as err:
        raise HdapError(f"{uri} is not a readable CIFAR-10 python tarball ({err}): {CIFAR_HINT}") from None
    if "test_batch" not in batches or not any(n.startswith("data_batch_") for n in batches):
        raise HdapError(f"{uri} holds no data_batch_* and test_batch files: {CIFAR_HINT}")

    def tensors(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([batches[n][b"labels"] for n in names])
        return torch.tensor(data, dtype=torch.float32) / 255.0, torch.tensor(labels, dtype=torch.long)

    train_x, train_y = tensors(sorted(n for n in batches if n.startswith("data_batch_")))
    test_x, test_y = tensors(["test_batch"])
    return train_x, train_y, test_x, test_y


def _image_folder(store, uri: str, input_shape: tuple[int, int, int], seed: int) -> tuple[_Part, _Part, _Part | None]:
    """(train, test, given validation or None) from a tree or tar shards in the store."""
    from hdap.data.images import TREE_HINT, read_image_dataset

    read = read_image_dataset(store, uri, input_shape)

    def whole(split: str) -> _Part:
        return _whole(read.images[split], read.labels[split], input_shape)

    given = whole("val") if "val" in read.images else None
    if "train" in read.images and "test" in read.images:
        return whole("train"), whole("test"), given
    if set(read.images) - {"val"} == {"all"}:
        return (*_split(whole("all"), seed, TEST_SHARE), given)
    raise HdapError(f"{uri} holds the splits {', '.join(sorted(read.images))}: {TREE_HINT}.")

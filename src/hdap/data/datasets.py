"""Image classification datasets as in-memory tensors, shaped to the model's input.

- `digits`: scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn):
  the default demo, small enough to search on a laptop in a minute.
- `cifar10`: CIFAR-10 in its standard python tarball (`cifar-10-python.tar.gz`) in the store.
- `imagefolder`: a tree `<uri>/<class>/<image>` in the store (or `<uri>/train/<class>/...` and
  `<uri>/test/<class>/...`), read with torchvision's ImageFolder.

Nothing is downloaded from the internet: a dataset that is not in the store is a clear error
that says how to put it there. Images are resized (and grey/colour converted) to the model's
input shape and normalised with the training split's per-channel mean and deviation.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from hdap.errors import HdapError
from hdap.settings import DatasetName

TEST_SHARE = 0.2


@dataclass(frozen=True)
class DataConfig:
    name: DatasetName = DatasetName.DIGITS
    uri: str = ""  # where cifar10 and imagefolder data live in the store
    input_shape: tuple[int, int, int] = (1, 8, 8)
    seed: int = 0


@dataclass
class Dataset:
    train: TensorDataset
    test: TensorDataset
    classes: int
    input_shape: tuple[int, int, int]

    def describe(self) -> str:
        c, h, w = self.input_shape
        return f"{len(self.train):,} training and {len(self.test):,} test images, {self.classes} classes, {c}x{h}x{w}"


def load_dataset(config: DataConfig, store=None) -> Dataset:
    """The dataset named by `config`, split, resized to its input shape and normalised."""
    if config.name == DatasetName.DIGITS:
        images, labels = _digits()
        train_x, train_y, test_x, test_y = _split(images, labels, config.seed)
    elif config.name == DatasetName.CIFAR10:
        train_x, train_y, test_x, test_y = _cifar10(_require_store(store, config), config.uri)
    elif config.name == DatasetName.IMAGEFOLDER:
        train_x, train_y, test_x, test_y = _image_folder(_require_store(store, config), config.uri, config.input_shape, config.seed)
    else:
        raise HdapError(f"unknown dataset '{config.name}': use one of {DatasetName.choices()}.")
    train_x, test_x = _shape(train_x, config.input_shape), _shape(test_x, config.input_shape)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    classes = int(max(train_y.max(), test_y.max())) + 1
    return Dataset(
        train=TensorDataset((train_x - mean) / std, train_y),
        test=TensorDataset((test_x - mean) / std, test_y),
        classes=classes,
        input_shape=config.input_shape,
    )


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


def _split(images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    """A stratified split: every class keeps its share in both halves."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels.numpy()):
        members = np.flatnonzero(labels.numpy() == label)
        test += list(rng.choice(members, size=max(1, round(len(members) * TEST_SHARE)), replace=False))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    train_index, test_index = torch.tensor(np.flatnonzero(~is_test)), torch.tensor(np.flatnonzero(is_test))
    return images[train_index], labels[train_index], images[test_index], labels[test_index]


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


def _image_folder(store, uri: str, input_shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, ...]:
    from torchvision import datasets, transforms

    objects = store.list(uri)
    if not objects:
        raise HdapError(f"there are no images under {uri}: upload a tree <class>/<image> (or train/<class>/... and "
                        "test/<class>/...), e.g. `mc cp --recursive my-images/ <alias>/<bucket>/datasets/my-images/`.")
    prefix = uri.rstrip("/") + "/"
    with tempfile.TemporaryDirectory(prefix="hdap-images-") as folder:
        for obj in objects:
            store.get_file(obj.uri, Path(folder) / obj.uri[len(prefix):])
        to_tensor = transforms.Compose([transforms.Resize(input_shape[1:]), transforms.ToTensor()])

        def read(root: Path, classes: dict[str, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
            try:
                tree = datasets.ImageFolder(str(root), transform=to_tensor)
                pairs = [tree[i] for i in range(len(tree))]
            except (FileNotFoundError, OSError) as err:
                raise HdapError(f"the images under {uri} are not a <class>/<image> tree torchvision can read: {err}") from None
            labels = [p[1] for p in pairs]
            if classes is not None:  # number the test classes as the training classes, by name
                unknown = sorted(set(tree.class_to_idx) - set(classes))
                if unknown:
                    raise HdapError(f"{uri}/test has classes the training images do not: {', '.join(unknown)}.")
                names = {index: name for name, index in tree.class_to_idx.items()}
                labels = [classes[names[label]] for label in labels]
            return _shape(torch.stack([p[0] for p in pairs]), input_shape), torch.tensor(labels), tree.class_to_idx

        root = Path(folder)
        if (root / "train").is_dir() and (root / "test").is_dir():
            train_x, train_y, classes = read(root / "train")
            test_x, test_y, _ = read(root / "test", classes)
            return train_x, train_y, test_x, test_y
        images, labels, _ = read(root)
        return _split(images, labels, seed)

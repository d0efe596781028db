"""Datasets: digits from scikit-learn, CIFAR-10's tarball and an ImageFolder tree from the store."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from hdap.data import DataConfig, load_dataset
from hdap.errors import HdapError


def test_digits_are_split_by_class_normalised_and_resized_to_the_model_input() -> None:
    data = load_dataset(DataConfig("digits", input_shape=(3, 16, 16), seed=0))
    assert data.classes == 10 and data.input_shape == (3, 16, 16)
    x, y = data.train.tensors
    assert x.shape[1:] == (3, 16, 16)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    test_labels = data.test.tensors[1]
    assert len(data.train) + len(data.test) == 1797
    assert set(test_labels.tolist()) == set(range(10))
    again = load_dataset(DataConfig("digits", input_shape=(3, 16, 16), seed=0))
    assert torch.equal(again.test.tensors[1], test_labels)  # the same seed, the same split


def cifar_tarball(images_per_batch: int = 20) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("data_batch_1", "data_batch_2", "test_batch"):
            batch = {b"data": rng.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8),
                     b"labels": list(rng.integers(0, 10, images_per_batch))}
            payload = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_cifar10_is_read_from_its_python_tarball_in_the_store(object_store, bucket) -> None:
    uri = f"s3://{bucket}/datasets/cifar-10-python.tar.gz"
    object_store.put_bytes(uri, cifar_tarball())
    data = load_dataset(DataConfig("cifar10", uri, (3, 32, 32)), object_store)
    assert len(data.train) == 40 and len(data.test) == 20
    assert data.train.tensors[0].shape[1:] == (3, 32, 32)


def test_an_image_folder_tree_in_the_store_becomes_a_dataset(object_store, bucket) -> None:
    for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        for index in range(5):
            image = io.BytesIO()
            Image.new("RGB", (20, 20), colour).save(image, format="PNG")
            object_store.put_bytes(f"s3://{bucket}/datasets/pets/{label}/{index}.png", image.getvalue())
    data = load_dataset(DataConfig("imagefolder", f"s3://{bucket}/datasets/pets", (3, 8, 8)), object_store)
    assert data.classes == 2 and len(data.train) + len(data.test) == 10
    assert data.train.tensors[0].shape[1:] == (3, 8, 8)


def test_a_dataset_missing_from_the_store_says_how_to_upload_it(object_store, bucket) -> None:
    with pytest.raises(HdapError, match="no CIFAR-10 tarball at .*upload the standard python tarball"):
        load_dataset(DataConfig("cifar10", f"s3://{bucket}/nothing.tar.gz", (3, 32, 32)), object_store)
    with pytest.raises(HdapError, match="no images under .*upload a tree"):
        load_dataset(DataConfig("imagefolder", f"s3://{bucket}/no-images", (3, 32, 32)), object_store)
    with pytest.raises(HdapError, match="give its s3:// URI"):
        load_dataset(DataConfig("cifar10", "", (3, 32, 32)), object_store)
    with pytest.raises(HdapError, match="unknown dataset"):
        load_dataset(DataConfig("mnist"))


def test_a_corrupt_cifar_tarball_is_a_clear_error(object_store, bucket) -> None:
    uri = f"s3://{bucket}/datasets/broken.tar.gz"
    object_store.put_bytes(uri, b"not a tarball")
    with pytest.raises(HdapError, match="not a readable CIFAR-10 python tarball"):
        load_dataset(DataConfig("cifar10", uri, (3, 32, 32)), object_store)


class _RunsACommand:
    """What a crafted batch would hold: unpickling it calls os.system."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_cifar_tarball_whose_pickle_would_run_code_is_refused_without_running_it(object_store, bucket, tmp_path) -> None:
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("data_batch_1", "test_batch"):
            payload = pickle.dumps({b"data": _RunsACommand(marker), b"labels": [0]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    uri = f"s3://{bucket}/datasets/crafted.tar.gz"
    object_store.put_bytes(uri, buffer.getvalue())
    with pytest.raises(HdapError, match=r"not a readable CIFAR-10 python tarball \(it names posix.system, which no CIFAR-10 batch "
                                        r"holds \(refused, not run\)\)"):
        load_dataset(DataConfig("cifar10", uri, (3, 32, 32)), object_store)
    assert not marker.exists()


def test_image_folder_test_classes_are_numbered_as_the_training_classes(object_store, bucket) -> None:
    def put(split: str, label: str, colour) -> None:
        image = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(image, format="PNG")
        object_store.put_bytes(f"s3://{bucket}/datasets/split/{split}/{label}/0.png", image.getvalue())

    for label, colour in (("ant", (0, 0, 0)), ("bee", (128, 128, 128)), ("cat", (255, 255, 255))):
        put("train", label, colour)
    put("test", "cat", (255, 255, 255))  # the test split lacks ant and bee
    data = load_dataset(DataConfig("imagefolder", f"s3://{bucket}/datasets/split", (3, 8, 8)), object_store)
    assert data.test.tensors[1].tolist() == [2]

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
from hdap.data.datasets import augment_batch
from hdap.errors import HdapError
from hdap.preprocessing import ChannelOrder, ValidationSource


@pytest.fixture(autouse=True)
def image_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HDAP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def png(colour, size=(8, 8)) -> bytes:
    image = io.BytesIO()
    Image.new("RGB", size, colour).save(image, format="PNG")
    return image.getvalue()


def test_digits_are_split_by_class_normalised_and_resized_to_the_model_input() -> None:
    data = load_dataset(DataConfig("digits", input_shape=(3, 16, 16), seed=0))
    assert data.classes == 10 and data.input_shape == (3, 16, 16)
    x, y = data.train.tensors
    assert x.shape[1:] == (3, 16, 16)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    test_labels = data.test.tensors[1]
    assert len(data.train) + len(data.validation) + len(data.test) == 1797
    assert len(data.validation) == pytest.approx(0.1 * (len(data.train) + len(data.validation)), abs=10)
    assert set(test_labels.tolist()) == set(range(10)) and set(data.validation.tensors[1].tolist()) == set(range(10))
    assert data.recipe.validation is ValidationSource.TRAIN and not data.augment
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
    assert len(data.train) + len(data.validation) == 40 and len(data.test) == 20 and data.augment
    assert data.train.tensors[0].shape[1:] == (3, 32, 32)


def test_an_image_folder_tree_in_the_store_becomes_a_dataset(object_store, bucket) -> None:
    for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        for index in range(5):
            image = io.BytesIO()
            Image.new("RGB", (20, 20), colour).save(image, format="PNG")
            object_store.put_bytes(f"s3://{bucket}/datasets/pets/{label}/{index}.png", image.getvalue())
    data = load_dataset(DataConfig("imagefolder", f"s3://{bucket}/datasets/pets", (3, 8, 8)), object_store)
    assert data.classes == 2 and len(data.train) + len(data.validation) + len(data.test) == 10
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


def _distinct_rows(*datasets) -> int:
    return len({tuple(row.tolist()) for d in datasets for row in d.tensors[0].flatten(1)})


def test_the_three_splits_are_disjoint_and_a_checkpoints_validation_is_half_the_test_images() -> None:
    held = load_dataset(DataConfig("digits", input_shape=(1, 8, 8), seed=3))
    total = len(held.train) + len(held.validation) + len(held.test)
    assert _distinct_rows(held.train, held.validation, held.test) == _distinct_rows(held.train) + _distinct_rows(held.validation) + \
        _distinct_rows(held.test)  # no image in two splits
    halves = load_dataset(DataConfig("digits", input_shape=(1, 8, 8), seed=3, trained_on_all_training_images=True))
    assert halves.recipe.validation is ValidationSource.TEST
    assert len(halves.train) == len(held.train) + len(held.validation)  # the checkpoint saw every training image
    assert len(halves.validation) + len(halves.test) == len(halves.full_test) == total - len(halves.train)
    assert abs(len(halves.validation) - len(halves.test)) <= 10  # half each, stratified by class
    assert set(halves.validation.tensors[1].tolist()) == set(halves.test.tensors[1].tolist()) == set(range(10))
    assert "half the test images" in halves.describe()


def test_the_models_own_normalisation_and_channel_order_are_used_and_recorded(object_store, bucket) -> None:
    for label, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        for index in range(4):
            object_store.put_bytes(f"s3://{bucket}/colours/train/{label}/{index}.png", png(colour))
            object_store.put_bytes(f"s3://{bucket}/colours/test/{label}/{index}.png", png(colour))
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.5, 1.0)
    data = load_dataset(DataConfig("imagefolder", f"s3://{bucket}/colours", (3, 8, 8), mean=mean, std=std,
                                   channel_order=ChannelOrder.BGR, validation=ValidationSource.TEST), object_store)
    red = data.full_test.tensors[0][data.full_test.tensors[1] == 0][0, :, 0, 0]
    # red in BGR is (0, 0, 1): normalised with the given numbers, not the images' own
    assert red.tolist() == pytest.approx([(0 - 0.5) / 0.5, (0 - 0.25) / 0.5, (1 - 0.0) / 1.0])
    assert data.recipe.preprocessing.mean == list(mean) and data.recipe.preprocessing.channel_order is ChannelOrder.BGR


def test_tar_shards_in_imagefolder_and_webdataset_layouts_are_read_and_decoded_once(object_store, bucket, image_cache) -> None:
    def shard(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name, payload in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
        return buffer.getvalue()

    colours = {"ant": (250, 0, 0), "bee": (0, 250, 0), "cat": (0, 0, 250)}
    tree = {f"{split}/{label}/{i}.png": png(colour) for split in ("train", "test") for label, colour in colours.items()
            for i in range(3)}
    object_store.put_bytes(f"s3://{bucket}/shards/images.tar", shard(tree))
    data = load_dataset(DataConfig("imagefolder", f"s3://{bucket}/shards", (3, 8, 8)), object_store)
    assert len(data.train) + len(data.validation) == 9 and len(data.test) == 9 and data.classes == 3
    assert len(list(image_cache.glob("datasets/*/train.images.npy"))) == 1  # decoded once, cached
    again = load_dataset(DataConfig("imagefolder", f"s3://{bucket}/shards", (3, 8, 8)), object_store)
    assert torch.equal(again.test.tensors[0], data.test.tensors[0])

    samples = {}
    for i, (label, colour) in enumerate(colours.items()):
        for j in range(3):
            samples[f"{label}{j}.png"], samples[f"{label}{j}.cls"] = png(colour), str(i).encode()
    object_store.put_bytes(f"s3://{bucket}/wds/train-000.tar", shard(samples))
    object_store.put_bytes(f"s3://{bucket}/wds/test-000.tar", shard(samples))
    web = load_dataset(DataConfig("imagefolder", f"s3://{bucket}/wds", (3, 8, 8)), object_store)
    assert sorted(set(web.test.tensors[1].tolist())) == [0, 1, 2] and len(web.test) == 9


def test_augmentation_shifts_and_flips_each_image_and_is_seeded() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    first = augment_batch(x, torch.Generator().manual_seed(0))
    assert first.shape == x.shape and not torch.equal(first, x)
    assert torch.equal(first, augment_batch(x, torch.Generator().manual_seed(0)))
    # every output pixel is an input pixel of the same image and channel, or the zero of the padding
    for image in range(2):
        for channel in range(3):
            values = set(x[image, channel].flatten().tolist()) | {0.0}
            assert set(first[image, channel].flatten().tolist()) <= values


def test_a_training_subset_is_stratified_seeded_and_repeated_by_the_recipe() -> None:
    from hdap.data import recipe_config

    full = load_dataset(DataConfig("digits", input_shape=(1, 8, 8), seed=1))
    subset = load_dataset(DataConfig("digits", input_shape=(1, 8, 8), seed=1, train_images=300))
    assert len(subset.train) == 300 and set(subset.train.tensors[1].tolist()) == set(range(10))
    assert torch.equal(subset.validation.tensors[1], full.validation.tensors[1])  # the other splits are untouched
    again = load_dataset(recipe_config(subset.recipe, "digits", "", 1))
    assert torch.equal(again.train.tensors[0], subset.train.tensors[0])


def noise_png(rng: np.random.Generator, size=(12, 10)) -> bytes:
    image = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(image, format="PNG")
    return image.getvalue()


def test_image_folder_splits_are_indices_into_its_memory_mapped_cache_which_a_worker_reopens(object_store, bucket) -> None:
    rng = np.random.default_rng(0)
    for label in ("ant", "bee"):
        for index in range(10):
            object_store.put_bytes(f"s3://{bucket}/mapped/{label}/{index}.png", noise_png(rng))
    data = load_dataset(DataConfig("imagefolder", f"s3://{bucket}/mapped", (3, 32, 32)), object_store)
    images = data.train.images
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (20, 32, 32, 3)
    assert data.validation.images is images and data.test.images is images  # one tree: every split indexes the same file
    indices = np.concatenate([data.train.index, data.validation.index, data.test.index])
    assert len(data.train.index) == len(data.train) and sorted(indices.tolist()) == list(range(20))
    sent = pickle.dumps(data.train)  # what a worker process started by spawn receives
    assert len(sent) < images.nbytes
    received = pickle.loads(sent)
    assert isinstance(received.images, np.memmap) and torch.equal(received.tensors[0], data.train.tensors[0])


def test_a_data_loader_over_a_split_yields_the_batches_of_its_materialised_tensors(object_store, bucket) -> None:
    from torch.utils.data import DataLoader

    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for label in ("a", "b", "c"):
            for index in range(6):
                object_store.put_bytes(f"s3://{bucket}/batches/{split}/{label}/{index}.png", noise_png(rng))
    folder = load_dataset(DataConfig("imagefolder", f"s3://{bucket}/batches", (3, 8, 8), channel_order=ChannelOrder.BGR),
                          object_store)
    digits = load_dataset(DataConfig("digits", input_shape=(1, 12, 12), seed=2, train_images=100))
    for split in (folder.train, folder.test, digits.train, digits.validation):
        x, y = split.tensors
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0)).tolist()
        for loader, expected in ((DataLoader(split, batch_size=7), list(range(len(split)))),
                                 (DataLoader(split, batch_size=7, sampler=order), order),
                                 (DataLoader(split, batch_size=7, sampler=order, num_workers=1), order)):
            batches = list(loader)
            assert torch.equal(torch.cat([b[0] for b in batches]), x[expected])
            assert torch.equal(torch.cat([b[1] for b in batches]), y[expected])
        assert torch.equal(split[3][0], x[3]) and torch.equal(split[3][1], y[3])


def test_decoded_images_of_another_size_are_resized_as_float_images_are() -> None:
    from hdap.data.datasets import prepare_dataset

    rng = np.random.default_rng(2)
    pixels = [rng.integers(0, 256, (n, 10, 12, 3), dtype=np.uint8) for n in (30, 12)]
    labels = [torch.arange(n) % 3 for n in (30, 12)]
    config = DataConfig("imagefolder", "", (3, 8, 8), seed=1)
    decoded = prepare_dataset(config, pixels[0], labels[0], pixels[1], labels[1])
    floats = [torch.from_numpy(p).permute(0, 3, 1, 2).float() / 255 for p in pixels]
    resized = prepare_dataset(config, floats[0], labels[0], floats[1], labels[1])
    for ours, theirs in ((decoded.train, resized.train), (decoded.validation, resized.validation), (decoded.test, resized.test)):
        assert torch.equal(ours.tensors[0], theirs.tensors[0]) and ours.tensors[0].shape[1:] == (3, 8, 8)

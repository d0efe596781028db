"""The third-party CIFAR-10 ResNets in ../shared/data, through hdap as a user would use them: CIFAR-10's
PNG tarball and a checkpoint uploaded to the store, read back, preprocessed as the checkpoint expects.
Skipped, saying why, where ../shared/data is absent (users outside have their own copies)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from hdap.compress.training import evaluate
from hdap.data import DataConfig, load_dataset
from hdap.models import build_model
from hdap.models.weights import load_trained_weights, read_state_dict
from hdap.preprocessing import ValidationSource

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_TAR = SHARED / "cifar10-png.tar"
CHECKPOINTS = {"resnet20-a": ("resnet20-12fca82f.th", 91.73), "resnet56-a": ("resnet56-4bfd9763.th", 93.39)}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CIFAR_TAR.exists(), reason=f"{SHARED} is absent: the shared CIFAR-10 and checkpoints")]


@pytest.fixture(scope="module")
def cifar(object_store, tmp_path_factory):
    import os

    os.environ["HDAP_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    object_store.ensure_bucket("shared-data")
    object_store.put_file("s3://shared-data/cifar10/cifar10-png.tar", CIFAR_TAR)
    data = load_dataset(DataConfig("imagefolder", "s3://shared-data/cifar10", (3, 32, 32), mean=MEAN, std=STD,
                                   validation=ValidationSource.TEST), object_store)
    return data


@pytest.mark.parametrize("model", list(CHECKPOINTS))
def test_a_shared_checkpoint_reaches_its_published_accuracy_through_the_store(model: str, cifar, object_store) -> None:
    name, published = CHECKPOINTS[model]
    uri = f"s3://shared-data/models/{name}"
    object_store.put_file(uri, SHARED / "pretrained" / name)
    with tempfile.TemporaryDirectory() as folder:
        weights = read_state_dict(object_store.get_file(uri, Path(folder) / name), uri)
    network = build_model(model, (3, 32, 32), classes=cifar.classes)
    load_trained_weights(network, weights, model, uri)
    assert len(cifar.full_test) == 10_000 and len(cifar.train) == 50_000
    assert evaluate(network, cifar.full_test) == pytest.approx(published, abs=0.05)

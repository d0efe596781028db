"""Shared fixtures: a real SeaweedFS server (`weed`) on 127.0.0.1 and a free port, for the session."""

from __future__ import annotations

import itertools
import socket
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hdap.embedded_store import EmbeddedStore
from hdap.fleet.simulate import SimulationConfig, simulate_fleet
from hdap.store import ObjectStore, StoreConfig

# Reports end here; ingest runs "as of" a minute later, so nothing depends on today's date.
SIMULATION_END = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
AS_OF = datetime(2026, 11, 20, 12, 1, tzinfo=timezone.utc)
_bucket_numbers = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def store_config(tmp_path_factory: pytest.TempPathFactory) -> StoreConfig:
    embedded = EmbeddedStore(tmp_path_factory.mktemp("weed"))
    config = embedded.up(s3_port=free_port())
    yield config
    embedded.down()


@pytest.fixture(scope="session")
def object_store(store_config: StoreConfig) -> ObjectStore:
    return ObjectStore(store_config)


@pytest.fixture
def bucket(object_store: ObjectStore) -> str:
    """A fresh bucket for one test."""
    name = f"test-{next(_bucket_numbers):04d}"
    object_store.ensure_bucket(name)
    return name


@pytest.fixture
def store_env(store_config: StoreConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> StoreConfig:
    """Point hdap's configuration (and any child process) at the test store."""
    for name, value in store_config.as_environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HDAP_HOME", str(tmp_path / ".hdap"))
    monkeypatch.chdir(tmp_path)
    return store_config


@pytest.fixture(scope="session")
def mlflow_server(store_config: StoreConfig, object_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real MLflow tracking server (sqlite backend, artifacts in the test's SeaweedFS through the server): its URL."""
    import os
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    command = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if command is None:
        pytest.skip("MLflow is not installed (pip install hdap[mlflow])")
    folder = tmp_path_factory.mktemp("mlflow")
    object_store.ensure_bucket("mlflow")
    port = free_port()
    scheme = "https" if store_config.secure else "http"
    env = os.environ | {"MLFLOW_S3_ENDPOINT_URL": f"{scheme}://{store_config.endpoint}", "AWS_ACCESS_KEY_ID": store_config.access_key,
                        "AWS_SECRET_ACCESS_KEY": store_config.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen([command, "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                                   "--artifacts-destination", "s3://mlflow/artifacts", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the MLflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


def simulate(store: ObjectStore, bucket: str, devices: int, seed: int = 0, days: int = 7, sku: str = "jetson-xavier-nx") -> SimulationConfig:
    config = SimulationConfig(
        sku=sku,
        devices=devices,
        days=days,
        seed=seed,
        telemetry_uri=f"s3://{bucket}/telemetry",
        truth_uri=f"s3://{bucket}/truth",
        end=SIMULATION_END,
    )
    simulate_fleet(store, config)
    return config


@pytest.fixture(scope="session")
def fleet_10k(object_store: ObjectStore):
    """A 10,000-device fleet, simulated once: (telemetry uri, ingest result, device -> true group)."""
    import pyarrow as pa

    from hdap.fleet.ingest import ingest_telemetry
    from hdap.stages.ingest import IngestConfig

    object_store.ensure_bucket("fleet-10k")
    config = simulate(object_store, "fleet-10k", devices=10_000, seed=7)
    result = ingest_telemetry(object_store, IngestConfig(config.telemetry_uri, config.sku, as_of=AS_OF))
    truth = pa.concat_tables([object_store.get_table(o.uri) for o in object_store.list(config.truth_uri)])
    groups = dict(zip(truth.column("device_id").to_pylist(), truth.column("group").to_pylist()))
    return config.telemetry_uri, result, groups


def searched_resnet20(directory: Path, epochs: int = 3, seed: int = 0):
    """A ResNet-20 trained briefly on digits and an architecture "searched" for it (random but
    mostly-kept channels, one residual branch removed, fp16/int8 mixed), written as the search
    step writes it: (spec, dataset)."""
    import copy

    import torch

    from hdap.compress.search import plain_weights
    from hdap.compress.searchable import SearchableModel
    from hdap.compress.space import build_search_space
    from hdap.compress.spec import export_spec
    from hdap.compress.training import train_epochs
    from hdap.data import DataConfig, load_dataset
    from hdap.models import build_model
    from hdap.stages.search import ArchitectureEntry, SearchConfig, SearchIndex, SearchMode

    shape = (1, 8, 8)
    data = load_dataset(DataConfig("digits", "", shape, seed))
    torch.manual_seed(seed)
    model = build_model("resnet20", shape)
    train_epochs(model, data.train, epochs, SearchConfig(seed=seed), "training")
    space = build_search_space(copy.deepcopy(model), shape, ("fp16", "int8"))
    searchable = SearchableModel(copy.deepcopy(model), space)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for logits in searchable.keep_logits:
            logits.copy_(torch.rand(logits.shape, generator=generator) * 4 - 1)
        searchable.keep_logits[next(g.index for g in space.groups if g.root == "stages.4.conv1")].fill_(-5)
        for logits in searchable.precision_logits.values():
            logits.copy_(torch.rand(logits.shape, generator=generator) * 2 - 1)
    searchable.freeze()
    spec = export_spec(searchable, "resnet20", shape, data.classes, {"size_bits": 1.0})
    directory.mkdir(parents=True, exist_ok=True)
    spec.save(directory / "architecture.json")
    torch.save(plain_weights(searchable), directory / "architecture.weights.pt")
    torch.save(model.state_dict(), directory / "uncompressed.weights.pt")
    SearchIndex(SearchMode.FLEET, [ArchitectureEntry(None, "architecture.json", "architecture.weights.pt")],
                "uncompressed.weights.pt", baseline_accuracy=0.0, baseline_validation_accuracy=0.0, default_precision="fp16",
                data=data.recipe).save(directory / "index.json")
    return spec, data

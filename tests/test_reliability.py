"""Issue 19, findings 6-8 (console, parameters, failed runs): text from data is never read as console
markup, a bad parameter is one sentence before the first stage, a failed run is marked failed in the store.
Each failed on commit 8e462de."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from hdap.store import ObjectStore, StoreConfig
from tests.test_pipeline import hdap

MARKUP = "[red]x[/x]"  # rich raises MarkupError on the stray closing tag, and [red] would colour the rest


def test_an_error_naming_a_uri_with_markup_prints_it_as_text(tmp_path: Path) -> None:
    result = hdap("run", "--telemetry-uri", f"not-s3/{MARKUP}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"telemetry_uri='not-s3/{MARKUP}' is not an object-store URI" in " ".join(result.stderr.split())


def test_the_run_summary_prints_device_ids_and_uris_with_markup_as_text() -> None:
    from hdap.local_run import _cluster_table, _print_build
    from tests.examples import build_input, fleet_inputs

    clusters, _, _ = fleet_inputs()
    clusters.clusters[0].representative = f"dev-{MARKUP}"
    build = build_input(published=True)
    build.registry_uri = f"s3://hdap/registry/{MARKUP}"
    console = Console(record=True, width=400, color_system=None)
    console.print(_cluster_table(clusters))
    _print_build(build, console)
    text = console.export_text()
    assert f"dev-{MARKUP}" in text and f"s3://hdap/registry/{MARKUP}" in text


@pytest.mark.parametrize("args, message", [
    (("fleet", "simulate", "--days", "100000"), "days=100000 must be between 1 and 366"),
    (("run", "--input-shape", "3,5000,5000"), "at most 64 channels and 4096 pixels a side"),
    (("compile", "--output", "no/such/folder/p.yaml"), "the folder no/such/folder does not exist"),
    (("run", "--search-granule", "0"), "search_granule=0 must be 1 or more"),
    (("profile", "--device-id", "a/../../evil"), "device_id='a/../../evil' is not a device id"),
    (("run", "--accuracy-tolerance", "-5"), "accuracy_tolerance=-5 must be 0 or more"),
    (("run", "--cluster-k-min", "5", "--cluster-k-max", "2"), "are not a range of at least 2 clusters"),
])
def test_a_bad_parameter_is_one_sentence_before_anything_runs(store_env: StoreConfig, tmp_path: Path, args, message) -> None:
    result = hdap(*args, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in " ".join(result.stderr.split())


def test_a_model_that_cannot_take_the_input_shape_is_refused_before_the_first_stage(store_env: StoreConfig, tmp_path: Path) -> None:
    (tmp_path / "user_models.py").write_text(
        "from torch import nn\n"
        "def rgb_only(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30 * 30, num_classes))\n")
    result = hdap("run", "--model", "user_models:rgb_only", "--input-shape", "3,8,8", env={"PYTHONPATH": str(tmp_path)},
                  cwd=tmp_path)
    printed = " ".join(result.stderr.split())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "model 'user_models:rgb_only' cannot take inputs of shape 3,8,8" in printed and "running the pipeline" not in result.stdout


def test_a_run_that_fails_in_a_step_is_marked_failed_in_the_store(store_env: StoreConfig, object_store: ObjectStore, bucket: str,
                                                                  tmp_path: Path) -> None:
    import pyarrow as pa

    object_store.put_table(f"s3://{bucket}/v9/a.parquet", pa.table({"schema_version": pa.array([9], pa.int16()), "device_id": ["x"]}))
    result = hdap("run", "--telemetry-uri", f"s3://{bucket}/v9", "--output-uri", f"s3://{bucket}/runs", cwd=tmp_path)
    assert result.returncode == 1 and "the pipeline stopped in step ingest" in " ".join(result.stderr.split())
    statuses = [o.uri for o in object_store.list(f"s3://{bucket}/runs/") if o.uri.endswith("/status.json")]
    assert len(statuses) == 1
    status = object_store.get_json(statuses[0], require_checksum=True)
    assert status["state"] == "FAILED" and status["error"]


@pytest.mark.parametrize("option, message", [("--search-weights-uri", "there are no weights at"),
                                             ("--dataset-uri", "there is no dataset at")])
def test_weights_or_a_dataset_missing_from_the_store_are_one_sentence_before_the_first_stage(
        store_env: StoreConfig, object_store: ObjectStore, bucket: str, tmp_path: Path, option: str, message: str) -> None:
    object_store.put_bytes(f"s3://{bucket}/telemetry/a.parquet", b"not read: the run stops before ingest")
    extra = ("--dataset", "cifar10") if option == "--dataset-uri" else ()
    result = hdap("run", "--telemetry-uri", f"s3://{bucket}/telemetry", option, f"s3://{bucket}/missing.pt", *extra, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{message} s3://{bucket}/missing.pt" in " ".join(result.stderr.split())
    assert "running the pipeline" not in result.stdout

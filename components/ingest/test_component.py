"""The ingest component, run locally by kfp.local against the test's SeaweedFS server."""

import pyarrow.parquet as pq
from kfp import local

from components.ingest import ingest
from tests.fixtures import AS_OF, simulate


def test_ingest_component_runs_locally_and_writes_artifacts_and_store_objects(store_env, object_store, bucket, tmp_path):
    config = simulate(object_store, bucket, devices=60, days=3)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    task = ingest(telemetry_uri=config.telemetry_uri, sku=config.sku, as_of=AS_OF.isoformat(), output_uri=f"s3://{bucket}/runs", run_name="r1")

    metrics = task.outputs["metrics"].metadata
    assert (metrics["devices"], metrics["rows_read"], metrics["rows_quarantined"]) == (60, 180, 0)
    assert metrics["objects_listed"] == metrics["objects_read"] > 0 and metrics["objects_skipped"] == metrics["objects_unreadable"] == 0
    assert pq.read_table(task.outputs["features"].path).num_rows == 60
    assert object_store.exists(f"s3://{bucket}/runs/r1/ingest/features.parquet")
    assert object_store.exists(f"s3://{bucket}/runs/r1/ingest/quarantine.parquet")

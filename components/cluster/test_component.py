"""The cluster component, run locally by kfp.local on features written by the library."""

import pyarrow.parquet as pq
from kfp import dsl, local

from components.cluster import cluster
from hdap.fleet.ingest import ingest_telemetry
from hdap.stages.cluster import ClusterSummary
from hdap.stages.ingest import IngestConfig
from tests.fixtures import AS_OF, simulate


def test_cluster_component_runs_locally_and_publishes_clusters_report_and_metrics(store_env, object_store, bucket, tmp_path):
    config = simulate(object_store, bucket, devices=400, days=3)
    features_file = tmp_path / "features.parquet"
    pq.write_table(ingest_telemetry(object_store, IngestConfig(config.telemetry_uri, config.sku, as_of=AS_OF)).features, features_file)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def features_then_cluster() -> dsl.Artifact:
        features = dsl.importer(artifact_uri=str(features_file), artifact_class=dsl.Dataset)
        return cluster(features=features.output, k=0, k_min=2, k_max=6, seed=0, cpu_states="1,all,all+load",
                       output_uri=f"s3://{bucket}/runs", run_name="r1").outputs["clusters"]

    task = features_then_cluster()

    summary = ClusterSummary.load(task.output.path)
    assert 2 <= summary.k <= 6 and summary.devices == 400 and summary.run_name == "r1"
    assert len({c.representative for c in summary.clusters}) == summary.k
    for name in ("assignments.parquet", "clusters.json", "report.html"):
        assert object_store.exists(f"s3://{bucket}/runs/r1/cluster/{name}")
    assert "<img" in object_store.get_bytes(f"s3://{bucket}/runs/r1/cluster/report.html").decode()

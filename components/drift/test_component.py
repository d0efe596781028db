"""The drift component, run locally by kfp.local: with nothing published, it says "retrain" and why."""

import pyarrow.parquet as pq
from kfp import dsl, local

from components.drift import drift
from hdap.fleet.ingest import ingest_telemetry
from hdap.stages.drift import DriftDecision
from hdap.stages.ingest import IngestConfig
from tests.fixtures import AS_OF, simulate


def test_drift_component_retrains_when_nothing_is_published_and_says_why(store_env, object_store, bucket, tmp_path):
    config = simulate(object_store, bucket, devices=100, days=2)
    features_file = tmp_path / "features.parquet"
    pq.write_table(ingest_telemetry(object_store, IngestConfig(config.telemetry_uri, config.sku, as_of=AS_OF)).features, features_file)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def features_then_drift() -> str:
        features = dsl.importer(artifact_uri=str(features_file), artifact_class=dsl.Dataset)
        return drift(features=features.output, model="resnet20", registry_uri=f"s3://{bucket}/registry", force="false",
                     share_shift=0.1, centroid_shift=0.5, uncovered_distance=3.0, uncovered_share=0.05, latency_change=0.1,
                     weights_uri="", settings="model=resnet20\nseed=0", output_uri=f"s3://{bucket}/runs", run_name="r1").outputs["Output"]

    task = features_then_drift()

    assert task.output == "retrain"
    decision = DriftDecision.get(object_store, f"s3://{bucket}/runs/r1/drift/decision.json")
    assert decision.reasons == [f"nothing is published yet for resnet20 under s3://{bucket}/registry"]
    assert decision.lineage.settings == {"model": "resnet20", "seed": "0.0"}

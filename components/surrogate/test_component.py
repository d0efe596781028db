"""The surrogate component, run locally by kfp.local on a small simulated fleet's clusters."""

import pyarrow.parquet as pq
from kfp import dsl, local

from components.surrogate import surrogate
from hdap.fleet.cluster import cluster_devices
from hdap.stages.cluster import ClusterConfig
from hdap.stages.surrogate import SurrogateIndex
from hdap.fleet.ingest import ingest_telemetry
from hdap.stages.ingest import IngestConfig
from hdap.latency.surrogate import LatencySurrogate
from hdap.models import build_model, prunable_layers
from tests.fixtures import AS_OF, simulate


def test_surrogate_component_fits_one_loadable_surrogate_per_cluster(store_env, object_store, bucket, tmp_path):
    config = simulate(object_store, bucket, devices=300, days=3)
    features = ingest_telemetry(object_store, IngestConfig(config.telemetry_uri, config.sku, as_of=AS_OF)).features
    clustering = cluster_devices(features, ClusterConfig(k=3))
    pq.write_table(features, tmp_path / "features.parquet")
    clustering.summary().save(tmp_path / "clusters.json")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def clusters_then_surrogates() -> dsl.Model:
        f = dsl.importer(artifact_uri=str(tmp_path / "features.parquet"), artifact_class=dsl.Dataset)
        c = dsl.importer(artifact_uri=str(tmp_path / "clusters.json"), artifact_class=dsl.Artifact)
        return surrogate(
            features=f.output, clusters=c.output, model="small-cnn", input_shape="3,32,32", backend="simulated",
            samples_per_layer=12, truth_uri=config.truth_uri, profiles_uri="", seed=0,
            output_uri=f"s3://{bucket}/runs", run_name="r1",
        ).outputs["surrogates"]

    task = clusters_then_surrogates()

    fleet = SurrogateIndex.load(f"{task.output.path}/fleet.json")
    assert [c.cluster for c in fleet.clusters] == [0, 1, 2] and fleet.input_shape == (3, 32, 32)
    assert abs(sum(c.weight for c in fleet.clusters) - 1) < 1e-9
    assert all(c.held_out_within_10pct >= 0.9 for c in fleet.clusters)
    layer = prunable_layers(build_model("small-cnn"), (3, 32, 32))[2].config(precision="int8")
    loaded = LatencySurrogate.load(f"{task.output.path}/cluster-1.json")
    assert loaded.predict(layer) > 0
    assert object_store.exists(f"s3://{bucket}/runs/r1/surrogate/profile-cluster-2.parquet")

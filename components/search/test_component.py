"""The search component, run locally by kfp.local on surrogates of two simulated devices."""

import pyarrow as pa
import torch
import pyarrow.parquet as pq
from kfp import dsl, local

from components.search import search
from hdap.compress.spec import ArchitectureSpec, apply_spec
from hdap.latency.backends.simulated import SimulatedDevice
from hdap.latency.fleet_profiling import simulated_surrogate
from hdap.models import build_model, prunable_layers
from hdap.stages.search import Front, SearchIndex
from hdap.stages.surrogate import ClusterSurrogateEntry, SurrogateIndex

SHAPE = (1, 8, 8)
MENU = ("fp16", "int8")


def test_search_component_publishes_a_front_and_an_architecture_that_applies(store_env, object_store, bucket, tmp_path):
    layers = prunable_layers(build_model("resnet20", SHAPE), SHAPE)
    surrogates = tmp_path / "surrogates"
    surrogates.mkdir()
    clusters = []
    for cluster, (device, weight) in enumerate(((SimulatedDevice("jetson-xavier-nx", "20W", 55, 0.05), 0.7),
                                                (SimulatedDevice("jetson-xavier-nx", "10W", 50, 0.55), 0.3))):
        simulated_surrogate(device, layers, MENU, samples_per_layer=8).save(surrogates / f"cluster-{cluster}.json")
        clusters.append(ClusterSurrogateEntry(cluster, weight, f"dev-{cluster}", f"cluster-{cluster}.json", "simulated", 1.0, 0.0))
    SurrogateIndex("resnet20", SHAPE, MENU, clusters).save(surrogates / "fleet.json")
    pq.write_table(pa.table({"device_id": ["xnx-0000000"], "sku": ["jetson-xavier-nx"]}), tmp_path / "features.parquet")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def search_only() -> dsl.Model:
        s = dsl.importer(artifact_uri=str(surrogates), artifact_class=dsl.Model)
        f = dsl.importer(artifact_uri=str(tmp_path / "features.parquet"), artifact_class=dsl.Dataset)
        return search(
            surrogates=s.output, features=f.output, dataset="digits", dataset_uri="", model="resnet20", input_shape="1,8,8",
            weights_uri="", mean="", std="", channel_order="rgb", train_images=0, validation="auto", device="cpu",
            mode="fleet", objective="latency", targets="0.7,0.4", strengths="", quantized_point="true", pretrain_epochs=2, epochs=4, finetune_epochs=1,
            granule=8, learning_rate=0.05, accuracy_tolerance=0.5, truth_uri="", seed=0, output_uri=f"s3://{bucket}/runs", run_name="r1",
        ).outputs["architecture"]

    task = search_only()

    index = SearchIndex.load(f"{task.output.path}/index.json")
    spec = ArchitectureSpec.load(f"{task.output.path}/{index.single().spec}")
    assert spec.model == "resnet20" and spec.metrics["fleet_latency_ms"] > 0
    assert apply_spec(spec)(torch.zeros(1, *SHAPE)).shape == (1, 10)
    front = Front.get(object_store, f"s3://{bucket}/runs/r1/search/front.json")
    assert len(front.points) == 3 and front.points[-1].setting.label == "quantized only"
    assert front.baseline_accuracy > 50 and len(front.chosen) == 1
    assert object_store.exists(f"s3://{bucket}/runs/r1/search/report.html")

"""The build component, run locally by kfp.local: export, ONNX Runtime build, gate, registry, report."""

import json

import onnx
import pyarrow.parquet as pq
import pytest
import torch
from kfp import dsl, local

from components.build import build
from hdap.artifacts import plain
from hdap.compress.finetune import quantization_aware_finetune, save_finetuned
from hdap.deploy.registry import load_published_model, verify_entry
from hdap.deploy.tensorrt_build import tensorrt_unavailable_reason
from hdap.fleet.cluster import cluster_devices
from hdap.fleet.ingest import ingest_telemetry
from hdap.latency.fleet_profiling import load_truth, simulated_device, simulated_surrogate
from hdap.models import build_model, prunable_layers
from hdap.stages.build import PREPROCESSING_KEY, BuildSummary
from hdap.stages.cluster import ClusterConfig
from hdap.stages.finetune import FinetuneConfig
from hdap.stages.ingest import IngestConfig
from hdap.stages.search import Front, FrontPoint, Objective, SearchMode, SearchSetting, SettingKind
from hdap.stages.surrogate import ClusterSurrogateEntry, SurrogateIndex
from hdap.stages.drift import DriftDecision, Lineage
from tests.fixtures import AS_OF, searched_resnet20, simulate
from tests.model_registry_stub import ModelRegistryStub, serve

SHAPE = (1, 8, 8)
MENU = ("fp16", "int8")


def test_build_component_publishes_a_verified_registry_entry_and_a_report(store_env, object_store, bucket, tmp_path, mlflow_server):
    # A small simulated fleet, its clusters and each representative's surrogate.
    config = simulate(object_store, bucket, devices=300, days=3)
    features = ingest_telemetry(object_store, IngestConfig(config.telemetry_uri, config.sku, as_of=AS_OF)).features
    clustering = cluster_devices(features, ClusterConfig(k=2))
    pq.write_table(features, tmp_path / "features.parquet")
    pq.write_table(clustering.assignments, tmp_path / "assignments.parquet")
    summary = clustering.summary("r1")
    summary.save(tmp_path / "clusters.json")
    layers = prunable_layers(build_model("resnet20", SHAPE), SHAPE)
    truth = load_truth(object_store, config.truth_uri)
    surrogates = tmp_path / "surrogates"
    surrogates.mkdir()
    index = []
    for c in summary.clusters:
        device = simulated_device(c.representative, features, truth)
        simulated_surrogate(device, layers, MENU, samples_per_layer=8).save(surrogates / f"cluster-{c.id}.json")
        index.append(ClusterSurrogateEntry(c.id, c.weight, c.representative, f"cluster-{c.id}.json", "simulated", 1.0, 0.0))
    SurrogateIndex("resnet20", SHAPE, MENU, index).save(surrogates / "fleet.json")
    # A searched and fine-tuned architecture.
    spec, data = searched_resnet20(tmp_path / "search", epochs=2)
    result = quantization_aware_finetune(spec, torch.load(tmp_path / "search" / "architecture.weights.pt"),
                                         torch.load(tmp_path / "search" / "uncompressed.weights.pt"), data, FinetuneConfig(epochs=1))
    save_finetuned(result.model, spec, tmp_path / "model")
    (tmp_path / "model" / "uncompressed.weights.pt").write_bytes((tmp_path / "search" / "uncompressed.weights.pt").read_bytes())
    result.summary(1, spec.classes, data.recipe).save(tmp_path / "model" / "summary.json")
    point = FrontPoint(SearchSetting(SettingKind.TARGET, 0.5), result.accuracy_after, result.validation_accuracy, 0.6, [0.5, 0.7],
                       4e6, "fleet", 2, pareto=True, chosen=True)
    # The gate compares validation accuracies: here the fine-tuned model's own stands for the uncompressed one's.
    Front("resnet20", SearchMode.FLEET, Objective.LATENCY, data.recipe, result.teacher_accuracy, result.validation_accuracy, None,
          1.0, 8e6, [0.8, 1.2], "fp16", {}, 1, 1, [point]).save(tmp_path / "front.json")
    # The drift gate's decision, whose lineage the entry records for the next run's gate.
    lineage = Lineage({"model": "resnet20", "search_targets": "0.5"}, "")
    DriftDecision(True, ["nothing is published yet"], "retraining", "r1", lineage).save(tmp_path / "drift.json")
    registry_stub = ModelRegistryStub()  # the Kubeflow Model Registry cannot run here: its REST endpoints, stubbed
    stub_server, model_registry_uri = serve(registry_stub)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def build_only() -> dsl.Model:
        def imported(name: str, kind):
            return dsl.importer(artifact_uri=str(tmp_path / name), artifact_class=kind).output

        return build(model=imported("model", dsl.Model), surrogates=imported("surrogates", dsl.Model),
                     features=imported("features.parquet", dsl.Dataset), clusters=imported("clusters.json", dsl.Artifact),
                     assignments=imported("assignments.parquet", dsl.Dataset), front=imported("front.json", dsl.Artifact),
                     drift=imported("drift.json", dsl.Artifact),
                     tensorrt="auto", cpu_states="1,all+load", min_measured_speedup=0.0, registry_uri=f"s3://{bucket}/registry",
                     mlflow_uri=mlflow_server, mlflow_experiment=bucket, model_registry_uri=model_registry_uri,
                     accuracy_tolerance=100.0,
                     dataset="digits", dataset_uri="", truth_uri=config.truth_uri, seed=0, output_uri=f"s3://{bucket}/runs",
                     run_name="r1").outputs["engines"]

    task = build_only()
    stub_server.shutdown()
    built = BuildSummary.load(f"{task.output.path}/build.json")
    assert built.published and built.registry_uri == f"s3://{bucket}/registry/resnet20/r1"
    assert built.accuracy.onnxruntime_agreement >= 0.99
    reason = tensorrt_unavailable_reason()  # built where TensorRT and a GPU exist; elsewhere, the reason why not
    assert built.tensorrt.built == (reason is None) and built.tensorrt.reason == (reason or "")
    assert built.tensorrt.published == built.tensorrt.built  # with the model, as the engine passes its own gate here
    assert built.fleet.predicted_speedup > 1 and built.fleet.true_speedup > 1
    assert len(built.clusters) == 2 and built.size.onnx_bytes < built.size.uncompressed_onnx_bytes
    manifest = verify_entry(object_store, built.registry_uri)
    assert "model.onnx" in manifest["files"] and manifest["run"]["name"] == "r1"
    # What the next run's drift gate compares with: the lineage, and the fleet the model was optimised for.
    assert manifest["lineage"] == plain(lineage)
    picture = manifest["fleet_picture"]
    assert [c["weight"] for c in picture["clusters"]] == [c.weight for c in summary.clusters]
    assert [c["latency_ms"] for c in picture["clusters"]] == [c.predicted_after_ms for c in built.clusters]
    assert picture["fleet_latency_ms"] == pytest.approx(built.fleet.predicted_after_ms, rel=1e-6)
    # Measured side by side in each CPU state asked for, and so recorded in the registry.
    assert [s["state"] for s in manifest["onnxruntime"]["states"]] == ["1", "all+load"] == [s.state for s in built.onnxruntime.states]
    # The preprocessing the model was trained with reaches the device: in the manifest and in the graph.
    assert manifest["preprocessing"] == plain(data.recipe.preprocessing) == plain(built.preprocessing)
    graph = onnx.load_from_string(object_store.get_bytes(f"{built.registry_uri}/model.onnx"))
    assert json.loads({p.key: p.value for p in graph.metadata_props}[PREPROCESSING_KEY]) == manifest["preprocessing"]
    # ... and the published model loads back into PyTorch, computing what the fine-tune's did.
    published, preprocessing = load_published_model(object_store, built.registry_uri)
    assert preprocessing == data.recipe.preprocessing
    x = data.test.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(published(x).argmax(1), result.model.eval()(x).argmax(1))
    assert object_store.get_bytes(f"s3://{bucket}/runs/r1/build/report.html").count(b"<img") >= 5
    # Through the gate, the model is registered in the real MLflow server too: its version, metrics and ONNX artifact.
    import mlflow
    import mlflow.onnx

    client = mlflow.MlflowClient(mlflow_server)
    version = max(client.search_model_versions("name='resnet20'"), key=lambda v: int(v.version))
    assert version.tags["hdap.entry"] == f"{built.registry_uri}/manifest.json"
    assert version.tags["hdap.sha256.model.onnx"] == manifest["files"]["model.onnx"]["sha256"]
    run = client.get_run(version.run_id)
    assert run.info.experiment_id == client.get_experiment_by_name(bucket).experiment_id
    assert run.data.metrics["accuracy_onnxruntime"] == pytest.approx(built.accuracy.onnxruntime, abs=1e-4)
    assert run.data.params["search_targets"] == "0.5" and run.data.tags["hdap.run"] == "r1"
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    logged = mlflow.onnx.load_model(f"models:/resnet20/{version.version}")
    assert [n.op_type for n in logged.graph.node] == [n.op_type for n in graph.graph.node]
    # ... and in the Kubeflow Model Registry (its stub): the version, the entry's folder as the ONNX artifact, the figures.
    (version,) = registry_stub.model_versions.values()
    assert version["name"] == "r1" and [m["name"] for m in registry_stub.registered_models.values()] == ["resnet20"]
    artifact = registry_stub.artifacts[version["id"]]
    assert (artifact["uri"], artifact["modelFormatName"]) == (f"{built.registry_uri}/kserve/", "onnx")  # what KServe serves
    assert version["customProperties"]["hdap.entry"]["string_value"] == f"{built.registry_uri}/manifest.json"
    assert version["customProperties"]["accuracy_onnxruntime"]["double_value"] == pytest.approx(built.accuracy.onnxruntime, abs=1e-4)

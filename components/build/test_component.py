"""The build component, run locally by kfp.local: export, ONNX Runtime build, gate, registry, report."""

import json

import pyarrow.parquet as pq
import torch
from kfp import dsl, local

from components.build import build
from hdap.compress.finetune import FinetuneConfig, quantization_aware_finetune, save_finetuned
from hdap.deploy.registry import verify_entry
from hdap.fleet.cluster import ClusterConfig, cluster_devices
from hdap.fleet.ingest import IngestConfig, ingest_telemetry
from hdap.latency.fleet_profiling import load_truth, simulated_device, simulated_surrogate
from hdap.models import build_model, prunable_layers
from tests.fixtures import AS_OF, searched_resnet20, simulate

SHAPE = (1, 8, 8)
MENU = ("fp16", "int8")


def test_build_component_publishes_a_verified_registry_entry_and_a_report(store_env, object_store, bucket, tmp_path):
    # A small simulated fleet, its clusters and each representative's surrogate.
    config = simulate(object_store, bucket, devices=300, days=3)
    features = ingest_telemetry(object_store, IngestConfig(config.telemetry_uri, config.sku, as_of=AS_OF)).features
    clustering = cluster_devices(features, ClusterConfig(k=2))
    pq.write_table(features, tmp_path / "features.parquet")
    pq.write_table(clustering.assignments, tmp_path / "assignments.parquet")
    summary = clustering.summary()
    (tmp_path / "clusters.json").write_text(json.dumps(summary))
    layers = prunable_layers(build_model("resnet20", SHAPE), SHAPE)
    truth = load_truth(object_store, config.truth_uri)
    surrogates = tmp_path / "surrogates"
    surrogates.mkdir()
    index = []
    for c in summary["clusters"]:
        device = simulated_device(c["representative"], features, truth)
        simulated_surrogate(device, layers, MENU, samples_per_layer=8).save(surrogates / f"cluster-{c['id']}.json")
        index.append({"cluster": c["id"], "weight": c["weight"], "surrogate": f"cluster-{c['id']}.json"})
    (surrogates / "fleet.json").write_text(json.dumps({"model": "resnet20", "input_shape": list(SHAPE), "precisions": list(MENU),
                                                       "clusters": index}))
    # A searched and fine-tuned architecture.
    spec, data = searched_resnet20(tmp_path / "search", epochs=2)
    result = quantization_aware_finetune(spec, torch.load(tmp_path / "search" / "architecture.weights.pt"),
                                         torch.load(tmp_path / "search" / "uncompressed.weights.pt"), data, FinetuneConfig(epochs=1))
    save_finetuned(result.model, spec, tmp_path / "model")
    (tmp_path / "model" / "uncompressed.weights.pt").write_bytes((tmp_path / "search" / "uncompressed.weights.pt").read_bytes())
    (tmp_path / "model" / "summary.json").write_text(json.dumps(result.metrics() | {"per_class_before": result.per_class_before}))
    (tmp_path / "front.json").write_text(json.dumps({
        "model": "resnet20", "mode": "fleet", "objective": "latency", "baseline_accuracy": result.teacher_accuracy,
        "baseline_fleet_latency_ms": 1.0, "baseline_size_bits": 8e6, "default_precision": "fp16",
        "points": [{"setting": "target 0.5", "accuracy": result.accuracy_after, "fleet_latency_ms": 0.6, "cluster_latency_ms": [0.5, 0.7],
                    "size_bits": 4e6, "pareto": True, "chosen": True}]}))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def build_only() -> dsl.Model:
        def imported(name: str, kind):
            return dsl.importer(artifact_uri=str(tmp_path / name), artifact_class=kind).output

        return build(model=imported("model", dsl.Model), surrogates=imported("surrogates", dsl.Model),
                     features=imported("features.parquet", dsl.Dataset), clusters=imported("clusters.json", dsl.Artifact),
                     assignments=imported("assignments.parquet", dsl.Dataset), front=imported("front.json", dsl.Artifact),
                     dataset="digits", dataset_uri="", truth_uri=config.truth_uri, registry_uri=f"s3://{bucket}/registry",
                     accuracy_tolerance=100.0, tensorrt="auto", threads=1, seed=0, output_uri=f"s3://{bucket}/runs",
                     run_name="r1").outputs["engines"]

    task = build_only()
    built = json.loads(open(f"{task.output.path}/build.json").read())
    assert built["published"] and built["registry_uri"] == f"s3://{bucket}/registry/resnet20/r1"
    assert built["accuracy"]["onnxruntime_agreement"] >= 0.99
    assert built["tensorrt"]["built"] or built["tensorrt"]["reason"]
    assert built["fleet"]["predicted_speedup"] > 1 and built["fleet"]["true_speedup"] > 1
    assert len(built["clusters"]) == 2 and built["size"]["onnx_bytes"] < built["size"]["uncompressed_onnx_bytes"]
    manifest = verify_entry(object_store, built["registry_uri"])
    assert "model.onnx" in manifest["files"] and manifest["run"]["name"] == "r1"
    assert object_store.get_bytes(f"s3://{bucket}/runs/r1/build/report.html").count(b"<img") >= 5

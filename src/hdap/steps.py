"""What each pipeline step does with files and the store: one function per Kubeflow component.

A component passes its parameters and artifact paths here and logs the returned metrics; it
holds no logic. Each step writes its outputs twice: as the pipeline's artifacts (local paths
that Kubeflow uploads) and under the run's prefix in the object store, where later runs and
other tools find them: `<output_uri>/<run_name>/<stage>/...`.

Expected failures leave the step as one readable line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import onnx
import pyarrow.parquet as pq
import torch

from hdap.config import parse_shape, parse_time
from hdap.compress.finetune import FinetuneConfig, load_finetuned, quantization_aware_finetune, save_finetuned, trained_model
from hdap.compress.search import SearchConfig, run_search
from hdap.compress.spec import ArchitectureSpec, spec_layer_configs
from hdap.compress.training import accuracy_percent, labels, per_class_accuracy, predictions
from hdap.data import DataConfig, load_dataset
from hdap.deploy.export import export_float_onnx, export_qdq_onnx, fold_batch_norms, quantized_layer_names
from hdap.deploy.onnxruntime_build import compare_latency, inference_session, onnx_predictions
from hdap.deploy.registry import QualityGate, publish_if_accepted
from hdap.deploy.tensorrt_build import build_engine, tensorrt_unavailable_reason
from hdap.errors import HdapError
from hdap.fleet.cluster import ClusterConfig, cluster_devices
from hdap.fleet.ingest import IngestConfig, ingest_telemetry
from hdap.latency.fleet_cost import FleetCost
from hdap.latency.fleet_profiling import (
    SurrogateConfig,
    build_cluster_surrogates,
    load_truth,
    nominal_fleet_cost,
    simulated_fleet_latency_ms,
)
from hdap.latency.surrogate import LatencySurrogate
from hdap.models import build_model, prunable_layers
from hdap.report.fleet import clustering_report_html
from hdap.report.latency import surrogate_report_html
from hdap.report.search import search_report_html
from hdap.store import ObjectStore, join_uri

log = logging.getLogger("hdap")
F = TypeVar("F", bound=Callable)


def step(function: F) -> F:
    """Run a step with logging set up; an HdapError ends it with its message and exit code 1."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
        try:
            return function(*args, **kwargs)
        except HdapError as err:
            print(f"hdap: {err}", file=sys.stderr, flush=True)
            # A local run (`hdap run`) names a file to hear why a step failed, in one line.
            failure_file = os.environ.get("HDAP_FAILURE_FILE")
            if failure_file:
                Path(failure_file).write_text(f"{function.__name__.removesuffix('_step')}: {err}")
            raise SystemExit(1) from None

    return wrapper  # type: ignore[return-value]


def run_prefix(output_uri: str, run_name: str, stage: str) -> str:
    return join_uri(output_uri, run_name, stage)


@step
def ingest_step(
    telemetry_uri: str,
    sku: str,
    as_of: str,
    output_uri: str,
    run_name: str,
    features_path: str,
    quarantine_path: str,
) -> dict[str, float]:
    store = ObjectStore.from_environment()
    config = IngestConfig(telemetry_uri=telemetry_uri, sku=sku, as_of=parse_time(as_of, "as_of") if as_of else None)
    result = ingest_telemetry(store, config)
    pq.write_table(result.features, features_path)
    pq.write_table(result.quarantine, quarantine_path)
    prefix = run_prefix(output_uri, run_name, "ingest")
    store.put_file(join_uri(prefix, "features.parquet"), features_path)
    store.put_file(join_uri(prefix, "quarantine.parquet"), quarantine_path)
    store.put_json(join_uri(prefix, "summary.json"), {
        "telemetry_uri": telemetry_uri,
        "sku": sku,
        **result.metrics(),
        "quarantine_reasons": result.reasons,
        "unreadable_objects": result.unreadable_objects,
    })
    if result.rows_quarantined:
        log.warning("quarantined %d rows (%s): %s", result.rows_quarantined, result.reasons, join_uri(prefix, "quarantine.parquet"))
    if result.features.num_rows == 0:
        top = ", ".join(f"{k}: {v}" for k, v in sorted(result.reasons.items(), key=lambda kv: -kv[1])[:3]) or "no readable rows"
        raise HdapError(
            f"no valid telemetry under {telemetry_uri} for {sku}: {result.rows_quarantined} rows quarantined ({top}); "
            f"see {join_uri(prefix, 'quarantine.parquet')}."
        )
    return result.metrics()


@step
def cluster_step(
    features_path: str,
    k: int,
    k_min: int,
    k_max: int,
    seed: int,
    output_uri: str,
    run_name: str,
    assignments_path: str,
    clusters_path: str,
    report_path: str,
) -> dict[str, float]:
    store = ObjectStore.from_environment()
    features = pq.read_table(features_path)
    clustering = cluster_devices(features, ClusterConfig(k=k, k_min=k_min, k_max=k_max, seed=seed))
    prefix = run_prefix(output_uri, run_name, "cluster")
    summary = clustering.summary() | {"store_prefix": prefix, "run_name": run_name}
    pq.write_table(clustering.assignments, assignments_path)
    Path(clusters_path).write_text(json.dumps(summary, indent=2))
    Path(report_path).write_text(clustering_report_html(clustering))
    store.put_file(join_uri(prefix, "assignments.parquet"), assignments_path)
    store.put_file(join_uri(prefix, "clusters.json"), clusters_path)
    store.put_file(join_uri(prefix, "report.html"), report_path)
    return clustering.metrics()


@step
def surrogate_step(
    features_path: str,
    clusters_path: str,
    model: str,
    input_shape: str,
    backend: str,
    samples_per_layer: int,
    truth_uri: str,
    profiles_uri: str,
    seed: int,
    output_uri: str,
    run_name: str,
    surrogates_dir: str,
    report_path: str,
) -> dict[str, float]:
    store = ObjectStore.from_environment()
    shape = parse_shape(input_shape, "input_shape")
    config = SurrogateConfig(model=model, input_shape=shape, backend=backend, samples_per_layer=samples_per_layer,
                             seed=seed, truth_uri=truth_uri, profiles_uri=profiles_uri)
    layers = prunable_layers(build_model(model, shape), shape)
    clusters = json.loads(Path(clusters_path).read_text())
    results, precisions = build_cluster_surrogates(store, clusters, pq.read_table(features_path), layers, config)
    prefix = run_prefix(output_uri, run_name, "surrogate")
    directory = Path(surrogates_dir)
    directory.mkdir(parents=True, exist_ok=True)
    fleet = {
        "model": model, "input_shape": list(shape), "precisions": list(precisions),
        "clusters": [{"cluster": r.cluster, "weight": r.weight, "representative": r.representative,
                      "surrogate": f"cluster-{r.cluster}.json", "source": r.source,
                      "held_out_within_10pct": r.held_out_within_10pct, "profile_device_seconds": r.device_seconds}
                     for r in results],
    }
    (directory / "fleet.json").write_text(json.dumps(fleet, indent=2))
    for r in results:
        r.surrogate.save(directory / f"cluster-{r.cluster}.json")
        store.put_file(join_uri(prefix, f"cluster-{r.cluster}.json"), directory / f"cluster-{r.cluster}.json")
        store.put_table(join_uri(prefix, f"profile-cluster-{r.cluster}.parquet"), r.profile)
    store.put_file(join_uri(prefix, "fleet.json"), directory / "fleet.json")
    Path(report_path).write_text(surrogate_report_html(results, model))
    store.put_file(join_uri(prefix, "report.html"), report_path)
    metrics = {f"cluster{r.cluster}_held_out_within_10pct": round(r.held_out_within_10pct, 4) for r in results}
    metrics["min_held_out_within_10pct"] = round(min(r.held_out_within_10pct for r in results), 4)
    metrics["profiled_configurations"] = sum(len(r.profile) for r in results)
    metrics["profiling_device_hours"] = round(sum(r.device_seconds for r in results) / 3600, 4)
    return metrics


def parse_numbers(text: str, setting: str) -> tuple[float, ...]:
    """A comma-separated list of numbers ("" is an empty list)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise HdapError(f"{setting} '{text}' are not numbers: write them like 0.8,0.5,0.3.") from None


def load_fleet_cost(surrogates_dir: str) -> tuple[FleetCost, dict]:
    """The clusters' surrogates and weights, as the surrogate step wrote them."""
    directory = Path(surrogates_dir)
    index = json.loads((directory / "fleet.json").read_text())
    surrogates = [LatencySurrogate.load(directory / c["surrogate"]) for c in index["clusters"]]
    return FleetCost(surrogates, [c["weight"] for c in index["clusters"]], tuple(index["precisions"])), index


@step
def search_step(
    surrogates_dir: str,
    features_path: str,
    dataset: str,
    dataset_uri: str,
    model: str,
    input_shape: str,
    mode: str,
    objective: str,
    targets: str,
    strengths: str,
    pretrain_epochs: int,
    search_epochs: int,
    finetune_epochs: int,
    granule: int,
    accuracy_tolerance: float,
    truth_uri: str,
    seed: int,
    output_uri: str,
    run_name: str,
    architecture_dir: str,
    front_path: str,
    report_path: str,
) -> dict[str, float]:
    store = ObjectStore.from_environment()
    shape = parse_shape(input_shape, "input_shape")
    fleet, index = load_fleet_cost(surrogates_dir)
    if tuple(index["input_shape"]) != shape or index["model"] != model:
        raise HdapError(f"the surrogates were profiled for {index['model']} on {index['input_shape']} inputs, not {model} on "
                        f"{list(shape)}: run the surrogate and search steps with the same model and input_shape.")
    config = SearchConfig(model=model, input_shape=shape, mode=mode, objective=objective, targets=parse_numbers(targets, "targets"),
                          strengths=parse_numbers(strengths, "strengths"),
                          pretrain_epochs=pretrain_epochs, search_epochs=search_epochs, finetune_epochs=finetune_epochs,
                          granule=granule, accuracy_tolerance=accuracy_tolerance, seed=seed)
    data = load_dataset(DataConfig(dataset, dataset_uri, shape, seed), store)
    log.info("dataset %s: %s", dataset, data.describe())
    features = pq.read_table(features_path)
    layers = prunable_layers(build_model(model, shape, classes=data.classes), shape)
    nominal = None
    if mode == "nominal":
        nominal = nominal_fleet_cost(features.column("sku")[0].as_py(), layers, fleet.precisions, seed=seed)
    result = run_search(config, data, fleet, nominal)

    # A simulated fleet knows its truth: what each point would cost the whole fleet, deployed.
    true_latency: dict[int, float] = {}
    if truth_uri and mode != "per-cluster":
        truth = load_truth(store, truth_uri)
        for i, point in enumerate(result.points):
            true_latency[i] = float(simulated_fleet_latency_ms(spec_layer_configs(point.spec, layers), features, truth).mean())

    prefix = run_prefix(output_uri, run_name, "search")
    directory = Path(architecture_dir)
    directory.mkdir(parents=True, exist_ok=True)
    chosen = result.chosen if isinstance(result.chosen, list) else [result.chosen]
    entries = []
    for cluster, point in enumerate(chosen):
        name = "architecture.json" if len(chosen) == 1 else f"cluster-{index['clusters'][cluster]['cluster']}.json"
        weights = name.removesuffix(".json") + ".weights.pt"
        point.spec.save(directory / name)
        torch.save(point.weights, directory / weights)
        for file in (name, weights):
            store.put_file(join_uri(prefix, file), directory / file)
        entries.append({"clusters": "all" if len(chosen) == 1 else index["clusters"][cluster]["cluster"], "spec": name,
                        "weights": weights})
    # The trained uncompressed model: the fine-tune's teacher and the build's baseline.
    torch.save(result.baseline_weights, directory / "uncompressed.weights.pt")
    store.put_file(join_uri(prefix, "uncompressed.weights.pt"), directory / "uncompressed.weights.pt")
    (directory / "index.json").write_text(json.dumps({"mode": mode, "architectures": entries,
                                                      "uncompressed_weights": "uncompressed.weights.pt",
                                                      "baseline_accuracy": result.baseline_accuracy,
                                                      "default_precision": result.default_precision}, indent=2))
    store.put_file(join_uri(prefix, "index.json"), directory / "index.json")
    front = {
        "model": model, "mode": mode, "objective": objective, "baseline_accuracy": result.baseline_accuracy,
        "baseline_fleet_latency_ms": result.baseline_fleet_latency_ms, "baseline_size_bits": result.baseline_size_bits,
        "default_precision": result.default_precision, "seconds": result.seconds, "pareto_points": result.front_size,
        "points": [{**p.summary(), "chosen": any(p is c for c in chosen),
                    **({"true_fleet_latency_ms": true_latency[i]} if i in true_latency else {})}
                   for i, p in enumerate(result.points)],
    }
    Path(front_path).write_text(json.dumps(front, indent=2))
    store.put_file(join_uri(prefix, "front.json"), front_path)
    Path(report_path).write_text(search_report_html(result, model, mode, true_latency))
    store.put_file(join_uri(prefix, "report.html"), report_path)

    best = chosen[0]
    metrics = {
        "baseline_accuracy": round(result.baseline_accuracy, 3),
        "baseline_fleet_latency_ms": round(result.baseline_fleet_latency_ms, 5),
        "chosen_accuracy": round(best.accuracy, 3),
        "chosen_fleet_latency_ms": round(sum(w * p.cluster_latency_ms[k] for k, (w, p) in enumerate(zip(fleet.weights, chosen)))
                                         if len(chosen) > 1 else best.fleet_latency_ms, 5),
        "pareto_points": result.front_size,
        "search_seconds": round(result.seconds["search"], 1),
    }
    metrics["fleet_latency_reduction"] = round(result.baseline_fleet_latency_ms / metrics["chosen_fleet_latency_ms"], 3)
    if true_latency and len(chosen) == 1:
        metrics["chosen_true_fleet_latency_ms"] = round(true_latency[result.points.index(best)], 5)
    return metrics


def _single_architecture(architecture_dir: str) -> tuple[dict, Path]:
    """The search's index and its one architecture (fleet and nominal modes)."""
    directory = Path(architecture_dir)
    index = json.loads((directory / "index.json").read_text())
    if len(index["architectures"]) != 1:
        raise HdapError(f"the search chose {len(index['architectures'])} architectures (mode {index['mode']}); the fine-tune "
                        "and build stages take one: run the search in fleet or nominal mode.")
    return index, directory


class StoreCheckpoints:
    """Fine-tune checkpoints as one object in the store: a retried step finds its predecessor's."""

    def __init__(self, store: ObjectStore, uri: str) -> None:
        self.store, self.uri = store, uri

    def load(self) -> bytes | None:
        return self.store.get_bytes(self.uri) if self.store.exists(self.uri) else None

    def save(self, data: bytes) -> None:
        self.store.put_bytes(self.uri, data)


@step
def finetune_step(
    architecture_dir: str,
    dataset: str,
    dataset_uri: str,
    epochs: int,
    learning_rate: float,
    seed: int,
    output_uri: str,
    run_name: str,
    model_dir: str,
) -> dict[str, float]:
    store = ObjectStore.from_environment()
    index, directory = _single_architecture(architecture_dir)
    entry = index["architectures"][0]
    spec = ArchitectureSpec.load(directory / entry["spec"])
    config = FinetuneConfig(epochs=epochs, learning_rate=learning_rate, seed=seed)
    data = load_dataset(DataConfig(dataset, dataset_uri, tuple(spec.input_shape), seed), store)
    prefix = run_prefix(output_uri, run_name, "finetune")
    result = quantization_aware_finetune(
        spec, torch.load(directory / entry["weights"], weights_only=True),
        torch.load(directory / index["uncompressed_weights"], weights_only=True), data, config,
        StoreCheckpoints(store, join_uri(prefix, "checkpoint.pt")))
    save_finetuned(result.model, spec, model_dir)
    shutil.copy(directory / index["uncompressed_weights"], Path(model_dir) / "uncompressed.weights.pt")
    summary = result.metrics() | {"per_class_before": result.per_class_before, "per_class_after": result.per_class_after,
                                  "epochs": epochs, "classes": spec.classes}
    (Path(model_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    for name in ("architecture.json", "weights.pt", "quantization.json", "summary.json"):
        store.put_file(join_uri(prefix, name), Path(model_dir) / name)
    return result.metrics()


@step
def build_step(
    model_dir: str,
    surrogates_dir: str,
    features_path: str,
    clusters_path: str,
    assignments_path: str,
    front_path: str,
    dataset: str,
    dataset_uri: str,
    truth_uri: str,
    registry_uri: str,
    accuracy_tolerance: float,
    tensorrt: str,
    threads: int,
    seed: int,
    output_uri: str,
    run_name: str,
    engines_dir: str,
    report_path: str,
) -> dict[str, float]:
    from hdap.report.run import run_report_html

    if tensorrt not in ("auto", "off", "required"):
        raise HdapError(f"tensorrt='{tensorrt}': use auto (build where a GPU and TensorRT exist), off or required.")
    store = ObjectStore.from_environment()
    prefix = run_prefix(output_uri, run_name, "build")
    front = json.loads(Path(front_path).read_text())
    finetuned = json.loads((Path(model_dir) / "summary.json").read_text())
    plain, spec, amax = load_finetuned(model_dir, fake_quantized=False)
    fake_quantized, _, _ = load_finetuned(model_dir)
    shape = tuple(spec.input_shape)
    data = load_dataset(DataConfig(dataset, dataset_uri, shape, seed), store)
    uncompressed = trained_model(spec.model, shape, spec.classes,
                                 torch.load(Path(model_dir) / "uncompressed.weights.pt", weights_only=True))

    engines = Path(engines_dir)
    engines.mkdir(parents=True, exist_ok=True)
    qdq = export_qdq_onnx(plain, amax, shape)
    baseline = export_float_onnx(fold_batch_norms(uncompressed), shape)
    onnx.save(qdq, engines / "model.onnx")
    onnx.save(baseline, engines / "uncompressed.onnx")
    written = list(quantized_layer_names(qdq).values())
    log.info("exported %s: %d int8 (Q/DQ) layers, %d fp16 layers", engines / "model.onnx", written.count("int8"), written.count("fp16"))

    truth_labels = labels(data.test)
    reference = predictions(fake_quantized, data.test)
    ours = onnx_predictions(inference_session(qdq, threads), data.test)
    theirs = onnx_predictions(inference_session(baseline, threads), data.test)
    accuracy = functools.partial(accuracy_percent, truth=truth_labels)
    timing = compare_latency(qdq, baseline, shape, threads=threads)
    log.info("ONNX Runtime on this machine: %.4f ms vs %.4f ms uncompressed (%.2fx), accuracy %.2f%%",
             timing.latency_ms, timing.baseline_latency_ms, timing.speedup, accuracy(ours))

    trt_summary: dict = {"built": False}
    reason = "switched off (--tensorrt off)" if tensorrt == "off" else tensorrt_unavailable_reason()
    if reason is None:
        try:
            engine = build_engine(qdq, shape, data.test, timing_cache=engines / "timing.cache")
            base_engine = build_engine(baseline, shape, data.test, timing_cache=engines / "timing.cache")
        except HdapError as err:
            if tensorrt == "required":
                raise
            reason = str(err)
        else:
            (engines / "model.plan").write_bytes(engine.plan)
            # The baseline engine is the uncompressed fp32 graph, as ONNX Runtime's is.
            trt_summary = {"built": True, "latency_ms": engine.latency_ms, "uncompressed_latency_ms": base_engine.latency_ms,
                           "speedup": base_engine.latency_ms / engine.latency_ms, "accuracy": accuracy(engine.predictions),
                           "agreement_with_onnxruntime": float((engine.predictions == ours).float().mean()),
                           "gpu": engine.gpu, "version": engine.version}
    if reason is not None:
        if tensorrt == "required":
            raise HdapError(f"a TensorRT engine was required but {reason}: run the build step on a GPU node with the GPU image.")
        trt_summary["reason"] = reason
        log.info("TensorRT engine not built: %s", reason)

    # What the surrogates predict per cluster, and what the simulated fleet would truly see.
    fleet, surrogates_index = load_fleet_cost(surrogates_dir)
    layers = prunable_layers(build_model(spec.model, shape, classes=spec.classes), shape)
    after_configs = spec_layer_configs(spec, layers)
    before_configs = [layer.config(precision=front["default_precision"]) for layer in layers]
    clusters_latency = [{"cluster": c["cluster"], "weight": w, "predicted_before_ms": s.predict_model(before_configs),
                         "predicted_after_ms": s.predict_model(after_configs)}
                        for c, s, w in zip(surrogates_index["clusters"], fleet.surrogates, fleet.weights)]
    fleet_summary = {"predicted_before_ms": sum(c["weight"] * c["predicted_before_ms"] for c in clusters_latency),
                     "predicted_after_ms": sum(c["weight"] * c["predicted_after_ms"] for c in clusters_latency)}
    fleet_summary["predicted_speedup"] = fleet_summary["predicted_before_ms"] / fleet_summary["predicted_after_ms"]
    features = pq.read_table(features_path)
    if truth_uri:
        truth = load_truth(store, truth_uri)
        fleet_summary["true_before_ms"] = float(simulated_fleet_latency_ms(before_configs, features, truth).mean())
        fleet_summary["true_after_ms"] = float(simulated_fleet_latency_ms(after_configs, features, truth).mean())
        fleet_summary["true_speedup"] = fleet_summary["true_before_ms"] / fleet_summary["true_after_ms"]

    original = {layer.name: layer.out_channels for layer in layers}
    summary = {
        "model": spec.model, "version": run_name, "input_shape": list(shape), "published": False, "registry_uri": "",
        "accuracy": {"uncompressed": front["baseline_accuracy"], "before_finetune": finetuned["accuracy_before"],
                     "finetune_kept_epoch": finetuned.get("kept_epoch", finetuned.get("epochs")),
                     "fake_quantized": accuracy(reference), "onnxruntime": accuracy(ours),
                     "onnxruntime_agreement": float((ours == reference).float().mean()),
                     "uncompressed_onnxruntime": accuracy(theirs),
                     "per_class_before": finetuned["per_class_before"], "per_class_after": per_class_accuracy(ours, truth_labels, spec.classes),
                     "per_class_uncompressed": per_class_accuracy(theirs, truth_labels, spec.classes)},
        "size": {"uncompressed_onnx_bytes": (engines / "uncompressed.onnx").stat().st_size,
                 "onnx_bytes": (engines / "model.onnx").stat().st_size,
                 "uncompressed_weight_bits": front["baseline_size_bits"],
                 "weight_bits": spec.metrics.get("size_bits", float("nan"))},
        "onnxruntime": timing.summary(), "tensorrt": trt_summary, "clusters": clusters_latency, "fleet": fleet_summary,
        "layers": [{"name": layer.name, "op": layer.op, "in_channels": layer.in_channels, "out_channels": layer.out_channels,
                    "original_out_channels": original[layer.name], "weight_precision": layer.weight_precision,
                    "removed": layer.removed} for layer in spec.layers],
        "run": {"name": run_name, "outputs": run_prefix(output_uri, run_name, "")},
    }
    files = {"model.onnx": engines / "model.onnx", "architecture.json": Path(model_dir) / "architecture.json",
             "quantization.json": Path(model_dir) / "quantization.json", "weights.pt": Path(model_dir) / "weights.pt"}
    if trt_summary["built"]:
        engine_ok, engine_message = QualityGate(accuracy_tolerance).check(trt_summary["accuracy"], front["baseline_accuracy"])
        if engine_ok:
            files["model.plan"] = engines / "model.plan"
        else:
            trt_summary["published"] = False
            log.warning("the TensorRT engine is not published: its %s", engine_message)
    metadata = {key: summary[key] for key in ("accuracy", "size", "onnxruntime", "tensorrt", "clusters", "fleet", "run")}
    entry, gate_message = publish_if_accepted(store, QualityGate(accuracy_tolerance), accuracy(ours), front["baseline_accuracy"],
                                              registry_uri, spec.model, run_name, files, metadata)
    gate_passed = entry is not None
    summary |= {"registry_uri": entry or "", "published": gate_passed,
                "gate": {"passed": gate_passed, "tolerance": accuracy_tolerance, "message": gate_message}}
    clusters = json.loads(Path(clusters_path).read_text())
    Path(report_path).write_text(run_report_html(summary, front, clusters, features, pq.read_table(assignments_path)))
    (engines / "build.json").write_text(json.dumps(summary, indent=2))
    for name, path in (("report.html", Path(report_path)), ("build.json", engines / "build.json"),
                       ("model.onnx", engines / "model.onnx"), ("uncompressed.onnx", engines / "uncompressed.onnx")):
        store.put_file(join_uri(prefix, name), path)
    if not gate_passed:
        raise HdapError(f"the quality gate refused the model: {gate_message} (report: {join_uri(prefix, 'report.html')}).")

    metrics = {"accuracy_uncompressed": front["baseline_accuracy"], "accuracy_onnxruntime": accuracy(ours),
               "onnxruntime_agreement": summary["accuracy"]["onnxruntime_agreement"],
               "onnxruntime_latency_ms": timing.latency_ms, "onnxruntime_speedup": timing.speedup,
               "predicted_fleet_speedup": fleet_summary["predicted_speedup"], "tensorrt_built": float(trt_summary["built"]),
               "onnx_bytes": summary["size"]["onnx_bytes"]}
    if "true_speedup" in fleet_summary:
        metrics["true_fleet_speedup"] = fleet_summary["true_speedup"]
    if trt_summary["built"]:
        metrics["tensorrt_latency_ms"] = trt_summary["latency_ms"]
    return {k: round(float(v), 5) for k, v in metrics.items()}

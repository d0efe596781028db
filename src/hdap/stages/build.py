"""Stage 6, build: QDQ ONNX export, ONNX Runtime and TensorRT builds, measurements, quality gate, registry.

Exports the fine-tuned model with each layer's precision written into the graph, measures its
accuracy and its latency against the uncompressed model's on this machine (ONNX Runtime; and
TensorRT where a GPU and TensorRT exist), predicts each cluster's latency before and after (and,
for a simulated fleet, the truth), and publishes to the registry if the accuracy stays within
the tolerance. Writes the ONNX graphs, `build.json` (`BuildSummary`) and the run's report under
`<output_uri>/<run>/build/`; a model the gate refuses ends the step with the gate's sentence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hdap.artifacts import Contract, plain
from hdap.errors import HdapError
from hdap.fleet.sku import QdqPlacement
from hdap.latency.cpu_states import metric_key, parse_cpu_states, usable_cores
from hdap.preprocessing import Preprocessing
from hdap.settings import (ACCURACY_TOLERANCE, CPU_STATES, DATASET, DATASET_URI, REGISTRY_URI, SEED, TRUTH_URI, Choice, DatasetName,
                           Settings, at_least, check_dataset, setting)
from hdap.stages import Stage, StageContext

if TYPE_CHECKING:
    import numpy as np

    from hdap.compress.spec import ArchitectureSpec
    from hdap.latency.layers import LayerShape
    from hdap.stages.search import Front

log = logging.getLogger("hdap")
# The ONNX metadata key of the model's preprocessing (JSON: mean, std, channel_order, input_shape);
# the registry's manifest.json holds the same under "preprocessing".
PREPROCESSING_KEY = "hdap.preprocessing"
CALIBRATION_IMAGES = 256  # training images that set ONNX Runtime's activation ranges (a CPU fleet's int8)


def preprocessing_json(preprocessing: Preprocessing) -> str:
    import json

    return json.dumps(plain(preprocessing))


class TensorRTPolicy(Choice):
    AUTO = "auto"  # build where a GPU and TensorRT exist, else say why not and go on
    OFF = "off"
    REQUIRED = "required"  # a run that cannot build an engine fails


@dataclass(frozen=True)
class BuildConfig(Settings):
    PREFIX = "build"
    tensorrt: TensorRTPolicy = setting(TensorRTPolicy.AUTO, f"TensorRT engine: {TensorRTPolicy.choices()} (auto: where a GPU "
                                       "and TensorRT exist).")
    cpu_states: str = CPU_STATES()  # timed in each, side by side with the uncompressed model
    min_measured_speedup: float = setting(0.0, "The latency gate: refuse to publish a model measured less than this many times "
                                          "as fast as the uncompressed one in any CPU state (0: off; e.g. 1.05).",
                                          check=at_least(0.0))
    registry_uri: str = REGISTRY_URI()
    mlflow_uri: str = setting("", "An MLflow tracking server (http://host:5000) to register each published model in too: a run "
                                  "with the ONNX model, metrics and lineage, and a registered model version; empty: off.")
    mlflow_experiment: str = setting("hdap", "The MLflow experiment the runs go to.")
    model_registry_uri: str = setting("", "A Kubeflow Model Registry (http://model-registry-service.kubeflow:8080) to register "
                                          "each published model in too: its version, with the entry's S3 URI as an ONNX "
                                          "artifact; empty: off.")
    accuracy_tolerance: float = ACCURACY_TOLERANCE()
    dataset: DatasetName = DATASET()
    dataset_uri: str = DATASET_URI()
    truth_uri: str = TRUTH_URI()
    seed: int = SEED()

    def validate(self) -> None:
        check_dataset(self.dataset, self.dataset_uri)


@dataclass
class BuildAccuracy:
    uncompressed: float  # the uncompressed model in PyTorch, as the search measured it (test split, as all but validation_*)
    before_finetune: float
    finetune_kept_epoch: int
    fake_quantized: float  # the fine-tuned model in PyTorch
    onnxruntime: float  # the exported graph
    onnxruntime_agreement: float  # share of test images where the graph and the fake-quantised model agree
    uncompressed_onnxruntime: float
    per_class_before: list[float]
    per_class_after: list[float]
    per_class_uncompressed: list[float]
    validation_uncompressed: float  # the validation split: what the quality gate compares
    validation_onnxruntime: float


@dataclass
class ModelSize:
    uncompressed_onnx_bytes: int
    onnx_bytes: int
    uncompressed_weight_bits: float
    weight_bits: float


@dataclass
class StateTiming:
    state: str  # as cpu_states names it
    description: str
    threads: int
    background_processes: int
    share: float  # of the fleet
    latency_ms: float  # batch 1, median over alternating rounds
    uncompressed_latency_ms: float
    speedup: float  # median of the rounds' ratios
    # What the surrogates predicted for this state, where the fleet is this CPU's states (a cluster per state).
    predicted_latency_ms: float | None = None
    predicted_uncompressed_latency_ms: float | None = None

    @property
    def prediction_error(self) -> float | None:
        """(predicted - measured) / measured, for the published model."""
        return None if self.predicted_latency_ms is None else self.predicted_latency_ms / self.latency_ms - 1


@dataclass
class OnnxRuntimeTiming:
    """Measured on this machine in every CPU state: a result, not a prediction."""

    states: list[StateTiming]
    rounds: int
    latency_ms: float  # share-weighted mean of the states' latencies
    uncompressed_latency_ms: float
    speedup: float  # of the weighted means

    @classmethod
    def of(cls, states: list[StateTiming], rounds: int) -> OnnxRuntimeTiming:
        latency = sum(s.share * s.latency_ms for s in states)
        uncompressed = sum(s.share * s.uncompressed_latency_ms for s in states)
        return cls(states, rounds, round(latency, 5), round(uncompressed, 5), round(uncompressed / latency, 3))

    @property
    def slowest(self) -> StateTiming:
        """The state with the lowest speed-up."""
        return min(self.states, key=lambda s: s.speedup)


@dataclass
class TensorRTResult:
    built: bool
    reason: str = ""  # why not built
    published: bool = False  # the engine passed the gate and went to the registry with the model
    latency_ms: float | None = None
    uncompressed_latency_ms: float | None = None
    speedup: float | None = None
    accuracy: float | None = None  # test split
    validation_accuracy: float | None = None  # what its own gate reads
    agreement_with_onnxruntime: float | None = None
    gpu: str = ""
    version: str = ""


@dataclass
class ClusterLatency:
    cluster: int
    weight: float
    predicted_before_ms: float
    predicted_after_ms: float


@dataclass
class FleetLatency:
    predicted_before_ms: float
    predicted_after_ms: float
    predicted_speedup: float
    true_before_ms: float | None = None  # a simulated fleet's mean over every device
    true_after_ms: float | None = None
    true_speedup: float | None = None


@dataclass
class LayerSummary:
    name: str
    op: str
    in_channels: int
    out_channels: int
    original_out_channels: int
    weight_precision: str
    removed: bool


@dataclass
class GateResult:
    passed: bool
    tolerance: float
    message: str
    min_measured_speedup: float = 0.0  # the latency gate (0: off)
    refused_by_latency: bool = False

    @property
    def name(self) -> str:
        """Which gate decided: the latency gate where it refused, else the quality gate."""
        return "latency" if self.refused_by_latency else "quality"


@dataclass
class RunRef:
    name: str
    outputs: str  # <output_uri>/<run name>/


@dataclass
class BuildSummary(Contract):
    FORMAT = "hdap.build/3"
    model: str
    version: str  # the registry version: the run's name
    input_shape: tuple[int, ...]
    preprocessing: Preprocessing  # what a device does to an image before the model (also in the registry's manifest)
    published: bool
    registry_uri: str  # the entry, when published
    accuracy: BuildAccuracy
    size: ModelSize
    onnxruntime: OnnxRuntimeTiming
    tensorrt: TensorRTResult
    clusters: list[ClusterLatency]
    fleet: FleetLatency
    layers: list[LayerSummary]
    run: RunRef
    gate: GateResult

    def metrics(self) -> dict[str, float]:
        metrics = {"accuracy_uncompressed": self.accuracy.uncompressed, "accuracy_onnxruntime": self.accuracy.onnxruntime,
                   "onnxruntime_agreement": self.accuracy.onnxruntime_agreement, "onnxruntime_latency_ms": self.onnxruntime.latency_ms,
                   "onnxruntime_speedup": self.onnxruntime.speedup, "predicted_fleet_speedup": self.fleet.predicted_speedup,
                   "tensorrt_built": float(self.tensorrt.built), "onnx_bytes": self.size.onnx_bytes,
                   "onnxruntime_min_state_speedup": self.onnxruntime.slowest.speedup}
        metrics |= {f"onnxruntime_speedup_{metric_key(s.state)}": s.speedup for s in self.onnxruntime.states}
        if self.fleet.true_speedup is not None:
            metrics["true_fleet_speedup"] = self.fleet.true_speedup
        if self.tensorrt.latency_ms is not None:
            metrics["tensorrt_latency_ms"] = self.tensorrt.latency_ms
        return {k: round(float(v), 5) for k, v in metrics.items()}


@dataclass(frozen=True)
class BuildInputs:
    model: Path  # the fine-tune's folder
    surrogates: Path  # the surrogate stage's folder (SurrogateIndex)
    features: Path
    clusters: Path  # ClusterSummary
    assignments: Path
    front: Path  # Front
    drift: Path  # DriftDecision: its lineage goes into the entry, for the next run's drift gate


@dataclass(frozen=True)
class BuildOutputs:
    engines: Path  # a folder: model.onnx, uncompressed.onnx, model.plan where built, build.json
    report: Path  # the run's report


@dataclass
class _Built:
    """What the export and the measurements produced, before the gate."""

    spec: ArchitectureSpec
    shape: tuple[int, ...]
    preprocessing: Preprocessing
    accuracy: BuildAccuracy
    size: ModelSize
    onnxruntime: OnnxRuntimeTiming
    tensorrt: TensorRTResult


def run(config: BuildConfig, inputs: BuildInputs, outputs: BuildOutputs, context: StageContext) -> dict[str, float]:
    from hdap.stages.search import Front

    front = Front.load(inputs.front)
    outputs.engines.mkdir(parents=True, exist_ok=True)
    built = _export_and_measure(config, inputs, outputs.engines, front, context)
    shapes = _layer_shapes(built.spec)
    clusters, fleet = _fleet_latency(config, inputs, built.spec, shapes, front, context)
    _predict_states(built.onnxruntime, clusters, inputs)
    original = {layer.name: layer.out_channels for layer in shapes}
    layers = [LayerSummary(layer.name, layer.op, layer.in_channels, layer.out_channels, original[layer.name],
                           layer.weight_precision, layer.removed) for layer in built.spec.layers]
    run_ref = RunRef(context.run_name, context.run_uri)
    parts = {"preprocessing": built.preprocessing, "accuracy": built.accuracy, "size": built.size, "onnxruntime": built.onnxruntime, "tensorrt": built.tensorrt,
             "clusters": clusters, "fleet": fleet, "run": run_ref, **_drift_baseline(inputs, clusters)}
    entry, gate = _publish(config, built, front, outputs.engines, inputs.model, parts, context)
    summary = BuildSummary(built.spec.model, context.run_name, built.shape, built.preprocessing, entry is not None, entry or "", built.accuracy,
                           built.size, built.onnxruntime, built.tensorrt, clusters, fleet, layers, run_ref, gate)
    _report(summary, front, inputs, outputs, context)
    if entry and (config.mlflow_uri or config.model_registry_uri):
        _register_in_catalogues(config, summary, entry, outputs.engines / "model.onnx", context)
    if not gate.passed:
        raise HdapError(f"the {gate.name} gate refused the model: {gate.message} (report: {context.uri('build', 'report.html')}).")
    return summary.metrics()


def _register_in_catalogues(config: BuildConfig, summary: BuildSummary, entry: str, onnx_path: Path,
                            context: StageContext) -> None:
    """The published entry in MLflow and the Kubeflow Model Registry too, as configured: its metrics, its
    lineage (MLflow's params), and tags that lead back to the entry."""
    from hdap.deploy.registry import entry_tags, registry_name
    from hdap.store import join_uri

    manifest_uri = join_uri(entry, "manifest.json")
    manifest = context.store.get_json(manifest_uri, require_checksum=True)
    tags, name, metrics = entry_tags(manifest, manifest_uri), registry_name(summary.model), summary.metrics()
    if config.mlflow_uri:
        from hdap.deploy.mlflow_registry import register_in_mlflow

        lineage = manifest["lineage"]
        params = lineage["settings"] | ({"weights_sha256": lineage["weights_sha256"]} if lineage["weights_sha256"] else {})
        register_in_mlflow(config.mlflow_uri, config.mlflow_experiment, name, onnx_path, params, metrics, tags)
    if config.model_registry_uri:
        from hdap.deploy.kubeflow_model_registry import register_in_model_registry

        description = (f"{summary.accuracy.onnxruntime:.2f}% accurate (ONNX Runtime), {summary.fleet.predicted_speedup:.2f}x lower "
                       f"fleet-weighted latency predicted, {summary.onnxruntime.speedup:.2f}x measured on the build's CPU")
        # KServe's storageUri: the entry's Triton layout (manifests/kserve/inferenceservice.yaml serves it)
        register_in_model_registry(config.model_registry_uri, name, summary.version, join_uri(entry, "kserve", ""), description,
                                   metrics | tags)


def _drift_baseline(inputs: BuildInputs, clusters: list[ClusterLatency]) -> dict:
    """What the next run's drift gate compares with: this run's lineage and the fleet the model was optimised for."""
    import pyarrow.parquet as pq

    from hdap.fleet.drift import fleet_picture
    from hdap.stages.cluster import ClusterSummary
    from hdap.stages.drift import DriftDecision

    summary = ClusterSummary.load(inputs.clusters)
    picture = fleet_picture(pq.read_table(inputs.features), summary.features, {c.id: c.centroid for c in summary.clusters},
                            {c.id: c.weight for c in summary.clusters}, {c.cluster: c.predicted_after_ms for c in clusters})
    return {"lineage": DriftDecision.load(inputs.drift).lineage, "fleet_picture": picture}


def _layer_shapes(spec: ArchitectureSpec) -> list[LayerShape]:
    from hdap.models import build_model, prunable_layers

    shape = tuple(spec.input_shape)
    return prunable_layers(build_model(spec.model, shape, classes=spec.classes), shape)


def _qdq_placement(inputs: BuildInputs) -> QdqPlacement:
    """How the fleet's engine wants int8 written: its SKU's (a CPU fleet: ONNX Runtime's)."""
    import pyarrow.parquet as pq

    from hdap.fleet.sku import fleet_qdq_placement

    return fleet_qdq_placement(pq.read_table(inputs.features, columns=["sku"]))


def _calibration_images(train, seed: int, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """A seeded sample of preprocessed training images: what sets ONNX Runtime's activation ranges."""
    import torch

    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return torch.stack([train[i][0] for i in chosen]).numpy()


def _export_and_measure(config: BuildConfig, inputs: BuildInputs, engines: Path, front: Front, context: StageContext) -> _Built:
    """Export both models as ONNX; their accuracy and latency in ONNX Runtime (and TensorRT where it runs)."""
    import functools

    import onnx
    import torch

    from hdap.compress.finetune import load_finetuned, trained_model
    from hdap.compress.training import accuracy_percent, labels, per_class_accuracy, predictions
    from hdap.data import load_dataset, recipe_config
    from hdap.deploy.export import export_float_onnx, export_qdq_onnx, fold_batch_norms, quantized_layer_names
    from hdap.deploy.onnxruntime_build import compare_latency, inference_session, onnx_predictions
    from hdap.stages.finetune import FinetuneSummary

    finetuned = FinetuneSummary.load(inputs.model / "summary.json")
    plain, spec, amax = load_finetuned(inputs.model, fake_quantized=False)
    fake_quantized, _, _ = load_finetuned(inputs.model)
    shape = tuple(spec.input_shape)
    data = load_dataset(recipe_config(finetuned.data, config.dataset, config.dataset_uri, config.seed), context.store)
    uncompressed = trained_model(spec.model, shape, spec.classes,
                                 torch.load(inputs.model / "uncompressed.weights.pt", weights_only=True))
    placement = _qdq_placement(inputs)
    qdq = export_qdq_onnx(plain, amax, shape, placement, _calibration_images(data.train, config.seed))
    baseline = export_float_onnx(fold_batch_norms(uncompressed), shape)
    for graph in (qdq, baseline):  # what a device does to an image first, in the graph's own metadata
        onnx.helper.set_model_props(graph, {PREPROCESSING_KEY: preprocessing_json(finetuned.data.preprocessing)})
    onnx.save(qdq, engines / "model.onnx")
    onnx.save(baseline, engines / "uncompressed.onnx")
    written = list(quantized_layer_names(qdq).values())
    log.info("exported %s: %d int8 (Q/DQ) layers, %d fp16 layers, placed for %s", engines / "model.onnx", written.count("int8"),
             written.count("fp16"), placement.value)

    truth = labels(data.test)
    reference = predictions(fake_quantized, data.test)
    threads = usable_cores()  # predicting the splits: every core
    ours = onnx_predictions(inference_session(qdq, threads), data.test)
    theirs = onnx_predictions(inference_session(baseline, threads), data.test)
    accuracy = functools.partial(accuracy_percent, truth=truth)
    validation = accuracy_percent(onnx_predictions(inference_session(qdq, threads), data.validation), labels(data.validation))
    timing = compare_latency(qdq, baseline, shape, parse_cpu_states(config.cpu_states))
    for state in timing.states:
        log.info("ONNX Runtime on this machine, %s: %.4f ms vs %.4f ms uncompressed (%.2fx)", state.description,
                 state.latency_ms, state.uncompressed_latency_ms, state.speedup)
    return _Built(
        spec, shape, finetuned.data.preprocessing,
        BuildAccuracy(front.baseline_accuracy, finetuned.accuracy_before, finetuned.kept_epoch, accuracy(reference), accuracy(ours),
                      float((ours == reference).float().mean()), accuracy(theirs), finetuned.per_class_before,
                      per_class_accuracy(ours, truth, spec.classes), per_class_accuracy(theirs, truth, spec.classes),
                      front.baseline_validation_accuracy, validation),
        ModelSize((engines / "uncompressed.onnx").stat().st_size, (engines / "model.onnx").stat().st_size, front.baseline_size_bits,
                  spec.metrics.get("size_bits", float("nan"))),
        timing,
        _tensorrt(config, qdq, baseline, shape, data, engines, ours, accuracy))


def _tensorrt(config: BuildConfig, qdq, baseline, shape: tuple[int, ...], data, engines: Path, ours, accuracy) -> TensorRTResult:
    """Both graphs as TensorRT engines where TensorRT and a GPU exist; otherwise why not."""
    from hdap.deploy.tensorrt_build import build_engine, tensorrt_unavailable_reason

    required = config.tensorrt is TensorRTPolicy.REQUIRED
    reason = "switched off (build_tensorrt=off)" if config.tensorrt is TensorRTPolicy.OFF else tensorrt_unavailable_reason()
    if reason is None:
        from torch.utils.data import ConcatDataset

        from hdap.compress.training import accuracy_percent, labels

        validated = len(data.validation)  # the engine predicts the validation images, then the test images
        try:
            engine = build_engine(qdq, shape, ConcatDataset([data.validation, data.test]), timing_cache=engines / "timing.cache")
            base_engine = build_engine(baseline, shape, data.test, timing_cache=engines / "timing.cache")
        except HdapError as err:
            if required:
                raise
            reason = str(err)
        else:
            (engines / "model.plan").write_bytes(engine.plan)
            # The baseline engine is the uncompressed fp32 graph, as ONNX Runtime's is.
            on_test = engine.predictions[validated:]
            return TensorRTResult(True, latency_ms=engine.latency_ms, uncompressed_latency_ms=base_engine.latency_ms,
                                  speedup=base_engine.latency_ms / engine.latency_ms, accuracy=accuracy(on_test),
                                  validation_accuracy=accuracy_percent(engine.predictions[:validated], labels(data.validation)),
                                  agreement_with_onnxruntime=float((on_test == ours).float().mean()),
                                  gpu=engine.gpu, version=engine.version)
    if required:
        raise HdapError(f"a TensorRT engine was required but {reason}: run the build step on a GPU node with the GPU image.")
    log.info("TensorRT engine not built: %s", reason)
    return TensorRTResult(False, reason=reason)


def _fleet_latency(config: BuildConfig, inputs: BuildInputs, spec: ArchitectureSpec, layers: list[LayerShape], front: Front,
                   context: StageContext) -> tuple[list[ClusterLatency], FleetLatency]:
    """What the surrogates predict per cluster, before and after; and what a simulated fleet would truly see."""
    import pyarrow.parquet as pq

    from hdap.compress.spec import spec_layer_configs
    from hdap.latency.fleet_cost import FleetCost
    from hdap.latency.fleet_profiling import load_truth, simulated_fleet_latency_ms
    from hdap.stages.surrogate import SurrogateIndex

    index = SurrogateIndex.load(inputs.surrogates / "fleet.json")
    fleet = FleetCost.from_index(index, inputs.surrogates)
    after = spec_layer_configs(spec, layers)
    before = [layer.config(precision=front.default_precision) for layer in layers]
    clusters = [ClusterLatency(c.cluster, w, s.predict_model(before), s.predict_model(after))
                for c, s, w in zip(index.clusters, fleet.surrogates, fleet.weights)]
    predicted_before = sum(c.weight * c.predicted_before_ms for c in clusters)
    predicted_after = sum(c.weight * c.predicted_after_ms for c in clusters)
    fleet_latency = FleetLatency(predicted_before, predicted_after, predicted_before / predicted_after)
    if config.truth_uri:
        truth = load_truth(context.store, config.truth_uri)
        features = pq.read_table(inputs.features)
        fleet_latency.true_before_ms = float(simulated_fleet_latency_ms(before, features, truth).mean())
        fleet_latency.true_after_ms = float(simulated_fleet_latency_ms(after, features, truth).mean())
        fleet_latency.true_speedup = fleet_latency.true_before_ms / fleet_latency.true_after_ms
    return clusters, fleet_latency


def _predict_states(timing: OnnxRuntimeTiming, clusters: list[ClusterLatency], inputs: BuildInputs) -> None:
    """Beside each measured CPU state, what the surrogate of the cluster of that state predicted (a
    CPU fleet's clusters are its states: a representative reports its state as its power mode)."""
    import pyarrow.parquet as pq

    from hdap.stages.cluster import ClusterSummary

    features = pq.read_table(inputs.features, columns=["device_id", "power_mode"]).to_pydict()
    state_of = dict(zip(features["device_id"], features["power_mode"]))
    representative = {c.id: c.representative for c in ClusterSummary.load(inputs.clusters).clusters}
    by_state = {state_of.get(representative[latency.cluster]): latency for latency in clusters}
    for state in timing.states:
        if state.state in by_state:
            state.predicted_latency_ms = round(by_state[state.state].predicted_after_ms, 5)
            state.predicted_uncompressed_latency_ms = round(by_state[state.state].predicted_before_ms, 5)


def _publish(config: BuildConfig, built: _Built, front: Front, engines: Path, model_dir: Path, parts: dict,
             context: StageContext) -> tuple[str | None, GateResult]:
    """The registry entry if the exported model passes the gate (the engine too, if it passes on its own)."""
    from hdap.deploy.registry import QualityGate, publish_if_accepted
    from hdap.deploy.signing import SIGNING_KEY_ENV, signing_key_from_environment

    gate = QualityGate(config.accuracy_tolerance)
    files = {"model.onnx": engines / "model.onnx", "architecture.json": model_dir / "architecture.json",
             "quantization.json": model_dir / "quantization.json", "weights.pt": model_dir / "weights.pt"}
    engine_ok = False
    if built.tensorrt.built:
        engine_ok, engine_message = gate.check(built.tensorrt.validation_accuracy, front.baseline_validation_accuracy)
        if engine_ok:
            files["model.plan"] = engines / "model.plan"
        else:
            log.warning("the TensorRT engine is not published: its %s", engine_message)
    built.tensorrt.published = engine_ok  # as the entry's manifest records it, if the model is published
    too_slow = _latency_refusal(config.min_measured_speedup, built.onnxruntime)
    if too_slow:
        log.warning("latency gate: %s", too_slow)
        built.tensorrt.published = False
        return None, GateResult(False, config.accuracy_tolerance, too_slow, config.min_measured_speedup, refused_by_latency=True)
    metadata = {key: plain(value) for key, value in parts.items()}
    # The gate reads the validation split: the test split only reports.
    signing_key = signing_key_from_environment()
    if signing_key is None:
        log.warning("no signing key (%s, the hdap-signing secret on Kubeflow): a published entry will be unsigned", SIGNING_KEY_ENV)
    entry, message = publish_if_accepted(context.store, gate, built.accuracy.validation_onnxruntime, front.baseline_validation_accuracy,
                                         config.registry_uri, built.spec.model, context.run_name, files, metadata, signing_key)
    built.tensorrt.published = engine_ok and entry is not None
    return entry, GateResult(entry is not None, config.accuracy_tolerance, message, config.min_measured_speedup)


def _latency_refusal(min_speedup: float, timing: OnnxRuntimeTiming) -> str | None:
    """Why the latency gate refuses the model (its slowest state is not `min_speedup` times as fast); None if it passes or is off."""
    slowest = timing.slowest
    if not min_speedup or slowest.speedup >= min_speedup:
        return None
    return (f"measured with ONNX Runtime on this machine ({slowest.description}) it runs {slowest.speedup:.2f}x as fast as the "
            f"uncompressed model, short of the {min_speedup:g}x build_min_measured_speedup asks for: nothing was published; "
            "compress for this CPU fleet, search a lower cost target, or lower the gate")


def _report(summary: BuildSummary, front: Front, inputs: BuildInputs, outputs: BuildOutputs, context: StageContext) -> None:
    import pyarrow.parquet as pq

    from hdap.report.run import run_report_html
    from hdap.stages.cluster import ClusterSummary

    clusters = ClusterSummary.load(inputs.clusters)
    page = run_report_html(summary, front, clusters, pq.read_table(inputs.features), pq.read_table(inputs.assignments))
    outputs.report.write_text(page)
    summary.save(outputs.engines / "build.json")
    for name, path in (("report.html", outputs.report), ("build.json", outputs.engines / "build.json"),
                       ("model.onnx", outputs.engines / "model.onnx"), ("uncompressed.onnx", outputs.engines / "uncompressed.onnx")):
        context.store.put_file(context.uri("build", name), path)


STAGE = Stage("build", "export + build + publish", BuildConfig, BuildInputs, BuildOutputs, run)

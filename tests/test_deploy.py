"""Apply, quantization-aware fine-tune, QDQ ONNX export, ONNX Runtime and TensorRT builds, the registry."""

from __future__ import annotations

import json

import pytest
import torch
from onnx import TensorProto

from hdap.compress.apply import build_pruned_model
from hdap.stages.finetune import FinetuneConfig
from hdap.compress.finetune import load_finetuned, quantization_aware_finetune, save_finetuned
from hdap.compress.spec import ArchitectureSpec
from hdap.compress.training import predictions
from hdap.deploy.export import export_qdq_onnx, quantized_layer_names
from hdap.deploy.onnxruntime_build import inference_session, onnx_predictions
from hdap.deploy.registry import QualityGate, publish_if_accepted, verify_entry
from hdap.deploy.tensorrt_build import build_engine, tensorrt_unavailable_reason
from hdap.models import build_model
from hdap.stages.finetune import StoreCheckpoints
from tests.fixtures import searched_resnet20


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """The searched ResNet-20 fine-tuned for two epochs and saved as the fine-tune step saves it."""
    directory = tmp_path_factory.mktemp("search")
    spec, data = searched_resnet20(directory)
    result = quantization_aware_finetune(spec, torch.load(directory / "architecture.weights.pt"),
                                         torch.load(directory / "uncompressed.weights.pt"), data, FinetuneConfig(epochs=2))
    model_dir = tmp_path_factory.mktemp("model")
    save_finetuned(result.model, spec, model_dir)
    return model_dir, directory, spec, data, result


def test_the_pruned_model_is_physically_smaller_and_keeps_the_searched_channels(finetuned) -> None:
    _, _, spec, _, _ = finetuned
    pruned = build_pruned_model(spec)
    full = build_model("resnet20", (1, 8, 8))
    assert sum(p.numel() for p in pruned.parameters()) < 0.9 * sum(p.numel() for p in full.parameters())
    modules = dict(pruned.named_modules())
    for layer in spec.layers:
        assert (layer.name in modules) != layer.removed
        if not layer.removed:
            module = modules[layer.name]
            assert getattr(module, "out_channels", getattr(module, "out_features", None)) == len(layer.kept_out_channels)
    assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_the_fine_tune_recovers_accuracy_and_reports_it_per_class(finetuned) -> None:
    _, _, spec, _, result = finetuned
    assert result.accuracy_after > result.accuracy_before - 1.0
    assert result.accuracy_after > 80
    assert len(result.per_class_after) == spec.classes


def test_qdq_nodes_sit_exactly_on_the_layers_the_spec_quantized(finetuned) -> None:
    model_dir, _, spec, _, _ = finetuned
    plain, _, amax = load_finetuned(model_dir, fake_quantized=False)
    graph = export_qdq_onnx(plain, amax, (1, 8, 8))
    expected = {layer.name: layer.weight_precision for layer in spec.layers if not layer.removed}
    assert quantized_layer_names(graph) == expected
    int8 = [name for name, precision in expected.items() if precision == "int8"]
    assert 0 < len(int8) < len(expected)
    assert sum(node.op_type == "QuantizeLinear" for node in graph.graph.node) == len(int8)
    initializers = {i.name: i.data_type for i in graph.graph.initializer}
    assert all(initializers[f"{name}.weight_int8"] == TensorProto.INT8 for name in int8)
    assert not any(layer.removed and any(n.startswith(layer.name + ".") for n in initializers) for layer in spec.layers)


def test_a_layer_left_fp32_has_no_qdq_in_the_export_and_an_int8_one_has_its_own() -> None:
    """What a CPU fleet publishes where int8 does not pay: plain fp32 layers, no Quantize/Dequantize around them."""
    from hdap.latency.model_variants import model_variants

    (fp32_graph, fp32_layers), (int8_graph, int8_layers) = model_variants("resnet20", (1, 8, 8), ("fp32", "int8"), 2)
    operators = [node.op_type for node in fp32_graph.graph.node]
    assert "QuantizeLinear" not in operators and "DequantizeLinear" not in operators
    assert set(quantized_layer_names(fp32_graph).values()) == {"fp32"} and {c.precision for c in fp32_layers} == {"fp32"}
    assert sum(node.op_type == "QuantizeLinear" for node in int8_graph.graph.node) == len(int8_layers)


def _optimised_operators(graph, tmp_path) -> list[str]:
    """The operators ONNX Runtime's CPU provider runs after its graph optimisations."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def test_int8_placed_for_onnx_runtime_runs_as_integer_kernels_with_no_stray_quantize_dequantize(tmp_path) -> None:
    """A CPU fleet's int8: every layer a QLinearConv (or QGemm), every add a QLinearAdd, Q/DQ only where
    the graph's float input enters and its logits leave. Placed TensorRT's way, ONNX Runtime runs the
    same layers as float convolutions between Q/DQ pairs."""
    from hdap.fleet.sku import QdqPlacement
    from hdap.latency.model_variants import model_variants

    (graph, layers), = model_variants("resnet20", (1, 8, 8), ("int8",), 1, placement=QdqPlacement.ONNXRUNTIME)
    operators = _optimised_operators(graph, tmp_path)
    assert operators.count("QLinearConv") + operators.count("QGemm") == len(layers)
    assert operators.count("QLinearAdd") == 9 and "Conv" not in operators and "FusedConv" not in operators
    assert operators.count("QuantizeLinear") == 1 and operators.count("DequantizeLinear") == 1
    assert set(quantized_layer_names(graph).values()) == {"int8"}
    (tensorrt_graph, _), = model_variants("resnet20", (1, 8, 8), ("int8",), 1, placement=QdqPlacement.TENSORRT)
    assert "QLinearConv" not in _optimised_operators(tensorrt_graph, tmp_path)


def test_a_mixed_cpu_fleet_model_quantizes_its_int8_stage_and_leaves_the_fp32_layers_float(tmp_path) -> None:
    """The first stage int8, the rest fp32: integer kernels where int8 was chosen, float convolutions
    with float weights elsewhere (Q/DQ only at the border between the two)."""
    from dataclasses import replace

    import numpy as np

    from hdap.compress.searchable import SearchableModel
    from hdap.compress.space import build_search_space
    from hdap.compress.spec import export_spec
    from hdap.fleet.sku import QdqPlacement
    from hdap.models import prunable_layers

    model = build_model("resnet20", (1, 8, 8))
    layers = prunable_layers(model, (1, 8, 8))
    spec = export_spec(SearchableModel(model, build_search_space(model, (1, 8, 8), ("fp32", "int8"))), "resnet20", (1, 8, 8),
                       layers[-1].out_channels)
    int8 = {layer.name for layer in spec.layers if layer.name.startswith("layer1.")}
    spec.layers = [replace(layer, weight_precision="int8" if layer.name in int8 else "fp32",
                           activation_precision="int8" if layer.name in int8 else "fp32") for layer in spec.layers]
    pruned = build_pruned_model(spec).eval()
    calibration = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    graph = export_qdq_onnx(pruned, {}, (1, 8, 8), QdqPlacement.ONNXRUNTIME, calibration)
    written = quantized_layer_names(graph)
    assert {layer for layer, precision in written.items() if precision == "int8"} == int8
    operators = _optimised_operators(graph, tmp_path)
    assert operators.count("QLinearConv") == len(int8)
    assert operators.count("Conv") + operators.count("FusedConv") == len(written) - len(int8) - 1  # the classifier is a Gemm
    assert operators.count("QuantizeLinear") + operators.count("DequantizeLinear") <= 4  # in at the input, out at the border


def test_a_cpu_fleet_model_left_fp32_is_exported_without_quantization() -> None:
    from hdap.fleet.sku import QdqPlacement
    from hdap.latency.model_variants import model_variants

    (graph, _), = model_variants("resnet20", (1, 8, 8), ("fp32",), 1, placement=QdqPlacement.ONNXRUNTIME)
    operators = {node.op_type for node in graph.graph.node}
    assert not operators & {"QuantizeLinear", "DequantizeLinear"}


def test_onnx_runtime_agrees_with_the_fake_quantized_model_on_at_least_99_percent(finetuned) -> None:
    model_dir, _, _, data, _ = finetuned
    fake_quantized, _, _ = load_finetuned(model_dir)
    plain, _, amax = load_finetuned(model_dir, fake_quantized=False)
    ours = onnx_predictions(inference_session(export_qdq_onnx(plain, amax, (1, 8, 8))), data.test)
    agreement = float((ours == predictions(fake_quantized, data.test)).float().mean())
    assert agreement >= 0.99


def test_a_fine_tune_that_failed_resumes_from_its_last_checkpoint_in_the_store(finetuned, object_store, bucket) -> None:
    _, directory, spec, data, _ = finetuned
    checkpoints = StoreCheckpoints(object_store, f"s3://{bucket}/run/finetune/checkpoint.pt")

    class CrashAfterFirstEpoch:
        saves = 0

        def load(self):
            return checkpoints.load()

        def save(self, data: bytes) -> None:
            checkpoints.save(data)
            self.saves += 1
            if self.saves == 1:
                raise RuntimeError("the node was preempted")

    weights, teacher = torch.load(directory / "architecture.weights.pt"), torch.load(directory / "uncompressed.weights.pt")
    config = FinetuneConfig(epochs=3)
    with pytest.raises(RuntimeError, match="preempted"):
        quantization_aware_finetune(spec, weights, teacher, data, config, CrashAfterFirstEpoch())
    resumed = quantization_aware_finetune(spec, weights, teacher, data, config, checkpoints)
    assert resumed.resumed_from_epoch == 1
    uninterrupted = quantization_aware_finetune(spec, weights, teacher, data, config)
    for key, value in uninterrupted.model.state_dict().items():  # resuming lands where an unbroken run does
        assert torch.allclose(resumed.model.state_dict()[key], value, atol=1e-5), key
    other = quantization_aware_finetune(spec, weights, teacher, data, FinetuneConfig(epochs=1), checkpoints)
    assert other.resumed_from_epoch == 0  # another setting does not take this checkpoint


def test_the_fine_tune_keeps_the_searched_weights_when_no_epoch_does_better_on_held_out_images(finetuned) -> None:
    _, directory, spec, data, _ = finetuned
    weights, teacher = torch.load(directory / "architecture.weights.pt"), torch.load(directory / "uncompressed.weights.pt")
    wrecked = quantization_aware_finetune(spec, weights, teacher, data, FinetuneConfig(epochs=2, learning_rate=50.0))
    assert wrecked.kept_epoch == 0  # a learning rate that wrecks the model: every epoch did worse than the searched one
    assert wrecked.accuracy_after == wrecked.accuracy_before


def test_the_quality_gate_refuses_a_model_that_lost_accuracy_and_leaves_the_registry_untouched(finetuned, object_store, bucket, tmp_path) -> None:
    model_dir, _, _, _, _ = finetuned
    registry = f"s3://{bucket}/registry"
    files = {name: model_dir / name for name in ("architecture.json", "weights.pt", "quantization.json")}
    entry, _ = publish_if_accepted(object_store, QualityGate(0.5), 98.0, 98.2, registry, "resnet20", "v1", files, {"run": "a"})
    assert entry == f"{registry}/resnet20/v1"
    before = {(o.uri, o.size) for o in object_store.list(registry + "/")}
    entry, message = publish_if_accepted(object_store, QualityGate(0.5), 96.0, 98.2, registry, "resnet20", "v2", files, {"run": "b"})
    assert entry is None and "lost 2.20 points" in message and "nothing was published" in message
    assert {(o.uri, o.size) for o in object_store.list(registry + "/")} == before
    assert object_store.get_json(f"{registry}/resnet20/latest.json")["version"] == "v1"


def test_a_published_entry_lists_every_file_with_its_sha256_and_is_never_overwritten(finetuned, object_store, bucket, tmp_path) -> None:
    from hdap.deploy.registry import publish
    from hdap.errors import HdapError

    model_dir, _, _, _, _ = finetuned
    registry = f"s3://{bucket}/registry"
    files = {name: model_dir / name for name in ("architecture.json", "weights.pt")}
    uri = publish(object_store, registry, "resnet20", "r1", files, {"accuracy": {"onnxruntime": 98.0, "per_class": [float("nan")]}})
    manifest = verify_entry(object_store, uri)
    assert set(manifest["files"]) == set(files) and manifest["accuracy"] == {"onnxruntime": 98.0, "per_class": [None]}
    assert ArchitectureSpec.from_json(json.loads(object_store.get_bytes(f"{uri}/architecture.json"))).model == "resnet20"
    assert publish(object_store, registry, "resnet20", "r1", files, {}) == uri  # a retried step: the same files again
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(HdapError, match="never overwritten"):
        publish(object_store, registry, "resnet20", "r1", {"architecture.json": other}, {})
    assert verify_entry(object_store, uri)["files"] == manifest["files"]


@pytest.mark.skipif(tensorrt_unavailable_reason() is not None, reason=f"TensorRT build: {tensorrt_unavailable_reason()}")
def test_tensorrt_builds_a_strongly_typed_engine_that_agrees_with_onnx_runtime(finetuned, tmp_path) -> None:
    model_dir, _, _, data, _ = finetuned
    plain, _, amax = load_finetuned(model_dir, fake_quantized=False)
    graph = export_qdq_onnx(plain, amax, (1, 8, 8))
    engine = build_engine(graph, (1, 8, 8), data.test, timing_cache=tmp_path / "timing.cache")
    assert engine.plan and engine.latency_ms > 0 and (tmp_path / "timing.cache").exists()
    ours = onnx_predictions(inference_session(graph), data.test)
    assert float((engine.predictions == ours).float().mean()) >= 0.99


@pytest.mark.parametrize("gate, published", [(1.05, True), (2.0, False), (0.0, True)])
def test_the_latency_gate_refuses_a_model_slower_than_asked_in_any_state_and_leaves_the_registry_untouched(
        gate: float, published: bool, object_store, bucket, tmp_path) -> None:
    """The example model measured 2.375x with 1 thread and 1.9x on every core beside a busy process."""
    from types import SimpleNamespace

    from hdap.stages import StageContext
    from hdap.stages.build import BuildConfig, _Built, _publish
    from tests.examples import build_input, front_input

    summary = build_input(published=True)
    for name in ("model.onnx", "model.plan", "architecture.json", "quantization.json", "weights.pt"):
        (tmp_path / name).write_bytes(name.encode())
    built = _Built(SimpleNamespace(model="resnet8"), (3, 32, 32), summary.preprocessing, summary.accuracy, summary.size, summary.onnxruntime,
                   summary.tensorrt)
    config = BuildConfig(accuracy_tolerance=1.0, min_measured_speedup=gate, registry_uri=f"s3://{bucket}/registry")
    entry, result = _publish(config, built, front_input(), tmp_path, tmp_path, {"onnxruntime": summary.onnxruntime}, StageContext(object_store, f"s3://{bucket}/runs", "r1"))
    assert (entry is not None) == result.passed == published and result.refused_by_latency == (not published)
    assert built.tensorrt.published == published
    listed = [o.uri for o in object_store.list(f"s3://{bucket}/registry/")]
    if published:
        assert [s["state"] for s in verify_entry(object_store, entry)["onnxruntime"]["states"]] == ["1", "all+load"]
    else:
        assert listed == [] and "every core beside 1 busy process" in result.message and "1.90x" in result.message
        assert "short of the 2x build_min_measured_speedup" in result.message


@pytest.mark.parametrize("model_accuracy", [90.8, 80.0])
def test_a_tensorrt_engine_is_marked_published_only_when_the_model_is(model_accuracy: float, object_store, bucket, tmp_path) -> None:
    """The engine passes its own accuracy check here; it is in the registry only if the exported model passes too."""
    from types import SimpleNamespace

    from hdap.stages import StageContext
    from hdap.stages.build import BuildConfig, _Built, _publish
    from tests.examples import build_input, front_input

    summary = build_input(published=True)
    summary.accuracy.validation_onnxruntime = model_accuracy  # the gate reads the validation split
    for name in ("model.onnx", "model.plan", "architecture.json", "quantization.json", "weights.pt"):
        (tmp_path / name).write_bytes(name.encode())
    built = _Built(SimpleNamespace(model="resnet8"), (3, 32, 32), summary.preprocessing, summary.accuracy, summary.size, summary.onnxruntime,
                   summary.tensorrt)
    config = BuildConfig(accuracy_tolerance=0.5, registry_uri=f"s3://{bucket}/registry")
    entry, gate = _publish(config, built, front_input(), tmp_path, tmp_path, {}, StageContext(object_store, f"s3://{bucket}/runs", "r1"))
    published = model_accuracy > 90.0
    assert (entry is not None) == gate.passed == published
    assert built.tensorrt.published == published  # the engine (90.5%) passed its own check either way
    if published:
        assert "model.plan" in verify_entry(object_store, entry)["files"]

"""The run's HTML report: one standalone page with every figure inline, from the steps' summaries."""

from __future__ import annotations

import base64
import html
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa

from hdap.report.run import run_report_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REGISTRY_URI = "s3://registry/resnet8/20261120-1201"
GATE_PASS = "accuracy 90.50% is within 1 points of the uncompressed model's 91.00%"
GATE_REFUSAL = "accuracy 80.00% lost 11.00 points against the uncompressed model's 91.00%, more than the 1 allowed"
TENSORRT_REASON = "no CUDA device is visible"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Page:
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    return parsed


def png_images(parsed: _Page) -> list[bytes]:
    prefix = "data:image/png;base64,"
    return [base64.b64decode(image["src"].removeprefix(prefix)) for image in parsed.images if image["src"].startswith(prefix)]


def fleet_inputs() -> tuple[dict, pa.Table, pa.Table]:
    """200 devices in three clusters, apart on the two probes the scatter prefers."""
    rng = np.random.default_rng(7)
    labels = rng.choice(3, size=200, p=[0.5, 0.3, 0.2])
    conv = np.array([2.0, 3.5, 6.0])[labels] * rng.lognormal(0, 0.05, 200)
    launch = np.array([0.05, 0.08, 0.2])[labels] * rng.lognormal(0, 0.05, 200)
    ids = [f"dev-{i:04d}" for i in range(200)]
    features = pa.table({"device_id": ids, "probe_conv3x3_fp16_median_ms": conv, "probe_launch_median_ms": launch,
                         "temperature_c_median": rng.normal(50, 5, 200)})
    assignments = pa.table({"device_id": ids[::-1], "cluster": pa.array(labels[::-1], pa.int32())})  # any row order
    clusters = {"k": 3, "selection": "chosen by silhouette in [2, 8]", "clusters": [
        {"id": c, "size": int((labels == c).sum()), "weight": float((labels == c).mean()),
         "representative": ids[int(np.argmax(labels == c))],
         "centroid": {"probe_conv3x3_fp16_median_ms": float(np.median(conv[labels == c])),
                      "probe_launch_median_ms": float(np.median(launch[labels == c]))}}
        for c in range(3)]}
    return clusters, features, assignments


def front_input() -> dict:
    def point(target: float, accuracy: float, latency: float, pareto: bool, chosen: bool = False) -> dict:
        return {"setting": f"target {target:g}", "accuracy": accuracy, "fleet_latency_ms": latency,
                "cluster_latency_ms": [latency * 0.8, latency, latency * 1.6], "size_bits": 8e5 * target,
                "pareto": pareto, "chosen": chosen, "true_fleet_latency_ms": latency * 1.05}
    return {"model": "resnet8", "mode": "fleet", "objective": "latency", "baseline_accuracy": 91.0,
            "baseline_fleet_latency_ms": 2.0, "baseline_size_bits": 1.6e6, "default_precision": "fp16",
            "points": [point(0.3, 85.0, 0.7, True), point(0.5, 90.2, 1.0, True, chosen=True),
                       point(0.6, 89.0, 1.3, False), point(0.8, 90.8, 1.6, True)]}


def build_input(published: bool) -> dict:
    layers = [{"name": f"layer{i}.conv", "op": "conv3x3", "in_channels": 16, "out_channels": 16 if i % 2 else 10,
               "original_out_channels": 16, "weight_precision": "int8" if i % 3 else "fp16", "removed": i == 3}
              for i in range(6)]
    tensorrt = ({"built": True, "reason": "", "latency_ms": 0.2, "uncompressed_latency_ms": 0.5, "speedup": 2.5,
                 "accuracy": 90.5, "gpu": "NVIDIA H100", "version": "10.3"} if published
                else {"built": False, "reason": TENSORRT_REASON})
    return {
        "model": "resnet8", "version": "20261120-1201", "input_shape": [3, 32, 32],
        "published": published, "registry_uri": REGISTRY_URI if published else "",
        "gate": {"passed": published, "tolerance": 1.0,
                 "message": GATE_PASS if published else GATE_REFUSAL},
        "accuracy": {"uncompressed": 91.0, "before_finetune": 70.0, "fake_quantized": 90.6,
                     "onnxruntime": 90.5 if published else 80.0, "onnxruntime_agreement": 0.995,
                     "uncompressed_onnxruntime": 91.0, "per_class_before": [60.0 + i for i in range(10)],
                     "per_class_after": [88.0 + i / 5 for i in range(10)],
                     "per_class_uncompressed": [90.0 + i / 10 for i in range(10)]},
        "size": {"uncompressed_onnx_bytes": 320_000, "onnx_bytes": 95_000, "uncompressed_weight_bits": 2.5e6, "weight_bits": 6e5},
        "onnxruntime": {"latency_ms": 0.8, "uncompressed_latency_ms": 1.9, "speedup": 2.375, "threads": 1, "rounds": 200},
        "tensorrt": tensorrt,
        "clusters": [{"cluster": c, "weight": w, "predicted_before_ms": b, "predicted_after_ms": b / 2.1}
                     for c, w, b in ((0, 0.5, 1.5), (1, 0.3, 2.2), (2, 0.2, 3.1))],
        "fleet": {"predicted_before_ms": 2.03, "predicted_after_ms": 0.97, "predicted_speedup": 2.1,
                  "true_before_ms": 2.1, "true_after_ms": 1.05, "true_speedup": 2.0},
        "layers": layers,
    }


def test_published_report_is_a_standalone_page_with_every_figure_an_inline_png() -> None:
    clusters, features, assignments = fleet_inputs()
    page = run_report_html(build_input(published=True), front_input(), clusters, features, assignments)
    parsed = parse(page)
    assert page.startswith("<!doctype html>")
    assert "hdap: resnet8 for the fleet" in "".join(parsed.text)
    images = png_images(parsed)
    assert len(images) == len(parsed.images) >= 6  # the device scatter included
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    assert all(image["alt"] for image in parsed.images)


def test_published_report_names_its_registry_entry() -> None:
    clusters, features, assignments = fleet_inputs()
    page = run_report_html(build_input(published=True), front_input(), clusters, features, assignments)
    assert REGISTRY_URI in "".join(parse(page).text)


def test_refused_report_shows_the_gate_message_and_why_tensorrt_was_not_built() -> None:
    clusters, features, assignments = fleet_inputs()
    page = run_report_html(build_input(published=False), front_input(), clusters, features, assignments)
    text = " ".join(parse(page).text)
    assert "Refused by the quality gate" in text
    assert html.escape(GATE_REFUSAL) in page
    assert TENSORRT_REASON in text
    assert "s3://" not in text


def test_report_without_device_features_leaves_out_only_the_device_scatter() -> None:
    clusters, _, _ = fleet_inputs()
    with_devices = parse(run_report_html(build_input(published=True), front_input(), *fleet_inputs()))
    without = parse(run_report_html(build_input(published=True), front_input(), clusters, None, None))
    images = png_images(without)
    assert len(images) == len(with_devices.images) - 1 >= 5
    assert all(image.startswith(PNG_SIGNATURE) for image in images)


def test_device_scatter_falls_back_to_the_first_two_probe_columns() -> None:
    clusters, features, assignments = fleet_inputs()
    features = features.rename_columns(["device_id", "probe_matmul_int8_median_ms", "probe_memcpy_median_ms", "temperature_c_median"])
    page = run_report_html(build_input(published=True), front_input(), clusters, features, assignments)
    assert any("scatter of devices" in image["alt"] for image in parse(page).images)


def test_missing_optional_keys_and_nan_read_as_dashes() -> None:
    build = build_input(published=False)
    for key in ("true_before_ms", "true_after_ms", "true_speedup"):
        del build["fleet"][key]
    build["accuracy"]["onnxruntime"] = float("nan")
    build["accuracy"]["per_class_before"] = []
    build["onnxruntime"]["speedup"] = float("nan")
    front = front_input()
    for point in front["points"]:
        del point["true_fleet_latency_ms"]
    clusters, features, assignments = fleet_inputs()
    conv = features["probe_conv3x3_fp16_median_ms"].to_numpy().copy()
    conv[:10] = np.nan
    features = features.set_column(1, "probe_conv3x3_fp16_median_ms", pa.array(conv))
    page = run_report_html(build, front, clusters, features, assignments)
    text = "".join(parse(page).text)
    assert "nan" not in text.lower()
    assert "–" in text
    assert "simulated true" not in page
    assert all(image.startswith(PNG_SIGNATURE) for image in png_images(parse(page)))


def test_text_from_the_inputs_is_escaped() -> None:
    build = build_input(published=False)
    build["model"] = "<script>alert(1)</script>"
    build["gate"]["message"] = "lost <b>too much</b> & more"
    clusters, features, assignments = fleet_inputs()
    page = run_report_html(build, front_input(), clusters, features, assignments)
    assert "<script>" not in page and "<b>too much</b>" not in page
    assert "&lt;script&gt;" in page and "lost &lt;b&gt;too much&lt;/b&gt; &amp; more" in page


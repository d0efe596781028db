"""The run's HTML report: one standalone page with every figure inline, from the steps' summaries."""

from __future__ import annotations

import base64
import html
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa

from hdap.report.run import run_report_html
from tests.examples import GATE_REFUSAL, REGISTRY_URI, TENSORRT_REASON, build_input, fleet_inputs, front_input

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def test_missing_optional_figures_and_nan_read_as_dashes() -> None:
    build = build_input(published=False)
    build.fleet.true_before_ms = build.fleet.true_after_ms = build.fleet.true_speedup = None
    build.accuracy.onnxruntime = float("nan")
    build.accuracy.per_class_before = []
    build.onnxruntime.speedup = float("nan")
    front = front_input()
    for point in front.points:
        point.true_fleet_latency_ms = None
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
    build.model = "<script>alert(1)</script>"
    build.gate.message = "lost <b>too much</b> & more"
    clusters, features, assignments = fleet_inputs()
    page = run_report_html(build, front_input(), clusters, features, assignments)
    assert "<script>" not in page and "<b>too much</b>" not in page
    assert "&lt;script&gt;" in page and "lost &lt;b&gt;too much&lt;/b&gt; &amp; more" in page


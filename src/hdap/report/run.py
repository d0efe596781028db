"""The whole run on one page: the fleet, what compression bought it, and whether the model shipped.

The last pipeline stage publishes this page. It is built from the stages' artifacts (`BuildSummary`,
`Front`, `ClusterSummary` and the device tables), so it can be drawn again from a finished run alone.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.patches import Patch

from hdap.report.figures import PAGE_STYLE, PALETTE, figure, to_img_tag
from hdap.report.fleet import cluster_shares
from hdap.report.search import pareto_plot
from hdap.stages.build import BuildAccuracy, BuildSummary, LayerSummary, StateTiming
from hdap.stages.cluster import ClusterSummary
from hdap.stages.search import Front

SCATTER_POINTS = 5000  # more points only blur the picture and bloat the page
SCATTER_AXES = ("probe_conv3x3_fp16_median_ms", "probe_launch_median_ms")  # compute-bound against overhead-bound
BEFORE = "#aaa"
REMOVED = "#666"

RUN_STYLE = """
.band { display: flex; flex-wrap: wrap; gap: 0.8rem; margin: 1rem 0; }
.card { flex: 1 1 10rem; background: #f4f5f7; border-radius: 0.5rem; padding: 0.7rem 1rem; }
.big { font-size: 1.8rem; font-weight: 600; line-height: 1.25; }
.verdict { padding: 0.8rem 1rem; border-radius: 0.5rem; font-size: 1.05rem; border-left: 6px solid #888; background: #f4f5f7; }
.verdict.published { border-color: #2e7d32; background: #e8f5e9; }
.verdict.refused { border-color: #c62828; background: #fdecea; font-size: 1.2rem; }
"""


def _finite(value: float | None) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    """A number for the page; missing or NaN reads as a dash rather than 'nan'."""
    return f"{value:{spec}}{unit}" if _finite(value) else "–"


def _kb(size_bytes: float) -> str:
    return _fmt(size_bytes / 1e3, ",.1f", " kB")


def _card(big: str, caption: str) -> str:
    return f'<div class="card"><div class="big">{html.escape(big)}</div><div class="note">{html.escape(caption)}</div></div>'


# -- the fleet -------------------------------------------------------------------------------
def _scatter_axes(features: pa.Table) -> tuple[str, str] | None:
    """The preferred pair of probes, else the first two probe medians, else any two probe columns."""
    names = features.column_names
    if all(a in names for a in SCATTER_AXES):
        return SCATTER_AXES
    for candidates in ([n for n in names if n.startswith("probe_") and n.endswith("_median_ms")],
                       [n for n in names if n.startswith("probe_")]):
        if len(candidates) >= 2:
            return candidates[0], candidates[1]
    return None


def _axis_label(feature: str) -> str:
    return feature.removeprefix("probe_").replace("_median_ms", " median (ms)").replace("_", " ")


def device_scatter(clusters: ClusterSummary, features: pa.Table, assignments: pa.Table) -> str:
    """Devices on two probe latencies, coloured by cluster: the clusters should be visibly apart."""
    axes = _scatter_axes(features)
    if axes is None:
        return ""
    rows = np.sort(np.random.default_rng(0).choice(features.num_rows, min(features.num_rows, SCATTER_POINTS), replace=False))
    sample = features.take(pa.array(rows))
    where = pc.index_in(sample["device_id"], value_set=assignments["device_id"].combine_chunks())
    labels = assignments["cluster"].take(where).fill_null(-1).to_numpy(zero_copy_only=False)
    x, y = (sample[a].to_numpy(zero_copy_only=False).astype(float) for a in axes)
    fig, ax = figure(6.4, 4.4)
    for c in clusters.clusters:
        shown = (labels == c.id) & np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[shown], y[shown], s=6, alpha=0.45, color=PALETTE[c.id % 10], label=f"cluster {c.id}: {100 * c.weight:.1f}% of fleet")
    centroids = [c.centroid for c in clusters.clusters if all(_finite(c.centroid.get(a)) for a in axes)]
    if centroids:
        ax.scatter([c[axes[0]] for c in centroids], [c[axes[1]] for c in centroids], marker="X", s=110,
                   color="black", edgecolor="white", label="cluster median")
    ax.set_xlabel(_axis_label(axes[0]))
    ax.set_ylabel(_axis_label(axes[1]))
    ax.set_title(f"Devices by probe latency ({len(rows):,} of {features.num_rows:,} shown)")
    legend = ax.legend(fontsize=8)
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    return to_img_tag(fig, "scatter of devices by probe latency, coloured by cluster")


# -- what compression bought -----------------------------------------------------------------
def cluster_latency(build: BuildSummary) -> str:
    """Predicted latency per cluster and fleet-weighted: a model tuned for one cluster shows up here."""
    rows = [(f"cluster {c.cluster}\n{100 * c.weight:.0f}% of fleet", c.predicted_before_ms, c.predicted_after_ms,
             PALETTE[c.cluster % 10]) for c in build.clusters]
    rows.append(("fleet\n(weighted)", build.fleet.predicted_before_ms, build.fleet.predicted_after_ms, "#444"))
    names, before, after, colors = zip(*rows)
    at = np.arange(len(rows))
    fig, ax = figure(6.4, 3.8)
    ax.bar(at - 0.2, before, 0.4, color=BEFORE)
    ax.bar(at + 0.2, after, 0.4, color=colors)
    for i, (b, a) in enumerate(zip(before, after)):
        if _finite(b) and _finite(a) and a > 0:
            ax.annotate(f"{b / a:.2f}×", (i, max(b, a)), textcoords="offset points", xytext=(0, 4), ha="center",
                        fontsize=9, fontweight="bold")
    ax.set_xticks(at, names, fontsize=8)
    ax.set_ylabel("predicted latency (ms)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.set_title("Predicted latency, uncompressed (grey) and compressed")
    return to_img_tag(fig, "grouped bars of predicted latency per cluster before and after compression")


def per_class_accuracy(accuracy: BuildAccuracy) -> str:
    """Which classes fine-tuning recovered, and which the compression still costs."""
    series = [("uncompressed", accuracy.per_class_uncompressed, BEFORE), ("before fine-tune", accuracy.per_class_before, PALETTE[1]),
              ("after fine-tune", accuracy.per_class_after, PALETTE[0])]
    classes = max(len(values) for _, values, _ in series)
    if classes == 0:
        return ""
    fig, ax = figure(max(6.4, 0.35 * classes), 3.8)
    width = 0.8 / len(series)
    for i, (label, values, color) in enumerate(series):
        if classes <= 20:
            ax.bar(np.arange(len(values)) + (i - 1) * width, values, width, color=color, label=label)
        else:  # too many classes for bars
            ax.plot(np.arange(len(values)), values, "o", markersize=3, color=color, label=label)
    if classes <= 20:
        ax.set_xticks(np.arange(classes))
    ax.set_xlabel("class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 115)  # room for the legend above 100%
    ax.set_title("Accuracy per class")
    ax.legend(fontsize=8, ncols=3, loc="upper center")
    return to_img_tag(fig, "grouped bars of accuracy per class before fine-tuning, after, and uncompressed")


def layer_channels(layers: list[LayerSummary]) -> str:
    """Channels kept per layer against the original width, coloured by weight precision."""
    if not layers:
        return ""
    precisions = sorted({layer.weight_precision for layer in layers if not layer.removed})
    colors = {p: PALETTE[i % 10] for i, p in enumerate(precisions)}
    at = np.arange(len(layers))
    fig, ax = figure(6.4, 1.2 + 0.24 * len(layers))
    ax.barh(at, [layer.original_out_channels for layer in layers], 0.8, color="none", edgecolor="#999", linewidth=0.8)
    ax.barh(at, [0 if layer.removed else layer.out_channels for layer in layers], 0.8,
            color=[colors.get(layer.weight_precision, BEFORE) for layer in layers])
    for i, layer in enumerate(layers):
        if layer.removed:
            ax.barh(i, layer.original_out_channels, 0.8, color="none", hatch="///", edgecolor=REMOVED, linewidth=0)
            ax.text(layer.original_out_channels, i, " removed", va="center", fontsize=7, color=REMOVED)
    ax.set_yticks(at, [layer.name for layer in layers], fontsize=7)
    ax.invert_yaxis()  # the first layer on top
    ax.set_xlabel("output channels")
    ax.set_title("Channels kept per layer (outline: original width)")
    handles = [Patch(color=colors[p], label=f"{p} weights") for p in precisions]
    handles.append(Patch(facecolor="none", hatch="///", edgecolor=REMOVED, label="removed"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside, never over, the bars
    return to_img_tag(fig, "horizontal bars of output channels kept per layer, coloured by weight precision")


# -- the page --------------------------------------------------------------------------------
def _verdict(build: BuildSummary) -> str:
    message = html.escape(build.gate.message.rstrip("."))  # the page adds its own full stop
    if build.published:
        return (f'<p class="verdict published"><b>Published</b> to <code>{html.escape(build.registry_uri)}</code>.'
                f'<br><span class="note">Quality gate passed: {message}.</span></p>')
    if not build.gate.passed:
        return f'<p class="verdict refused"><b>Refused by the {build.gate.name} gate:</b> {message}.</p>'
    return f'<p class="verdict"><b>Not published</b> (the quality gate passed: {message}).</p>'


def _headline(build: BuildSummary) -> str:
    fleet, accuracy, size, ort, trt = build.fleet, build.accuracy, build.size, build.onnxruntime, build.tensorrt
    cards = [_card(_fmt(fleet.predicted_speedup, ".2f", "×"),
                   f"fleet-weighted latency speed-up, predicted: {_fmt(fleet.predicted_before_ms, '.3f')} → "
                   f"{_fmt(fleet.predicted_after_ms, '.3f')} ms")]
    if fleet.true_speedup is not None:
        cards.append(_card(_fmt(fleet.true_speedup, ".2f", "×"),
                           f"fleet-weighted speed-up, simulated true: {_fmt(fleet.true_before_ms, '.3f')} → "
                           f"{_fmt(fleet.true_after_ms, '.3f')} ms"))
    cards += [
        _card(f"{_fmt(accuracy.uncompressed_onnxruntime, '.1f', '%')} → {_fmt(accuracy.onnxruntime, '.1f', '%')}",
              "test accuracy, uncompressed → compressed, both in ONNX Runtime"),
        _card(f"{_kb(size.uncompressed_onnx_bytes)} → {_kb(size.onnx_bytes)}", "ONNX model size, uncompressed → compressed"),
        _card(_fmt(ort.speedup, ".2f", "×"), f"ONNX Runtime speed-up measured on this machine, fleet-weighted over "
              f"{len(ort.states)} CPU state{'s' if len(ort.states) > 1 else ''} (slowest state: "
              f"{_fmt(ort.slowest.speedup, '.2f', '×')})"),
        _card(_fmt(trt.speedup, ".2f", "×"), f"TensorRT speed-up on {trt.gpu or 'the GPU'}") if trt.built
        else _card("TensorRT not built", trt.reason),
    ]
    return f'<div class="band">{"".join(cards)}</div>'


def _predicted(state: StateTiming) -> str:
    if state.prediction_error is None:
        return ""
    return (f"<br><span class='note'>the state's surrogate predicted {_fmt(state.predicted_uncompressed_latency_ms, '.3f')} → "
            f"{_fmt(state.predicted_latency_ms, '.3f')} ms ({100 * state.prediction_error:+.0f}% against the measurement)</span>")


def _measured_table(build: BuildSummary) -> str:
    ort, trt, accuracy = build.onnxruntime, build.tensorrt, build.accuracy
    rows = [f"<tr><td>ONNX Runtime, {html.escape(s.description)} ({100 * s.share:.0f}% of the fleet, {ort.rounds} rounds)"
            f"{_predicted(s)}</td><td>{_fmt(s.uncompressed_latency_ms, '.3f')}</td><td>{_fmt(s.latency_ms, '.3f')}</td>"
            f"<td>{_fmt(s.speedup, '.2f', '×')}</td><td>{_fmt(accuracy.onnxruntime, '.2f', '%')}</td></tr>" for s in ort.states]
    if len(ort.states) > 1:
        rows.append(f"<tr><td>ONNX Runtime, fleet-weighted</td><td>{_fmt(ort.uncompressed_latency_ms, '.3f')}</td>"
                    f"<td>{_fmt(ort.latency_ms, '.3f')}</td><td>{_fmt(ort.speedup, '.2f', '×')}</td><td></td></tr>")
    if trt.built:
        engine = html.escape(f"TensorRT {trt.version}, {trt.gpu or 'GPU'}")
        rows.append(f"<tr><td>{engine}</td><td>{_fmt(trt.uncompressed_latency_ms, '.3f')}</td>"
                    f"<td>{_fmt(trt.latency_ms, '.3f')}</td><td>{_fmt(trt.speedup, '.2f', '×')}</td>"
                    f"<td>{_fmt(trt.accuracy, '.2f', '%')}</td></tr>")
    else:
        rows.append(f"<tr><td>TensorRT</td><td colspan=4>not built: {html.escape(trt.reason)}</td></tr>")
    return ("<table><tr><th>engine (batch 1)</th><th>uncompressed (ms)</th><th>compressed (ms)</th><th>speed-up</th>"
            f"<th>accuracy</th></tr>{''.join(rows)}</table>"
            f'<p class="note">The exported model predicts the same class as the fine-tuned PyTorch model on '
            f"{_fmt(100 * accuracy.onnxruntime_agreement, '.1f', '%')} of test images.</p>")


def _accuracy_table(build: BuildSummary) -> str:
    accuracy, size = build.accuracy, build.size
    stages = [("uncompressed (PyTorch)", accuracy.uncompressed), ("uncompressed (ONNX Runtime)", accuracy.uncompressed_onnxruntime),
              ("pruned and quantized, before fine-tune", accuracy.before_finetune),
              ("after quantization-aware fine-tune", accuracy.fake_quantized), ("exported (ONNX Runtime)", accuracy.onnxruntime)]
    rows = "".join(f"<tr><td>{name}</td><td>{_fmt(value, '.2f', '%')}</td></tr>" for name, value in stages)
    return (f"<table><tr><th>stage</th><th>test accuracy</th></tr>{rows}</table>"
            f'<p class="note">Weight memory: {_kb(size.uncompressed_weight_bits / 8)} → {_kb(size.weight_bits / 8)}. The '
            f"quality gate (tolerance {_fmt(build.gate.tolerance, 'g')} points) compares the validation split: exported "
            f"{_fmt(accuracy.validation_onnxruntime, '.2f', '%')} against the uncompressed model's "
            f"{_fmt(accuracy.validation_uncompressed, '.2f', '%')}; the test split only reports.</p>")


def run_report_html(build: BuildSummary, front: Front, clusters: ClusterSummary, features: pa.Table | None,
                    assignments: pa.Table | None) -> str:
    """The run's page; without device features it leaves out the device scatter."""
    scatter = device_scatter(clusters, features, assignments) if features is not None and assignments is not None else ""
    model = html.escape(build.model)
    shape = "×".join(str(d) for d in build.input_shape)
    chosen = front.chosen[0] if front.chosen else None
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hdap: {model} for the fleet</title><style>{PAGE_STYLE}{RUN_STYLE}</style></head>
<body>
<h1>hdap: {model} for the fleet</h1>
<p class="note">Version {html.escape(build.version)}, input {shape}; {sum(c.size for c in clusters.clusters):,} devices
in {clusters.k} clusters (k {html.escape(clusters.selection)}); search mode {html.escape(front.mode.value)},
objective {html.escape(front.objective.value)}{f", chose {html.escape(chosen.setting.label)}" if chosen else ""}.</p>
{_verdict(build)}
{_headline(build)}
<h2>The fleet</h2>
<div class="grid">{scatter}{cluster_shares(clusters)}</div>
{"" if scatter else '<p class="note">Device features were not available: no device scatter.</p>'}
<h2>What compression buys each cluster</h2>
<div class="grid">{cluster_latency(build)}{pareto_plot(front)}</div>
<h2>Accuracy</h2>
<div class="grid">{per_class_accuracy(build.accuracy)}<div>{_accuracy_table(build)}</div></div>
<h2>The compressed architecture</h2>
{layer_channels(build.layers)}
<h2>Measured latency</h2>
{_measured_table(build)}
</body></html>
"""

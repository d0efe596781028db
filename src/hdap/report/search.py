"""The search's report: the Pareto front, the chosen point, and what it does to each cluster.

Built from the stage's artifacts alone (`Front` and the chosen architecture's spec), so it can be
drawn again from a finished run.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from hdap.report.figures import PAGE_STYLE, PALETTE, figure, to_img_tag
from hdap.stages.search import Front, FrontPoint

if TYPE_CHECKING:
    from hdap.compress.spec import ArchitectureSpec


def pareto_plot(front: Front) -> str:
    """The trade-off the search found, and where the chosen point sits on it."""
    points = front.points
    if not points:
        return ""
    fig, ax = figure(6.4, 4.4)
    sizes = np.array([p.size_bits for p in points], dtype=float)
    area = 20 + 180 * sizes / max(np.nanmax(sizes, initial=1.0), 1.0)
    for pareto, color, label in ((False, "#bbb", "dominated"), (True, PALETTE[0], "Pareto front")):
        chosen = [i for i, p in enumerate(points) if p.pareto == pareto]
        ax.scatter([points[i].fleet_latency_ms for i in chosen], [points[i].accuracy for i in chosen], s=area[chosen],
                   color=color, alpha=0.85, edgecolor="#333", linewidth=0.5, label=label)
    line = sorted((p for p in points if p.pareto), key=lambda p: p.fleet_latency_ms)
    ax.plot([p.fleet_latency_ms for p in line], [p.accuracy for p in line], color=PALETTE[0], linewidth=1)
    ax.scatter([front.baseline_fleet_latency_ms], [front.baseline_accuracy], marker="s", s=70, color="#444",
               label=f"uncompressed ({front.default_precision})")
    ax.scatter([p.fleet_latency_ms for p in front.chosen], [p.accuracy for p in front.chosen], marker="*", s=300,
               color=PALETTE[3], edgecolor="#333", zorder=5, label="chosen")
    for p in points:
        ax.annotate(p.setting.short, (p.fleet_latency_ms, p.accuracy), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("fleet-weighted latency predicted by the surrogates (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Search ({front.mode.value}): accuracy against fleet latency\nlabel: {points[0].setting.kind.value}; "
                 "marker area: weight memory", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return to_img_tag(fig, "Pareto front of accuracy against fleet-weighted latency, with the chosen point")


def cluster_plot(front: Front) -> str:
    if len(front.chosen) != 1:
        return ""
    chosen = front.chosen[0]
    fig, ax = figure(6.0, 3.4)
    clusters = np.arange(len(chosen.cluster_latency_ms))
    ax.bar(clusters - 0.2, np.array(front.baseline_cluster_latency_ms), width=0.4, color="#999", label="uncompressed")
    ax.bar(clusters + 0.2, chosen.cluster_latency_ms, width=0.4, color=PALETTE[0], label="chosen")
    ax.set_xticks(clusters, [f"cluster {c}" for c in clusters])
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("Per-cluster latency, before and after")
    ax.legend(fontsize=8)
    return to_img_tag(fig, "per-cluster latency of the uncompressed and the chosen model")


def _point_row(front: Front, p: FrontPoint, truth: bool) -> str:
    true = f"<td>{p.true_fleet_latency_ms if p.true_fleet_latency_ms is not None else float('nan'):.4f}</td>" if truth else ""
    return (f"<tr{' class=chosen' if p.chosen else ''}><td>{html.escape(p.setting.label)}</td><td>{html.escape(p.optimised_for)}</td>"
            f"<td>{p.validation_accuracy:.2f}%</td><td>{p.accuracy:.2f}%</td><td>{p.fleet_latency_ms:.4f}</td>"
            f"<td>{front.baseline_fleet_latency_ms / p.fleet_latency_ms:.2f}x</td><td>{p.size_bits / 8e3:.1f}</td>"
            f"<td>{p.layers_removed}</td>{true}<td>{'yes' if p.pareto else ''}</td></tr>")


def _full_test(front: Front) -> str:
    full = front.baseline_full_test_accuracy
    return "" if full is None else f" ({full:.2f}% on the whole test split, which half-validates)"


def _validation_note(front: Front) -> str:
    return {"train": "held out of the training images", "test": "half the test images (seeded, stratified), the other half "
            "being the test split", "given": "the dataset's own"}.get(front.data.validation.value, front.data.validation.value)


def search_report_html(front: Front, chosen_spec: ArchitectureSpec) -> str:
    """The page, from the front and the (first) chosen architecture's spec."""
    truth = any(p.true_fleet_latency_ms is not None for p in front.points)
    rows = "".join(_point_row(front, p, truth) for p in front.points)
    true_header = "<th>true fleet mean (ms)</th>" if truth else ""
    layers = "".join(
        f"<tr><td>{html.escape(layer.name)}</td><td>{layer.op}</td>"
        + ("<td colspan=3>removed with its residual branch</td>" if layer.removed else
           f"<td>{layer.in_channels}</td><td>{layer.out_channels}</td><td>{layer.weight_precision}</td>")
        + "</tr>"
        for layer in chosen_spec.layers
    )
    chosen = front.chosen[0]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hdap: search</title><style>{PAGE_STYLE} tr.chosen td {{ font-weight: bold; }}</style></head>
<body><h1>Joint pruning and mixed-precision search: {html.escape(front.model)}, mode {html.escape(front.mode.value)}</h1>
<p>Uncompressed: {front.baseline_validation_accuracy:.2f}% on the validation split, {front.baseline_accuracy:.2f}% on the
test split{_full_test(front)}; {front.baseline_fleet_latency_ms:.4f} ms fleet-weighted at {front.default_precision}. Chosen (the
lowest fleet latency within the accuracy tolerance on the validation split): {chosen.validation_accuracy:.2f}% validation,
{chosen.accuracy:.2f}% test, {chosen.fleet_latency_ms:.4f} ms ({front.baseline_fleet_latency_ms / chosen.fleet_latency_ms:.2f}x
lower). {front.distinct_architectures} distinct architectures, {front.pareto_points} of them on the Pareto front.</p>
<p class="note">Splits: the validation split is {_validation_note(front)}; it decides the choice and the Pareto
marking. The test split only reports. Preprocessing: {html.escape(front.data.preprocessing.describe())}.</p>
{pareto_plot(front)}
{cluster_plot(front)}
<h2>Every point</h2>
<table><tr><th>search</th><th>optimised for</th><th>validation accuracy</th><th>test accuracy</th><th>fleet latency (ms)</th><th>speed-up</th><th>weights (kB)</th>
<th>layers removed</th>{true_header}<th>Pareto</th></tr>{rows}</table>
<h2>The chosen architecture</h2>
<table><tr><th>layer</th><th>op</th><th>in</th><th>out</th><th>precision</th></tr>{layers}</table>
</body></html>
"""

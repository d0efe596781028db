"""The search's report: the Pareto front, the chosen point, and what it does to each cluster."""

from __future__ import annotations

import html

import numpy as np

from hdap.compress.search import SearchPoint, SearchResult
from hdap.report.figures import PAGE_STYLE, PALETTE, figure, to_img_tag


def _chosen(result: SearchResult) -> list[SearchPoint]:
    return result.chosen if isinstance(result.chosen, list) else [result.chosen]


def pareto_plot(result: SearchResult) -> str:
    fig, ax = figure(6.0, 4.2)
    points = result.points
    sizes = np.array([p.size_bits for p in points])
    area = 20 + 180 * sizes / max(sizes.max(), 1)
    for pareto, color, label in ((False, "#bbb", "dominated"), (True, PALETTE[0], "Pareto front")):
        chosen = [i for i, p in enumerate(points) if p.pareto == pareto]
        ax.scatter([points[i].fleet_latency_ms for i in chosen], [points[i].accuracy for i in chosen], s=area[chosen],
                   color=color, alpha=0.8, label=label, edgecolor="#333", linewidth=0.5)
    front = sorted((p for p in points if p.pareto), key=lambda p: p.fleet_latency_ms)
    ax.plot([p.fleet_latency_ms for p in front], [p.accuracy for p in front], color=PALETTE[0], linewidth=1)
    ax.scatter([result.baseline_fleet_latency_ms], [result.baseline_accuracy], marker="s", s=60, color="#444",
               label=f"uncompressed ({result.default_precision})")
    for p in _chosen(result):
        ax.scatter([p.fleet_latency_ms], [p.accuracy], marker="*", s=260, color=PALETTE[3], edgecolor="#333", zorder=5)
    ax.scatter([], [], marker="*", s=120, color=PALETTE[3], label="chosen")
    for p in points:
        ax.annotate(f"{p.setting[1]:g}", (p.fleet_latency_ms, p.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("fleet-weighted latency predicted by the surrogates (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against fleet latency (label: target; marker area: weight memory)")
    ax.legend(fontsize=8, loc="lower right")
    return to_img_tag(fig, "Pareto front of accuracy against fleet-weighted latency")


def cluster_plot(result: SearchResult) -> str:
    chosen = _chosen(result)[0] if not isinstance(result.chosen, list) else None
    if chosen is None:
        return ""
    fig, ax = figure(6.0, 3.4)
    clusters = np.arange(len(chosen.cluster_latency_ms))
    baseline = np.array(result.baseline_cluster_latency_ms)
    ax.bar(clusters - 0.2, baseline, width=0.4, color="#999", label="uncompressed")
    ax.bar(clusters + 0.2, chosen.cluster_latency_ms, width=0.4, color=PALETTE[0], label="chosen")
    ax.set_xticks(clusters, [f"cluster {c}" for c in clusters])
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("Per-cluster latency, before and after")
    ax.legend(fontsize=8)
    return to_img_tag(fig, "per-cluster latency of the uncompressed and the chosen model")


def search_report_html(result: SearchResult, model: str, mode: str, true_latency: dict[int, float] | None = None) -> str:
    chosen = _chosen(result)
    chosen_ids = {id(p) for p in chosen}
    true_latency = true_latency or {}
    def row(index: int, p: SearchPoint) -> str:
        true = f"<td>{true_latency.get(index, float('nan')):.4f}</td>" if true_latency else ""
        return (f"<tr{' class=chosen' if id(p) in chosen_ids else ''}><td>{html.escape(p.label)}</td><td>{html.escape(p.optimised_for)}</td>"
                f"<td>{p.accuracy:.2f}%</td><td>{p.fleet_latency_ms:.4f}</td>"
                f"<td>{result.baseline_fleet_latency_ms / p.fleet_latency_ms:.2f}x</td><td>{p.size_bits / 8e3:.1f}</td>"
                f"<td>{sum(layer.removed for layer in p.spec.layers)}</td>{true}<td>{'yes' if p.pareto else ''}</td></tr>")

    rows = "".join(row(i, p) for i, p in enumerate(result.points))
    true_header = "<th>true fleet mean (ms)</th>" if true_latency else ""
    layers = "".join(
        f"<tr><td>{html.escape(layer.name)}</td><td>{layer.op}</td>"
        + ("<td colspan=3>removed with its residual branch</td>" if layer.removed else
           f"<td>{layer.in_channels}</td><td>{layer.out_channels}</td><td>{layer.weight_precision}</td>")
        + "</tr>"
        for layer in chosen[0].spec.layers
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hdap: search</title><style>{PAGE_STYLE} tr.chosen td {{ font-weight: bold; }}</style></head>
<body><h1>Joint pruning and mixed-precision search: {html.escape(model)}, mode {html.escape(mode)}</h1>
<p>Uncompressed: {result.baseline_accuracy:.2f}% accuracy, {result.baseline_fleet_latency_ms:.4f} ms fleet-weighted at
{result.default_precision}. Chosen (lowest fleet latency within the accuracy tolerance): {chosen[0].accuracy:.2f}%,
{chosen[0].fleet_latency_ms:.4f} ms ({result.baseline_fleet_latency_ms / chosen[0].fleet_latency_ms:.2f}x lower).</p>
{pareto_plot(result)}
{cluster_plot(result)}
<h2>Every point</h2>
<table><tr><th>search</th><th>optimised for</th><th>accuracy</th><th>fleet latency (ms)</th><th>speed-up</th><th>weights (kB)</th>
<th>layers removed</th>{true_header}<th>Pareto</th></tr>{rows}</table>
<h2>The chosen architecture</h2>
<table><tr><th>layer</th><th>op</th><th>in</th><th>out</th><th>precision</th></tr>{layers}</table>
</body></html>
"""

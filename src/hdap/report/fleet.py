"""The fleet's picture: its clusters, their shares, and how each cluster performs."""

from __future__ import annotations

import html

import numpy as np

from hdap.fleet.cluster import Clustering
from hdap.stages.cluster import ClusterSummary
from hdap.report.figures import PAGE_STYLE, PALETTE, figure, to_img_tag


def _label(feature: str) -> str:
    return feature.removeprefix("probe_").removesuffix("_median_ms").replace("_median", "")


def cluster_scatter(clustering: Clustering) -> str:
    fig, ax = figure()
    for cid in range(clustering.k):
        points = clustering.projection[clustering.projection_labels == cid]
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, color=PALETTE[cid % 10], label=f"cluster {cid}")
    reps = clustering.projection_representatives
    ax.scatter(reps[:, 0], reps[:, 1], marker="*", s=220, color="black", edgecolors="white", label="representative")
    ax.set_title("Devices by performance (first two principal axes)")
    ax.set_xlabel("axis 1")
    ax.set_ylabel("axis 2")
    legend = ax.legend(fontsize=8)
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    return to_img_tag(fig, "scatter of devices coloured by cluster")


def cluster_shares(clusters: ClusterSummary) -> str:
    """How much of the fleet each cluster is (the weight its latency carries in the fleet objective)."""
    fig, ax = figure(5, 3.4)
    ids = [c.id for c in clusters.clusters]
    bars = ax.bar(ids, [100 * c.weight for c in clusters.clusters], color=[PALETTE[i % 10] for i in ids])
    ax.bar_label(bars, [f"{100 * c.weight:.1f}%\n{c.size:,} devices" for c in clusters.clusters], fontsize=8)
    ax.set_xticks(ids, [f"cluster {i}" for i in ids])
    ax.set_ylabel("share of fleet (%)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # room for the two-line labels
    ax.set_title(f"Fleet share per cluster (k={clusters.k})")
    return to_img_tag(fig, "bar chart of fleet share per cluster")


def cluster_latency(clustering: Clustering) -> str:
    """Each probe's latency per cluster, relative to the fastest cluster."""
    probes = [f for f in clustering.features if f.startswith("probe_")]
    fig, ax = figure(7, 3.6)
    width = 0.8 / clustering.k
    base = np.array([min(c.centroid[p] for c in clustering.clusters) for p in probes])
    for cid, cluster in enumerate(clustering.clusters):
        values = np.array([cluster.centroid[p] for p in probes]) / base
        ax.bar(np.arange(len(probes)) + cid * width, values, width, color=PALETTE[cid % 10], label=f"cluster {cid}")
    ax.set_xticks(np.arange(len(probes)) + 0.4 - width / 2, [_label(p) for p in probes], rotation=20, fontsize=8)
    ax.axhline(1.0, color="#999", linewidth=0.8)
    ax.set_ylabel("latency / fastest cluster")
    ax.set_title("Probe latency per cluster")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
    ax.legend(fontsize=8, ncols=min(clustering.k, 5), loc="upper left")
    return to_img_tag(fig, "grouped bars of probe latency per cluster")


def silhouette_curve(clustering: Clustering) -> str:
    fig, ax = figure(5, 3.2)
    ks = sorted(clustering.scores)
    ax.plot(ks, [clustering.scores[k] for k in ks], marker="o", color=PALETTE[0])
    ax.axvline(clustering.k, color=PALETTE[3], linestyle="--", label=f"chosen k={clustering.k}")
    ax.set_xlabel("k")
    ax.set_ylabel("silhouette score")
    ax.set_title("Choosing the number of clusters")
    ax.legend(fontsize=8)
    return to_img_tag(fig, "silhouette score per k")


def cluster_table(clustering: Clustering) -> str:
    probes = [f for f in clustering.features]
    head = "".join(f"<th>{html.escape(_label(p))}</th>" for p in probes)
    rows = []
    for c in clustering.clusters:
        cells = "".join(f"<td>{c.centroid[p]:.4g}</td>" for p in probes)
        rows.append(f"<tr><td>{c.id}</td><td>{c.size:,}</td><td>{100 * c.weight:.1f}%</td><td>{html.escape(c.representative)}</td>{cells}</tr>")
    return (
        f"<table><tr><th>cluster</th><th>devices</th><th>share</th><th>representative</th>{head}</tr>"
        + "".join(rows) + "</table>"
        + '<p class="note">Cluster medians: probe latencies in ms, memory bandwidth in GB/s.</p>'
    )


def clustering_report_html(clustering: Clustering) -> str:
    plots = [cluster_scatter(clustering), cluster_shares(clustering.summary()), cluster_latency(clustering)]
    if clustering.scores:
        plots.append(silhouette_curve(clustering))
    devices = sum(c.size for c in clustering.clusters)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hdap: fleet clusters</title><style>{PAGE_STYLE}</style></head>
<body>
<h1>Fleet clusters</h1>
<p>{devices:,} devices in {clustering.k} performance clusters; k {html.escape(clustering.selection)}
({html.escape(clustering.algorithm)} on {len(clustering.features)} standardised log features).</p>
{cluster_table(clustering)}
<div class="grid">{''.join(plots)}</div>
</body></html>
"""

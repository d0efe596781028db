"""The surrogates' accuracy: predicted against measured latency, per cluster."""

from __future__ import annotations

import html

import numpy as np

from hdap.latency.fleet_profiling import ClusterSurrogate
from hdap.report.figures import PAGE_STYLE, PALETTE, figure, to_img_tag


def accuracy_plot(results: list[ClusterSurrogate]) -> str:
    fig, ax = figure(5.5, 5.0)
    low, high = np.inf, 0.0
    for r in results:
        measured, predicted = (np.array(v) for v in zip(*r.held_out))
        low, high = min(low, measured.min(), predicted.min()), max(high, measured.max(), predicted.max())
        ax.scatter(measured, predicted, s=10, alpha=0.6, color=PALETTE[r.cluster % 10], label=f"cluster {r.cluster}")
    line = np.array([low * 0.8, high * 1.25])
    ax.plot(line, line, color="#444", linewidth=0.8)
    ax.fill_between(line, line * 0.9, line * 1.1, color="#999", alpha=0.2, label="+-10%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("Surrogates on held-out layer configurations")
    ax.legend(fontsize=8)
    return to_img_tag(fig, "predicted against measured latency per cluster")


def surrogate_report_html(results: list[ClusterSurrogate], model: str) -> str:
    rows = "".join(
        f"<tr><td>{r.cluster}</td><td>{100 * r.weight:.1f}%</td><td>{html.escape(r.representative)}</td><td>{r.source}</td>"
        f"<td>{len(r.profile)}</td><td>{100 * r.held_out_within_10pct:.1f}%</td></tr>"
        for r in results
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hdap: latency surrogates</title><style>{PAGE_STYLE}</style></head>
<body><h1>Latency surrogates for {html.escape(model)}</h1>
<table><tr><th>cluster</th><th>share</th><th>representative</th><th>profiled by</th><th>configurations</th><th>held-out within +-10%</th></tr>{rows}</table>
{accuracy_plot(results)}
</body></html>
"""

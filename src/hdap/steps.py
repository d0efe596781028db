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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow.parquet as pq

from hdap.config import parse_shape, parse_time
from hdap.errors import HdapError
from hdap.fleet.cluster import ClusterConfig, cluster_devices
from hdap.fleet.ingest import IngestConfig, ingest_telemetry
from hdap.latency.fleet_profiling import SurrogateConfig, build_cluster_surrogates
from hdap.models import build_model, prunable_layers
from hdap.report.fleet import clustering_report_html
from hdap.report.latency import surrogate_report_html
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

"""Stage 3, surrogate: profile each cluster's representative, fit its differentiable latency model.

Writes one surrogate per cluster (`cluster-<k>.json`, `hdap.latency.surrogate`), each
representative's profile (`profile-cluster-<k>.parquet`), `fleet.json` (`SurrogateIndex`: which
surrogate is whose and how much of the fleet it weighs) and an HTML report under
`<output_uri>/<run>/surrogate/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hdap.artifacts import Contract
from hdap.latency.backends import ProfilingBackend
from hdap.settings import INPUT_SHAPE, MODEL, PROFILES_URI, SEED, TRUTH_URI, Settings, Shape, at_least, internal, setting
from hdap.stages import Stage, StageContext


@dataclass(frozen=True)
class SurrogateConfig(Settings):
    PREFIX = "surrogate"
    model: str = MODEL()
    input_shape: Shape = INPUT_SHAPE()
    backend: ProfilingBackend = setting(ProfilingBackend.SIMULATED, "How representatives without an uploaded profile are "
                                        f"profiled: {ProfilingBackend.choices()} (the simulated fleet's device model, this "
                                        "machine's CPU, this machine's GPU).")
    samples_per_layer: int = setting(30, "Profiled configurations per layer and precision.", check=at_least(3))
    profiles_uri: str = PROFILES_URI()
    truth_uri: str = TRUTH_URI()
    seed: int = SEED()
    granule: int = internal(8)  # channels move in granules when profiling, as the search prunes them (`hdap profile` too)
    rounds: int = internal(3)  # profiling rounds on real backends (each configuration's quietest round)
    calibration_models: int = internal(18)  # whole-model variants timed to fit the per-model terms (each precision, and mixes whose boundaries it fits)


@dataclass
class ClusterSurrogateEntry:
    cluster: int
    weight: float  # the cluster's share of the fleet
    representative: str
    surrogate: str  # its file, beside fleet.json
    source: str  # uploaded, or the backend that profiled it
    held_out_within_10pct: float
    profile_device_seconds: float


@dataclass
class SurrogateIndex(Contract):
    FORMAT = "hdap.surrogates/1"
    model: str
    input_shape: tuple[int, ...]
    precisions: tuple[str, ...]  # the target's menu, as far as the profiler could time it
    clusters: list[ClusterSurrogateEntry]


@dataclass(frozen=True)
class SurrogateInputs:
    features: Path
    clusters: Path  # ClusterSummary


@dataclass(frozen=True)
class SurrogateOutputs:
    surrogates: Path  # a folder: fleet.json and cluster-<k>.json
    report: Path


def run(config: SurrogateConfig, inputs: SurrogateInputs, outputs: SurrogateOutputs, context: StageContext) -> dict[str, float]:
    import pyarrow.parquet as pq

    from hdap.latency.fleet_profiling import build_cluster_surrogates
    from hdap.models import build_model, prunable_layers
    from hdap.report.latency import surrogate_report_html
    from hdap.stages.cluster import ClusterSummary

    layers = prunable_layers(build_model(config.model, config.input_shape), config.input_shape)
    clusters = ClusterSummary.load(inputs.clusters)
    results, precisions = build_cluster_surrogates(context.store, clusters, pq.read_table(inputs.features), layers, config)
    outputs.surrogates.mkdir(parents=True, exist_ok=True)
    index = SurrogateIndex(config.model, config.input_shape, precisions, [
        ClusterSurrogateEntry(r.cluster, r.weight, r.representative, f"cluster-{r.cluster}.json", r.source,
                              r.held_out_within_10pct, r.device_seconds) for r in results])
    for r in results:
        r.surrogate.save(outputs.surrogates / f"cluster-{r.cluster}.json")
        context.store.put_file(context.uri("surrogate", f"cluster-{r.cluster}.json"), outputs.surrogates / f"cluster-{r.cluster}.json")
        context.store.put_table(context.uri("surrogate", f"profile-cluster-{r.cluster}.parquet"), r.profile)
    index.save(outputs.surrogates / "fleet.json")
    context.store.put_file(context.uri("surrogate", "fleet.json"), outputs.surrogates / "fleet.json")
    outputs.report.write_text(surrogate_report_html(results, config.model))
    context.store.put_file(context.uri("surrogate", "report.html"), outputs.report)
    metrics = {f"cluster{r.cluster}_held_out_within_10pct": round(r.held_out_within_10pct, 4) for r in results}
    metrics["min_held_out_within_10pct"] = round(min(r.held_out_within_10pct for r in results), 4)
    metrics["profiled_configurations"] = sum(len(r.profile) for r in results)
    metrics["profiling_device_hours"] = round(sum(r.device_seconds for r in results) / 3600, 4)
    return metrics


STAGE = Stage("surrogate", "latency surrogates", SurrogateConfig, SurrogateInputs, SurrogateOutputs, run)

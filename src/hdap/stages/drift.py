"""Drift gate: retrain only when the fleet, the model or the settings moved since the published model.

Runs after ingest. It reads the registry's latest entry for the model (`latest.json`, then its
manifest) and decides `retrain` when
- nothing is published yet, or the entry predates drift checks;
- `drift_force` is set;
- the entry was made from another model, other weights (their sha256), another dataset or other
  settings (`lineage`: every pipeline setting but where things are read and written);
- today's fleet drifted from the fleet the entry was optimised for (`hdap.fleet.drift`).
Otherwise the run has nothing to do: the heavy stages are skipped and the run ends green. The
decision, its reasons and the figures behind them are the step's output and metrics; the build
records the lineage and the fleet's picture in the entry it publishes, for the next run to compare.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hdap.artifacts import Contract
from hdap.settings import MODEL, REGISTRY_URI, Settings, at_least, internal, setting
from hdap.stages import Stage, StageContext

if TYPE_CHECKING:
    from hdap.fleet.drift import DriftThresholds

log = logging.getLogger("hdap")

# Settings that say where things are read and written, or how this run is gated: a change in them
# alone does not change what the pipeline would publish.
NOT_LINEAGE = frozenset({"telemetry_uri", "ingest_as_of", "output_uri", "registry_uri", "truth_uri", "profiles_uri", "device",
                         "build_mlflow_uri", "build_mlflow_experiment", "build_model_registry_uri"})


@dataclass(frozen=True)
class DriftConfig(Settings):
    PREFIX = "drift"
    PASSED = ("weights_uri", "settings")
    model: str = MODEL()
    registry_uri: str = REGISTRY_URI()
    force: bool = setting(False, "Retrain whatever the fleet did (otherwise a run retrains only when something changed).")
    share_shift: float = setting(0.10, "Retrain when this share of the fleet moved between clusters (total variation "
                                       "distance of the cluster shares).", check=at_least(0))
    centroid_shift: float = setting(0.5, "Retrain when a cluster's centre moved this many standard deviations.", check=at_least(0))
    uncovered_distance: float = setting(3.0, "A device this many standard deviations from every cluster is not covered by them.",
                                        check=at_least(0))
    uncovered_share: float = setting(0.05, "Retrain when this share of the fleet is not covered (a new mode).", check=at_least(0))
    latency_change: float = setting(0.10, "Retrain when the published model's fleet-weighted latency, re-estimated on today's "
                                          "fleet, changed by this fraction.", check=at_least(0))
    weights_uri: str = internal("")  # the search's weights_uri (the pipeline passes it)
    settings: str = internal("")  # the run's lineage settings as name=value lines (the pipeline passes them)

    def thresholds(self) -> DriftThresholds:
        from hdap.fleet.drift import DriftThresholds

        return DriftThresholds(self.share_shift, self.centroid_shift, self.uncovered_distance, self.uncovered_share,
                               self.latency_change)


def lineage_settings() -> list[str]:
    """The pipeline settings whose values an entry's lineage records."""
    from hdap.stages import pipeline_settings

    return [e.name for e in pipeline_settings() if e.name not in NOT_LINEAGE and e.prefix != DriftConfig.PREFIX]


@dataclass
class Lineage:
    settings: dict[str, str]  # lineage_settings() -> value, as text
    weights_sha256: str  # "" without user weights


@dataclass
class DriftDecision(Contract):
    FORMAT = "hdap.drift/1"
    retrain: bool
    reasons: list[str]  # one sentence each; why not, when empty
    summary: str  # one sentence for the console and the run's status
    run_name: str
    lineage: Lineage
    published_version: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return {"retrain": float(self.retrain), **{k: round(v, 4) for k, v in self.figures.items()}}


@dataclass(frozen=True)
class DriftInputs:
    features: Path


@dataclass(frozen=True)
class DriftOutputs:
    decision: Path  # DriftDecision


def run(config: DriftConfig, inputs: DriftInputs, outputs: DriftOutputs, context: StageContext) -> dict[str, float]:
    import pyarrow.parquet as pq

    lineage = Lineage(_parse_settings(config.settings), _weights_sha256(context, config.weights_uri))
    published = _published_manifest(context, config)
    figures: dict[str, float] = {}
    if published is None:
        reasons = [f"nothing is published yet for {config.model} under {config.registry_uri}"]
    elif "lineage" not in published or "fleet_picture" not in published:
        reasons = [f"the published version {published['version']} has no lineage or fleet picture to compare with (published "
                   "before drift checks)"]
    else:
        reasons, figures = _changes(published, lineage, pq.read_table(inputs.features), config)
    if config.force:
        reasons.insert(0, "drift_force is set")
    version = published["version"] if published else ""
    if reasons:
        summary = "retraining: " + "; ".join(reasons) + "."
    else:
        summary = (f"no drift: nothing to do. The fleet, the model, its weights and the settings are those {config.model} "
                   f"version {version} was optimised for.")
    decision = DriftDecision(bool(reasons), reasons, summary, context.run_name, lineage, version, figures)
    decision.save(outputs.decision)
    decision.put(context.store, context.uri("drift", "decision.json"))
    log.info("%s", summary)
    return decision.metrics()


def _changes(published: dict, lineage: Lineage, features, config: DriftConfig) -> tuple[list[str], dict[str, float]]:
    """Why the published entry no longer fits (sentences), and the drift figures."""
    from hdap.artifacts import _decode_dataclass
    from hdap.fleet.drift import FleetPicture, drift_reasons, measure_drift

    before = published["lineage"]
    reasons = [f"{name} changed from {before['settings'].get(name, '(unset)')!r} to {value!r}"
               for name, value in lineage.settings.items() if before["settings"].get(name) != value]
    if before.get("weights_sha256", "") != lineage.weights_sha256:
        reasons.append("the model's weights changed (another sha256)")
    picture = _decode_dataclass(FleetPicture, published["fleet_picture"], "the published manifest's fleet_picture")
    if not set(picture.features) <= set(features.column_names):
        return reasons + ["today's fleet reports other features than the published model's fleet (another SKU)"], {}
    figures = measure_drift(picture, features, config.uncovered_distance)
    values = {"share_shift": figures.share_shift, "centroid_shift": figures.centroid_shift,
              "uncovered_share": figures.uncovered_share, "devices": float(figures.devices)}
    if figures.latency_change is not None:
        values["latency_change"] = figures.latency_change
    return reasons + drift_reasons(figures, config.thresholds()), values


def _parse_settings(text: str) -> dict[str, str]:
    """name=value lines -> {name: value}, numbers in one spelling (a cluster may write 3 where this machine wrote 3.0)."""
    settings = {}
    for line in filter(None, text.splitlines()):
        name, _, value = line.partition("=")
        try:
            value = repr(float(value))
        except ValueError:
            pass
        settings[name] = value
    return settings


def _weights_sha256(context: StageContext, weights_uri: str) -> str:
    if not weights_uri:
        return ""
    return hashlib.sha256(context.store.get_bytes(weights_uri)).hexdigest()


def _published_manifest(context: StageContext, config: DriftConfig) -> dict | None:
    from hdap.deploy.registry import registry_name
    from hdap.store import join_uri

    latest = join_uri(config.registry_uri, registry_name(config.model), "latest.json")
    if not context.store.exists(latest):
        return None
    return context.store.get_json(context.store.get_json(latest, require_checksum=True)["manifest"], require_checksum=True)


STAGE = Stage("drift", "drift gate", DriftConfig, DriftInputs, DriftOutputs, run)

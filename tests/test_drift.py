"""The drift gate: retrain when the fleet, the model, its weights or the settings moved; otherwise nothing to do."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from hdap.artifacts import plain
from hdap.fleet.cluster import cluster_devices
from hdap.fleet.drift import drift_reasons, fleet_picture, measure_drift
from hdap.fleet.simulate import simulate_features
from hdap.stages import StageContext
from hdap.stages.cluster import ClusterConfig
from hdap.stages.drift import DriftConfig, DriftDecision, DriftInputs, DriftOutputs, Lineage, run
from hdap.store import ObjectStore

SKU = "jetson-xavier-nx"


@pytest.fixture(scope="module")
def published_fleet():
    """A simulated fleet as the published model saw it: its features and its picture (clusters, shares, latency)."""
    features, _ = simulate_features(SKU, 1000, days=3, seed=0)
    clustering = cluster_devices(features, ClusterConfig(seed=0))
    picture = fleet_picture(features, clustering.features, {c.id: c.centroid for c in clustering.clusters},
                            {c.id: c.weight for c in clustering.clusters}, {c.id: 1.0 + 0.5 * c.id for c in clustering.clusters})
    return features, picture


def test_a_fleet_whose_power_mode_mix_shifts_drifts_and_the_same_fleet_reseeded_does_not(published_fleet) -> None:
    _, picture = published_fleet
    thresholds = DriftConfig().thresholds()
    reseeded, _ = simulate_features(SKU, 1000, days=3, seed=1)
    steady = measure_drift(picture, reseeded, thresholds.uncovered_distance)
    assert drift_reasons(steady, thresholds) == [] and steady.share_shift < 0.06
    shifted, _ = simulate_features(SKU, 1000, days=3, seed=1, mode_mix={"20W": 0.2, "15W": 0.2, "10W": 0.6})
    moved = measure_drift(picture, shifted, thresholds.uncovered_distance)
    reasons = drift_reasons(moved, thresholds)
    assert moved.share_shift > 0.15 and any("moved between clusters" in r for r in reasons)
    assert moved.latency_change > 0.10 and any("latency re-estimated on today's fleet changed by +" in r for r in reasons)


def test_devices_far_from_every_published_cluster_are_a_new_mode(published_fleet) -> None:
    features, picture = published_fleet
    thresholds = DriftConfig().thresholds()
    probe = next(n for n in picture.features if n.startswith("probe_"))
    slower = features.set_column(features.column_names.index(probe), probe, pc.multiply(features.column(probe), 6.0))
    figures = measure_drift(picture, slower, thresholds.uncovered_distance)
    assert figures.uncovered_share > 0.5 and any("a new mode" in r for r in drift_reasons(figures, thresholds))


def _publish(store: ObjectStore, bucket: str, picture, lineage: Lineage) -> None:
    manifest = f"s3://{bucket}/registry/resnet20/v1/manifest.json"
    store.put_json(manifest, {"version": "v1", "lineage": plain(lineage), "fleet_picture": plain(picture)})
    store.put_json(f"s3://{bucket}/registry/resnet20/latest.json", {"version": "v1", "manifest": manifest})


def _decide(store: ObjectStore, bucket: str, features_path: Path, tmp_path: Path, run_name: str, **settings) -> DriftDecision:
    config = DriftConfig(registry_uri=f"s3://{bucket}/registry", **settings)
    run(config, DriftInputs(features_path), DriftOutputs(tmp_path / f"{run_name}.json"),
        StageContext(store, f"s3://{bucket}/runs", run_name))
    return DriftDecision.load(tmp_path / f"{run_name}.json")


def test_the_gate_retrains_on_a_first_run_another_model_changed_weights_or_dataset_and_when_forced(
        published_fleet, object_store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    features, picture = published_fleet
    features_path = tmp_path / "features.parquet"
    pq.write_table(features, features_path)
    settings = "model=resnet20\ndataset=digits\nsearch_targets=0.8,0.5\nseed=0"
    first = _decide(object_store, bucket, features_path, tmp_path, "r1", settings=settings)
    assert first.retrain and first.reasons == [f"nothing is published yet for resnet20 under s3://{bucket}/registry"]
    assert object_store.get_json(f"s3://{bucket}/runs/r1/drift/decision.json")["retrain"] is True

    _publish(object_store, bucket, picture, first.lineage)
    same = _decide(object_store, bucket, features_path, tmp_path, "r2", settings=settings.replace("seed=0", "seed=0.0"))
    assert not same.retrain and same.summary.startswith("no drift: nothing to do") and same.figures["share_shift"] < 0.01
    forced = _decide(object_store, bucket, features_path, tmp_path, "r3", settings=settings, force=True)
    assert forced.retrain and forced.reasons == ["drift_force is set"]
    other = _decide(object_store, bucket, features_path, tmp_path, "r4", settings=settings.replace("digits", "cifar10"))
    assert other.reasons == ["dataset changed from 'digits' to 'cifar10'"]

    renamed = _decide(object_store, bucket, features_path, tmp_path, "r6", model="resnet56",
                      settings=settings.replace("model=resnet20", "model=resnet56"))
    assert renamed.retrain and renamed.reasons == [f"nothing is published yet for resnet56 under s3://{bucket}/registry"]

    object_store.put_bytes(f"s3://{bucket}/weights.pt", b"trained weights")
    weights = _decide(object_store, bucket, features_path, tmp_path, "r5", settings=settings, weights_uri=f"s3://{bucket}/weights.pt")
    assert weights.reasons == ["the model's weights changed (another sha256)"] and len(weights.lineage.weights_sha256) == 64

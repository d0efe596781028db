"""Drift: has the fleet moved away from the one the published model was optimised for?

A published model's registry manifest keeps the fleet it was optimised for (`FleetPicture`): the
clustering features' standardisation (of their logarithms, as the cluster stage uses them), each
cluster's centroid and share, and the model's predicted latency per cluster. Today's fleet (the
ingest step's features) is compared with it, each device taken to its nearest published centroid:

- shares: the total variation distance between the published shares and today's (half the L1
  distance: the share of the fleet that would have to move to get back);
- centroids: how far each cluster's median moved, in standard deviations of the published fleet;
- a new mode: the share of today's devices farther than `uncovered_distance` from every centroid;
- latency: the published model's fleet-weighted latency re-estimated with today's shares (each
  cluster's predicted latency, weighted anew), relative to the published figure.

Every figure past its threshold is a reason to retrain, given in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from hdap.errors import HdapError


@dataclass
class PictureCluster:
    id: int
    weight: float  # share of the fleet
    centroid: list[float]  # standardised log features
    latency_ms: float | None = None  # the published model's predicted latency on this cluster


@dataclass
class FleetPicture:
    """The fleet a model was optimised for, as its registry manifest keeps it."""

    features: list[str]
    log_mean: list[float]
    log_scale: list[float]
    clusters: list[PictureCluster]
    fleet_latency_ms: float | None = None  # share-weighted over the clusters

    def standardise(self, features: pa.Table) -> np.ndarray:
        return (_log_features(features, self.features) - np.array(self.log_mean)) / np.array(self.log_scale)


def _log_features(features: pa.Table, names: list[str]) -> np.ndarray:
    """The named columns' logarithms, one row per device (as the cluster stage takes them)."""
    return np.log(np.column_stack([features.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names]))


def fleet_picture(features: pa.Table, names: list[str], centroids: dict[int, dict[str, float]], weights: dict[int, float],
                  latency_ms: dict[int, float] | None = None) -> FleetPicture:
    """The picture of a clustered fleet: `centroids` per cluster id in the features' own units (the cluster
    stage's medians), `weights` their shares, `latency_ms` the model's predicted latency on each."""
    logs = _log_features(features, names)
    mean, scale = logs.mean(axis=0), logs.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # as StandardScaler: a constant feature is left unscaled
    latency_ms = latency_ms or {}
    clusters = [PictureCluster(cid, float(weights[cid]), [float(v) for v in (np.log([centroids[cid][n] for n in names]) - mean) / scale],
                               latency_ms.get(cid)) for cid in sorted(centroids)]
    fleet = sum(c.weight * c.latency_ms for c in clusters) if all(c.latency_ms is not None for c in clusters) else None
    return FleetPicture(list(names), mean.tolist(), scale.tolist(), clusters, fleet)


@dataclass(frozen=True)
class DriftThresholds:
    share_shift: float  # total variation distance between the cluster shares
    centroid_shift: float  # standard deviations a cluster's median may move
    uncovered_distance: float  # standard deviations from every centroid that make a device uncovered
    uncovered_share: float  # share of uncovered devices that is a new mode
    latency_change: float  # relative change of the re-estimated fleet-weighted latency


@dataclass
class DriftFigures:
    share_shift: float
    centroid_shift: float  # the largest over the clusters that kept devices
    uncovered_share: float
    latency_change: float | None  # None where the picture has no per-cluster latency
    devices: int


def measure_drift(picture: FleetPicture, features: pa.Table, uncovered_distance: float) -> DriftFigures:
    """Today's fleet against the published picture."""
    if features.num_rows == 0:
        raise HdapError("today's telemetry has no valid device to compare with the published model's fleet.")
    x = picture.standardise(features)
    centroids = np.array([c.centroid for c in picture.clusters])
    distances = np.linalg.norm(x[:, None, :] - centroids[None, :, :], axis=2)
    nearest = distances.argmin(axis=1)
    shares_now = np.bincount(nearest, minlength=len(centroids)) / len(x)
    published = np.array([c.weight for c in picture.clusters])
    shifts = [float(np.linalg.norm(np.median(x[nearest == i], axis=0) - centroids[i])) for i in range(len(centroids))
              if (nearest == i).any()]
    latency_change = None
    if picture.fleet_latency_ms:
        now = sum(share * c.latency_ms for share, c in zip(shares_now, picture.clusters))
        latency_change = float(now / picture.fleet_latency_ms - 1)
    return DriftFigures(share_shift=float(0.5 * np.abs(shares_now - published).sum()), centroid_shift=max(shifts),
                        uncovered_share=float((distances.min(axis=1) > uncovered_distance).mean()), latency_change=latency_change,
                        devices=len(x))


def drift_reasons(figures: DriftFigures, thresholds: DriftThresholds) -> list[str]:
    """One sentence per figure past its threshold; empty when the fleet has not drifted."""
    reasons = []
    if figures.share_shift > thresholds.share_shift:
        reasons.append(f"{100 * figures.share_shift:.0f}% of the fleet moved between clusters (more than "
                       f"{100 * thresholds.share_shift:.0f}%)")
    if figures.centroid_shift > thresholds.centroid_shift:
        reasons.append(f"a cluster's centre moved {figures.centroid_shift:.2f} standard deviations (more than {thresholds.centroid_shift:g})")
    if figures.uncovered_share > thresholds.uncovered_share:
        reasons.append(f"{100 * figures.uncovered_share:.1f}% of the devices are farther than {thresholds.uncovered_distance:g} standard "
                       f"deviations from every cluster (a new mode; more than {100 * thresholds.uncovered_share:g}%)")
    if figures.latency_change is not None and abs(figures.latency_change) > thresholds.latency_change:
        reasons.append(f"the published model's fleet-weighted latency re-estimated on today's fleet changed by "
                       f"{100 * figures.latency_change:+.0f}% (more than {100 * thresholds.latency_change:.0f}%)")
    return reasons

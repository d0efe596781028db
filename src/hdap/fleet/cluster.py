"""Cluster: partition the fleet into performance clusters, each with a representative device.

Features are the logarithms of the devices' median probe latencies and memory bandwidth
(ratios, not absolute gaps, separate a throttled device from a cool one), standardised.
k-means (scikit-learn; mini-batch above a fleet size) groups them. k is fixed, or chosen
within bounds by the silhouette score on a sample. Each cluster's representative is the real
device nearest its centroid: the one device later profiled on behalf of the whole cluster.

A CPU fleet (`cpu-onnxruntime`) is not clustered by k-means: its states are declared
(`cpu_states`), each is a cluster weighing its declared share, and its devices say which state
they were in (their telemetry's power mode).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from hdap.errors import HdapError
from hdap.fleet.ingest import feature_columns
from hdap.fleet.sku import get_sku
from hdap.latency.cpu_states import CpuState, parse_cpu_states
from hdap.stages.cluster import ClusterConfig, ClusterSummary, DeviceCluster

log = logging.getLogger("hdap")


@dataclass
class Clustering:
    k: int
    selection: str  # how k was chosen, in words
    scores: dict[int, float]  # silhouette per candidate k (empty when k was fixed)
    features: list[str]
    clusters: list[DeviceCluster]
    assignments: pa.Table  # device_id, cluster, distance (standardised units)
    algorithm: str
    projection: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 2)))  # 2-D view for plots
    projection_labels: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, dtype=int))
    projection_representatives: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 2)))

    def summary(self, run_name: str = "") -> ClusterSummary:
        return ClusterSummary(self.k, self.selection, dict(self.scores), self.features, self.algorithm,
                              int(sum(c.size for c in self.clusters)), self.clusters, run_name)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"k": self.k, "k_chosen_automatically": 1.0 if self.scores else 0.0}
        out.update({f"silhouette_k{k}": round(s, 4) for k, s in self.scores.items()})
        out.update({f"cluster{c.id}_share": round(c.weight, 4) for c in self.clusters})
        return out


def _kmeans(k: int, n: int, config: ClusterConfig) -> KMeans | MiniBatchKMeans:
    if n > config.minibatch_above:
        return MiniBatchKMeans(n_clusters=k, random_state=config.seed, n_init=3, batch_size=8192)
    return KMeans(n_clusters=k, random_state=config.seed, n_init=4)


def choose_k(x: np.ndarray, config: ClusterConfig, rng: np.random.Generator) -> dict[int, float]:
    """Silhouette score of k-means for every k in bounds, on a sample of the fleet."""
    sample = x if len(x) <= config.selection_sample else x[rng.choice(len(x), config.selection_sample, replace=False)]
    scores: dict[int, float] = {}
    for k in range(config.k_min, min(config.k_max, len(sample) - 1) + 1):
        labels = KMeans(n_clusters=k, random_state=config.seed, n_init=3).fit_predict(sample)
        scores[k] = float(silhouette_score(sample, labels, sample_size=min(len(sample), 5000), random_state=config.seed))
    return scores


def cluster_devices(features: pa.Table, config: ClusterConfig) -> Clustering:
    """k-means over the fleet; for a SKU of self-measured states (a CPU fleet), one cluster per declared state."""
    if features.num_rows and get_sku(features.column("sku")[0].as_py()).self_measured:
        return cluster_by_state(features, parse_cpu_states(config.cpu_states))
    names = feature_columns(features)
    needed = config.k if config.k else config.k_min
    if features.num_rows < max(needed, 2) + 1:
        raise HdapError(
            f"{features.num_rows} devices are too few to form {needed} clusters: ingest more telemetry or lower k."
        )
    raw = np.column_stack([features.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names])
    x = StandardScaler().fit_transform(np.log(raw))
    rng = np.random.default_rng(config.seed)

    if config.k:
        k, scores = config.k, {}
        selection = f"fixed at k={k}"
    else:
        scores = choose_k(x, config, rng)
        k = max(scores, key=scores.get)
        selection = f"automatic: best silhouette over k={config.k_min}..{max(scores)} (score {scores[k]:.3f})"
    model = _kmeans(k, len(x), config).fit(x)
    distances = model.transform(x)
    labels = distances.argmin(axis=1)

    # Number clusters from fastest to slowest (mean standardised latency), so ids read in order.
    order = np.argsort(model.cluster_centers_[:, :-1].mean(axis=1) - model.cluster_centers_[:, -1])
    relabel = np.empty(k, dtype=int)
    relabel[order] = np.arange(k)
    labels = relabel[labels]
    distances = distances[:, order]

    device_ids = features.column("device_id").to_numpy(zero_copy_only=False)
    clusters: list[DeviceCluster] = []
    representatives: list[int] = []
    for cid in range(k):
        members = np.flatnonzero(labels == cid)
        if len(members) == 0:
            raise HdapError(
                f"k-means left cluster {cid} of {k} empty: the fleet has fewer distinct performance profiles than k; lower k."
            )
        nearest = members[distances[members, cid].argmin()]
        representatives.append(nearest)
        clusters.append(
            DeviceCluster(
                id=cid,
                size=int(len(members)),
                weight=float(len(members) / len(x)),
                representative=str(device_ids[nearest]),
                centroid={n: float(v) for n, v in zip(names, np.exp(np.median(np.log(raw[members]), axis=0)))},
                representative_features={n: float(v) for n, v in zip(names, raw[nearest])},
            )
        )
    assignments = pa.table(
        {
            "device_id": features.column("device_id"),
            "cluster": pa.array(labels.astype(np.int32)),
            "distance": pa.array(distances[np.arange(len(x)), labels].astype(np.float32)),
        }
    )
    log.info("clustered %d devices into %d clusters (%s)", len(x), k, selection)
    return Clustering(k, selection, scores, names, clusters, assignments, type(model).__name__,
                      *_projection(x, labels, representatives, rng))


def _projection(x: np.ndarray, labels: np.ndarray, representatives: list[int],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2-D view of (a sample of) the devices for the report: their two principal axes."""
    view = rng.choice(len(x), min(len(x), 5000), replace=False)
    center = x[view].mean(axis=0)
    axes = np.linalg.svd(x[view] - center, full_matrices=False)[2][:2]
    if len(axes) < 2:  # one device: no second axis to show
        axes = np.vstack([axes, np.zeros_like(axes)])[:2]
    return (x[view] - center) @ axes.T, labels[view], (x[representatives] - center) @ axes.T


def cluster_by_state(features: pa.Table, states: list[CpuState]) -> Clustering:
    """A CPU fleet: one cluster per declared state (the power_mode its devices report), each weighing
    its declared share, so a fleet of a few states never depends on k-means finding them."""
    names = feature_columns(features)
    reported = features.column("power_mode").to_pylist()
    declared = [state.name for state in states]
    undeclared = sorted(set(reported) - set(declared))
    if undeclared:
        raise HdapError(f"devices report the CPU state '{undeclared[0]}', which cpu_states ({','.join(declared)}) does not "
                        "declare: add it to cpu_states, or leave its telemetry out of telemetry_uri.")
    raw = np.column_stack([features.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names])
    x = StandardScaler().fit_transform(np.log(raw))
    labels = np.array([declared.index(state) for state in reported])
    device_ids = features.column("device_id").to_pylist()
    clusters, representatives, distance = [], [], np.zeros(len(x))
    for cid, state in enumerate(states):
        members = np.flatnonzero(labels == cid)
        if len(members) == 0:
            raise HdapError(f"no device reported the CPU state '{state.name}' that cpu_states declares: run `hdap profile "
                            f"--cpu-states {state.name}` on a device in that state, or leave the state out of cpu_states.")
        distance[members] = np.linalg.norm(x[members] - x[members].mean(axis=0), axis=1)
        nearest = int(members[distance[members].argmin()])
        representatives.append(nearest)
        clusters.append(DeviceCluster(cid, int(len(members)), state.share, str(device_ids[nearest]),
                                      {n: float(v) for n, v in zip(names, np.exp(np.median(np.log(raw[members]), axis=0)))},
                                      {n: float(v) for n, v in zip(names, raw[nearest])}))
    assignments = pa.table({"device_id": features.column("device_id"), "cluster": pa.array(labels.astype(np.int32)),
                            "distance": pa.array(distance.astype(np.float32))})
    selection = f"declared CPU states, one cluster each: {', '.join(s.describe() for s in states)}"
    log.info("clustered %d devices into %d declared CPU states", len(x), len(states))
    return Clustering(len(states), selection, {}, names, clusters, assignments, "declared states",
                      *_projection(x, labels, representatives, np.random.default_rng(0)))

"""Cluster: partition the fleet into performance clusters, each with a representative device.

Features are the logarithms of the devices' median probe latencies and memory bandwidth
(ratios, not absolute gaps, separate a throttled device from a cool one), scaled robustly: by
the fleet's median and the 5th-95th percentile span, which no 5% of the devices can move (a
mean and standard deviation follow a single device reporting 9 s probes). k-means
(scikit-learn; mini-batch above a fleet size) groups them. k is fixed, or chosen within bounds by
the silhouette score on a sample.

A handful of extreme or hostile devices must not steer that (`SetAside`): a device with a
feature farther than `outlier_limit` robust spreads from the median is set aside before k is
chosen; after a fit, the members of a cluster under `min_cluster_share` of the fleet and the
devices farther than `outlier_limit` from every centre are set aside, and k chosen and fitted
again on the rest. Set-aside devices are assigned their nearest cluster but define no centre,
share or representative. Each cluster's representative is the member nearest
its trimmed mean (a centre that its own few odd members cannot pull): the one device later
profiled on behalf of the whole cluster.

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

from hdap.errors import HdapError
from hdap.fleet.ingest import feature_columns
from hdap.fleet.sku import get_sku
from hdap.latency.cpu_states import CpuState, parse_cpu_states
from hdap.stages.cluster import ClusterConfig, ClusterSummary, DeviceCluster, SetAside

log = logging.getLogger("hdap")

NORMAL_SPAN_5_95 = 3.29  # the 5th-95th percentile span of a normal distribution, in standard deviations
REPRESENTATIVE_TRIM = 0.1  # share of a cluster's members left out on each side of its centre, per feature
REASONS = list(SetAside)  # a device's reason code: its index here, -1 where it was kept


@dataclass
class Clustering:
    k: int
    selection: str  # how k was chosen, in words
    scores: dict[int, float]  # silhouette per candidate k (empty when k was fixed)
    features: list[str]
    clusters: list[DeviceCluster]
    assignments: pa.Table  # device_id, cluster, distance (robustly scaled units), set_aside (SetAside value or null)
    algorithm: str
    projection: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 2)))  # 2-D view for plots
    projection_labels: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, dtype=int))
    projection_representatives: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 2)))
    set_aside: dict[str, int] = field(default_factory=dict)  # devices set aside per reason (SetAside value)
    outlier_rules: dict[str, str] = field(default_factory=dict)  # reason -> its rule, in words

    def summary(self, run_name: str = "") -> ClusterSummary:
        devices = int(sum(c.size for c in self.clusters)) + sum(self.set_aside.values())
        return ClusterSummary(self.k, self.selection, dict(self.scores), self.features, self.algorithm,
                              devices, self.clusters, run_name, dict(self.set_aside), dict(self.outlier_rules))

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"k": self.k, "k_chosen_automatically": 1.0 if self.scores else 0.0}
        out.update({f"silhouette_k{k}": round(s, 4) for k, s in self.scores.items()})
        out.update({f"cluster{c.id}_share": round(c.weight, 4) for c in self.clusters})
        out["devices_set_aside"] = sum(self.set_aside.values())
        out.update({f"set_aside_{reason.value}": self.set_aside.get(reason.value, 0) for reason in SetAside})
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


def robust_scale(logs: np.ndarray) -> np.ndarray:
    """Log features centred on the fleet's median, in robust spreads (5th-95th percentile span / 3.29).

    Unlike the inter-quartile range, that span does not collapse on a feature most of the fleet
    shares (a Nano's memory bandwidth: 85% of devices alike, the busy 15% lower)."""
    low, median, high = np.quantile(logs, [0.05, 0.5, 0.95], axis=0)
    spread = (high - low) / NORMAL_SPAN_5_95
    return (logs - median) / np.where(spread > 0, spread, 1.0)  # a constant feature is left unscaled


@dataclass
class Fit:
    """The k-means fit on the devices kept, and why each other device was set aside."""

    model: KMeans | MiniBatchKMeans
    k: int
    scores: dict[int, float]
    selection: str
    reason: np.ndarray  # per device: index into REASONS, -1 where kept


def fit_kept(x: np.ndarray, config: ClusterConfig, rng: np.random.Generator) -> Fit:
    """Set extreme devices aside and fit; then set aside the members of clusters under the minimum
    share and the devices far from every centre, and fit again on the rest (at most outlier_rounds times)."""
    reason = np.full(len(x), -1, dtype=np.int8)
    reason[np.abs(x).max(axis=1) > config.outlier_limit] = REASONS.index(SetAside.EXTREME)
    for round_ in range(config.outlier_rounds + 1):
        kept = np.flatnonzero(reason < 0)
        _enough(len(kept), len(x), config)
        fit = Fit(*_fit(x[kept], config, rng), reason)
        # A few devices of their own are no cluster to profile, and a device far from every centre
        # is like no other: set them aside, and choose k anew without them.
        labels, distance = fit.model.labels_, fit.model.transform(x[kept]).min(axis=1)
        sizes = np.bincount(labels, minlength=fit.k)
        small = ((sizes > 0) & (sizes < config.min_cluster_share * len(x)))[labels]
        far = ~small & (distance > config.outlier_limit)
        if round_ == config.outlier_rounds or not (small.any() or far.any()):
            return fit
        reason[kept[small]] = REASONS.index(SetAside.SMALL_CLUSTER)
        reason[kept[far]] = REASONS.index(SetAside.FAR)
    raise AssertionError("unreachable: the last round returns")


def _fit(x: np.ndarray, config: ClusterConfig,
         rng: np.random.Generator) -> tuple[KMeans | MiniBatchKMeans, int, dict[int, float], str]:
    """k-means on these devices, k fixed or chosen by silhouette: the model, k, the scores and how k was chosen."""
    if config.k:
        k, scores, selection = config.k, {}, f"fixed at k={config.k}"
    else:
        scores = choose_k(x, config, rng)
        k = max(scores, key=scores.get)
        selection = f"automatic: best silhouette over k={config.k_min}..{max(scores)} (score {scores[k]:.3f})"
    return _kmeans(k, len(x), config).fit(x), k, scores, selection


def _enough(kept: int, devices: int, config: ClusterConfig) -> None:
    needed = config.k if config.k else config.k_min
    if kept < max(needed, 2) + 1:
        aside = f" once {devices - kept} outlying devices are set aside" if kept < devices else ""
        raise HdapError(f"{kept} devices are too few to form {needed} clusters{aside}: ingest more telemetry or lower k.")


def cluster_devices(features: pa.Table, config: ClusterConfig) -> Clustering:
    """k-means over the fleet; for a SKU of self-measured states (a CPU fleet), one cluster per declared state."""
    if features.num_rows and get_sku(features.column("sku")[0].as_py()).self_measured:
        return cluster_by_state(features, parse_cpu_states(config.cpu_states))
    names = feature_columns(features)
    _enough(features.num_rows, features.num_rows, config)
    raw = np.column_stack([features.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names])
    x = robust_scale(np.log(raw))
    rng = np.random.default_rng(config.seed)
    fit = fit_kept(x, config, rng)
    labels, distances = _assign(fit, x)
    kept = fit.reason < 0

    device_ids = features.column("device_id").to_numpy(zero_copy_only=False)
    clusters: list[DeviceCluster] = []
    representatives: list[int] = []
    for cid in range(fit.k):
        members = np.flatnonzero((labels == cid) & kept)
        if len(members) == 0:
            raise HdapError(
                f"k-means left cluster {cid} of {fit.k} empty: the fleet has fewer distinct performance profiles than k; lower k."
            )
        nearest = _representative(x, members)
        representatives.append(nearest)
        clusters.append(
            DeviceCluster(
                id=cid,
                size=len(members),
                weight=float(len(members) / kept.sum()),
                representative=str(device_ids[nearest]),
                centroid={n: float(v) for n, v in zip(names, np.exp(np.median(np.log(raw[members]), axis=0)))},
                representative_features={n: float(v) for n, v in zip(names, raw[nearest])},
            )
        )
    assignments = pa.table(
        {
            "device_id": features.column("device_id"),
            "cluster": pa.array(labels.astype(np.int32)),
            "distance": pa.array(distances.astype(np.float32)),
            "set_aside": _reason_column(fit.reason),
        }
    )
    counts = {REASONS[code].value: int(n) for code, n in zip(*np.unique(fit.reason[~kept], return_counts=True))}
    log.info("clustered %d devices into %d clusters (%s); %d set aside %s", len(x), fit.k, fit.selection, (~kept).sum(), counts)
    return Clustering(fit.k, fit.selection, fit.scores, names, clusters, assignments, type(fit.model).__name__,
                      *_projection(x, labels, representatives, rng, kept), set_aside=counts,
                      outlier_rules={reason.value: reason.rule(config) for reason in SetAside})


def _assign(fit: Fit, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every device's cluster (its nearest centre, set-aside devices too) and its distance to it,
    clusters numbered from fastest to slowest (mean scaled latency), so ids read in order."""
    centres = fit.model.cluster_centers_
    order = np.argsort(centres[:, :-1].mean(axis=1) - centres[:, -1])
    distances = fit.model.transform(x)[:, order]
    labels = distances.argmin(axis=1)
    return labels, distances[np.arange(len(x)), labels]


def _representative(x: np.ndarray, members: np.ndarray) -> int:
    """The member nearest the members' trimmed mean (per feature, the outer tenth on each side left
    out): a centre its few odd members cannot pull, yet still the cluster's mean, which the
    fleet-weighted latency averages (a median sits in one mode of a cluster that holds two)."""
    values = np.sort(x[members], axis=0)
    cut = int(REPRESENTATIVE_TRIM * len(members))
    centre = values[cut:len(members) - cut].mean(axis=0)
    return int(members[np.linalg.norm(x[members] - centre, axis=1).argmin()])


def _reason_column(reason: np.ndarray) -> pa.Array:
    """Per device, why it was set aside (a SetAside value), null where it was kept."""
    dictionary = pa.array([r.value for r in REASONS])
    return pa.DictionaryArray.from_arrays(pa.array(reason.astype(np.int32), mask=reason < 0), dictionary).cast(pa.string())


def _projection(x: np.ndarray, labels: np.ndarray, representatives: list[int], rng: np.random.Generator,
                kept: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2-D view of (a sample of) the devices kept, for the report: their two principal axes
    (a device set aside far away would otherwise be all the first axis shows)."""
    pool = np.arange(len(x)) if kept is None else np.flatnonzero(kept)
    view = pool[rng.choice(len(pool), min(len(pool), 5000), replace=False)]
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
    x = robust_scale(np.log(raw))
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
        clusters.append(DeviceCluster(cid, len(members), state.share, str(device_ids[nearest]),
                                      {n: float(v) for n, v in zip(names, np.exp(np.median(np.log(raw[members]), axis=0)))},
                                      {n: float(v) for n, v in zip(names, raw[nearest])}))
    assignments = pa.table({"device_id": features.column("device_id"), "cluster": pa.array(labels.astype(np.int32)),
                            "distance": pa.array(distance.astype(np.float32)),
                            "set_aside": pa.nulls(len(x), pa.string())})  # declared states: nothing is set aside
    selection = f"declared CPU states, one cluster each: {', '.join(s.describe() for s in states)}"
    log.info("clustered %d devices into %d declared CPU states", len(x), len(states))
    return Clustering(len(states), selection, {}, names, clusters, assignments, "declared states",
                      *_projection(x, labels, representatives, np.random.default_rng(0)))

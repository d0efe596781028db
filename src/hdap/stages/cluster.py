"""Stage 2, cluster: k-means over the devices' performance features, one representative device per cluster.

A few extreme or hostile devices must not steer the clusters: devices are set aside by the rules
below (`SetAside`, with `ClusterConfig`'s limits), never define a centre, a share or a
representative, and are counted in the metrics and the summary, with a reason per device in
the assignments.

Writes `assignments.parquet` (device -> cluster, and why it was set aside), `clusters.json`
(`ClusterSummary`) and an HTML report under `<output_uri>/<run>/cluster/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from hdap.artifacts import Contract
from hdap.errors import HdapError
from hdap.settings import CPU_STATES, SEED, Settings, internal, setting
from hdap.stages import Stage, StageContext


@dataclass(frozen=True)
class ClusterConfig(Settings):
    PREFIX = "cluster"
    k: int = setting(0, "Number of clusters; 0 chooses it by silhouette within [cluster_k_min, cluster_k_max].",
                     check=lambda k: None if k >= 0 else "is not a number of clusters: use 0 (choose automatically) or a positive k")
    k_min: int = setting(2, "Smallest k to consider when choosing.")
    k_max: int = setting(8, "Largest k to consider when choosing.")
    seed: int = SEED()
    cpu_states: str = CPU_STATES()  # a CPU fleet's clusters
    selection_sample: int = internal(20_000)  # devices used to score each candidate k
    minibatch_above: int = internal(50_000)  # fleets larger than this use mini-batch k-means
    # Outliers (see SetAside). Features are log values scaled by the fleet's median and robust spread
    # (the 5th-95th percentile span over 3.29, a standard deviation for normal data), so the limit
    # reads in standard deviations that no 5% of the devices can stretch.
    # A clean simulated fleet's devices lie within 4.5 spreads of their cluster's centre even at k=2,
    # and a regime of at least 5% of the fleet within 3.3 of the median on every feature.
    outlier_limit: float = internal(8.0)  # robust spreads from the fleet's median (any feature) or every centre
    min_cluster_share: float = internal(0.02)  # a cluster under this share of the fleet is dissolved
    outlier_rounds: int = internal(3)  # refits after setting devices aside; the last fit stands as it is

    def validate(self) -> None:
        if self.k == 0 and not 2 <= self.k_min <= self.k_max:
            raise HdapError(f"cluster_k_min={self.k_min} and cluster_k_max={self.k_max} are not a range of at least 2 "
                            "clusters: set 2 <= cluster_k_min <= cluster_k_max.")
        if not self.outlier_limit > 0:
            raise HdapError(f"outlier_limit={self.outlier_limit} is not a distance: use a positive number of robust "
                            "spreads (default 8).")
        if not 0 <= self.min_cluster_share < 0.5:
            raise HdapError(f"min_cluster_share={self.min_cluster_share} is not a small share: use one from 0 (keep every "
                            "cluster) to below 0.5.")


class SetAside(str, Enum):
    """Why a device was set aside: it defines no centre, share or representative (it is still
    assigned its nearest cluster, so every device has one)."""

    EXTREME = "extreme"  # a feature farther than outlier_limit robust spreads from the fleet's median
    SMALL_CLUSTER = "small_cluster"  # k-means gave it a cluster under min_cluster_share of the fleet
    FAR = "far_from_clusters"  # farther than outlier_limit robust spreads from every cluster's centre

    def rule(self, config: ClusterConfig) -> str:
        if self is SetAside.EXTREME:
            return f"a feature more than {config.outlier_limit:g} robust spreads from the fleet's median"
        if self is SetAside.SMALL_CLUSTER:
            return f"in a cluster of under {100 * config.min_cluster_share:g}% of the fleet"
        return f"more than {config.outlier_limit:g} robust spreads from every cluster's centre"


@dataclass
class DeviceCluster:
    id: int
    size: int  # its devices, not counting those set aside
    weight: float  # share of the fleet (of the devices not set aside)
    representative: str  # device id
    centroid: dict[str, float]  # feature -> the cluster's median, in its own unit (ms, GB/s)
    representative_features: dict[str, float]


@dataclass
class ClusterSummary(Contract):
    FORMAT = "hdap.clusters/1"
    k: int
    selection: str  # how k was chosen, in words
    silhouette_scores: dict[int, float]  # per candidate k (empty when k was fixed)
    features: list[str]
    algorithm: str
    devices: int  # every device clustered: the clusters' sizes plus those set aside
    clusters: list[DeviceCluster]
    run_name: str = ""  # the pipeline run that clustered (its outputs are under <output_uri>/<run_name>/)
    set_aside: dict[str, int] = field(default_factory=dict)  # devices set aside per reason (`SetAside` value); none: {}
    outlier_rules: dict[str, str] = field(default_factory=dict)  # reason -> its rule, in words


@dataclass(frozen=True)
class ClusterInputs:
    features: Path


@dataclass(frozen=True)
class ClusterOutputs:
    assignments: Path  # device_id, cluster, distance, set_aside (Parquet; set_aside: a SetAside value or null)
    clusters: Path  # ClusterSummary
    report: Path  # HTML


def run(config: ClusterConfig, inputs: ClusterInputs, outputs: ClusterOutputs, context: StageContext) -> dict[str, float]:
    import pyarrow.parquet as pq

    from hdap.fleet.cluster import cluster_devices
    from hdap.report.fleet import clustering_report_html

    clustering = cluster_devices(pq.read_table(inputs.features), config)
    pq.write_table(clustering.assignments, outputs.assignments)
    clustering.summary(context.run_name).save(outputs.clusters)
    outputs.report.write_text(clustering_report_html(clustering))
    for name, path in (("assignments.parquet", outputs.assignments), ("clusters.json", outputs.clusters),
                       ("report.html", outputs.report)):
        context.store.put_file(context.uri("cluster", name), path)
    return clustering.metrics()


STAGE = Stage("cluster", "cluster devices", ClusterConfig, ClusterInputs, ClusterOutputs, run)

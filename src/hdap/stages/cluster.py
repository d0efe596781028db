"""Stage 2, cluster: k-means over the devices' performance features, one representative device per cluster.

Writes `assignments.parquet` (device -> cluster), `clusters.json` (`ClusterSummary`) and an HTML
report under `<output_uri>/<run>/cluster/`.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    def validate(self) -> None:
        if self.k == 0 and not 2 <= self.k_min <= self.k_max:
            raise HdapError(f"cluster_k_min={self.k_min} and cluster_k_max={self.k_max} are not a range of at least 2 "
                            "clusters: set 2 <= cluster_k_min <= cluster_k_max.")


@dataclass
class DeviceCluster:
    id: int
    size: int
    weight: float  # share of the fleet
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
    devices: int
    clusters: list[DeviceCluster]
    run_name: str = ""  # the pipeline run that clustered (its outputs are under <output_uri>/<run_name>/)


@dataclass(frozen=True)
class ClusterInputs:
    features: Path


@dataclass(frozen=True)
class ClusterOutputs:
    assignments: Path  # device_id, cluster, distance (Parquet)
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

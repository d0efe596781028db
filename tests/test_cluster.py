"""Clustering recovers the simulated fleet's hidden groups and picks honest representatives."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from hdap.errors import HdapError
from hdap.fleet.cluster import cluster_devices
from hdap.stages.cluster import ClusterConfig


def test_clusters_recover_the_ground_truth_groups_of_a_10k_fleet(fleet_10k) -> None:
    _, ingested, groups = fleet_10k
    clustering = cluster_devices(ingested.features, ClusterConfig(seed=0))
    ids = clustering.assignments.column("device_id").to_pylist()
    ari = adjusted_rand_score([groups[i] for i in ids], clustering.assignments.column("cluster").to_pylist())
    assert clustering.k == len(set(groups.values()))  # chosen automatically
    assert ari >= 0.9


def test_representatives_weighted_by_share_reproduce_the_fleet_mean_latency(fleet_10k) -> None:
    _, ingested, _ = fleet_10k
    features = ingested.features
    clustering = cluster_devices(features, ClusterConfig(seed=0))
    ids = features.column("device_id").to_pylist()
    for column in [c for c in clustering.features if c.startswith("probe_")]:
        values = dict(zip(ids, features.column(column).to_pylist()))
        fleet_mean = float(np.mean(list(values.values())))
        estimate = sum(c.weight * values[c.representative] for c in clustering.clusters)
        assert estimate == pytest.approx(fleet_mean, rel=0.02), column


def test_weights_are_shares_and_representatives_are_members(fleet_10k) -> None:
    _, ingested, _ = fleet_10k
    clustering = cluster_devices(ingested.features, ClusterConfig(k=3, seed=1))
    assert clustering.k == 3 and clustering.scores == {}
    assert sum(c.weight for c in clustering.clusters) == pytest.approx(1.0)
    labels = dict(zip(clustering.assignments.column("device_id").to_pylist(), clustering.assignments.column("cluster").to_pylist()))
    assert all(labels[c.representative] == c.id for c in clustering.clusters)
    # Ids run from the fastest cluster to the slowest.
    conv = [c.centroid["probe_conv3x3_fp16_median_ms"] for c in clustering.clusters]
    assert conv[0] == min(conv)


def test_large_fleets_use_mini_batch_k_means(fleet_10k) -> None:
    _, ingested, _ = fleet_10k
    clustering = cluster_devices(ingested.features, ClusterConfig(k=5, minibatch_above=1000))
    assert clustering.algorithm == "MiniBatchKMeans"


def test_too_few_devices_for_k_is_a_clear_error(fleet_10k) -> None:
    _, ingested, _ = fleet_10k
    with pytest.raises(HdapError, match="3 devices are too few to form 5 clusters"):
        cluster_devices(ingested.features.slice(0, 3), ClusterConfig(k=5))


@pytest.mark.filterwarnings("ignore:Number of distinct clusters:sklearn.exceptions.ConvergenceWarning")
def test_a_negative_k_or_more_clusters_than_distinct_devices_is_a_clear_error(fleet_10k) -> None:
    _, ingested, _ = fleet_10k
    with pytest.raises(HdapError, match="cluster_k=-1 is not a number of clusters"):
        cluster_devices(ingested.features, ClusterConfig(k=-1))
    first = ingested.features.slice(0, 1)
    clones = pa.concat_tables([first] * 10 + [ingested.features.slice(1, 1)] * 10)
    with pytest.raises(HdapError, match="fewer distinct performance profiles than k"):
        cluster_devices(clones, ClusterConfig(k=3))


def _cpu_features(states: list[str]) -> pa.Table:
    """A CPU fleet's features: two devices per reported state, slower the busier."""
    rows = [{"device_id": f"gw{i}-{state}", "sku": "cpu-onnxruntime", "power_mode": state, "mem_bandwidth_gbps_median": 10.0 - i,
             "probe_cpu_conv3x3_fp32_median_ms": 1.0 + 0.5 * index + 0.01 * i, "probe_cpu_conv3x3_int8_median_ms": 2.0 + index}
            for index, state in enumerate(states) for i in range(2)]
    return pa.Table.from_pylist(rows)


def test_a_cpu_fleet_has_one_cluster_per_declared_state_weighing_its_declared_share() -> None:
    clustering = cluster_devices(_cpu_features(["1", "all", "all+load"]), ClusterConfig(cpu_states="1@0.5,all@0.3,all+load@0.2"))
    assert clustering.k == 3 and clustering.algorithm == "declared states"
    assert [c.weight for c in clustering.clusters] == pytest.approx([0.5, 0.3, 0.2])
    assert [c.representative.split("-", 1)[1] for c in clustering.clusters] == ["1", "all", "all+load"]
    assert clustering.assignments.column("cluster").to_pylist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("reported, declared, says", [
    (["1", "all"], "1,all,all+load", "no device reported the CPU state 'all+load'"),
    (["1", "2"], "1,all", "devices report the CPU state '2', which cpu_states (1,all) does not declare"),
])
def test_a_cpu_fleet_whose_reports_and_declared_states_differ_is_refused_naming_the_state(reported, declared, says) -> None:
    with pytest.raises(HdapError, match=re.escape(says)):
        cluster_devices(_cpu_features(reported), ClusterConfig(cpu_states=declared))

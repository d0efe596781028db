"""A handful of extreme or hostile devices cannot steer the clustering (issue 19, finding 3).

Every hostile device reports values inside ingest's validity limits (probes <= 10 s, bandwidth
0.01..2000 GB/s), so only the cluster stage stands between it and the fleet's clusters.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from hdap.errors import HdapError
from hdap.fleet.cluster import Clustering, cluster_devices
from hdap.fleet.simulate import simulate_features
from hdap.stages.cluster import ClusterConfig, SetAside

SKU = "jetson-xavier-nx"
DEVICES = 2000
HUNG_MS = 9000.0  # every probe this slow: a hung device, still inside the 10 s validity limit


@pytest.fixture(scope="module")
def fleet() -> pa.Table:
    features, _ = simulate_features(SKU, DEVICES, days=5, seed=3)
    return features


def _probes(features: pa.Table) -> list[str]:
    return [c for c in features.column_names if c.startswith("probe_") and c.endswith("_median_ms")]


def _hostile(features: pa.Table, n: int, kind: str, seed: int = 0) -> pa.Table:
    """`n` hostile devices: copies of real devices whose performance features were replaced."""
    rng = np.random.default_rng(seed)
    rows = features.take(rng.choice(features.num_rows, n, replace=False)).to_pylist()
    probes = _probes(features)
    medians = {p: float(np.median(features.column(p).to_numpy())) for p in probes}
    slowest = {p: float(np.quantile(features.column(p).to_numpy(), 0.99)) for p in probes}
    logs = {p: np.log(features.column(p).to_numpy()) for p in [*probes, "mem_bandwidth_gbps_median"]}
    spread = {p: float(np.subtract(*np.quantile(v, [0.95, 0.05]))) / 3.29 for p, v in logs.items()}
    for i, row in enumerate(rows):
        row["device_id"] = f"hostile-{kind}-{i:03d}"
        for p in probes:
            if kind == "hung":  # every probe at 9 s
                row[p] = HUNG_MS
            elif kind == "slow-group":  # a tight, plausible-looking group 3x slower than the slowest devices
                row[p] = 3.0 * slowest[p] * rng.lognormal(0, 0.01)
            elif kind == "fast-group":  # implausibly fast, yet positive
                row[p] = 0.02 * medians[p] * rng.lognormal(0, 0.01)
            elif kind == "scrambled":  # each probe from a different real device, scaled: inconsistent vectors
                row[p] = float(features.column(p)[int(rng.integers(features.num_rows))].as_py()) * rng.uniform(0.5, 2.0)
        if kind == "edge":  # every feature just inside the outlier limit (7.5 of 8 robust spreads), up or down at random
            for p, width in spread.items():
                row[p] = float(np.exp(np.median(logs[p]) + rng.choice([-1, 1]) * 7.5 * width))
        if kind == "starved":  # probes of a real device, memory bandwidth at the validity floor
            row["mem_bandwidth_gbps_median"] = 0.02
    return pa.Table.from_pylist(rows, schema=features.schema)


def _labels(clustering: Clustering, ids: list[str]) -> list[int]:
    table = dict(zip(clustering.assignments.column("device_id").to_pylist(), clustering.assignments.column("cluster").to_pylist()))
    return [table[i] for i in ids]


def _fleet_latency(clustering: Clustering, features: pa.Table) -> dict[str, float]:
    """Per probe: the clusters' shares times their representatives' latency (what the surrogates are weighted by)."""
    rows = {r["device_id"]: r for r in features.to_pylist()}
    return {p: sum(c.weight * rows[c.representative][p] for c in clustering.clusters) for p in _probes(features)}


def _set_aside(clustering: Clustering) -> dict[str, str]:
    table = clustering.assignments
    return {d: r for d, r in zip(table.column("device_id").to_pylist(), table.column("set_aside").to_pylist()) if r}


# -- (a) the three scenarios of the finding ------------------------------------------------------
def test_one_hung_device_under_automatic_k_gets_no_cluster_and_is_no_representative(fleet) -> None:
    clean = cluster_devices(fleet, ClusterConfig(seed=0))
    steered = cluster_devices(pa.concat_tables([fleet, _hostile(fleet, 1, "hung")]), ClusterConfig(seed=0))
    assert steered.k == clean.k
    assert "hostile-hung-000" not in {c.representative for c in steered.clusters}
    assert min(c.size for c in steered.clusters) > 1
    assert _set_aside(steered) == {"hostile-hung-000": "extreme"}


def test_one_hung_device_under_a_fixed_k_does_not_merge_real_clusters(fleet) -> None:
    ids = fleet.column("device_id").to_pylist()
    clean = cluster_devices(fleet, ClusterConfig(k=5, seed=0))
    steered = cluster_devices(pa.concat_tables([fleet, _hostile(fleet, 1, "hung")]), ClusterConfig(k=5, seed=0))
    assert adjusted_rand_score(_labels(clean, ids), _labels(steered, ids)) >= 0.99
    assert sorted(round(c.weight, 2) for c in steered.clusters) == sorted(round(c.weight, 2) for c in clean.clusters)


def test_a_few_hung_devices_do_not_collapse_automatic_k(fleet) -> None:
    clean = cluster_devices(fleet, ClusterConfig(seed=0))
    steered = cluster_devices(pa.concat_tables([fleet, _hostile(fleet, 5, "hung")]), ClusterConfig(seed=0))
    assert steered.k == clean.k == 5
    assert min(c.weight for c in steered.clusters) > 0.05


# -- (b) the bound: 1% hostile devices ------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 5], ids=["automatic-k", "fixed-k"])
@pytest.mark.parametrize("kind", ["hung", "slow-group", "fast-group", "scrambled", "starved", "edge"])
def test_one_percent_hostile_devices_keep_the_clean_clustering_and_fleet_latency(fleet, kind: str, k: int) -> None:
    ids = fleet.column("device_id").to_pylist()
    config = ClusterConfig(k=k, seed=0)
    clean = cluster_devices(fleet, config)
    steered = cluster_devices(pa.concat_tables([fleet, _hostile(fleet, DEVICES // 100, kind)]), config)
    ari = adjusted_rand_score(_labels(clean, ids), _labels(steered, ids))
    assert ari >= 0.9, f"ARI {ari:.3f}"
    assert not {c.representative for c in steered.clusters} & set(_set_aside(steered))
    assert all(not c.representative.startswith("hostile") for c in steered.clusters)
    before, after = _fleet_latency(clean, fleet), _fleet_latency(steered, fleet)
    for probe in before:
        assert after[probe] == pytest.approx(before[probe], rel=0.02), probe


# -- (c) what was set aside is stated ---------------------------------------------------------------
def test_the_metrics_and_summary_count_the_devices_set_aside_and_why(fleet) -> None:
    steered = cluster_devices(pa.concat_tables([fleet, _hostile(fleet, 7, "hung"), _hostile(fleet, 20, "slow-group")]),
                              ClusterConfig(seed=0))
    metrics = steered.metrics()
    assert metrics["devices_set_aside"] == sum(metrics[f"set_aside_{r.value}"] for r in SetAside) >= 7
    assert set(_set_aside(steered)) >= {f"hostile-hung-{i:03d}" for i in range(7)}
    assert sum(1 for d in _set_aside(steered) if not d.startswith("hostile")) <= 2  # real devices are kept
    summary = steered.summary()
    assert sum(summary.set_aside.values()) == metrics["devices_set_aside"]
    assert summary.devices == DEVICES + 27 == sum(c.size for c in summary.clusters) + metrics["devices_set_aside"]
    # Every device, set aside or not, still has a cluster (its nearest), so downstream joins find it.
    assert steered.assignments.num_rows == DEVICES + 27 and steered.assignments.column("cluster").null_count == 0


def test_a_clean_fleet_sets_no_device_aside(fleet) -> None:
    clustering = cluster_devices(fleet, ClusterConfig(seed=0))
    assert clustering.metrics()["devices_set_aside"] == 0 and _set_aside(clustering) == {}


def test_outlier_settings_out_of_range_are_refused_in_one_sentence() -> None:
    with pytest.raises(HdapError, match="min_cluster_share=0.6 is not a small share"):
        ClusterConfig(min_cluster_share=0.6)
    with pytest.raises(HdapError, match="outlier_limit=0.0 is not a distance"):
        ClusterConfig(outlier_limit=0.0)

"""The fleet simulator: reproducible, in the schema, never ahead of its end time, written in chunks."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from hdap.fleet.schema import TELEMETRY_SCHEMA
from hdap.fleet.simulate import REGIMES, simulate_chunk
from hdap.fleet.sku import SKUS, get_sku
from hdap.store import ObjectStore
from tests.fixtures import SIMULATION_END


def test_the_same_seed_gives_the_same_fleet() -> None:
    sku = get_sku("jetson-xavier-nx")
    first = simulate_chunk(sku, 0, 200, 2, SIMULATION_END, seed=3)
    again = simulate_chunk(sku, 0, 200, 2, SIMULATION_END, seed=3)
    other = simulate_chunk(sku, 0, 200, 2, SIMULATION_END, seed=4)
    assert first.days[1][1].equals(again.days[1][1])
    assert not first.days[1][1].equals(other.days[1][1])


def test_every_simulated_sku_simulates_in_the_schema_with_reports_no_later_than_the_end() -> None:
    for name in [name for name, sku in SKUS.items() if not sku.self_measured]:
        chunk = simulate_chunk(get_sku(name), 0, 300, 3, SIMULATION_END, seed=0)
        for _, table in chunk.days:
            assert table.schema.equals(TELEMETRY_SCHEMA)
            assert pc.max(table.column("timestamp")).as_py() <= SIMULATION_END
        assert set(chunk.truth.column("group").to_pylist()) <= {r.name for r in REGIMES[name]}


def test_a_cpu_fleet_is_refused_by_the_simulator_saying_it_measures_itself(object_store, bucket) -> None:
    from hdap.errors import HdapError
    from hdap.fleet.simulate import SimulationConfig, simulate_fleet

    with pytest.raises(HdapError, match="measured, not simulated: run `hdap profile --cpu-states`"):
        simulate_fleet(object_store, SimulationConfig(sku="cpu-onnxruntime", devices=10, days=1,
                                                      telemetry_uri=f"s3://{bucket}/t", truth_uri=f"s3://{bucket}/truth"))


def test_int8_probes_are_null_on_a_sku_without_int8() -> None:
    nano = simulate_chunk(get_sku("jetson-nano"), 0, 50, 1, SIMULATION_END, seed=0).days[0][1]
    assert nano.column("probe_conv3x3_int8_ms").null_count == 50
    assert nano.column("probe_conv3x3_fp16_ms").null_count == 0


def test_throttled_devices_are_slower_than_cool_ones_at_the_same_power_mode() -> None:
    chunk = simulate_chunk(get_sku("jetson-xavier-nx"), 0, 3000, 1, SIMULATION_END, seed=0)
    table = chunk.days[0][1]
    groups = np.array(chunk.truth.column("group").to_pylist())
    conv = table.column("probe_conv3x3_fp16_ms").to_numpy()
    assert np.median(conv[groups == "20W-throttled"]) > 1.2 * np.median(conv[groups == "20W"])


def test_a_fleet_is_written_in_chunks_of_devices_one_object_per_chunk_and_day(object_store: ObjectStore, bucket: str) -> None:
    from hdap.fleet.simulate import SimulationConfig, simulate_fleet

    config = SimulationConfig(devices=250, days=2, chunk_devices=100, end=SIMULATION_END,
                              telemetry_uri=f"s3://{bucket}/telemetry", truth_uri=f"s3://{bucket}/truth")
    result = simulate_fleet(object_store, config)
    assert len(result.telemetry_objects) == 3 * 2 and len(result.truth_objects) == 3
    assert result.reports == 500
    assert abs(sum(result.group_shares.values()) - 1.0) < 1e-9

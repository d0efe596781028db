"""Ingest: validation, quarantine with reasons, and per-device aggregation."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from hdap.errors import HdapError
from hdap.fleet.ingest import ingest_telemetry
from hdap.fleet.schema import probe_column, probes_for
from hdap.stages.ingest import IngestConfig, IngestSummary
from hdap.fleet.simulate import simulate_chunk
from hdap.fleet.sku import get_sku
from hdap.store import ObjectStore
from tests.fixtures import AS_OF, SIMULATION_END

SKU = "jetson-xavier-nx"


def good_rows(devices: int = 4, days: int = 3) -> list[dict]:
    chunk = simulate_chunk(get_sku(SKU), 0, devices, days, SIMULATION_END, seed=1)
    return [row for _, table in chunk.days for row in table.to_pylist()]


def put_rows(store: ObjectStore, uri: str, rows: list[dict]) -> None:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    store.put_bytes(uri, sink.getvalue())


def test_each_kind_of_bad_row_is_quarantined_with_its_reason_and_no_valid_row_is_lost(object_store: ObjectStore, bucket: str) -> None:
    good = good_rows()
    template = good[0]

    def bad(**changes) -> dict:
        return {**template, "device_id": "xnx-bad", **changes}

    bad_rows = [
        bad(temperature_c=None),  # missing field
        bad(probe_gemm_fp16_ms=float("nan")),  # NaN
        bad(probe_conv3x3_fp16_ms=-0.5),  # negative latency
        bad(probe_launch_ms=3.6e6),  # absurd latency: an hour
        bad(sku="jetson-tx9"),  # unknown SKU
        bad(timestamp=AS_OF + timedelta(days=2)),  # in the future
        bad(background_load=7.0),  # impossible state
        dict(good[5]),  # an exact duplicate of a valid row in another object
    ]
    put_rows(object_store, f"s3://{bucket}/telemetry/good.parquet", good)
    put_rows(object_store, f"s3://{bucket}/telemetry/z-bad.parquet", bad_rows)
    jsonl_rows = [json.dumps({**{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in template.items()}, "device_id": "xnx-json"})]
    jsonl_rows.append("{not json")
    jsonl_rows.append(json.dumps({**json.loads(jsonl_rows[0]), "temperature_c": "hot"}))
    object_store.put_bytes(f"s3://{bucket}/telemetry/z-agent.jsonl", "\n".join(jsonl_rows).encode())

    result = ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/telemetry", SKU, as_of=AS_OF))

    reasons = result.quarantine.column("reason").to_pylist()
    assert reasons == [  # objects in name order: good.parquet, z-agent.jsonl, z-bad.parquet
        "unparseable JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1) (line 2)",
        "wrong type in temperature_c",
        "missing temperature_c",
        "NaN in probe_gemm_fp16_ms",
        "latency out of range in probe_conv3x3_fp16_ms",
        "latency out of range in probe_launch_ms",
        "unknown sku 'jetson-tx9'",
        "timestamp in the future",
        "value out of range in background_load",
        "duplicate record",
    ]
    sources = result.quarantine.column("source").to_pylist()
    rows = result.quarantine.column("row").to_pylist()
    assert (sources[0], rows[0]) == (f"s3://{bucket}/telemetry/z-agent.jsonl", 1)
    assert (sources[2], rows[2]) == (f"s3://{bucket}/telemetry/z-bad.parquet", 0)
    assert (sources[-1], rows[-1]) == (f"s3://{bucket}/telemetry/z-bad.parquet", 7)
    assert result.rows_read == len(good) + len(bad_rows) + 3
    assert result.rows_read == result.rows_valid + result.rows_quarantined
    assert result.rows_valid == len(good) + 1  # every good row, plus the one valid JSON line
    assert result.features.num_rows == 4 + 1
    assert result.reasons == {"unparseable_json": 1, "wrong_type_temperature_c": 1, "missing_temperature_c": 1,
                              "nan_probe_gemm_fp16_ms": 1, "out_of_range_probe_conv3x3_fp16_ms": 1, "out_of_range_probe_launch_ms": 1,
                              "unknown_sku": 1, "future_timestamp": 1, "out_of_range_background_load": 1, "duplicate_record": 1}
    assert result.quarantine.column("reason_kind").to_pylist()[:3] == ["unparseable_json", "wrong_type", "missing"]
    assert result.quarantine.column("reason_column").to_pylist()[:3] == ["", "temperature_c", "temperature_c"]


def test_every_probe_column_is_counted_under_its_own_key_for_every_kind_of_reason_about_a_column(object_store: ObjectStore, bucket: str) -> None:
    """A missing probe_conv3x3_int8_ms and a missing probe_conv1x1_fp16_ms are two reasons, not one."""
    template = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in good_rows(devices=1, days=1)[0].items()}
    faults = {"missing": None, "wrong_type": "fast", "nan": "NaN", "out_of_range": -1.0}
    lines, expected = [], {}
    probes = [probe_column(p) for p in probes_for(get_sku(SKU))]  # the ones this SKU must report (a Jetson: not the CPU's)
    for column in probes:
        for kind, value in faults.items():
            row = {**template, "device_id": f"xnx-{kind}-{column}", column: value}
            lines.append(json.dumps({k: v for k, v in row.items() if not (k == column and value is None)}))
            expected[f"{kind}_{column}"] = 1
    object_store.put_bytes(f"s3://{bucket}/probes/a.jsonl", "\n".join(lines).encode())

    result = ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/probes", SKU, as_of=AS_OF))

    assert result.reasons == expected and len(expected) == len(faults) * len(probes)
    summary = IngestSummary(f"s3://{bucket}/probes", SKU, result.objects_read, result.rows_read, result.rows_valid,
                            result.rows_quarantined, result.features.num_rows, result.reasons, result.unreadable_objects)
    metrics = IngestSummary.from_json(json.loads(summary.dumps())).metrics()
    assert {f"quarantined_{key}" for key in expected} <= set(metrics)


def test_features_are_per_device_medians_and_spreads(object_store: ObjectStore, bucket: str) -> None:
    good = good_rows(devices=3, days=7)
    put_rows(object_store, f"s3://{bucket}/t/day.parquet", good)
    features = ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/t", SKU, as_of=AS_OF)).features
    device = features.column("device_id")[1].as_py()
    latencies = np.array([r["probe_conv3x3_fp16_ms"] for r in good if r["device_id"] == device])
    row = features.filter(pa.compute.equal(features.column("device_id"), device)).to_pylist()[0]
    assert row["reports"] == 7
    assert row["probe_conv3x3_fp16_median_ms"] == pytest.approx(np.median(latencies), rel=1e-3)
    assert row["probe_conv3x3_fp16_iqr_ms"] > 0
    assert row["power_mode"] in {"10W", "15W", "20W"}


def test_an_unknown_schema_version_is_a_clear_error(object_store: ObjectStore, bucket: str) -> None:
    rows = [{**r, "schema_version": 2} for r in good_rows(devices=1, days=1)]
    put_rows(object_store, f"s3://{bucket}/v2/x.parquet", rows)
    with pytest.raises(HdapError, match=r"v2/x.parquet is written in telemetry schema version 2, but this hdap reads version 1"):
        ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/v2", SKU, as_of=AS_OF))


def test_an_empty_prefix_says_where_it_looked(object_store: ObjectStore, bucket: str) -> None:
    with pytest.raises(HdapError, match=f"no telemetry under s3://{bucket}/nothing"):
        ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/nothing", SKU, as_of=AS_OF))


def test_an_unreadable_object_is_listed_and_the_rest_is_ingested(object_store: ObjectStore, bucket: str) -> None:
    put_rows(object_store, f"s3://{bucket}/u/good.parquet", good_rows(devices=2, days=2))
    object_store.put_bytes(f"s3://{bucket}/u/broken.parquet", b"PAR1 this is not parquet")
    result = ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/u", SKU, as_of=AS_OF))
    assert list(result.unreadable_objects) == [f"s3://{bucket}/u/broken.parquet"]
    assert result.features.num_rows == 2


def test_timestamps_at_microsecond_and_nanosecond_precision_are_valid(object_store: ObjectStore, bucket: str) -> None:
    rows = good_rows(devices=2, days=2)
    table = pa.Table.from_pylist(rows)
    for unit in ("us", "ns"):
        fine = table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                pc.add(table.column("timestamp").cast(pa.timestamp(unit, tz="UTC")), pa.scalar(123, pa.duration(unit))))
        sink = io.BytesIO()
        pq.write_table(fine, sink)
        object_store.put_bytes(f"s3://{bucket}/{unit}/x.parquet", sink.getvalue())
        result = ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/{unit}", SKU, as_of=AS_OF))
        assert (result.rows_valid, result.rows_quarantined) == (4, 0), unit


def test_a_row_in_an_unknown_schema_version_stops_ingest_even_beside_unreadable_versions(object_store: ObjectStore, bucket: str) -> None:
    template = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in good_rows(devices=1, days=1)[0].items()}
    lines = [json.dumps({**template, "schema_version": 2}), json.dumps({**template, "schema_version": "v1"})]
    object_store.put_bytes(f"s3://{bucket}/mixed/a.jsonl", "\n".join(lines).encode())
    with pytest.raises(HdapError, match="schema version 2"):
        ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/mixed", SKU, as_of=AS_OF))


def test_when_every_row_is_quarantined_the_result_is_empty_not_a_crash(object_store: ObjectStore, bucket: str) -> None:
    put_rows(object_store, f"s3://{bucket}/other/x.parquet", good_rows(devices=2, days=1))
    result = ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/other", "jetson-nano", as_of=AS_OF))
    assert result.features.num_rows == 0 and result.rows_quarantined == 2
    assert result.reasons == {"wrong_sku": 2}


def test_a_prefix_names_a_folder_not_its_siblings(object_store: ObjectStore, bucket: str) -> None:
    put_rows(object_store, f"s3://{bucket}/fleet-a/x.parquet", good_rows(devices=1, days=1))
    put_rows(object_store, f"s3://{bucket}/fleet-a-old/x.parquet", good_rows(devices=3, days=1))
    assert ingest_telemetry(object_store, IngestConfig(f"s3://{bucket}/fleet-a", SKU, as_of=AS_OF)).rows_read == 1

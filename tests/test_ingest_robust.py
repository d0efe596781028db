"""Ingest against hostile input (issue 19, findings 4 and 5): one bad device or object never stops the run,
and every object under the prefix is read or listed with its reason, so the counts always reconcile."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hdap.errors import HdapError
from hdap.fleet.ingest import IngestResult, ingest_telemetry
from hdap.fleet.quarantine import ObjectReason
from hdap.fleet.schema import EARLIEST_TIMESTAMP, is_device_id
from hdap.fleet.simulate import simulate_chunk
from hdap.fleet.sku import get_sku
from hdap.latency.fleet_profiling import _uploaded_profile, device_uri
from hdap.stages import StageContext
from hdap.stages.ingest import IngestConfig, IngestInputs, IngestOutputs, IngestSummary
from hdap.stages.ingest import run as run_ingest_stage
from hdap.stages.surrogate import SurrogateConfig
from hdap.store import ObjectStore
from tests.fixtures import AS_OF, SIMULATION_END

SKU = "jetson-xavier-nx"


def good_rows(devices: int = 3, days: int = 2) -> list[dict]:
    chunk = simulate_chunk(get_sku(SKU), 0, devices, days, SIMULATION_END, seed=3)
    return [row for _, table in chunk.days for row in table.to_pylist()]


def parquet_bytes(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def json_line(row: dict) -> str:
    return json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()})


def ingest(store: ObjectStore, uri: str) -> IngestResult:
    result = ingest_telemetry(store, IngestConfig(uri, SKU, as_of=AS_OF))
    assert_reconciled(result)
    return result


def assert_reconciled(result: IngestResult) -> None:
    assert result.objects_read + len(result.unreadable_objects) + len(result.skipped_objects) == result.objects_listed
    assert result.rows_read == result.rows_valid + result.rows_quarantined
    assert sum(result.object_reasons.values()) == result.objects_listed - result.objects_read
    assert None not in result.quarantine.column("reason").to_pylist()


HOSTILE_IDS = {
    "path": "a/../../evil",
    "dot": ".",
    "dotdot": "..",
    "leading_dot": ".hidden",
    "empty": "",
    "megabyte": "x" * 1_000_000,
    "129_chars": "d" * 129,
    "newline": "dev-1\nINFO forged log line",
    "trailing_newline": "dev-1\n",
    "markup": "<script>alert(1)</script>",
    "space": "dev 1",
    "non_ascii": "dév-1",
    "nul": "dev\x00",
    "leading_dash": "-rf",
}


@pytest.mark.parametrize("kind", list(HOSTILE_IDS))
def test_a_hostile_device_id_is_quarantined_and_the_other_devices_are_ingested(object_store: ObjectStore, bucket: str, kind: str) -> None:
    good = good_rows()
    hostile = {**good[0], "device_id": HOSTILE_IDS[kind]}
    object_store.put_bytes(f"s3://{bucket}/t/a.parquet", parquet_bytes([*good, hostile]))
    object_store.put_bytes(f"s3://{bucket}/t/b.jsonl", json_line(hostile).encode())

    result = ingest(object_store, f"s3://{bucket}/t")

    assert result.reasons == {"bad_device_id": 2}
    assert result.quarantine.column("reason").to_pylist()[0].startswith("device id is not 1 to 128 letters, digits")
    assert (result.rows_valid, result.features.num_rows) == (len(good), 3)
    assert HOSTILE_IDS[kind] not in result.features.column("device_id").to_pylist()


def test_the_device_id_rule_takes_hostnames_serials_macs_and_uuids_up_to_128_characters() -> None:
    for good in ["xnx-00001", "Jetson_7.lab", "00:1B:44:11:3A:B7", "123e4567-e89b-12d3-a456-426614174000", "d" * 128, "7"]:
        assert is_device_id(good), good
    assert not any(is_device_id(bad) for bad in [*HOSTILE_IDS.values(), None, 7])


@pytest.mark.parametrize("when", ["0001-01-01", "1900-01-01", "1970-01-01", "1999-12-31T23:59:59"])
def test_a_timestamp_before_2000_is_quarantined_in_parquet_and_json(object_store: ObjectStore, bucket: str, when: str) -> None:
    good = good_rows()
    stamp = datetime.fromisoformat(when).replace(tzinfo=timezone.utc)
    old = {**good[0], "device_id": "xnx-old", "timestamp": stamp}
    object_store.put_bytes(f"s3://{bucket}/t/a.parquet", parquet_bytes([*good, old]))
    object_store.put_bytes(f"s3://{bucket}/t/b.jsonl", json_line(old).encode())

    result = ingest(object_store, f"s3://{bucket}/t")

    assert result.reasons == {"old_timestamp": 2}
    assert set(result.quarantine.column("reason").to_pylist()) == {"timestamp before 2000-01-01"}
    assert result.rows_valid == len(good)


def test_a_timestamp_at_the_earliest_instant_is_valid(object_store: ObjectStore, bucket: str) -> None:
    row = {**good_rows(devices=1, days=1)[0], "timestamp": EARLIEST_TIMESTAMP}
    object_store.put_bytes(f"s3://{bucket}/t/a.parquet", parquet_bytes([row]))
    assert ingest(object_store, f"s3://{bucket}/t").rows_valid == 1


def test_an_object_that_fails_its_sha256_is_listed_as_corrupt_and_the_rest_is_ingested(object_store: ObjectStore, bucket: str) -> None:
    good = good_rows()
    object_store.put_bytes(f"s3://{bucket}/t/a.parquet", parquet_bytes(good))
    data = parquet_bytes(good_rows(devices=1, days=1))
    # Written past hdap's put_bytes, with a digest of other bytes: as a bit flip on disk or a bad upload leaves it.
    object_store.client.put_object(bucket, "t/b.parquet", io.BytesIO(data), len(data),
                                   metadata={"sha256": hashlib.sha256(b"other bytes").hexdigest()})

    result = ingest(object_store, f"s3://{bucket}/t")

    assert list(result.unreadable_objects) == [f"s3://{bucket}/t/b.parquet"]
    assert "do not match the sha256" in result.unreadable_objects[f"s3://{bucket}/t/b.parquet"]
    assert result.object_reasons[ObjectReason.CORRUPT.value] == 1
    assert (result.objects_listed, result.objects_read, result.rows_valid) == (2, 1, len(good))


def test_a_truncated_parquet_object_is_listed_as_unparseable_and_the_rest_is_ingested(object_store: ObjectStore, bucket: str) -> None:
    good = good_rows()
    object_store.put_bytes(f"s3://{bucket}/t/a.parquet", parquet_bytes(good))
    data = parquet_bytes(good)
    object_store.put_bytes(f"s3://{bucket}/t/b.parquet", data[: len(data) // 2])

    result = ingest(object_store, f"s3://{bucket}/t")

    assert result.object_reasons == {"corrupt": 0, "unparseable": 1, "unsupported_format": 0}
    assert result.unreadable_objects[f"s3://{bucket}/t/b.parquet"].startswith("it cannot be parsed: ")
    assert result.rows_valid == len(good)


def test_a_truncated_json_lines_object_costs_only_its_cut_line(object_store: ObjectStore, bucket: str) -> None:
    good = good_rows()
    text = "\n".join(json_line(row) for row in good)
    object_store.put_bytes(f"s3://{bucket}/t/a.jsonl", text[:-10].encode())

    result = ingest(object_store, f"s3://{bucket}/t")

    assert (result.rows_valid, result.reasons) == (len(good) - 1, {"unparseable_json": 1})


def test_a_json_line_that_is_not_utf8_is_quarantined_not_mangled(object_store: ObjectStore, bucket: str) -> None:
    good = good_rows(devices=1, days=1)
    lines = [json_line(good[0]).encode(), json_line({**good[0], "firmware": "r35"}).replace("r35", "r\xff35").encode("latin-1")]
    object_store.put_bytes(f"s3://{bucket}/t/a.jsonl", b"\n".join(lines))

    result = ingest(object_store, f"s3://{bucket}/t")

    assert (result.rows_valid, result.reasons) == (1, {"unparseable_json": 1})


def test_a_parquet_string_that_is_not_utf8_costs_its_row_not_the_object(object_store: ObjectStore, bucket: str) -> None:
    table = pa.Table.from_pylist(good_rows())
    ids = pa.array([f"xnx-{i}".encode() for i in range(table.num_rows - 1)] + [b"xnx-\xff"], pa.binary())
    unchecked = pa.Array.from_buffers(pa.string(), len(ids), ids.buffers())  # as a damaged or hostile writer leaves it
    sink = io.BytesIO()
    pq.write_table(table.set_column(table.schema.get_field_index("device_id"), "device_id", unchecked), sink)
    object_store.put_bytes(f"s3://{bucket}/t/a.parquet", sink.getvalue())

    result = ingest(object_store, f"s3://{bucket}/t")

    assert (result.rows_valid, result.reasons) == (table.num_rows - 1, {"wrong_type_device_id": 1})


def test_a_json_string_with_a_unicode_line_separator_stays_one_row(object_store: ObjectStore, bucket: str) -> None:
    row = {**good_rows(devices=1, days=1)[0], "firmware": "r35\u2028beta"}
    object_store.put_bytes(f"s3://{bucket}/t/a.jsonl", json.dumps(json.loads(json_line(row)), ensure_ascii=False).encode())

    result = ingest(object_store, f"s3://{bucket}/t")

    assert (result.rows_read, result.rows_valid) == (1, 1)


def test_objects_of_formats_ingest_does_not_read_are_listed_as_skipped_and_case_variants_are_read(object_store: ObjectStore, bucket: str) -> None:
    good = good_rows()
    data = parquet_bytes(good[:2])
    object_store.put_bytes(f"s3://{bucket}/t/a.PARQUET", data)
    object_store.put_bytes(f"s3://{bucket}/t/b.JsonL", "\n".join(json_line(r) for r in good[2:4]).encode())
    object_store.put_bytes(f"s3://{bucket}/t/c.parquet.gz", gzip.compress(parquet_bytes(good[4:])))
    object_store.put_bytes(f"s3://{bucket}/t/d.csv", b"device_id,timestamp\nx,1\n")
    object_store.put_bytes(f"s3://{bucket}/t/README", b"telemetry lands here")

    result = ingest(object_store, f"s3://{bucket}/t")

    assert (result.objects_listed, result.objects_read, result.rows_valid) == (5, 2, 4)
    formats = "is not one ingest reads (.parquet, .jsonl, .json or .ndjson, uncompressed)"
    assert result.skipped_objects == {f"s3://{bucket}/t/c.parquet.gz": f"its format (.gz) {formats}",
                                      f"s3://{bucket}/t/d.csv": f"its format (.csv) {formats}",
                                      f"s3://{bucket}/t/README": f"its format (no suffix) {formats}"}
    assert result.object_reasons == {"corrupt": 0, "unparseable": 0, "unsupported_format": 3}


def test_the_stage_summary_and_metrics_account_for_every_object(object_store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    good = good_rows()
    object_store.put_bytes(f"s3://{bucket}/t/a.parquet", parquet_bytes(good))
    object_store.put_bytes(f"s3://{bucket}/t/b.parquet", b"PAR1 not parquet")
    object_store.put_bytes(f"s3://{bucket}/t/c.csv", b"a,b\n")
    object_store.put_bytes(f"s3://{bucket}/t/d.jsonl", json_line({**good[0], "device_id": "a/../../evil"}).encode())
    context = StageContext(object_store, f"s3://{bucket}/runs", "r1")

    metrics = run_ingest_stage(IngestConfig(f"s3://{bucket}/t", SKU, as_of=AS_OF), IngestInputs(),
                               IngestOutputs(tmp_path / "features.parquet", tmp_path / "quarantine.parquet"), context)

    summary = IngestSummary.get(object_store, context.uri("ingest", "summary.json"))
    assert (summary.objects_listed, summary.objects_read, len(summary.unreadable_objects), len(summary.skipped_objects)) == (4, 2, 1, 1)
    assert summary.object_reasons == {"corrupt": 0, "unparseable": 1, "unsupported_format": 1}
    assert metrics["objects_read"] + metrics["objects_unreadable"] + metrics["objects_skipped"] == metrics["objects_listed"] == 4
    assert (metrics["objects_unparseable"], metrics["objects_unsupported_format"], metrics["quarantined_bad_device_id"]) == (1, 1, 1)
    assert metrics["rows_read"] == metrics["rows_valid"] + metrics["rows_quarantined"]


def test_a_summary_written_before_the_object_counts_still_reads() -> None:
    old = {"format": IngestSummary.FORMAT, "telemetry_uri": "s3://b/t", "sku": SKU, "objects_read": 1, "rows_read": 2,
           "rows_valid": 2, "rows_quarantined": 0, "devices": 1, "quarantine_reasons": {}, "unreadable_objects": {}}
    summary = IngestSummary.from_json(old)
    assert (summary.objects_listed, summary.skipped_objects, summary.metrics()["objects_skipped"]) == (0, {}, 0)


def test_the_surrogate_step_never_uses_a_device_id_outside_the_rule_as_a_path(object_store: ObjectStore, bucket: str) -> None:
    config = SurrogateConfig(profiles_uri=f"s3://{bucket}/profiles")
    assert device_uri(config.profiles_uri, "xnx-00001", "profile.parquet") == f"s3://{bucket}/profiles/xnx-00001/profile.parquet"
    assert _uploaded_profile(object_store, config, "xnx-00001", ("fp16",)) is None  # a valid id without an upload
    for hostile in ["a/../../evil", "..", "x" * 1_000_000]:
        with pytest.raises(HdapError, match=r"is not 1 to 128 letters, digits.*: run ingest and cluster again"):
            _uploaded_profile(object_store, config, hostile, ("fp16",))

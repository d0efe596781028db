"""Ingest: every telemetry object under a prefix -> one feature row per device.

Each object (Parquet or JSON lines, any layout under the prefix) is read, conformed to the
schema and validated row by row. A row that fails goes to the quarantine table with the
reason and where it came from (object URI and row number); nothing is dropped silently, and
`rows_read == rows_valid + rows_quarantined` always holds. An object written with a schema
version this hdap does not know stops the stage: guessing at its meaning would be worse.

Valid rows are aggregated per device over every report under the prefix with robust
statistics: the median and inter-quartile range of every probe latency, medians of the device
state. (The prefix is the window: point it at the days to use.)
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hdap.errors import HdapError
from hdap.fleet.quarantine import QUARANTINE_SCHEMA, QuarantineReason, ReasonKind, RowReasons, quarantine_rows, reason_counts
from hdap.fleet.schema import (
    MAX_PROBE_LATENCY_MS,
    PROBE_COLUMNS,
    SCHEMA_VERSION,
    TELEMETRY_SCHEMA,
    VALUE_RANGES,
    probe_column,
    probes_for,
)
from hdap.fleet.sku import SKUS, get_sku
from hdap.progress import progress
from hdap.stages.ingest import IngestConfig
from hdap.store import ObjectStore

log = logging.getLogger("hdap")

READABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")
CLOCK_SKEW = timedelta(minutes=10)  # device clocks drift; a report this far ahead is still "now"
STATE_COLUMNS = ["temperature_c", "gpu_clock_mhz", "cpu_clock_mhz", "emc_clock_mhz", "mem_bandwidth_gbps", "background_load"]


@dataclass
class IngestResult:
    features: pa.Table  # one row per device
    quarantine: pa.Table  # QUARANTINE_SCHEMA
    objects_read: int
    rows_read: int
    rows_valid: int
    reasons: dict[str, int] = field(default_factory=dict)  # quarantined rows per reason key (`QuarantineReason.key`)
    unreadable_objects: dict[str, str] = field(default_factory=dict)  # uri -> why it could not be parsed

    @property
    def rows_quarantined(self) -> int:
        return self.quarantine.num_rows


# -- reading ---------------------------------------------------------------------------------
def read_object(data: bytes, uri: str) -> tuple[pa.Table, np.ndarray]:
    """The object's rows, and per row its parse error (a QuarantineReason; None where none).

    JSON lines are parsed line by line with every value kept as text, so one bad line or value
    costs that row, not the object; `conform` then casts the text to the schema's types.
    Timestamps in JSON are ISO-8601 strings with a zone offset.
    """
    if uri.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        return table, np.full(table.num_rows, None, dtype=object)
    records: list[dict] = []
    errors: list[QuarantineReason | None] = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            records.append({k: None if v is None else str(v) for k, v in record.items()})
            errors.append(None)
        except ValueError as err:
            records.append({})
            errors.append(QuarantineReason(ReasonKind.UNPARSEABLE_JSON, detail=f"{err} (line {number})"))
    names = sorted({k for r in records for k in r})
    table = pa.table({n: pa.array([r.get(n) for r in records], pa.string()) for n in names})
    if not names:
        table = pa.table({"schema_version": pa.nulls(len(records), pa.string())})
    parse_errors = np.empty(len(errors), dtype=object)
    parse_errors[:] = errors
    return table, parse_errors


def check_schema_version(raw: pa.Table, conformed: pa.Table, uri: str) -> None:
    """Stop on any version this hdap does not read: in the file's metadata or in any row
    (checked on the conformed column; a version that is not a number is a row error)."""
    declared = (raw.schema.metadata or {}).get(b"hdap.telemetry.schema_version")
    versions: set[int] = set(pc.unique(conformed.column("schema_version").drop_null()).to_pylist())
    if declared is not None:
        try:
            versions.add(int(declared))
        except ValueError:
            raise HdapError(f"{uri} declares telemetry schema version {declared!r}, which is not a number: fix the device agent.") from None
    unknown = sorted(v for v in versions if v != SCHEMA_VERSION)
    if unknown:
        raise HdapError(
            f"{uri} is written in telemetry schema version {unknown[0]}, but this hdap reads version "
            f"{SCHEMA_VERSION}: upgrade hdap, or have the device agent write version {SCHEMA_VERSION}."
        )


def conform(table: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """Cast to the schema's columns and types. Returns the table and, per row, the first
    column whose value was present but not of its type ('' where none)."""
    rows = table.num_rows
    bad_type = np.full(rows, "", dtype=object)
    arrays = []
    for f in TELEMETRY_SCHEMA:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(rows, f.type))
            continue
        column = table.column(f.name)
        if pa.types.is_timestamp(f.type):
            # Any precision (pandas and Spark write ns or us) and ISO text: parse at full
            # precision, then truncate to ms; a direct cast refuses anything finer.
            try:
                arrays.append(column.cast(pa.timestamp("ns", tz="UTC")).cast(f.type, safe=False))
                continue
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                pass
        try:
            arrays.append(column.cast(f.type))
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        # Value by value: what does not convert becomes null and marks its row.
        converted = []
        for index, value in enumerate(column.to_pylist()):
            try:
                scalar = pa.scalar(value)
                if pa.types.is_timestamp(f.type):
                    scalar = scalar.cast(pa.timestamp("ns", tz="UTC"))
                converted.append(scalar.cast(f.type, safe=not pa.types.is_timestamp(f.type)).as_py() if value is not None else None)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError):
                converted.append(None)
                if not bad_type[index]:
                    bad_type[index] = f.name
        arrays.append(pa.array(converted, type=f.type))
    schema = pa.schema([pa.field(f.name, f.type) for f in TELEMETRY_SCHEMA])
    return pa.Table.from_arrays(arrays, schema=schema), bad_type


# -- validating ------------------------------------------------------------------------------
def _mask(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=bool)


def validate(table: pa.Table, parse_errors: np.ndarray, bad_type: np.ndarray, sku_name: str, as_of: datetime) -> RowReasons:
    """One reason per row (None = valid), from the checks in order; duplicates come later."""
    reasons = RowReasons(table.num_rows)
    reasons.first_each(parse_errors != None, lambda row: parse_errors[row])  # noqa: E711 (element-wise)
    reasons.first_each(bad_type != "", lambda row: QuarantineReason(ReasonKind.WRONG_TYPE, bad_type[row]))
    sku = get_sku(sku_name)
    required = [f.name for f in TELEMETRY_SCHEMA if not f.nullable] + list(sku.state_columns) + [probe_column(p) for p in probes_for(sku)]
    for name in required:
        reasons.first(_mask(pc.is_null(table.column(name))), QuarantineReason(ReasonKind.MISSING, name))

    sku_column = table.column("sku")
    known = _mask(pc.fill_null(pc.is_in(sku_column, value_set=pa.array(list(SKUS))), True))
    reasons.first_each(~known, lambda row: QuarantineReason(ReasonKind.UNKNOWN_SKU, "sku", sku_column[row].as_py()))
    other = _mask(pc.fill_null(pc.not_equal(sku_column, sku_name), False))
    reasons.first(other, QuarantineReason(ReasonKind.WRONG_SKU, "sku", sku_name))

    if not sku.self_measured:  # a CPU's states are declared by the run (cpu_states), and checked when clustering
        modes = pa.array([m.name for m in sku.power_modes])
        unknown_mode = ~_mask(pc.fill_null(pc.is_in(table.column("power_mode"), value_set=modes), True))
        reasons.first(unknown_mode & ~other, QuarantineReason(ReasonKind.UNKNOWN_POWER_MODE, "power_mode", sku_name))

    for name in [*STATE_COLUMNS, *PROBE_COLUMNS]:
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        reasons.first(np.isnan(values) & ~_mask(pc.is_null(table.column(name))), QuarantineReason(ReasonKind.NAN, name))
        low, high = VALUE_RANGES.get(name, (0.0, MAX_PROBE_LATENCY_MS))
        with np.errstate(invalid="ignore"):
            out_of_range = (values < low) | (values > high) | (values <= 0 if name in PROBE_COLUMNS else False)
        reasons.first(out_of_range, QuarantineReason(ReasonKind.OUT_OF_RANGE, name))

    limit = pa.scalar(as_of + CLOCK_SKEW, type=pa.timestamp("ms", tz="UTC"))
    future = _mask(pc.fill_null(pc.greater(table.column("timestamp"), limit), False))
    reasons.first(future, QuarantineReason(ReasonKind.FUTURE_TIMESTAMP, "timestamp"))
    return reasons


@dataclass
class DeviceOrder:
    """Valid rows grouped by device and, within a device, by time: the basis of every aggregate."""

    device_ids: pa.Array  # one per device, in order of first appearance
    codes: np.ndarray  # per row: index into device_ids
    order: np.ndarray  # row indices sorted by (device, timestamp, original position)
    starts: np.ndarray  # per device: where its rows begin in `order`
    counts: np.ndarray  # per device: number of rows

    @classmethod
    def of(cls, valid: pa.Table) -> DeviceOrder:
        encoded = pc.dictionary_encode(valid.column("device_id").combine_chunks())
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        timestamps = valid.column("timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
        order = np.lexsort((timestamps, codes))  # stable: equal keys keep their original order
        counts = np.bincount(codes, minlength=len(encoded.dictionary))
        starts = np.cumsum(counts) - counts
        return cls(encoded.dictionary, codes, order, starts, counts)


def mark_duplicates(valid: pa.Table, grouped: DeviceOrder) -> np.ndarray:
    """True for every row whose (device_id, timestamp) appeared in an earlier row."""
    if valid.num_rows == 0:
        return np.zeros(0, dtype=bool)
    timestamps = valid.column("timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
    codes, times = grouped.codes[grouped.order], timestamps[grouped.order]
    repeat = np.zeros(valid.num_rows, dtype=bool)
    repeat[1:] = (codes[1:] == codes[:-1]) & (times[1:] == times[:-1])
    duplicates = np.zeros(valid.num_rows, dtype=bool)
    duplicates[grouped.order[repeat]] = True
    return duplicates


def _sortable_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> uint32 whose unsigned order is the floats' order (negatives included)."""
    bits = values.astype(np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def _float_from_sortable(bits: np.ndarray) -> np.ndarray:
    bits = bits.astype(np.uint32)
    return np.where(bits >> 31, bits & np.uint32(0x7FFFFFFF), ~bits).view(np.float32)


def group_quantiles(grouped: DeviceOrder, values: np.ndarray, quantiles: list[float]) -> list[np.ndarray]:
    """Exact per-device quantiles (linear interpolation), from one sort of (device, value) keys.

    A sort of 64-bit keys costs a fraction of a second for millions of rows and no per-device
    state, where a hash aggregation with a t-digest per device needs kilobytes per device.
    """
    keys = (grouped.codes.astype(np.uint64) << np.uint64(32)) | _sortable_bits(values).astype(np.uint64)
    keys.sort()
    ordered = _float_from_sortable(keys & np.uint64(0xFFFFFFFF)).astype(np.float64)
    out = []
    for q in quantiles:
        position = grouped.starts + q * (grouped.counts - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, grouped.starts + grouped.counts - 1)
        out.append(ordered[low] + (position - low) * (ordered[high] - ordered[low]))
    return out


# -- aggregating -----------------------------------------------------------------------------
def aggregate_devices(valid: pa.Table, probe_columns: list[str], grouped: DeviceOrder | None = None) -> pa.Table:
    """Robust per-device features over the window: medians, and inter-quartile ranges of probes."""
    grouped = grouped or DeviceOrder.of(valid)
    last = grouped.order[grouped.starts + grouped.counts - 1]  # each device's newest report
    first = grouped.order[grouped.starts]
    timestamps = valid.column("timestamp")
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "device_id": grouped.device_ids,
        "sku": valid.column("sku").take(last),
        "power_mode": valid.column("power_mode").take(last),
        "firmware": valid.column("firmware").take(last),
        "reports": pa.array(grouped.counts, pa.int64()),
        "first_seen": timestamps.take(first),
        "last_seen": timestamps.take(last),
    }

    def numpy_column(name: str) -> np.ndarray:
        return valid.column(name).to_numpy(zero_copy_only=False)

    for c in STATE_COLUMNS:
        (median,) = group_quantiles(grouped, numpy_column(c), [0.5])
        columns[f"{c}_median"] = pa.array(median, pa.float32())
    columns["temperature_c_max"] = pa.array(group_quantiles(grouped, numpy_column("temperature_c"), [1.0])[0], pa.float32())
    for c in probe_columns:
        q1, median, q3 = group_quantiles(grouped, numpy_column(c), [0.25, 0.5, 0.75])
        stem = c.removesuffix("_ms")
        columns[f"{stem}_median_ms"] = pa.array(median, pa.float32())
        columns[f"{stem}_iqr_ms"] = pa.array(q3 - q1, pa.float32())
    return pa.table(columns)


def feature_columns(features: pa.Table) -> list[str]:
    """The performance features clustering uses: probe medians and the memory bandwidth."""
    probes = [c for c in features.column_names if c.startswith("probe_") and c.endswith("_median_ms")]
    return [*probes, "mem_bandwidth_gbps_median"]


# -- the stage -------------------------------------------------------------------------------
def ingest_telemetry(store: ObjectStore, config: IngestConfig) -> IngestResult:
    sku = get_sku(config.sku)
    as_of = config.as_of or datetime.now(timezone.utc)
    objects = store.list(config.folder)
    if not objects:
        raise HdapError(
            f"there is no telemetry under {config.folder}: upload device reports there "
            "(or simulate a fleet with `hdap fleet simulate`), or fix the prefix."
        )
    valid_parts: list[pa.Table] = []
    quarantine_parts: list[pa.Table] = []
    unreadable: dict[str, str] = {}
    rows_read = 0
    objects_read = 0
    for obj in progress(objects, f"ingesting {len(objects)} telemetry objects"):
        if not obj.uri.endswith(READABLE_SUFFIXES):
            log.warning("skipping %s: not a telemetry file (%s)", obj.uri, ", ".join(READABLE_SUFFIXES))
            continue
        data = store.get_bytes(obj.uri)
        objects_read += 1
        try:
            raw, parse_errors = read_object(data, obj.uri)
        except (pa.ArrowInvalid, OSError) as err:
            # Not a row to quarantine: the whole object is listed, and stays in the store untouched.
            log.warning("cannot read %s: %s", obj.uri, err)
            unreadable[obj.uri] = str(err)
            continue
        table, bad_type = conform(raw)
        check_schema_version(raw, table, obj.uri)
        rows_read += table.num_rows
        reasons = validate(table, parse_errors, bad_type, sku.name, as_of)
        table = table.append_column("row", pa.array(np.arange(table.num_rows), pa.int64()))
        table = table.append_column("source", pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(table.num_rows, dtype=np.int32)), pa.array([obj.uri])))
        bad = reasons.refused
        if bad.any():
            quarantine_parts.append(quarantine_rows(table.filter(pa.array(bad)), list(reasons.items[bad])))
        valid_parts.append(table.filter(pa.array(~bad)))

    valid = pa.concat_tables(valid_parts).combine_chunks() if valid_parts else _EMPTY_VALID
    grouped = DeviceOrder.of(valid)  # one sort of every row serves duplicates and aggregation
    duplicates = mark_duplicates(valid, grouped)
    if duplicates.any():  # the first copy (in object order) is kept
        quarantine_parts.append(quarantine_rows(valid.filter(pa.array(duplicates)),
                                                [QuarantineReason(ReasonKind.DUPLICATE)] * int(duplicates.sum())))
        valid = valid.filter(pa.array(~duplicates))
        grouped = DeviceOrder.of(valid)

    quarantine = pa.concat_tables(quarantine_parts) if quarantine_parts else QUARANTINE_SCHEMA.empty_table()
    features = aggregate_devices(valid, [probe_column(p) for p in probes_for(sku)], grouped)
    result = IngestResult(
        features=features,
        quarantine=quarantine,
        objects_read=objects_read,
        rows_read=rows_read,
        rows_valid=valid.num_rows,
        reasons=reason_counts(quarantine),
        unreadable_objects=unreadable,
    )
    log.info(
        "ingested %d rows from %d objects: %d valid, %d quarantined, %d devices",
        rows_read, objects_read, result.rows_valid, result.rows_quarantined, features.num_rows,
    )
    return result


_EMPTY_VALID = pa.schema(
    [pa.field(f.name, f.type) for f in TELEMETRY_SCHEMA]
    + [pa.field("row", pa.int64()), pa.field("source", pa.dictionary(pa.int32(), pa.string()))]
).empty_table()

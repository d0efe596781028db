"""Ingest: every telemetry object under a prefix -> one feature row per device.

Each object (Parquet or JSON lines, any layout under the prefix) is read, conformed to the
schema and validated row by row. A row that fails goes to the quarantine table with the
reason and where it came from (object URI and row number); nothing is dropped silently, and
`rows_read == rows_valid + rows_quarantined` always holds. An object that cannot be used as a
whole (its bytes do not match their sha256, it does not parse, its format is not one ingest
reads: `.PARQUET` is read, `.parquet.gz` and `.csv` are not) is listed with its reason and the
rest is ingested, so `objects_read + objects_unreadable + objects_skipped == objects_listed`
always holds too. An object written with a schema version this hdap does not know stops the
stage: guessing at its meaning would be worse.

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
from hdap.fleet.quarantine import (
    QUARANTINE_SCHEMA,
    ObjectProblem,
    ObjectReason,
    QuarantineReason,
    ReasonKind,
    RowReasons,
    quarantine_rows,
    reason_counts,
    shown,
)
from hdap.fleet.schema import (
    DEVICE_ID_PATTERN,
    EARLIEST_TIMESTAMP,
    MAX_PROBE_LATENCY_MS,
    PROBE_COLUMNS,
    SCHEMA_VERSION,
    TELEMETRY_SCHEMA,
    VALUE_RANGES,
    probe_column,
    probes_for,
)
from hdap.fleet.sku import SKUS, Sku, get_sku
from hdap.progress import progress
from hdap.stages.ingest import IngestConfig
from hdap.store import CorruptObject, ObjectStore

log = logging.getLogger("hdap")

READABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")  # compared in lower case: .PARQUET is Parquet
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
    problems: dict[str, ObjectProblem] = field(default_factory=dict)  # uri -> why the object was not read
    objects_listed: int = 0

    @property
    def rows_quarantined(self) -> int:
        return self.quarantine.num_rows

    @property
    def unreadable_objects(self) -> dict[str, str]:
        """uri -> why it could not be read: corrupt or unparseable."""
        return {uri: p.text for uri, p in self.problems.items() if p.reason is not ObjectReason.UNSUPPORTED_FORMAT}

    @property
    def skipped_objects(self) -> dict[str, str]:
        """uri -> why it was not read: a format ingest does not read."""
        return {uri: p.text for uri, p in self.problems.items() if p.reason is ObjectReason.UNSUPPORTED_FORMAT}

    @property
    def object_reasons(self) -> dict[str, int]:
        """Objects not read per reason, every reason present (a metric's key is there even at zero)."""
        counts = {reason.value: 0 for reason in ObjectReason}
        for problem in self.problems.values():
            counts[problem.reason.value] += 1
        return counts

    def check_counts(self) -> None:
        """Every object is read or listed, every row valid or quarantined: anything else is a bug in ingest."""
        objects = (self.objects_read, len(self.unreadable_objects), len(self.skipped_objects), self.objects_listed)
        if objects[0] + objects[1] + objects[2] != objects[3]:
            raise AssertionError(f"objects read + unreadable + skipped != listed: {objects}")
        if self.rows_read != self.rows_valid + self.rows_quarantined:
            raise AssertionError(f"rows read != valid + quarantined: {self.rows_read, self.rows_valid, self.rows_quarantined}")


class UnreadableObject(HdapError):
    """An object whose bytes are not telemetry at all: listed with its problem, not quarantined row by row."""

    def __init__(self, uri: str, problem: ObjectProblem) -> None:
        super().__init__(f"{uri} was not read: {problem.text}.")
        self.problem = problem


# -- reading ---------------------------------------------------------------------------------
def object_suffix(uri: str) -> str:
    """The object name's last suffix in lower case ('.parquet'; '.gz' for x.parquet.gz; '' for none)."""
    name = uri.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name.lstrip(".") else ""


# Whatever a Parquet reader throws at bytes that are not Parquet (or are Parquet of a kind it cannot read).
_PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError, OverflowError)


def read_object(data: bytes, uri: str) -> tuple[pa.Table, np.ndarray]:
    """The object's rows, and per row its parse error (a QuarantineReason; None where none).

    Parquet is read whole; bytes that are not Parquet raise `UnreadableObject`. JSON lines are
    parsed line by line with every value kept as text, so one bad line or value costs that row,
    not the object; `conform` then casts the text to the schema's types. Timestamps in JSON are
    ISO-8601 strings with a zone offset.
    """
    if object_suffix(uri) == ".parquet":
        try:
            table = pq.read_table(io.BytesIO(data))
            names = table.column_names  # decoded here: a damaged footer can hold a name that is not UTF-8
        except _PARQUET_ERRORS as err:
            raise UnreadableObject(uri, ObjectProblem(ObjectReason.UNPARSEABLE, f"{type(err).__name__}: {err}")) from None
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:  # which of the two is the device's? Neither can be trusted.
            raise UnreadableObject(uri, ObjectProblem(ObjectReason.UNPARSEABLE, f"columns {repeated} appear more than once"))
        return _valid_text(table, uri), np.full(table.num_rows, None, dtype=object)
    return _read_json_lines(data)


def _valid_text(table: pa.Table, uri: str) -> pa.Table:
    """The table with every text column that is not all UTF-8 as binary: the Parquet reader does not check
    (a damaged or hostile writer), and a bad string would fail wherever it is first used as text. As binary,
    `conform` refuses its bad values row by row. Anything else invalid makes the object unreadable."""
    for index, column in enumerate(table.columns):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as err:
            value_type = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
            if not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
                raise UnreadableObject(uri, ObjectProblem(ObjectReason.UNPARSEABLE, f"column {table.field(index).name}: {err}")) from None
            table = table.set_column(index, table.field(index).name, column.cast(pa.large_binary()))
    return table


def _read_json_lines(data: bytes) -> tuple[pa.Table, np.ndarray]:
    records: list[dict] = []
    errors: list[QuarantineReason | None] = []
    # Lines end at b"\n" only: str.splitlines would also split at U+2028 and friends, which JSON allows in strings.
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))  # strict: a line that is not UTF-8 is not a report
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            records.append({k: None if v is None else str(v) for k, v in record.items()})
            errors.append(None)
        except (ValueError, RecursionError) as err:  # RecursionError: nesting deeper than the parser's stack
            records.append({})
            errors.append(QuarantineReason(ReasonKind.UNPARSEABLE_JSON, detail=f"{shown(str(err), 200)} (line {number})"))
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
            except (pa.ArrowException, ValueError, TypeError, OverflowError):  # whatever a value of any type can throw
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

    ids = table.column("device_id")
    good_id = pc.match_substring_regex(ids, f"^(?:{DEVICE_ID_PATTERN.pattern})$")  # RE2's $: the very end, no newline
    reasons.first(~_mask(pc.fill_null(good_id, True)), QuarantineReason(ReasonKind.BAD_DEVICE_ID, "device_id"))

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
    earliest = pa.scalar(EARLIEST_TIMESTAMP, type=pa.timestamp("ms", tz="UTC"))
    old = _mask(pc.fill_null(pc.less(table.column("timestamp"), earliest), False))
    reasons.first(old, QuarantineReason(ReasonKind.OLD_TIMESTAMP, "timestamp"))
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
@dataclass
class ObjectRows:
    """One object's rows: those that passed every per-object check, and those quarantined."""

    valid: pa.Table  # the telemetry columns, and where each row came from (`source`, `row`)
    quarantine: pa.Table  # QUARANTINE_SCHEMA

    @property
    def rows(self) -> int:
        return self.valid.num_rows + self.quarantine.num_rows


def read_rows(data: bytes, uri: str, sku_name: str, as_of: datetime) -> ObjectRows:
    """One object's bytes, read, conformed and validated. Raises `UnreadableObject` where the bytes
    are not telemetry at all, HdapError where they are written in a schema version hdap does not read."""
    raw, parse_errors = read_object(data, uri)
    table, bad_type = conform(raw)
    check_schema_version(raw, table, uri)
    reasons = validate(table, parse_errors, bad_type, sku_name, as_of)
    table = table.append_column("row", pa.array(np.arange(table.num_rows), pa.int64()))
    table = table.append_column("source", pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(table.num_rows, dtype=np.int32)), pa.array([uri])))
    bad = reasons.refused
    quarantine = (quarantine_rows(table.filter(pa.array(bad)), list(reasons.items[bad])) if bad.any()
                  else QUARANTINE_SCHEMA.empty_table())
    return ObjectRows(table.filter(pa.array(~bad)), quarantine)


def fetch(store: ObjectStore, uri: str) -> bytes | ObjectProblem:
    """The object's bytes, checked against the sha256 they were written with; or why it is not read."""
    suffix = object_suffix(uri)
    if suffix not in READABLE_SUFFIXES:
        return ObjectProblem(ObjectReason.UNSUPPORTED_FORMAT, suffix)
    try:
        return store.get_bytes(uri)
    except CorruptObject:  # only this object: a store that stopped answering still stops the stage
        return ObjectProblem(ObjectReason.CORRUPT)


def _ingest_object(store: ObjectStore, uri: str, sku_name: str, as_of: datetime) -> ObjectRows | ObjectProblem:
    data = fetch(store, uri)
    if isinstance(data, ObjectProblem):
        return data
    try:
        return read_rows(data, uri, sku_name, as_of)
    except UnreadableObject as err:
        return err.problem


def combine(parts: list[ObjectRows], sku: Sku) -> tuple[pa.Table, pa.Table, int]:
    """Every object's rows together: duplicates across objects quarantined (the first copy, in object
    order, kept), then the per-device features. Returns the features, the quarantine and the valid rows."""
    valid_parts = [part.valid for part in parts]
    quarantine_parts = [part.quarantine for part in parts if part.quarantine.num_rows]
    valid = pa.concat_tables(valid_parts).combine_chunks() if valid_parts else _EMPTY_VALID
    grouped = DeviceOrder.of(valid)  # one sort of every row serves duplicates and aggregation
    duplicates = mark_duplicates(valid, grouped)
    if duplicates.any():
        quarantine_parts.append(quarantine_rows(valid.filter(pa.array(duplicates)),
                                                [QuarantineReason(ReasonKind.DUPLICATE)] * int(duplicates.sum())))
        valid = valid.filter(pa.array(~duplicates))
        grouped = DeviceOrder.of(valid)
    quarantine = pa.concat_tables(quarantine_parts) if quarantine_parts else QUARANTINE_SCHEMA.empty_table()
    features = aggregate_devices(valid, [probe_column(p) for p in probes_for(sku)], grouped)
    return features, quarantine, valid.num_rows


def ingest_telemetry(store: ObjectStore, config: IngestConfig) -> IngestResult:
    sku = get_sku(config.sku)
    as_of = config.as_of or datetime.now(timezone.utc)
    objects = store.list(config.folder)
    if not objects:
        raise HdapError(
            f"there is no telemetry under {config.folder}: upload device reports there "
            "(or simulate a fleet with `hdap fleet simulate`), or fix the prefix."
        )
    parts: list[ObjectRows] = []
    problems: dict[str, ObjectProblem] = {}
    for obj in progress(objects, f"ingesting {len(objects)} telemetry objects"):
        outcome = _ingest_object(store, obj.uri, sku.name, as_of)
        if isinstance(outcome, ObjectProblem):  # listed, and left in the store untouched
            log.warning("%r was not read: %s.", obj.uri, outcome.text)  # %r: a key may hold a newline
            problems[obj.uri] = outcome
        else:
            parts.append(outcome)
    features, quarantine, rows_valid = combine(parts, sku)
    result = IngestResult(features=features, quarantine=quarantine, objects_read=len(parts),
                          rows_read=sum(part.rows for part in parts), rows_valid=rows_valid,
                          reasons=reason_counts(quarantine), problems=problems, objects_listed=len(objects))
    result.check_counts()
    log.info("ingested %d rows from %d of %d objects: %d valid, %d quarantined, %d devices", result.rows_read,
             result.objects_read, result.objects_listed, result.rows_valid, result.rows_quarantined, features.num_rows)
    return result


_EMPTY_VALID = pa.schema(
    [pa.field(f.name, f.type) for f in TELEMETRY_SCHEMA]
    + [pa.field("row", pa.int64()), pa.field("source", pa.dictionary(pa.int32(), pa.string()))]
).empty_table()

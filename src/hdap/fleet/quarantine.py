"""Why a telemetry row was refused: a structured reason (kind, column, detail), and the quarantine table.

Every refused row keeps one reason, the first check it failed. The reason's `key` counts it in
the ingest summary and the step's metrics (`quarantined_<key>`): the kind, and for the kinds about
one column (missing, wrong type, NaN, out of range) the full column name, so a missing
`probe_conv3x3_int8_ms` and a missing `probe_conv1x1_fp16_ms` are counted apart. `text` is the
sentence a person reads in `quarantine.parquet`.

A whole object that cannot be used is not quarantined row by row but listed with an
`ObjectReason`: its bytes do not match the sha256 it was written with, it cannot be parsed, or
its format is not one ingest reads. Every object under the prefix is read or listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from hdap.fleet.schema import DEVICE_ID_RULE, EARLIEST_TIMESTAMP, PROBE_COLUMNS, TELEMETRY_SCHEMA
from hdap.settings import Choice


class ReasonKind(Choice):
    UNPARSEABLE_JSON = "unparseable_json"
    WRONG_TYPE = "wrong_type"
    MISSING = "missing"
    UNKNOWN_SKU = "unknown_sku"
    WRONG_SKU = "wrong_sku"
    UNKNOWN_POWER_MODE = "unknown_power_mode"
    NAN = "nan"
    OUT_OF_RANGE = "out_of_range"
    FUTURE_TIMESTAMP = "future_timestamp"
    OLD_TIMESTAMP = "old_timestamp"
    BAD_DEVICE_ID = "bad_device_id"
    DUPLICATE = "duplicate_record"


PER_COLUMN = {ReasonKind.WRONG_TYPE, ReasonKind.MISSING, ReasonKind.NAN, ReasonKind.OUT_OF_RANGE}


@dataclass(frozen=True)
class QuarantineReason:
    kind: ReasonKind
    column: str = ""  # the telemetry column it concerns, where there is one
    detail: str = ""  # what was found (a SKU, a parser's message) or expected

    @property
    def key(self) -> str:
        return f"{self.kind.value}_{self.column}" if self.kind in PER_COLUMN else self.kind.value

    @property
    def text(self) -> str:
        kind, column, detail = self.kind, self.column, self.detail
        if kind is ReasonKind.OUT_OF_RANGE:
            return f"{'latency' if column in PROBE_COLUMNS else 'value'} out of range in {column}"
        return {
            ReasonKind.UNPARSEABLE_JSON: f"unparseable JSON: {detail}",
            ReasonKind.WRONG_TYPE: f"wrong type in {column}",
            ReasonKind.MISSING: f"missing {column}",
            ReasonKind.UNKNOWN_SKU: f"unknown sku '{shown(detail)}'",
            ReasonKind.WRONG_SKU: f"sku is not {detail}",
            ReasonKind.UNKNOWN_POWER_MODE: f"unknown power mode for {detail}",
            ReasonKind.NAN: f"NaN in {column}",
            ReasonKind.FUTURE_TIMESTAMP: "timestamp in the future",
            ReasonKind.OLD_TIMESTAMP: f"timestamp before {EARLIEST_TIMESTAMP.date().isoformat()}",
            ReasonKind.BAD_DEVICE_ID: f"device id is not {DEVICE_ID_RULE}",
            ReasonKind.DUPLICATE: "duplicate record",
        }[kind]


def shown(value: str, limit: int = 64) -> str:
    """A reported value as a reason quotes it: cut short, so a megabyte of junk does not become a megabyte of reason."""
    return value if len(value) <= limit else value[:limit] + "..."


class ObjectReason(Choice):
    """Why a whole object under the prefix was not read (listed in the summary, left in the store untouched)."""

    CORRUPT = "corrupt"
    UNPARSEABLE = "unparseable"
    UNSUPPORTED_FORMAT = "unsupported_format"


@dataclass(frozen=True)
class ObjectProblem:
    reason: ObjectReason
    detail: str = ""  # the parser's message, or the suffix

    @property
    def text(self) -> str:
        return {
            ObjectReason.CORRUPT: "its bytes do not match the sha256 it was written with: write it again",
            ObjectReason.UNPARSEABLE: f"it cannot be parsed: {shown(self.detail, 200)}",
            ObjectReason.UNSUPPORTED_FORMAT: f"its format ({self.detail or 'no suffix'}) is not one ingest reads "
                                             "(.parquet, .jsonl, .json or .ndjson, uncompressed)",
        }[self.reason]


class RowReasons:
    """One reason per row of a table, the first failing check's (None: the row is valid so far)."""

    def __init__(self, rows: int) -> None:
        self.items = np.full(rows, None, dtype=object)
        self.open = np.ones(rows, dtype=bool)

    def first(self, failed: np.ndarray, reason: QuarantineReason) -> None:
        """Give `reason` to every failed row that has none yet."""
        target = failed & self.open
        if target.any():
            self.items[target] = reason
            self.open &= ~target

    def first_each(self, failed: np.ndarray, reason_of_row) -> None:
        """Give row i the reason `reason_of_row(i)`, for every failed row that has none yet."""
        rows = np.flatnonzero(failed & self.open)
        for row in rows:
            self.items[row] = reason_of_row(int(row))
        self.open[rows] = False

    @property
    def refused(self) -> np.ndarray:
        return ~self.open


QUARANTINE_SCHEMA = pa.schema(
    [pa.field(f.name, f.type) for f in TELEMETRY_SCHEMA]
    + [pa.field("source", pa.string()), pa.field("row", pa.int64()), pa.field("reason", pa.string()),
       pa.field("reason_kind", pa.string()), pa.field("reason_column", pa.string())]
)


def quarantine_rows(rows: pa.Table, reasons: list[QuarantineReason]) -> pa.Table:
    """Rows in QUARANTINE_SCHEMA: every reported field as read, where it came from, and why."""
    count = len(reasons)
    own = {"source", "row", "reason", "reason_kind", "reason_column"}
    columns = [rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(count, f.type)
               for f in QUARANTINE_SCHEMA if f.name not in own]
    columns += [rows.column("source").cast(pa.string()), rows.column("row"),
                pa.array([r.text for r in reasons], pa.string()), pa.array([r.kind.value for r in reasons], pa.string()),
                pa.array([r.column for r in reasons], pa.string())]
    return pa.Table.from_arrays(columns, schema=QUARANTINE_SCHEMA)


def reason_counts(quarantine: pa.Table) -> dict[str, int]:
    """Quarantined rows per reason key."""
    counts: dict[str, int] = {}
    for kind, column in zip(quarantine.column("reason_kind").to_pylist(), quarantine.column("reason_column").to_pylist()):
        key = QuarantineReason(ReasonKind(kind), column).key
        counts[key] = counts.get(key, 0) + 1
    return counts

"""Stage 1, ingest: every telemetry object under a prefix -> one feature row per device.

Rows that fail validation are quarantined with a structured reason (`hdap.fleet.ingest`); the
summary counts them per reason. Objects that could not be used whole are listed with why (corrupt,
unparseable, a format ingest does not read), so the summary accounts for every object under the
prefix: `objects_read + len(unreadable_objects) + len(skipped_objects) == objects_listed`. Writes
`features.parquet`, `quarantine.parquet` and `summary.json` (`IngestSummary`) under `<output_uri>/<run>/ingest/`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hdap.artifacts import Contract
from hdap.errors import HdapError
from hdap.settings import SKU, TELEMETRY_URI, Settings, setting, telemetry_folder
from hdap.stages import Stage, StageContext

log = logging.getLogger("hdap")


@dataclass(frozen=True)
class IngestConfig(Settings):
    PREFIX = "ingest"
    telemetry_uri: str = TELEMETRY_URI()
    sku: str = SKU()
    as_of: datetime | None = setting(None, "ISO time taken as 'now' when rejecting reports from the future; empty: the clock.")

    @property
    def folder(self) -> str:
        """Where the telemetry is: telemetry_uri, or the SKU's default folder."""
        return telemetry_folder(self.telemetry_uri, self.sku)


@dataclass(frozen=True)
class IngestInputs:
    pass


@dataclass(frozen=True)
class IngestOutputs:
    features: Path  # one row per device (Parquet)
    quarantine: Path  # every rejected row, where it came from and why (Parquet)


@dataclass
class IngestSummary(Contract):
    FORMAT = "hdap.ingest-summary/1"
    telemetry_uri: str
    sku: str
    objects_read: int
    rows_read: int
    rows_valid: int
    rows_quarantined: int
    devices: int
    quarantine_reasons: dict[str, int]  # rows per reason key (`QuarantineReason.key`)
    unreadable_objects: dict[str, str]  # object URI -> why it could not be read (corrupt or unparseable)
    # Defaults: a summary written before these fields still reads (its objects_listed is 0: unknown).
    objects_listed: int = 0  # every object under the prefix
    skipped_objects: dict[str, str] = field(default_factory=dict)  # object URI -> why it was not read (its format)
    object_reasons: dict[str, int] = field(default_factory=dict)  # objects not read per reason (`ObjectReason`)

    def metrics(self) -> dict[str, float]:
        out = {"objects_listed": self.objects_listed, "objects_read": self.objects_read, "rows_read": self.rows_read,
               "rows_valid": self.rows_valid, "rows_quarantined": self.rows_quarantined, "devices": self.devices,
               "objects_unreadable": len(self.unreadable_objects), "objects_skipped": len(self.skipped_objects)}
        out |= {f"objects_{reason}": n for reason, n in sorted(self.object_reasons.items())}
        return out | {f"quarantined_{key}": n for key, n in sorted(self.quarantine_reasons.items())}


def run(config: IngestConfig, inputs: IngestInputs, outputs: IngestOutputs, context: StageContext) -> dict[str, float]:
    import pyarrow.parquet as pq

    from hdap.fleet.ingest import ingest_telemetry

    result = ingest_telemetry(context.store, config)
    pq.write_table(result.features, outputs.features)
    pq.write_table(result.quarantine, outputs.quarantine)
    context.store.put_file(context.uri("ingest", "features.parquet"), outputs.features)
    quarantine_uri = context.uri("ingest", "quarantine.parquet")
    context.store.put_file(quarantine_uri, outputs.quarantine)
    summary = IngestSummary(config.folder, config.sku, result.objects_read, result.rows_read, result.rows_valid,
                            result.rows_quarantined, result.features.num_rows, result.reasons, result.unreadable_objects,
                            result.objects_listed, result.skipped_objects, result.object_reasons)
    summary_uri = context.uri("ingest", "summary.json")
    summary.put(context.store, summary_uri)
    if result.rows_quarantined:
        log.warning("quarantined %d rows (%s): %s", result.rows_quarantined, result.reasons, quarantine_uri)
    not_read = result.objects_listed - result.objects_read
    if not_read:
        log.warning("%d of %d objects not read (%s): listed in %s", not_read, result.objects_listed,
                    {k: n for k, n in result.object_reasons.items() if n}, summary_uri)
    if result.features.num_rows == 0:
        top = ", ".join(f"{k}: {v}" for k, v in sorted(result.reasons.items(), key=lambda kv: -kv[1])[:3]) or "no readable rows"
        raise HdapError(f"no valid telemetry under {config.folder} for {config.sku}: {result.rows_quarantined} rows "
                        f"quarantined ({top}) and {not_read} of {result.objects_listed} objects not read; "
                        f"see {quarantine_uri} and {summary_uri}.")
    return summary.metrics()


STAGE = Stage("ingest", "ingest telemetry", IngestConfig, IngestInputs, IngestOutputs, run)

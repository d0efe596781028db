"""A simulated fleet: realistic telemetry for N devices of one SKU over D days.

Devices fall into hidden *regimes* (the ground truth clustering should recover): a power mode,
a thermal environment (a hot enclosure throttles), a background workload. Within a regime,
devices still differ: silicon bin (+-1.5%), aged regulators capping clocks (up to 5%),
firmware, and day-to-day noise in temperature, load and every measurement. The probe
latencies come from the same device model the simulated profiling backend uses.

Telemetry is written in chunks of devices, one Parquet object per chunk and day, so a fleet of
a million devices never sits in memory. The ground truth goes to a separate prefix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from hdap.errors import HdapError
from hdap.fleet.schema import CPU_PROBES, PROBES, SCHEMA_VERSION, TELEMETRY_SCHEMA, probe_column, probes_for
from hdap.fleet.sku import Sku, get_sku
from hdap.latency.device_model import device_state, kernel_latency_ms, memory_bandwidth_gbps
from hdap.progress import progress
from hdap.settings import SKU, TELEMETRY_URI, Settings, at_least, between, internal, s3_uri, setting, telemetry_folder
from hdap.store import ObjectStore, join_uri

log = logging.getLogger("hdap")


@dataclass(frozen=True)
class Regime:
    """A ground-truth group: how a share of the fleet is configured and where it lives."""

    name: str
    share: float
    power_mode: str
    temperature_c: tuple[float, float]  # mean and spread of a device's typical SoC temperature
    background_load: tuple[float, float]  # mean and spread of its typical background load


REGIMES: dict[str, tuple[Regime, ...]] = {
    "jetson-xavier-nx": (
        Regime("20W", 0.30, "20W", (55, 5), (0.05, 0.03)),
        Regime("20W-throttled", 0.12, "20W", (89, 1.5), (0.05, 0.03)),
        Regime("15W", 0.25, "15W", (52, 5), (0.05, 0.03)),
        Regime("10W", 0.20, "10W", (48, 5), (0.05, 0.03)),
        Regime("10W-busy", 0.13, "10W", (50, 5), (0.55, 0.05)),
    ),
    "jetson-nano": (
        Regime("10W", 0.40, "10W", (55, 5), (0.05, 0.03)),
        Regime("10W-throttled", 0.15, "10W", (89, 1.5), (0.05, 0.03)),
        Regime("5W", 0.30, "5W", (45, 5), (0.05, 0.03)),
        Regime("5W-busy", 0.15, "5W", (47, 5), (0.55, 0.05)),
    ),
    "jetson-orin-nano": (
        Regime("25W", 0.30, "25W", (55, 5), (0.05, 0.03)),
        Regime("25W-throttled", 0.10, "25W", (89, 1.5), (0.05, 0.03)),
        Regime("15W", 0.30, "15W", (50, 5), (0.05, 0.03)),
        Regime("15W-busy", 0.10, "15W", (52, 5), (0.55, 0.05)),
        Regime("7W", 0.20, "7W", (45, 5), (0.05, 0.03)),
    ),
}

MAX_DAYS = 366
MEASUREMENT_NOISE = 0.03  # lognormal sigma of one report's probe medians
DAILY_TEMPERATURE_SD = 1.5
DAILY_LOAD_SD = 0.03


def parse_mode_mix(text: str) -> dict[str, float]:
    """`20W=0.2,10W=0.6` -> {"20W": 0.2, "10W": 0.6}; empty: {} (the SKU's usual mix)."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        mode, _, share = part.partition("=")
        try:
            mix[mode.strip()] = float(share)
        except ValueError:
            raise HdapError(f"'{part}' in the mode mix is not mode=share, for example 20W=0.2,15W=0.3,10W=0.5.") from None
    return mix


def _mode_mix_check(text: str) -> str | None:
    try:
        parse_mode_mix(text)
    except HdapError as err:
        return str(err)
    return None


@dataclass(frozen=True)
class SimulationConfig(Settings):
    sku: str = SKU()
    devices: int = setting(1000, "Number of devices in the fleet.", check=at_least(1))
    days: int = setting(7, "Days of daily reports per device (at most a year).",
                        check=between(1, MAX_DAYS, "a year of daily reports"))
    seed: int = setting(0, "Random seed: the same seed gives the same fleet.")
    telemetry_uri: str = TELEMETRY_URI()
    truth_uri: str = setting("", "Where to write the fleet's hidden ground truth; empty: s3://hdap/ground-truth/<sku>.",
                             check=s3_uri)
    end: datetime | None = setting(None, "Time of the newest report, ISO 8601; empty: now.")
    mode_mix: str = setting("", "Share of each power mode, e.g. 20W=0.2,15W=0.3,10W=0.5 (a fleet whose mix shifted); "
                                "empty: the SKU's usual mix.", check=_mode_mix_check)
    chunk_devices: int = internal(100_000)

    @property
    def telemetry_folder(self) -> str:
        return telemetry_folder(self.telemetry_uri, self.sku)

    @property
    def truth_folder(self) -> str:
        return self.truth_uri or f"s3://hdap/ground-truth/{self.sku}"


@dataclass
class SimulationResult:
    devices: int
    reports: int
    telemetry_objects: list[str]
    truth_objects: list[str]
    group_shares: dict[str, float]


@dataclass
class FleetChunk:
    """One chunk of devices: a telemetry table per day and the hidden truth per device."""

    days: list[tuple[date, pa.Table]]
    truth: pa.Table


def regime_shares(sku: Sku, mode_mix: dict[str, float]) -> np.ndarray:
    """Each regime's share: the SKU's usual mix, or `mode_mix` per power mode (regimes of a mode keep their ratio)."""
    regimes = REGIMES[sku.name]
    shares = np.array([r.share for r in regimes])
    if not mode_mix:
        return shares / shares.sum()
    unknown = sorted(set(mode_mix) - {r.power_mode for r in regimes})
    if unknown:
        raise HdapError(f"{sku.name} has no power mode {unknown[0]}: its modes are {', '.join(sorted({r.power_mode for r in regimes}))}.")
    per_mode = {mode: sum(r.share for r in regimes if r.power_mode == mode) for mode in mode_mix}
    shares = np.array([mode_mix.get(r.power_mode, 0.0) * r.share / per_mode[r.power_mode] if r.power_mode in mode_mix else 0.0
                       for r in regimes])
    if shares.sum() <= 0:
        raise HdapError("the mode mix gives every power mode a share of 0: give at least one a positive share.")
    return shares / shares.sum()


def simulate_chunk(sku: Sku, first_device: int, devices: int, days: int, end: datetime, seed: int,
                   mode_mix: dict[str, float] | None = None) -> FleetChunk:
    """Day i's reports fall in the 24 hours ending (days-1-i) days before `end`: none lies ahead of it."""
    rng = np.random.default_rng([seed, first_device])
    regimes = REGIMES[sku.name]
    shares = regime_shares(sku, mode_mix or {})
    group = rng.choice(len(regimes), size=devices, p=shares)
    ids = np.array([f"{sku.short}-{i:07d}" for i in range(first_device, first_device + devices)], dtype=object)
    power_mode = np.array([regimes[g].power_mode for g in group], dtype=object)
    temp_mean = np.array([r.temperature_c[0] for r in regimes])[group]
    temp_sd = np.array([r.temperature_c[1] for r in regimes])[group]
    load_mean = np.array([r.background_load[0] for r in regimes])[group]
    load_sd = np.array([r.background_load[1] for r in regimes])[group]

    typical_temperature = rng.normal(temp_mean, temp_sd)
    typical_load = np.clip(rng.normal(load_mean, load_sd), 0.0, 0.9)
    silicon_bin = rng.normal(1.0, 0.015, devices)
    age_days = rng.uniform(0, 1000, devices)
    regulator_cap = 1.0 - 0.05 * rng.uniform(0, 1, devices) * (age_days / 1000)
    firmware = rng.choice(np.array(sku.firmware, dtype=object), size=devices, p=[0.2, 0.5, 0.3])

    probes = probes_for(sku)
    tables = []
    for day_index in range(days):
        window_end = end - timedelta(days=days - 1 - day_index)
        day = window_end.date()
        temperature = typical_temperature + rng.normal(0, DAILY_TEMPERATURE_SD, devices)
        load = np.clip(typical_load + rng.normal(0, DAILY_LOAD_SD, devices), 0.0, 0.95)
        state = device_state(sku, power_mode, temperature, load, silicon_bin, regulator_cap)
        window_end_ms = window_end.timestamp() * 1000
        columns = {
            "schema_version": np.full(devices, SCHEMA_VERSION, dtype=np.int16),
            "device_id": ids,
            "sku": np.full(devices, sku.name, dtype=object),
            "firmware": firmware,
            "timestamp": (window_end_ms - rng.uniform(0, 86_400_000, devices)).astype("int64"),
            "power_mode": power_mode,
            "temperature_c": temperature,
            "gpu_clock_mhz": state.gpu_mhz,
            "cpu_clock_mhz": state.cpu_mhz,
            "emc_clock_mhz": state.emc_mhz,
            "mem_bandwidth_gbps": memory_bandwidth_gbps(sku, state) * rng.lognormal(0, 0.02, devices),
            "background_load": load,
        }
        for name in PROBE_NAMES:
            if name in probes:
                noise = rng.lognormal(0, MEASUREMENT_NOISE, devices)
                columns[probe_column(name)] = kernel_latency_ms(sku, state, PROBES[name]) * noise
            else:
                columns[probe_column(name)] = np.full(devices, np.nan)
        arrays = [
            pa.array(columns[f.name], type=f.type, from_pandas=True) if f.name != "timestamp"
            else pa.array(columns["timestamp"], type=pa.int64()).cast(f.type)
            for f in TELEMETRY_SCHEMA
        ]
        tables.append((day, pa.Table.from_arrays(arrays, schema=TELEMETRY_SCHEMA)))

    truth = pa.table(
        {
            "device_id": pa.array(ids, pa.string()),
            "group": pa.array([regimes[g].name for g in group], pa.string()),
            "power_mode": pa.array(power_mode, pa.string()),
            "silicon_bin": pa.array(silicon_bin, pa.float32()),
            "regulator_cap": pa.array(regulator_cap, pa.float32()),
        }
    )
    return FleetChunk(days=tables, truth=truth)


PROBE_NAMES = [*PROBES, *CPU_PROBES]  # a simulated Jetson reports no CPU probe (null)


def simulate_fleet(store: ObjectStore, config: SimulationConfig) -> SimulationResult:
    """Write a simulated fleet's telemetry and its ground truth to the store."""
    sku = get_sku(config.sku)
    if sku.self_measured:
        raise HdapError(f"{sku.name} devices are measured, not simulated: run `hdap profile --cpu-states` on the machine, in each state.")
    telemetry_objects: list[str] = []
    truth_objects: list[str] = []
    counts: dict[str, int] = {}
    starts = range(0, config.devices, config.chunk_devices)
    end = config.end or datetime.now(timezone.utc)  # one "now" for every chunk
    for chunk_index, first in enumerate(progress(starts, f"simulating {config.devices:,} {sku.name} devices")):
        size = min(config.chunk_devices, config.devices - first)
        chunk = simulate_chunk(sku, first, size, config.days, end, config.seed, parse_mode_mix(config.mode_mix))
        for day, table in chunk.days:
            uri = join_uri(config.telemetry_folder, f"date={day.isoformat()}", f"part-{chunk_index:05d}.parquet")
            store.put_table(uri, table)
            telemetry_objects.append(uri)
        uri = join_uri(config.truth_folder, f"part-{chunk_index:05d}.parquet")
        store.put_table(uri, chunk.truth)
        truth_objects.append(uri)
        for name in chunk.truth.column("group").to_pylist():
            counts[name] = counts.get(name, 0) + 1
    log.info("simulated %d devices x %d days into %s", config.devices, config.days, config.telemetry_folder)
    return SimulationResult(
        devices=config.devices,
        reports=config.devices * config.days,
        telemetry_objects=telemetry_objects,
        truth_objects=truth_objects,
        group_shares={name: n / config.devices for name, n in sorted(counts.items())},
    )


def simulate_features(sku_name: str, devices: int, days: int = 7, seed: int = 0,
                      end: datetime = datetime(2026, 11, 20, tzinfo=timezone.utc),
                      mode_mix: dict[str, float] | None = None) -> tuple[pa.Table, dict[str, dict]]:
    """A small simulated fleet in memory, without a store: the per-device feature table ingest
    would produce, and the hidden truth per device. For tests and benchmarks."""
    from hdap.fleet.ingest import aggregate_devices  # ingest is the consumer; import it only here

    sku = get_sku(sku_name)
    chunk = simulate_chunk(sku, 0, devices, days, end, seed, mode_mix)
    features = aggregate_devices(pa.concat_tables([table for _, table in chunk.days]), [probe_column(p) for p in probes_for(sku)])
    return features, {r["device_id"]: r for r in chunk.truth.to_pylist()}

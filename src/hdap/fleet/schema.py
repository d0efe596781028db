"""What a device agent reports: the telemetry schema, version 1.

One row is one report of one device: its state when it ran the probe suite, and the median
latency of each probe kernel over that run. Agents write rows as Parquet (or JSON lines) to
`s3://<bucket>/<prefix>/...`; the file name and layout under the prefix are free.

| column              | type             | meaning                                                   |
|---------------------|------------------|-----------------------------------------------------------|
| schema_version      | int16            | 1                                                         |
| device_id           | string           | stable id of the device                                   |
| sku                 | string           | hardware SKU, a name from `hdap.fleet.sku.SKUS`           |
| firmware            | string           | OS / JetPack version                                      |
| timestamp           | timestamp[ms,UTC]| when the probe suite ran                                  |
| power_mode          | string           | the power mode in force (e.g. "15W"); a CPU: its state    |
| temperature_c       | float32          | SoC temperature, deg C                                    |
| gpu_clock_mhz       | float32          | GPU clock held during the probes                          |
| cpu_clock_mhz       | float32          | CPU clock held during the probes                          |
| emc_clock_mhz       | float32          | memory-controller clock                                   |
| mem_bandwidth_gbps  | float32          | device-to-device copy probe, GB/s                         |
| background_load     | float32          | share of the SoC busy with other processes, 0..1          |
| probe_<kernel>_ms   | float32          | median latency of each probe kernel (see PROBES), ms      |

A probe the SKU cannot run (int8 on a Jetson Nano) is null in that SKU's reports. The state
columns a SKU has no such thing for are null too: a CPU device (`cpu-onnxruntime`, written by
`hdap profile --states`) reports its state's name as the power mode, its memory bandwidth and
load, and its own probes (`cpu_*`, timed with ONNX Runtime); Jetsons report every column.

A device id is 1 to 128 characters of letters, digits and `. _ : -`, beginning with a letter
or a digit (`DEVICE_ID_RULE`): hostnames, serial numbers, MAC addresses and UUIDs fit, while
an id that could act as a path (`a/../../evil`, `.`, `..`), markup, whitespace or a newline
cannot. Later stages use the id in object keys (`<profiles_uri>/<device id>/profile.parquet`)
and in reports, so a row with any other id is quarantined (`bad_device_id`), never used.

A timestamp must lie between `EARLIEST_TIMESTAMP` (2000-01-01 UTC: a clock that says 1970,
1900 or year 1 was never set) and the ingest's as-of time plus a few minutes of clock skew.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pyarrow as pa

from hdap.fleet.sku import Sku
from hdap.latency.device_model import Kernel

SCHEMA_VERSION = 1

# The fixed probe suite: compute-bound, tensor-core-tiled, memory-bound and overhead-bound.
PROBES: dict[str, Kernel] = {
    "conv3x3_fp16": Kernel("conv", 64, 64, 56, 56, 3, 1, "fp16"),
    "conv3x3_int8": Kernel("conv", 64, 64, 56, 56, 3, 1, "int8"),
    "conv1x1_fp16": Kernel("conv", 256, 256, 28, 28, 1, 1, "fp16"),
    "dwconv3x3_fp16": Kernel("depthwise", 256, 256, 28, 28, 3, 1, "fp16"),
    "gemm_fp16": Kernel("gemm", 1024, 1024, 8, 8, 1, 1, "fp16"),
    "launch": Kernel("launch"),
}
# A CPU device's probes, timed for real with ONNX Runtime (op, in, out, kernel, stride, height, width, precision).
CPU_PROBES: dict[str, tuple] = {
    "cpu_conv3x3_fp32": ("conv", 64, 64, 3, 1, 28, 28, "fp32"),
    "cpu_conv3x3_int8": ("conv", 64, 64, 3, 1, 28, 28, "int8"),
    "cpu_conv1x1_fp32": ("conv", 128, 128, 1, 1, 28, 28, "fp32"),
    "cpu_dwconv3x3_fp32": ("depthwise", 128, 128, 3, 1, 28, 28, "fp32"),
    "cpu_gemm_fp32": ("linear", 1024, 1024, 1, 1, 1, 1, "fp32"),
}


def probe_column(probe: str) -> str:
    return f"probe_{probe}_ms"


PROBE_COLUMNS = [probe_column(p) for p in [*PROBES, *CPU_PROBES]]


def probes_for(sku: Sku) -> list[str]:
    """The probes a SKU runs: a CPU's own; else those whose precision its engine supports."""
    if sku.self_measured:
        return list(CPU_PROBES)
    return [name for name, k in PROBES.items() if k.op == "launch" or k.precision in sku.precisions]


TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("sku", pa.string(), nullable=False),
        pa.field("firmware", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("power_mode", pa.string(), nullable=False),
        pa.field("temperature_c", pa.float32(), nullable=True),
        pa.field("gpu_clock_mhz", pa.float32(), nullable=True),
        pa.field("cpu_clock_mhz", pa.float32(), nullable=True),
        pa.field("emc_clock_mhz", pa.float32(), nullable=True),
        pa.field("mem_bandwidth_gbps", pa.float32(), nullable=True),
        pa.field("background_load", pa.float32(), nullable=True),
        *(pa.field(column, pa.float32(), nullable=True) for column in PROBE_COLUMNS),
    ],
    metadata={b"hdap.telemetry.schema_version": str(SCHEMA_VERSION).encode()},
)

# Plausible ranges: a value outside is a broken agent or sensor, not a slow device.
VALUE_RANGES: dict[str, tuple[float, float]] = {
    "temperature_c": (-40.0, 125.0),
    "gpu_clock_mhz": (1.0, 5000.0),
    "cpu_clock_mhz": (1.0, 6000.0),
    "emc_clock_mhz": (1.0, 10000.0),
    "mem_bandwidth_gbps": (0.01, 2000.0),
    "background_load": (0.0, 1.0),
}
MAX_PROBE_LATENCY_MS = 10_000.0  # a probe kernel that takes 10 s is a hung device, not data

# Why not wider: the id becomes part of object keys and report text, so it must be safe in both raw.
DEVICE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
DEVICE_ID_RULE = "1 to 128 letters, digits, '.', '_', ':' or '-', beginning with a letter or a digit"
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=timezone.utc)  # before it, a device's clock was never set


def is_device_id(value: object) -> bool:
    """Whether `value` is a device id by `DEVICE_ID_RULE`, and so safe as a key segment and in text."""
    return isinstance(value, str) and DEVICE_ID_PATTERN.fullmatch(value) is not None

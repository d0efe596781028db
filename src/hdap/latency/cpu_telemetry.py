"""The telemetry row a CPU device reports: its state, and its probe kernels timed with ONNX Runtime.

Measured in the state it describes (threads, busy processes beside): the memory bandwidth as a
large copy, the clock and temperature where the machine exposes them (null where it does not,
as in most containers), and each CPU probe (`hdap.fleet.schema.CPU_PROBES`) as a median of
repeated runs.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from hdap.fleet.schema import CPU_PROBES, SCHEMA_VERSION, TELEMETRY_SCHEMA, probe_column
from hdap.fleet.sku import CPU_SKU
from hdap.latency.cpu_states import CpuState, usable_cores
from hdap.latency.layers import LayerConfig


def memory_bandwidth_gbps(megabytes: int = 64, repeats: int = 5) -> float:
    """Copy bandwidth: bytes read plus written per second, the best of a few copies."""
    source = np.ones(megabytes * 2**20 // 8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9


# x86 instruction sets that decide which kernels torch and ONNX Runtime run, most capable first: int8
# against fp32 speed-ups, and float results, differ between hosts with and without them.
X86_INSTRUCTION_SETS = ("amx_int8", "avx512_vnni", "avx512f", "avx_vnni", "avx2")


def cpu_info(field: str) -> list[str]:
    """Every value of `field` in /proc/cpuinfo (one per core); empty where it is not exposed (not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    return [line.split(":", 1)[1].strip() for line in lines if ":" in line and line.split(":", 1)[0].strip() == field]


def instruction_sets() -> list[str]:
    """Which of `X86_INSTRUCTION_SETS` this CPU has, most capable first."""
    flags = set(next(iter(cpu_info("flags")), "").split())
    return [name for name in X86_INSTRUCTION_SETS if name in flags]


def processor() -> str:
    """Vendor, family and model from /proc/cpuinfo, e.g. `AuthenticAMD-25-17` (a virtual machine's
    model name may say only "AMD EPYC"); 'unknown' for each part it does not expose."""
    return "-".join(next(iter(cpu_info(field)), "unknown") for field in ("vendor_id", "cpu family", "model"))


def cpu_clock_mhz() -> float | None:
    """The median current clock of the cores, from /proc/cpuinfo (x86 Linux); None where not exposed."""
    try:
        speeds = [float(value) for value in cpu_info("cpu MHz")]
    except ValueError:
        return None
    return statistics.median(speeds) if speeds else None


def temperature_c() -> float | None:
    """The first thermal zone's temperature; None where the machine exposes none."""
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    except (OSError, ValueError):
        return None


def cpu_telemetry_row(backend, device_id: str, state: CpuState) -> pa.Table:
    """One report of this machine in `state`, in the telemetry schema (backend: an OnnxRuntimeBackend
    made for the state, inside its background load)."""
    import onnxruntime as ort

    cores = usable_cores()
    row = {
        "schema_version": SCHEMA_VERSION, "device_id": device_id, "sku": CPU_SKU,
        "firmware": f"onnxruntime-{ort.__version__}", "timestamp": datetime.now(timezone.utc), "power_mode": state.name,
        "temperature_c": temperature_c(), "gpu_clock_mhz": None, "cpu_clock_mhz": cpu_clock_mhz(), "emc_clock_mhz": None,
        "mem_bandwidth_gbps": memory_bandwidth_gbps(), "background_load": min(1.0, state.background_processes / cores),
    }
    for name, fields in CPU_PROBES.items():
        row[probe_column(name)] = backend.measure(LayerConfig(*fields))
    return pa.Table.from_pylist([row], schema=TELEMETRY_SCHEMA)

"""The device performance model: what one device of a SKU, in one state, takes to run a kernel.

One definition of a device serves two users: the fleet simulator (which reports the probe
kernels' latencies as a device agent would) and the simulated profiling backend (which times
any layer a search asks about). Everything is vectorised over devices, so a million devices
cost one numpy call per kernel.

The model is a roofline with the effects that make a fleet of one SKU spread out:
- compute throughput scales with the GPU clock the device actually holds (power-mode cap,
  thermal throttling, aged regulators) and its silicon bin;
- memory time scales with the memory-controller clock, and both shrink under background load;
- each kernel pays a CPU-bound launch overhead (CPU clock, background load);
- tensor-core kernels work in tiles, so channel counts round up: latency is a staircase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdap.fleet.sku import Sku

BYTES_PER_ELEMENT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}
# Fraction of peak a kernel reaches: depthwise convolutions cannot fill tensor cores.
OP_EFFICIENCY = {"conv": 0.7, "depthwise": 0.12, "gemm": 0.8}


@dataclass(frozen=True)
class Kernel:
    """One layer-shaped kernel: a convolution (gemm is a 1x1 convolution)."""

    op: str  # conv | depthwise | gemm | launch
    in_channels: int = 0
    out_channels: int = 0
    height: int = 1  # input spatial size
    width: int = 1
    kernel_size: int = 1
    stride: int = 1
    precision: str = "fp16"


@dataclass
class DeviceState:
    """Per-device effective clocks and load; every field is an array of shape (devices,)."""

    gpu_mhz: np.ndarray
    cpu_mhz: np.ndarray
    emc_mhz: np.ndarray
    background_load: np.ndarray  # 0..1, share of the SoC used by other processes
    silicon_bin: np.ndarray  # ~1.0; throughput multiplier of this chip


def thermal_clock_cap(sku: Sku, temperature_c: np.ndarray) -> np.ndarray:
    """The share of its clock a device keeps at a temperature (1.0 below the throttle point)."""
    return np.clip(1.0 - 0.035 * (temperature_c - sku.throttle_temp_c), 0.45, 1.0)


def device_state(
    sku: Sku,
    power_mode: np.ndarray,
    temperature_c: np.ndarray,
    background_load: np.ndarray,
    silicon_bin: np.ndarray,
    regulator_cap: np.ndarray,
) -> DeviceState:
    """Effective clocks from the power mode's caps, throttling and an aged regulator's cap."""
    modes = {m.name: m for m in sku.power_modes}
    gpu_max = np.empty(len(power_mode))
    cpu_max = np.empty(len(power_mode))
    emc = np.empty(len(power_mode))
    for name, mode in modes.items():
        chosen = power_mode == name
        gpu_max[chosen], cpu_max[chosen], emc[chosen] = mode.gpu_max_mhz, mode.cpu_max_mhz, mode.emc_max_mhz
    thermal = thermal_clock_cap(sku, temperature_c)
    return DeviceState(
        gpu_mhz=gpu_max * np.minimum(thermal, regulator_cap),
        cpu_mhz=cpu_max * np.minimum(0.5 + 0.5 * thermal, regulator_cap),  # CPUs throttle less
        emc_mhz=emc,
        background_load=background_load,
        silicon_bin=silicon_bin,
    )


def _round_up(channels: int, tile: int) -> int:
    return int(-(-channels // tile) * tile)


def launch_seconds(sku: Sku, state: DeviceState) -> np.ndarray:
    return sku.launch_overhead_us * 1e-6 * (sku.cpu_ref_mhz / state.cpu_mhz) / (1.0 - 0.6 * state.background_load)


def memory_bandwidth_gbps(sku: Sku, state: DeviceState) -> np.ndarray:
    """The bandwidth a device's copy probe sees."""
    return sku.mem_bandwidth_gbps * (state.emc_mhz / sku.emc_ref_mhz) * (1.0 - 0.35 * state.background_load)


def kernel_latency_ms(sku: Sku, state: DeviceState, kernel: Kernel) -> np.ndarray:
    """Latency of one kernel on every device in `state`, in milliseconds."""
    launch = launch_seconds(sku, state)
    if kernel.op == "launch":
        return launch * 1e3
    if kernel.precision not in sku.peak_tflops:
        raise ValueError(f"{sku.name} cannot run {kernel.precision} kernels")
    tile = sku.tile_channels[kernel.precision]
    out_h = max(1, kernel.height // kernel.stride)
    out_w = max(1, kernel.width // kernel.stride)
    cout = _round_up(kernel.out_channels, tile)
    if kernel.op == "depthwise":
        macs_per_output = kernel.kernel_size**2
        weights = kernel.kernel_size**2 * cout
    else:
        cin = _round_up(kernel.in_channels, tile)
        macs_per_output = kernel.kernel_size**2 * cin
        weights = macs_per_output * cout
    flops = 2.0 * out_h * out_w * cout * macs_per_output
    element = BYTES_PER_ELEMENT[kernel.precision]
    traffic = element * (kernel.height * kernel.width * kernel.in_channels + out_h * out_w * kernel.out_channels + weights)

    peak = sku.peak_tflops[kernel.precision] * 1e12 * OP_EFFICIENCY[kernel.op]
    throughput = peak * (state.gpu_mhz / sku.gpu_ref_mhz) * state.silicon_bin * (1.0 - 0.3 * state.background_load)
    compute = flops / throughput
    memory = traffic / (memory_bandwidth_gbps(sku, state) * 1e9)
    # A smooth maximum: kernels near the ridge point pay for both.
    body = (compute**3 + memory**3) ** (1.0 / 3.0)
    return (launch + body) * 1e3

"""The simulated fleet's devices, timed through the same device model that wrote their telemetry.

Profiling a representative of a simulated fleet means asking the simulator about that device:
its power mode, temperature and background load (from its telemetry) and its silicon bin and
regulator cap (from the simulator's hidden truth). Each measurement is the median of repeated
runs with the same per-run noise a real device shows, so a surrogate faces real-looking data.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from hdap.fleet.simulate import MEASUREMENT_NOISE
from hdap.fleet.sku import get_sku
from hdap.latency.backends.base import MeasurementFailed
from hdap.latency.device_model import DeviceState, Kernel, device_state, kernel_latency_ms
from hdap.latency.layers import LayerConfig

_KERNEL_OP = {"conv": "conv", "depthwise": "depthwise", "linear": "gemm"}


@dataclass(frozen=True)
class SimulatedDevice:
    sku: str
    power_mode: str
    temperature_c: float
    background_load: float
    silicon_bin: float = 1.0
    regulator_cap: float = 1.0

    def state(self) -> DeviceState:
        return device_state(
            get_sku(self.sku),
            np.array([self.power_mode], dtype=object),
            np.array([self.temperature_c]),
            np.array([self.background_load]),
            np.array([self.silicon_bin]),
            np.array([self.regulator_cap]),
        )


def layer_kernel(config: LayerConfig) -> Kernel:
    return Kernel(
        op=_KERNEL_OP[config.op],
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        height=config.height,
        width=config.width,
        kernel_size=config.kernel_size,
        stride=config.stride,
        precision=config.precision,
    )


class SimulatedBackend:
    name = "simulated"

    def __init__(self, device: SimulatedDevice, repeats: int = 15, seed: int = 0) -> None:
        self.device = device
        self.sku = get_sku(device.sku)
        self.precisions = tuple(p for p in self.sku.precisions)
        self.repeats = repeats
        self.seed = seed
        self._state = device.state()

    def describe(self) -> dict:
        return {"backend": self.name, **asdict(self.device)}

    def true_latency_ms(self, config: LayerConfig) -> float:
        """The noiseless latency: what an infinite number of runs would converge to."""
        return float(kernel_latency_ms(self.sku, self._state, layer_kernel(config))[0])

    def measure(self, config: LayerConfig) -> float:
        if config.precision not in self.precisions:
            raise MeasurementFailed(f"{self.sku.name} cannot run {config.precision} layers")
        if config.in_channels < 1 or config.out_channels < 1:
            raise MeasurementFailed("a layer with no channels has nothing to time")
        # Noise seeded by the configuration: measuring the same thing twice gives the same answer.
        digest = hashlib.sha256(repr((self.seed, self.device, config)).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        runs = self.true_latency_ms(config) * rng.lognormal(0, MEASUREMENT_NOISE, self.repeats)
        return float(np.median(runs))

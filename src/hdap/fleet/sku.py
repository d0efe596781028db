"""The hardware SKUs hdap knows: datasheet figures a device's state is derived from.

Figures are public datasheet values, rounded, and simplified where the real product has many
modes (e.g. the Xavier NX's 2/4/6-core variants of each power budget collapse to one).
Confirm them before relying on absolute numbers; the simulator needs their ratios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hdap.errors import HdapError


class QdqPlacement(str, Enum):
    """How an int8 graph is written for the target's engine: what it fuses into integer kernels.

    TensorRT wants symmetric int8 (zero-point 0) Q/DQ on each quantised layer's input and fuses the
    rest itself. ONNX Runtime's CPU provider fuses only complete patterns (DequantizeLinear in,
    QuantizeLinear out, around Conv, Add, pooling) and removes a ReLU only before an unsigned
    quantisation with zero-point 0; written the TensorRT way, its int8 layers run as float
    convolutions between extra Q/DQ nodes (ResNet-20 all int8, one thread of this machine: 0.46x
    the fp32 model's speed placed TensorRT's way, 1.94x placed its way: bench/results/qdq_placement.json).
    """

    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"

    @property
    def protects_ends(self) -> bool:
        """Whether the search holds a model's first and last layers at the default precision. TensorRT
        practice, kept for it; for ONNX Runtime an fp32 end costs a Q/DQ border and a float kernel
        that an int8 chain does not. The CIFAR ResNet-20 quantised, on this machine's three CPU states:
        1.54x / 1.26x / 1.35x the fp32 model's speed with fp32 ends
        (bench/results/cifar_resnet20-a_cpu_fleet_ends_fp32.log), 1.94x / 1.56x / 1.42x with int8 ends,
        published at 91.78% validation against 91.72% (bench/results/cifar_resnet20-a_cpu_fleet.json)."""
        return self is QdqPlacement.TENSORRT


@dataclass(frozen=True)
class PowerMode:
    name: str
    gpu_max_mhz: float
    cpu_max_mhz: float
    emc_max_mhz: float  # memory controller clock: scales memory bandwidth


@dataclass(frozen=True)
class Sku:
    name: str
    short: str  # device-id prefix
    gpu: str
    gpu_ref_mhz: float  # the clock the peaks below are quoted at
    peak_tflops: dict[str, float]  # dense GPU peak per precision at gpu_ref_mhz
    mem_bandwidth_gbps: float  # at emc_ref_mhz
    emc_ref_mhz: float
    cpu_ref_mhz: float
    launch_overhead_us: float  # per kernel, CPU-bound, at cpu_ref_mhz
    power_modes: tuple[PowerMode, ...]
    precisions: tuple[str, ...]  # what the target's inference engine runs
    tile_channels: dict[str, int] = field(default_factory=lambda: {"fp32": 4, "fp16": 8, "int8": 32})
    throttle_temp_c: float = 80.0  # above this the SoC caps clocks
    firmware: tuple[str, ...] = ()
    # Devices that measure themselves (`hdap profile --cpu-states`): no datasheet model to simulate;
    # their states are declared (cpu_states), not power modes, and each is a cluster of its own.
    self_measured: bool = False
    qdq_placement: QdqPlacement = QdqPlacement.TENSORRT  # how its int8 graphs are written
    state_columns: tuple[str, ...] = ("temperature_c", "gpu_clock_mhz", "cpu_clock_mhz", "emc_clock_mhz",
                                      "mem_bandwidth_gbps", "background_load")  # required in its telemetry



SKUS: dict[str, Sku] = {
    sku.name: sku
    for sku in (
        Sku(
            name="jetson-nano",
            short="nano",
            gpu="128-core Maxwell",
            gpu_ref_mhz=921.6,
            peak_tflops={"fp32": 0.236, "fp16": 0.472},
            mem_bandwidth_gbps=25.6,
            emc_ref_mhz=1600,
            cpu_ref_mhz=1479,
            launch_overhead_us=45.0,
            power_modes=(
                PowerMode("5W", gpu_max_mhz=640, cpu_max_mhz=918, emc_max_mhz=1600),
                PowerMode("10W", gpu_max_mhz=921.6, cpu_max_mhz=1479, emc_max_mhz=1600),
            ),
            precisions=("fp32", "fp16"),  # TensorRT 8.2 on Maxwell: no int8
            firmware=("jetpack-4.6.4", "jetpack-4.6.5", "jetpack-4.6.6"),
        ),
        Sku(
            name="jetson-xavier-nx",
            short="xnx",
            gpu="384-core Volta, 48 tensor cores",
            gpu_ref_mhz=1100,
            peak_tflops={"fp32": 0.845, "fp16": 6.0, "int8": 12.0},  # GPU only (the 21 TOPS adds the DLAs)
            mem_bandwidth_gbps=51.2,
            emc_ref_mhz=1866,
            cpu_ref_mhz=1900,
            launch_overhead_us=25.0,
            power_modes=(
                PowerMode("10W", gpu_max_mhz=800, cpu_max_mhz=1200, emc_max_mhz=1600),
                PowerMode("15W", gpu_max_mhz=1100, cpu_max_mhz=1400, emc_max_mhz=1866),
                PowerMode("20W", gpu_max_mhz=1100, cpu_max_mhz=1900, emc_max_mhz=1866),
            ),
            precisions=("fp32", "fp16", "int8"),
            firmware=("jetpack-5.1.1", "jetpack-5.1.2", "jetpack-5.1.3"),
        ),
        Sku(
            name="jetson-orin-nano",
            short="onano",
            gpu="1024-core Ampere, 32 tensor cores",
            gpu_ref_mhz=1020,
            peak_tflops={"fp32": 2.0, "fp16": 10.0, "int8": 20.0},
            mem_bandwidth_gbps=68.0,
            emc_ref_mhz=2133,
            cpu_ref_mhz=1728,
            launch_overhead_us=18.0,
            power_modes=(
                PowerMode("7W", gpu_max_mhz=408, cpu_max_mhz=960, emc_max_mhz=2133),
                PowerMode("15W", gpu_max_mhz=625, cpu_max_mhz=1510, emc_max_mhz=2133),
                PowerMode("25W", gpu_max_mhz=1020, cpu_max_mhz=1728, emc_max_mhz=2133),
            ),
            precisions=("fp32", "fp16", "int8"),
            firmware=("jetpack-6.0", "jetpack-6.1", "jetpack-6.2"),
        ),
        # The machine hdap runs on (an industrial PC, a gateway), through ONNX Runtime's CPU
        # provider. Nothing is simulated: the GPU and clock figures above have no meaning here.
        Sku(
            name="cpu-onnxruntime",
            short="cpu",
            gpu="none (ONNX Runtime's CPU provider)",
            gpu_ref_mhz=0.0,
            peak_tflops={},
            mem_bandwidth_gbps=0.0,
            emc_ref_mhz=0.0,
            cpu_ref_mhz=0.0,
            launch_overhead_us=0.0,
            power_modes=(),
            precisions=("fp32", "int8"),  # what its CPU kernels run fast: fp16 has none on x86
            self_measured=True,
            qdq_placement=QdqPlacement.ONNXRUNTIME,
            state_columns=("mem_bandwidth_gbps", "background_load"),
        ),
    )
}
CPU_SKU = "cpu-onnxruntime"


def get_sku(name: str) -> Sku:
    try:
        return SKUS[name]
    except KeyError:
        raise HdapError(f"unknown SKU '{name}': use one of {', '.join(SKUS)}.") from None


def fleet_qdq_placement(features) -> QdqPlacement:
    """How the fleet in an ingested features table (`pyarrow.Table` with an `sku` column) wants int8
    written: its SKU's (an empty table: TensorRT's)."""
    skus = features.column("sku")
    return get_sku(skus[0].as_py()).qdq_placement if len(skus) else QdqPlacement.TENSORRT

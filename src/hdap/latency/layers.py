"""Layers as the latency model sees them: a shape from the model, and a configuration of it.

A `LayerShape` is a prunable layer of the original model (a convolution, depthwise or not, or
a fully connected layer). A `LayerConfig` is one way to run it: how many input and output
channels survive pruning, and at which precision. Profilers time configurations; surrogates
predict them; the search chooses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

OPS = ("conv", "depthwise", "linear")


@dataclass(frozen=True)
class LayerShape:
    name: str
    op: str  # conv | depthwise | linear
    in_channels: int
    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    height: int = 1  # input feature map; 1x1 for linear layers
    width: int = 1

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"layer {self.name}: op '{self.op}' is not one of {OPS}")

    def config(self, in_channels: int | None = None, out_channels: int | None = None, precision: str = "fp32") -> LayerConfig:
        return LayerConfig(
            op=self.op,
            in_channels=self.in_channels if in_channels is None else in_channels,
            out_channels=self.out_channels if out_channels is None else out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            height=self.height,
            width=self.width,
            precision=precision,
        )


@dataclass(frozen=True)
class LayerConfig:
    op: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    height: int
    width: int
    precision: str  # fp32 | fp16 | int8

    @property
    def out_height(self) -> int:
        return -(-self.height // self.stride)

    @property
    def out_width(self) -> int:
        return -(-self.width // self.stride)

    @property
    def macs(self) -> int:
        per_output = self.kernel_size**2 * (1 if self.op == "depthwise" else self.in_channels)
        return self.out_height * self.out_width * self.out_channels * per_output

    @property
    def weights(self) -> int:
        return self.kernel_size**2 * self.out_channels * (1 if self.op == "depthwise" else self.in_channels)

    def with_channels(self, in_channels: int, out_channels: int) -> LayerConfig:
        if self.op == "depthwise":
            in_channels = out_channels
        return replace(self, in_channels=in_channels, out_channels=out_channels)

    def as_dict(self) -> dict:
        return asdict(self)

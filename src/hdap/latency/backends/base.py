"""The backend interface: time one layer configuration, or say why it cannot."""

from __future__ import annotations

from typing import Protocol

from hdap.latency.layers import LayerConfig


class BackendUnavailable(Exception):
    """This backend cannot run here at all (no GPU, no TensorRT): the reason says which."""


class MeasurementFailed(Exception):
    """One configuration could not be built or timed; profiling records it and goes on."""


class Backend(Protocol):
    name: str
    precisions: tuple[str, ...]  # what it can time

    def describe(self) -> dict:
        """The device state this backend measures (threads, clocks, ...), for the profile's record."""
        ...

    def measure(self, config: LayerConfig) -> float:
        """Median latency of one configuration in milliseconds; MeasurementFailed if it cannot."""
        ...

"""Profiling backends: what times a layer configuration.

- `simulated`: the device performance model for a simulated fleet's device;
- `onnxruntime`: real measurements on this machine (threads and background load make states);
- `tensorrt`: a GPU with TensorRT, where one exists.
"""

import importlib

from hdap.latency.backends.base import Backend, BackendUnavailable, MeasurementFailed
from hdap.settings import Choice

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "MeasurementFailed", "ProfilingBackend", "get_backend"]


class ProfilingBackend(Choice):
    SIMULATED = "simulated"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


# Each backend's class, imported when it is used (ONNX Runtime and TensorRT are heavy, or absent).
BACKENDS = {
    ProfilingBackend.SIMULATED: "hdap.latency.backends.simulated:SimulatedBackend",
    ProfilingBackend.ONNXRUNTIME: "hdap.latency.backends.onnxruntime:OnnxRuntimeBackend",
    ProfilingBackend.TENSORRT: "hdap.latency.backends.tensorrt:TensorRTBackend",
}


def get_backend(name: ProfilingBackend | str, **options) -> Backend:
    """The backend `name` made with `options`; BackendUnavailable where it cannot run here."""
    from hdap.settings import from_parameter

    module, _, cls = BACKENDS[from_parameter(name, ProfilingBackend, "backend")].partition(":")
    return getattr(importlib.import_module(module), cls)(**options)

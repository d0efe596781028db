"""Profiling backends: what times a layer configuration.

- `simulated`: the device performance model for a simulated fleet's device;
- `onnxruntime`: real measurements on this machine (threads and background load make states);
- `tensorrt`: a GPU with TensorRT, where one exists.
"""

from hdap.latency.backends.base import Backend, BackendUnavailable, MeasurementFailed

__all__ = ["Backend", "BackendUnavailable", "MeasurementFailed", "get_backend"]


def get_backend(name: str, **options) -> Backend:
    from hdap.errors import HdapError

    if name == "simulated":
        from hdap.latency.backends.simulated import SimulatedBackend

        return SimulatedBackend(**options)
    if name == "onnxruntime":
        from hdap.latency.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(**options)
    if name == "tensorrt":
        from hdap.latency.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(**options)
    raise HdapError(f"unknown profiling backend '{name}': use simulated, onnxruntime or tensorrt.")

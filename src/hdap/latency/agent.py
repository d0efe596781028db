"""The device agent: profile this machine's layers, as a representative device does, and upload the profile.

The surrogate stage uses an uploaded profile (`<profiles_uri>/<device id>/profile.parquet`) for
any cluster representative with that device id, instead of profiling it with a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hdap.latency.backends import ProfilingBackend
from hdap.settings import INPUT_SHAPE, MODEL, PROFILES_URI, Choice, Settings, Shape, at_least, setting
from hdap.stages.surrogate import SurrogateConfig

if TYPE_CHECKING:
    from hdap.store import ObjectStore


class DeviceBackend(Choice):
    """What a device measures itself with (a subset of the profiling backends: nothing simulated)."""

    ONNXRUNTIME = ProfilingBackend.ONNXRUNTIME.value  # this machine's CPU
    TENSORRT = ProfilingBackend.TENSORRT.value  # this machine's GPU


@dataclass(frozen=True)
class ProfileConfig(Settings):
    backend: DeviceBackend = setting(DeviceBackend.ONNXRUNTIME, "onnxruntime (this machine's CPU) or tensorrt (this machine's GPU).")
    # The model and input the pipeline will ask about: its defaults, so a device's profile fits the run's.
    model: str = setting(MODEL.default, "Model whose layers to profile (the pipeline's model).")
    input_shape: Shape = setting(INPUT_SHAPE.default, "Its input, channels,height,width (the pipeline's input_shape).",
                                 check=INPUT_SHAPE.check)
    threads: int = setting(1, "onnxruntime: intra-op threads (a device state).", check=at_least(1))
    samples_per_layer: int = setting(30, "Configurations per layer and precision.", check=at_least(1))
    rounds: int = setting(3, "Shuffled rounds; each configuration keeps its quietest round.", check=at_least(1))
    device_id: str = setting("", "The id this device reports in its telemetry; empty: the host name.")
    profiles_uri: str = PROFILES_URI()


@dataclass
class DeviceProfile:
    device_id: str
    uri: str  # the folder it went to: <profiles_uri>/<device id>/
    timed: int  # configurations timed
    planned: int


def profile_device(config: ProfileConfig, store: ObjectStore) -> DeviceProfile:
    """Time every planned layer configuration of the model here, then upload the profile and what was measured."""
    import socket
    from datetime import datetime, timezone

    from hdap.errors import HdapError
    from hdap.latency.backends import BackendUnavailable, get_backend
    from hdap.latency.profiling import plan_profile, run_profile
    from hdap.models import build_model, prunable_layers
    from hdap.store import join_uri

    layers = prunable_layers(build_model(config.model, config.input_shape), config.input_shape)
    try:
        profiler = get_backend(config.backend.value, **({"threads": config.threads} if config.backend is DeviceBackend.ONNXRUNTIME else {}))
    except BackendUnavailable as err:
        raise HdapError(str(err)) from None
    store.check()
    device = config.device_id or socket.gethostname()
    plan = plan_profile(layers, profiler.precisions, config.samples_per_layer, granule=SurrogateConfig.granule)
    profile = run_profile(profiler, plan, rounds=config.rounds, description=f"profiling {config.model} on {device}")
    target = join_uri(config.profiles_uri, device)
    store.put_table(join_uri(target, "profile.parquet"), profile)
    store.put_json(join_uri(target, "device.json"), {
        "device_id": device, "model": config.model, "input_shape": list(config.input_shape), **profiler.describe(),
        "profiled_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    timed = sum(1 for s in profile.column("status").to_pylist() if s == "ok")
    return DeviceProfile(device, target + "/", timed, len(plan))

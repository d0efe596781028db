"""The device agent: profile this machine's layers, as a representative device does, and upload the profile.

The surrogate stage uses an uploaded profile (`<profiles_uri>/<device id>/profile.parquet`) for
any cluster representative with that device id, instead of profiling it with a backend.

With ONNX Runtime the machine is a CPU fleet in miniature: in each declared state (`cpu_states`:
threads, busy processes beside) it reports as a device of its own, `<id>-<state>`, writing the
telemetry row a CPU device sends (`hdap.latency.cpu_telemetry`: probe kernels timed for real) and
its layer profile, and times a dozen whole variants of the model, pruned at random
(`models.parquet`, `hdap.latency.model_variants`: the surrogate's per-model terms are fitted on
them). The pipeline then ingests, clusters (one cluster per state) and fits
surrogates from those measurements, as for any fleet (sku `cpu-onnxruntime`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hdap.fleet.sku import CPU_SKU
from hdap.latency.backends import ProfilingBackend
from hdap.latency.cpu_telemetry import cpu_telemetry_row
from hdap.settings import (CPU_STATES, INPUT_SHAPE, MODEL, PROFILES_URI, TELEMETRY_URI, Choice, Settings, Shape, at_least, setting,
                           telemetry_folder)
from hdap.stages.surrogate import SurrogateConfig
from hdap.store import join_uri

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
    cpu_states: str = CPU_STATES()  # onnxruntime: each state is profiled, and reports telemetry, as a device of its own
    samples_per_layer: int = setting(30, "Configurations per layer and precision.", check=at_least(1))
    rounds: int = setting(3, "Shuffled rounds; each configuration keeps its quietest round.", check=at_least(1))
    device_id: str = setting("", "The id this device reports in its telemetry; empty: the host name. With onnxruntime, each "
                             "CPU state reports as <id>-<state> (host-1, host-all, host-all_load).")
    profiles_uri: str = PROFILES_URI()
    telemetry_uri: str = TELEMETRY_URI()  # onnxruntime: each state's telemetry row goes to <telemetry>/<device id>/


@dataclass
class DeviceProfile:
    device_id: str
    uri: str  # the folder it went to: <profiles_uri>/<device id>/
    timed: int  # configurations timed
    planned: int
    telemetry_uri: str = ""  # the state's telemetry row (onnxruntime)


def profile_device(config: ProfileConfig, store: ObjectStore) -> list[DeviceProfile]:
    """Time every planned layer configuration of the model here (with onnxruntime, in every CPU state,
    writing each state's telemetry row too), then upload the profiles and what was measured."""
    import socket

    from hdap.errors import HdapError
    from hdap.latency.backends import BackendUnavailable, get_backend
    from hdap.latency.backends.onnxruntime import BackgroundLoad, OnnxRuntimeBackend
    from hdap.latency.cpu_states import metric_key, parse_cpu_states
    from hdap.latency.model_variants import model_variants
    from hdap.latency.profiling import plan_profile
    from hdap.models import build_model, prunable_layers

    layers = prunable_layers(build_model(config.model, config.input_shape), config.input_shape)
    store.check()
    host = config.device_id or socket.gethostname()
    if config.backend is DeviceBackend.TENSORRT:
        try:
            profiler = get_backend(config.backend.value)
        except BackendUnavailable as err:
            raise HdapError(str(err)) from None
        plan = plan_profile(layers, profiler.precisions, config.samples_per_layer, granule=SurrogateConfig.granule)
        return [_profile_state(config, store, profiler, plan, host)]
    variants = model_variants(config.model, config.input_shape, OnnxRuntimeBackend.precisions, SurrogateConfig.calibration_models)
    profiles = []
    for state in parse_cpu_states(config.cpu_states):
        with BackgroundLoad(state.background_processes, confine=False):
            profiler = get_backend(config.backend.value, threads=state.thread_count(), background_processes=state.background_processes)
            plan = plan_profile(layers, profiler.precisions, config.samples_per_layer, granule=SurrogateConfig.granule)
            device = f"{host}-{metric_key(state.name)}"
            row = cpu_telemetry_row(profiler, device, state)
            profile = _profile_state(config, store, profiler, plan, device, {"cpu_state": state.name}, variants)
        reported_ms = row.column("timestamp")[0].value
        profile.telemetry_uri = join_uri(telemetry_folder(config.telemetry_uri, CPU_SKU), device, f"{reported_ms}.parquet")
        store.put_table(profile.telemetry_uri, row)
        profiles.append(profile)
    return profiles


def _profile_state(config: ProfileConfig, store: ObjectStore, profiler, plan, device: str, extra: dict | None = None,
                   variants: list | None = None) -> DeviceProfile:
    """Profile the planned layers (and time the whole model `variants`: graph and layers), upload them as `device`."""
    from datetime import datetime, timezone

    from hdap.latency.profiling import models_table, run_profile, time_graphs

    profile = run_profile(profiler, plan, rounds=config.rounds, description=f"profiling {config.model} on {device}")
    target = join_uri(config.profiles_uri, device)
    store.put_table(join_uri(target, "profile.parquet"), profile)
    if variants:
        latencies = time_graphs(profiler, [graph for graph, _ in variants], rounds=config.rounds, description=f"whole models on {device}")
        store.put_table(join_uri(target, "models.parquet"), models_table([layers for _, layers in variants], latencies))
    store.put_json(join_uri(target, "device.json"), {
        "device_id": device, "model": config.model, "input_shape": list(config.input_shape), **profiler.describe(), **(extra or {}),
        "profiled_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    timed = sum(1 for s in profile.column("status").to_pylist() if s == "ok")
    return DeviceProfile(device, target + "/", timed, len(plan))

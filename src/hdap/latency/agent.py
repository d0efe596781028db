"""The device agent: profile this machine's layers, as a representative device does, and upload the profile.

The surrogate stage uses an uploaded profile (`<profiles_uri>/<device id>/profile.parquet`) for
any cluster representative with that device id, instead of profiling it with a backend.

With ONNX Runtime the machine is a CPU fleet in miniature: in each declared state (`cpu_states`:
threads, busy processes beside) it reports as a device of its own, `<id>-<state>`, writing the
telemetry row a CPU device sends (`hdap.latency.cpu_telemetry`: probe kernels timed for real) and
its layer profile, and times eighteen whole variants of the model, pruned at random
(`models.parquet`, `hdap.latency.model_variants`: the surrogate's per-model terms are fitted on
them). The pipeline then ingests, clusters (one cluster per state) and fits
surrogates from those measurements, as for any fleet (sku `cpu-onnxruntime`).

On a device without torch, the agent times a profiling kit instead of building the model
(`--kit-uri`, written once by `hdap profile-kit`: `hdap.latency.profiling_kit`); then ONNX
Runtime, numpy, pyarrow and the store client are all it imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hdap.fleet.schema import DEVICE_ID_RULE, is_device_id
from hdap.fleet.sku import CPU_SKU, QdqPlacement
from hdap.latency.backends import ProfilingBackend
from hdap.latency.cpu_telemetry import cpu_telemetry_row
from hdap.settings import (CPU_STATES, INPUT_SHAPE, MODEL, PROFILES_URI, TELEMETRY_URI, Choice, Settings, Shape, at_least, s3_uri, setting,
                           telemetry_folder)
from hdap.stages.surrogate import SurrogateConfig
from hdap.store import join_uri

if TYPE_CHECKING:
    from hdap.latency.profiling_kit import ProfilingKit
    from hdap.store import ObjectStore


class DeviceBackend(Choice):
    """What a device measures itself with (a subset of the profiling backends: nothing simulated)."""

    ONNXRUNTIME = ProfilingBackend.ONNXRUNTIME.value  # this machine's CPU
    TENSORRT = ProfilingBackend.TENSORRT.value  # this machine's GPU


def _device_id_check(value: str) -> str | None:
    """The id becomes a key segment (<profiles_uri>/<id>/) and a telemetry value: ingest's rule, checked here."""
    return None if not value or is_device_id(value) else f"is not a device id: use {DEVICE_ID_RULE}"


@dataclass(frozen=True)
class ProfileConfig(Settings):
    backend: DeviceBackend = setting(DeviceBackend.ONNXRUNTIME, "onnxruntime (this machine's CPU) or tensorrt (this machine's GPU).")
    # The model and input the pipeline will ask about: its defaults, so a device's profile fits the run's.
    model: str = setting(MODEL.default, "Model whose layers to profile (the pipeline's model).")
    input_shape: Shape = setting(INPUT_SHAPE.default, "Its input, channels,height,width (the pipeline's input_shape).",
                                 check=INPUT_SHAPE.check)
    kit_uri: str = setting("", "A profiling kit to time (written by `hdap profile-kit`) instead of building the model here: "
                           "a device without torch needs one. Its model and input shape replace --model and --input-shape.",
                           check=s3_uri)
    cpu_states: str = CPU_STATES()  # onnxruntime: each state is profiled, and reports telemetry, as a device of its own
    samples_per_layer: int = setting(30, "Configurations per layer and precision.", check=at_least(1))
    rounds: int = setting(3, "Shuffled rounds; each configuration keeps its quietest round.", check=at_least(1))
    device_id: str = setting("", "The id this device reports in its telemetry; empty: the host name. With onnxruntime, each "
                             "CPU state reports as <id>-<state> (host-1, host-all, host-all_load).", check=_device_id_check)
    profiles_uri: str = PROFILES_URI()
    telemetry_uri: str = TELEMETRY_URI()  # onnxruntime: each state's telemetry row goes to <telemetry>/<device id>/


@dataclass(frozen=True)
class KitConfig(Settings):
    model: str = setting(MODEL.default, "Model whose layers and variants the kit holds (the pipeline's model).")
    input_shape: Shape = setting(INPUT_SHAPE.default, "Its input, channels,height,width (the pipeline's input_shape).",
                                 check=INPUT_SHAPE.check)
    kit_uri: str = setting("", "Where to write the kit (a folder): devices read it with `hdap profile --kit-uri`.", check=s3_uri)

    def validate(self) -> None:
        from hdap.errors import HdapError

        if not self.kit_uri:
            raise HdapError("kit_uri is empty: say where to write the kit, for example --kit-uri s3://hdap/kits/resnet20.")


def write_profiling_kit(config: KitConfig, store: ObjectStore) -> str:
    """Build the model's kit here (torch) and upload it; the kit index's URI."""
    from hdap.latency.backends.onnxruntime import OnnxRuntimeBackend
    from hdap.latency.profiling_kit import build_kit, write_kit

    store.check()
    kit = build_kit(config.model, config.input_shape, OnnxRuntimeBackend.precisions, SurrogateConfig.calibration_models,
                    QdqPlacement.ONNXRUNTIME)
    return write_kit(store, config.kit_uri, kit)


@dataclass
class DeviceProfile:
    device_id: str
    uri: str  # the folder it went to: <profiles_uri>/<device id>/
    timed: int  # configurations timed
    planned: int
    model: str = ""
    telemetry_uri: str = ""  # the state's telemetry row (onnxruntime)


def profile_device(config: ProfileConfig, store: ObjectStore) -> list[DeviceProfile]:
    """Time every planned layer configuration of the model here (with onnxruntime, in every CPU state,
    writing each state's telemetry row too), then upload the profiles and what was measured."""
    import socket

    from hdap.errors import HdapError
    from hdap.latency.backends import BackendUnavailable, get_backend
    from hdap.latency.profiling import plan_profile

    store.check()
    host = config.device_id or socket.gethostname()
    if config.backend is DeviceBackend.TENSORRT:
        try:
            profiler = get_backend(config.backend.value)
        except BackendUnavailable as err:
            raise HdapError(str(err)) from None
        kit = _kit(config, store, variant_count=0)
        plan = plan_profile(kit.layers, profiler.precisions, config.samples_per_layer, granule=SurrogateConfig.granule)
        return [_profile_state(config, store, profiler, plan, host, kit)]
    return _profile_cpu_states(config, store, host)


def _placement(config: ProfileConfig) -> QdqPlacement:
    return QdqPlacement.ONNXRUNTIME if config.backend is DeviceBackend.ONNXRUNTIME else QdqPlacement.TENSORRT


def _kit(config: ProfileConfig, store: ObjectStore, variant_count: int, precisions: tuple[str, ...] = ()) -> ProfilingKit:
    """The kit named by the config, or the model's built here."""
    from hdap.latency.profiling_kit import build_kit, read_kit

    if config.kit_uri:
        return read_kit(store, config.kit_uri)
    return build_kit(config.model, config.input_shape, precisions, variant_count, _placement(config))


def _profile_cpu_states(config: ProfileConfig, store: ObjectStore, host: str) -> list[DeviceProfile]:
    """With ONNX Runtime, each CPU state as a device of its own: its profile, its whole models, its telemetry row."""
    from hdap.latency.backends import get_backend
    from hdap.latency.backends.onnxruntime import BackgroundLoad, OnnxRuntimeBackend
    from hdap.latency.cpu_states import metric_key, parse_cpu_states, pinned
    from hdap.latency.profiling import plan_profile

    kit = _kit(config, store, SurrogateConfig.calibration_models, OnnxRuntimeBackend.precisions)
    profiles = []
    for state in parse_cpu_states(config.cpu_states):
        with pinned(state), BackgroundLoad(state.background_processes, confine=False):
            profiler = get_backend(config.backend.value, threads=state.thread_count(), background_processes=state.background_processes)
            plan = plan_profile(kit.layers, profiler.precisions, config.samples_per_layer, granule=SurrogateConfig.granule)
            device = f"{host}-{metric_key(state.name)}"
            row = cpu_telemetry_row(profiler, device, state)
            profile = _profile_state(config, store, profiler, plan, device, kit, {"cpu_state": state.name})
        reported_ms = row.column("timestamp")[0].value
        profile.telemetry_uri = join_uri(telemetry_folder(config.telemetry_uri, CPU_SKU), device, f"{reported_ms}.parquet")
        store.put_table(profile.telemetry_uri, row)
        profiles.append(profile)
    return profiles


def _profile_state(config: ProfileConfig, store: ObjectStore, profiler, plan, device: str, kit: ProfilingKit,
                   extra: dict | None = None) -> DeviceProfile:
    """Profile the planned layers (and time the kit's whole variants, if any), upload them as `device`."""
    from datetime import datetime, timezone

    from hdap.latency.profiling import models_table, run_profile, time_graphs

    profile = run_profile(profiler, plan, rounds=config.rounds, description=f"profiling {kit.model} on {device}")
    target = join_uri(config.profiles_uri, device)
    store.put_table(join_uri(target, "profile.parquet"), profile)
    if kit.variants:
        latencies = time_graphs(profiler, [graph for graph, _ in kit.variants], rounds=config.rounds,
                                description=f"whole models on {device}")
        store.put_table(join_uri(target, "models.parquet"), models_table([layers for _, layers in kit.variants], latencies))
    store.put_json(join_uri(target, "device.json"), {
        "device_id": device, "model": kit.model, "input_shape": list(kit.input_shape), **profiler.describe(), **(extra or {}),
        "profiled_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    timed = sum(1 for s in profile.column("status").to_pylist() if s == "ok")
    return DeviceProfile(device, target + "/", timed, len(plan), kit.model)

"""The surrogate stage: profile each cluster's representative, fit its surrogate, report accuracy.

Where a representative's profile was uploaded (by `hdap profile` on the device itself, under
`<profiles_uri>/<device id>/profile.parquet`), it is used as measured. Otherwise the configured
backend profiles it: `simulated` asks the fleet simulator's device model about that device;
`onnxruntime` measures this machine as a stand-in for every representative (a way to run the
pipeline on real measurements without devices; its clusters then share one surrogate's data).

One component loops over the clusters instead of a Kubeflow ParallelFor: simulated profiling is
instant, profiles on this machine would contend for its cores if run in parallel, and real
devices profile themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute is only there once imported)

from hdap.errors import HdapError
from hdap.fleet.schema import DEVICE_ID_RULE, is_device_id
from hdap.fleet.sku import Sku, get_sku
from hdap.latency.backends import BackendUnavailable, ProfilingBackend, get_backend
from hdap.latency.backends.simulated import SimulatedBackend, SimulatedDevice, layer_kernel
from hdap.latency.device_model import DeviceState, device_state, kernel_latency_ms
from hdap.latency.fleet_cost import FleetCost
from hdap.latency.layers import LayerConfig, LayerShape
from hdap.latency.profiling import plan_profile, profile_configs, run_profile, time_models
from hdap.latency.surrogate import LatencySurrogate, fit_model_overhead, fit_surrogate, within
from hdap.stages.cluster import ClusterSummary, DeviceCluster
from hdap.stages.surrogate import SurrogateConfig
from hdap.store import ObjectStore, join_uri

log = logging.getLogger("hdap")
SECONDS_PER_CONFIGURATION = 0.5  # building and warming one configuration on a device
TIMED_RUNS_PER_CONFIGURATION = 50  # rounds x runs per round, as the real backends time them


@dataclass
class ClusterSurrogate:
    cluster: int
    weight: float
    representative: str
    surrogate: LatencySurrogate
    profile: pa.Table
    source: str  # uploaded | simulated | onnxruntime
    held_out_within_10pct: float
    held_out: list[tuple[float, float]] = field(default_factory=list)  # (measured, predicted) ms
    device_seconds: float = 0.0


def precisions_for(sku_name: str, backend_precisions: tuple[str, ...]) -> tuple[str, ...]:
    """The target's precision menu, as far as the profiling backend can time it. Where the engine runs
    fp16, fp32 is never faster and leaves the menu; elsewhere (a CPU) fp32 stays, beside int8."""
    engine = get_sku(sku_name).precisions
    menu = tuple(p for p in engine if p != "fp32") if "fp16" in engine else engine
    usable = tuple(p for p in menu if p in backend_precisions)
    return usable or tuple(p for p in ("fp32", "int8") if p in backend_precisions)


def random_variants(layers: list[LayerShape], precisions: tuple[str, ...], count: int, granule: int, seed: int) -> list[list[LayerConfig]]:
    """Random pruned, mixed-precision chains of the model's layers (channels in granules)."""
    rng = np.random.default_rng(seed)
    variants = []
    for _ in range(count):
        chain, previous = [], layers[0].in_channels
        for shape in layers:
            out = shape.out_channels if shape.op == "linear" else int(rng.integers(1, max(1, shape.out_channels // granule) + 1)) * min(granule, shape.out_channels)
            chain.append(shape.config(previous, out, str(rng.choice(precisions))))
            previous = out
        variants.append(chain)
    return variants


def is_chain(layers: list[LayerShape]) -> bool:
    """Whether each layer feeds the next (a plain CNN), so a random variant is a real network.
    Residual models list their shortcut convolutions beside the main path: not a chain."""
    for before, after in zip(layers[:-1], layers[1:]):
        if after.op == "linear":
            continue
        if after.in_channels != before.out_channels or (after.height, after.width) != (-(-before.height // before.stride), -(-before.width // before.stride)):
            return False
    return True


def held_out_split(configs: list[LayerConfig], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """About a fifth of every layer shape and precision held out; groups of fewer than three
    samples stay whole in training (a surrogate cannot predict a shape it never saw)."""
    from hdap.latency.surrogate import group_key

    rng = np.random.default_rng(seed)
    groups: dict = {}
    for index, config in enumerate(configs):
        groups.setdefault(group_key(config), []).append(index)
    train, test = [], []
    for _, members in sorted(groups.items()):
        members = list(rng.permutation(members))
        held = max(1, len(members) // 5) if len(members) >= 3 else 0
        test += members[:held]
        train += members[held:]
    return np.array(train, dtype=int), np.array(test, dtype=int)


def device_seconds(profile: pa.Table) -> float:
    timed = [v for v in profile.column("latency_ms").to_pylist() if v is not None]
    return len(profile) * SECONDS_PER_CONFIGURATION + sum(timed) * 1e-3 * TIMED_RUNS_PER_CONFIGURATION


def load_truth(store: ObjectStore, truth_uri: str) -> dict[str, dict]:
    """A simulated fleet's hidden truth (silicon bin, regulator cap) per device id."""
    tables = [store.get_table(o.uri) for o in store.list(truth_uri)]
    return {r["device_id"]: r for r in pa.concat_tables(tables).to_pylist()} if tables else {}


def simulated_device(device_id: str, features: pa.Table, truth: dict[str, dict]) -> SimulatedDevice:
    row = features.filter(pa.compute.equal(features.column("device_id"), device_id)).to_pylist()
    if not row:
        raise HdapError(f"representative {device_id} is not in the feature table: run ingest and cluster on the same telemetry.")
    r = row[0]
    hidden = truth.get(device_id, {})
    return SimulatedDevice(
        sku=r["sku"], power_mode=r["power_mode"], temperature_c=float(r["temperature_c_median"]),
        background_load=float(r["background_load_median"]),
        silicon_bin=float(hidden.get("silicon_bin", 1.0)), regulator_cap=float(hidden.get("regulator_cap", 1.0)),
    )


def _backend_precisions(config: SurrogateConfig, sku: str) -> tuple[str, ...]:
    """What the configured backend can time (a simulated device: what its SKU runs)."""
    if config.backend is ProfilingBackend.SIMULATED:
        return get_sku(sku).precisions
    try:
        return get_backend(config.backend).precisions
    except BackendUnavailable as err:
        raise HdapError(str(err)) from None


def device_uri(profiles_uri: str, device_id: str, name: str) -> str:
    """`<profiles_uri>/<device id>/<name>`, for an id by the telemetry schema's rule only: ingest quarantines
    any other, and one used raw (`a/../../evil`) would name another device's object, or none."""
    if not is_device_id(device_id):
        raise HdapError(f"the representative device id {str(device_id)[:64]!r} is not {DEVICE_ID_RULE}: run ingest and "
                        "cluster again with this hdap, which quarantines such ids.")
    return join_uri(profiles_uri, device_id, name)


def _uploaded_profile(store: ObjectStore | None, config: SurrogateConfig, device_id: str,
                      precisions: tuple[str, ...]) -> pa.Table | None:
    """The profile the device uploaded itself (`hdap profile`), kept to the target's precisions; None if none."""
    uploaded = device_uri(config.profiles_uri, device_id, "profile.parquet") if config.profiles_uri else ""
    if not uploaded or store is None or not store.exists(uploaded):
        return None
    profile = store.get_table(uploaded)
    have = set(profile.filter(pa.compute.equal(profile.column("status"), "ok")).column("precision").to_pylist())
    if not set(precisions) <= have:
        raise HdapError(
            f"the uploaded profile of {device_id} ({uploaded}) covers {sorted(have)}, but the target runs {list(precisions)}: "
            "profile the device again with those precisions, or remove the upload."
        )
    return profile.filter(pa.compute.is_in(profile.column("precision"), value_set=pa.array(list(precisions))))


def _uploaded_models(store: ObjectStore | None, config: SurrogateConfig, device_id: str,
                     precisions: tuple[str, ...]) -> list[tuple[list[LayerConfig], float]]:
    """The whole models the device timed beside its profile (`hdap profile`), those within the menu; [] if none."""
    from hdap.latency.profiling import timed_models

    uri = device_uri(config.profiles_uri, device_id, "models.parquet")
    if store is None or not store.exists(uri):
        return []
    return [(chain, latency) for chain, latency in timed_models(store.get_table(uri)) if all(c.precision in precisions for c in chain)]


def _fit_cluster(cluster: DeviceCluster, profile: pa.Table, source: str, backend, layers: list[LayerShape],
                 precisions: tuple[str, ...], config: SurrogateConfig, shared: bool,
                 uploaded_models: list[tuple[list[LayerConfig], float]]) -> ClusterSurrogate:
    """Fit one cluster's surrogate on its representative's profile, score it on held-out layers and
    fit the per-model terms on whole models: those the device timed and uploaded, or, where the
    backend can time whole models of a chain, those it times here."""
    device_id = cluster.representative
    configs, latencies = profile_configs(profile)
    if len(configs) < 10:
        raise HdapError(f"only {len(configs)} layer configurations of {device_id} could be timed: see the profile's reason column.")
    train, test = held_out_split(configs, config.seed)
    trial = fit_surrogate([configs[i] for i in train], latencies[train])
    predicted = np.array([trial.predict(configs[i]) for i in test])
    surrogate = fit_surrogate(configs, latencies, device=backend.describe() if backend else {"source": "uploaded", "device_id": device_id})
    if backend is not None and is_chain(layers):
        variants = random_variants(layers, precisions, config.calibration_models, config.granule, config.seed + 1)
        # Rounds only where a shared CPU drifts: a GPU's timings are steady, and each whole model is an engine build.
        rounds = config.rounds if config.backend is ProfilingBackend.ONNXRUNTIME else 1
        timed = time_models(backend, variants, rounds=rounds, seed=config.seed,
                            description=f"cluster {cluster.id} ({device_id}): calibration models")
        measured = [(variant, latency) for variant, latency in zip(variants, timed) if latency is not None]
        if measured:
            fit_model_overhead(surrogate, measured)
    if uploaded_models:
        fit_model_overhead(surrogate, uploaded_models)
    result = ClusterSurrogate(
        cluster=cluster.id, weight=cluster.weight, representative=device_id, surrogate=surrogate, profile=profile, source=source,
        held_out_within_10pct=within(predicted, latencies[test]), held_out=list(zip(latencies[test].tolist(), predicted.tolist())),
        device_seconds=0.0 if shared else device_seconds(profile))
    log.info("cluster %d: surrogate of %s from %d configurations (%s), %.1f%% of held-out within 10%%",
             cluster.id, device_id, len(configs), source, 100 * result.held_out_within_10pct)
    return result


def build_cluster_surrogates(
    store: ObjectStore | None,
    clusters: ClusterSummary,
    features: pa.Table,
    layers: list[LayerShape],
    config: SurrogateConfig,
) -> tuple[list[ClusterSurrogate], tuple[str, ...]]:
    """One surrogate per cluster, from its representative's uploaded profile or from the configured
    backend; and the precision menu every cluster shares (the target's, as far as the backend times it)."""
    truth = load_truth(store, config.truth_uri) if config.truth_uri and store is not None else {}
    sku = features.column("sku")[0].as_py()
    precisions = precisions_for(sku, _backend_precisions(config, sku))
    results: list[ClusterSurrogate] = []
    shared_onnxruntime: pa.Table | None = None  # one machine stands in for every representative
    for cluster in clusters.clusters:
        device_id = cluster.representative
        profile, source, backend, shared = _uploaded_profile(store, config, device_id, precisions), "uploaded", None, False
        models = _uploaded_models(store, config, device_id, precisions) if profile is not None else []
        if profile is None and get_sku(sku).self_measured:
            raise HdapError(f"no profile of {device_id} under {config.profiles_uri}: a {sku} fleet is profiled by its devices; "
                            "run `hdap profile` there (with the run's model, input_shape and cpu_states) before the pipeline.")
        if profile is None:
            source = config.backend.value
            backend = (SimulatedBackend(simulated_device(device_id, features, truth), seed=config.seed)
                       if config.backend is ProfilingBackend.SIMULATED else get_backend(config.backend))
            if shared_onnxruntime is not None:
                profile, shared = shared_onnxruntime, True
            else:
                plan = plan_profile(layers, precisions, config.samples_per_layer, config.granule, config.seed)
                rounds = 1 if config.backend is ProfilingBackend.SIMULATED else config.rounds
                profile = run_profile(backend, plan, rounds=rounds, seed=config.seed, description=f"cluster {cluster.id} ({device_id})")
                if config.backend is ProfilingBackend.ONNXRUNTIME:
                    shared_onnxruntime = profile
        results.append(_fit_cluster(cluster, profile, source, backend, layers, precisions, config, shared, models))
    return results, precisions


def nominal_device(sku_name: str) -> SimulatedDevice:
    """The datasheet device: the fastest power mode, cool, idle, a typical chip, no aged parts."""
    sku = get_sku(sku_name)
    fastest = max(sku.power_modes, key=lambda m: m.gpu_max_mhz * m.cpu_max_mhz)
    return SimulatedDevice(sku=sku_name, power_mode=fastest.name, temperature_c=45.0, background_load=0.0)


def simulated_surrogate(device: SimulatedDevice, layers: list[LayerShape], precisions: tuple[str, ...],
                        samples_per_layer: int = 30, granule: int = 8, seed: int = 0) -> LatencySurrogate:
    """Profile a simulated device on a model's layers and fit its surrogate (no store needed)."""
    plan = plan_profile(layers, precisions, samples_per_layer, granule, seed)
    configs, latencies = profile_configs(run_profile(SimulatedBackend(device, seed=seed), plan, seed=seed,
                                                     description=f"profiling {device.sku} {device.power_mode}"))
    return fit_surrogate(configs, latencies, device=SimulatedBackend(device).describe())


def simulated_fleet_state(features: pa.Table, truth: dict[str, dict]) -> tuple[Sku, DeviceState]:
    """The SKU and every device's state (clocks, load) of a simulated fleet, from its features
    and the simulator's hidden truth."""
    sku = get_sku(features.column("sku")[0].as_py())
    ids = features.column("device_id").to_pylist()
    state = device_state(
        sku,
        np.array(features.column("power_mode").to_pylist(), dtype=object),
        features.column("temperature_c_median").to_numpy(),
        features.column("background_load_median").to_numpy(),
        np.array([float(truth.get(i, {}).get("silicon_bin", 1.0)) for i in ids]),
        np.array([float(truth.get(i, {}).get("regulator_cap", 1.0)) for i in ids]),
    )
    return sku, state


def simulated_fleet_latency_ms(configs: list[LayerConfig], features: pa.Table, truth: dict[str, dict]) -> np.ndarray:
    """The true latency of a model (its layers at hard choices) on every device of a simulated
    fleet: what the fleet would see if it were deployed. One numpy call per layer."""
    sku, state = simulated_fleet_state(features, truth)
    return sum(kernel_latency_ms(sku, state, layer_kernel(c)) for c in configs)


def simulated_fleet_cost(features: pa.Table, truth: dict[str, dict], clusters: list[tuple[str, float]], layers: list[LayerShape],
                         precisions: tuple[str, ...], samples_per_layer: int = 30, seed: int = 0) -> FleetCost:
    """The fleet cost of a simulated fleet: each (representative, weight) profiled on the simulated backend."""
    surrogates = [simulated_surrogate(simulated_device(device_id, features, truth), layers, precisions, samples_per_layer, seed=seed)
                  for device_id, _ in clusters]
    return FleetCost(surrogates, [weight for _, weight in clusters], precisions)


def fastest_state_cost(fleet: FleetCost, layers: list[LayerShape]) -> FleetCost:
    """A measured fleet's nominal device: the state that runs the uncompressed model fastest (what a
    benchmark on an idle machine sees), alone."""
    precision = "fp32" if "fp32" in fleet.precisions else fleet.precisions[0]
    full = [layer.config(precision=precision) for layer in layers]
    fastest = min(fleet.surrogates, key=lambda s: s.predict_model(full))
    return FleetCost([fastest], [1.0], fleet.precisions, fleet.placement)


def nominal_fleet_cost(sku_name: str, layers: list[LayerShape], precisions: tuple[str, ...], seed: int = 0) -> FleetCost:
    """A "fleet" of one datasheet device (the SKU's nominal device, simulated): the baseline to beat."""
    return FleetCost([simulated_surrogate(nominal_device(sku_name), layers, precisions, seed=seed)], [1.0], precisions)

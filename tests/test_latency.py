"""Profiling backends, surrogates and the fleet cost the search differentiates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdap.latency.backends import BackendUnavailable, MeasurementFailed
from hdap.latency.backends.onnxruntime import OnnxRuntimeBackend
from hdap.latency.backends.simulated import SimulatedBackend, SimulatedDevice
from hdap.latency.backends.tensorrt import TensorRTBackend, tensorrt_unavailable_reason
from hdap.latency.fleet_cost import FleetCost
from hdap.latency.layers import LayerConfig
from hdap.latency.profiling import PlannedConfig, plan_profile, profile_configs, run_profile, time_models
from hdap.latency.surrogate import (GroupModel, LatencySurrogate, LayerDecision, fit_surrogate, group_key, straight_through_ceil,
                                   within)
from hdap.models import build_model, prunable_layers

SMALL_CNN = prunable_layers(build_model("small-cnn"), (3, 32, 32))
COOL = SimulatedDevice("jetson-xavier-nx", "20W", 55.0, 0.05)
BUSY = SimulatedDevice("jetson-xavier-nx", "10W", 50.0, 0.55, silicon_bin=0.98, regulator_cap=0.97)
PRECISIONS = ("fp16", "int8")


def simulated_surrogate(device: SimulatedDevice, samples: int = 30) -> tuple[LatencySurrogate, SimulatedBackend]:
    backend = SimulatedBackend(device)
    configs, latencies = profile_configs(run_profile(backend, plan_profile(SMALL_CNN, PRECISIONS, samples, granule=1)))
    return fit_surrogate(configs, latencies, backend.describe()), backend


def test_a_simulated_device_surrogate_predicts_held_out_layers_within_10_percent() -> None:
    backend = SimulatedBackend(BUSY)
    configs, latencies = profile_configs(run_profile(backend, plan_profile(SMALL_CNN, PRECISIONS, 40, granule=1, seed=3)))
    order = np.random.default_rng(0).permutation(len(configs))
    train, test = order[: len(order) * 4 // 5], order[len(order) * 4 // 5 :]
    surrogate = fit_surrogate([configs[i] for i in train], latencies[train])
    predicted = np.array([surrogate.predict(configs[i]) for i in test])
    assert within(predicted, latencies[test]) >= 0.99


def test_the_cost_is_monotone_non_decreasing_in_channel_count() -> None:
    surrogate, _ = simulated_surrogate(COOL)
    for shape in SMALL_CNN[1:]:
        for precision in PRECISIONS:
            config = shape.config(precision=precision)
            outs = [surrogate.predict(config.with_channels(shape.in_channels, c)) for c in range(1, shape.out_channels + 1)]
            ins = [surrogate.predict(config.with_channels(c, shape.out_channels)) for c in range(1, shape.in_channels + 1)]
            assert np.all(np.diff(outs) >= -1e-12) and np.all(np.diff(ins) >= -1e-12), (shape.name, precision)


def test_gradients_flow_from_the_fleet_cost_to_channel_and_precision_parameters() -> None:
    cost = FleetCost([simulated_surrogate(COOL)[0], simulated_surrogate(BUSY)[0]], [0.7, 0.3], PRECISIONS)
    keep = [torch.tensor(0.0, requires_grad=True) for _ in SMALL_CNN]  # logits of the kept share of channels
    logits = [torch.zeros(len(PRECISIONS), requires_grad=True) for _ in SMALL_CNN]
    decisions, previous = [], torch.tensor(3.0, dtype=torch.float64)
    for shape, k, l in zip(SMALL_CNN, keep, logits):
        out = shape.out_channels * torch.sigmoid(k).double()
        decisions.append(LayerDecision(shape.config(), previous, out, torch.softmax(l, 0)))
        previous = out
    latency = cost.fleet_weighted_latency(decisions)
    (latency + 1e-9 * cost.memory_bits(decisions)).backward()
    assert all(k.grad is not None and k.grad > 0 for k in keep[:-1])  # fewer channels, less latency
    assert all(l.grad is not None and torch.any(l.grad != 0) for l in logits)
    per_cluster = cost.per_cluster_latency(decisions)
    per_cluster = per_cluster.detach()
    assert float(latency.detach()) == pytest.approx(0.7 * float(per_cluster[0]) + 0.3 * float(per_cluster[1]))
    assert per_cluster[1] > per_cluster[0]  # the busy 10 W cluster is slower


def test_a_surrogate_reloads_from_its_json_and_predicts_the_same(tmp_path) -> None:
    surrogate, _ = simulated_surrogate(COOL, samples=10)
    surrogate.save(tmp_path / "surrogate.json")
    reloaded = LatencySurrogate.load(tmp_path / "surrogate.json")
    config = SMALL_CNN[2].config(24, 40, "int8")
    assert reloaded.predict(config) == pytest.approx(surrogate.predict(config))
    # A surrogate saved before inputs had a tile of their own (format /1) reads as one tile, padded.
    old = surrogate.to_json() | {"format": "hdap.latency-surrogate/1"}
    old["groups"] = [{k: v for k, v in g.items() if k not in ("in_tile", "in_unpadded_below_tile")} for g in old["groups"]]
    assert all(g.input_tile == g.tile and not g.in_unpadded_below_tile for g in LatencySurrogate.from_json(old).groups.values())


def test_configurations_a_backend_cannot_time_are_recorded_with_the_reason_and_skipped() -> None:
    nano = SimulatedBackend(SimulatedDevice("jetson-nano", "10W", 50.0, 0.05))
    plan = [PlannedConfig("a", SMALL_CNN[1].config(precision="fp16")), PlannedConfig("b", SMALL_CNN[1].config(precision="int8")),
            PlannedConfig("c", SMALL_CNN[1].config(0, 8, "fp16"))]
    profile = run_profile(nano, plan).to_pylist()
    assert [r["status"] for r in profile] == ["ok", "failed", "failed"]
    assert profile[1]["reason"] == "jetson-nano cannot run int8 layers"
    assert "no channels" in profile[2]["reason"]
    with pytest.raises(MeasurementFailed, match="fp16"):
        OnnxRuntimeBackend().measure(SMALL_CNN[1].config(precision="fp16"))


def test_the_onnxruntime_backend_times_real_sessions_of_float_and_int8_layers() -> None:
    backend = OnnxRuntimeBackend(threads=1, repeats=5, warmup=2, min_seconds=0)
    plan = plan_profile(SMALL_CNN[1:3], ("fp32", "int8"), samples_per_layer=3, granule=8)
    profile = run_profile(backend, plan, rounds=2)
    assert profile.column("status").to_pylist() == ["ok"] * len(plan)
    configs, latencies = profile_configs(profile)
    assert np.all(latencies > 0)
    whole = backend.measure_chain([s.config() for s in SMALL_CNN], classes=None)
    assert whole > 0


def test_tensorrt_profiling_runs_where_tensorrt_and_a_gpu_exist() -> None:
    reason = tensorrt_unavailable_reason()
    if reason:
        with pytest.raises(BackendUnavailable, match="not possible here"):
            TensorRTBackend()
        pytest.skip(f"TensorRT backend: {reason}")
    latency = TensorRTBackend().measure(LayerConfig("conv", 32, 32, 3, 1, 32, 32, "fp16"))
    assert latency > 0


def test_an_uploaded_device_profile_is_used_for_its_representative(object_store, bucket) -> None:
    import pyarrow as pa

    from hdap.latency.fleet_profiling import build_cluster_surrogates
    from hdap.stages.cluster import ClusterSummary, DeviceCluster
    from hdap.stages.surrogate import SurrogateConfig

    layers = SMALL_CNN
    features = pa.table({"device_id": ["dev-a", "dev-b"], "sku": ["jetson-xavier-nx"] * 2, "power_mode": ["20W", "10W"],
                         "temperature_c_median": [55.0, 50.0], "background_load_median": [0.05, 0.5]})
    clusters = ClusterSummary(2, "fixed at k=2", {}, [], "KMeans", 2, [DeviceCluster(0, 1, 0.6, "dev-a", {}, {}),
                                                                      DeviceCluster(1, 1, 0.4, "dev-b", {}, {})])
    uploaded = run_profile(SimulatedBackend(BUSY), plan_profile(layers, PRECISIONS, 12, granule=8))
    object_store.put_table(f"s3://{bucket}/profiles/dev-b/profile.parquet", uploaded)
    config = SurrogateConfig(model="small-cnn", samples_per_layer=12, calibration_models=4, profiles_uri=f"s3://{bucket}/profiles")

    results, precisions = build_cluster_surrogates(object_store, clusters, features, layers, config)

    assert [r.source for r in results] == ["simulated", "uploaded"]
    assert precisions == PRECISIONS
    assert results[1].surrogate.predict(layers[3].config(precision="fp16")) > results[0].surrogate.predict(layers[3].config(precision="fp16"))


def test_held_out_configurations_never_leave_a_layer_shape_untrained() -> None:
    from hdap.latency.fleet_profiling import held_out_split
    from hdap.latency.surrogate import group_key

    backend = SimulatedBackend(COOL)
    for seed in range(20):
        configs, _ = profile_configs(run_profile(backend, plan_profile(SMALL_CNN, PRECISIONS, 3, granule=8, seed=seed)))
        train, test = held_out_split(configs, seed)
        assert {group_key(configs[i]) for i in test} <= {group_key(configs[i]) for i in train}
        assert len(train) + len(test) == len(configs)


def test_whole_model_calibration_is_only_for_models_whose_layers_form_a_chain() -> None:
    from hdap.latency.fleet_profiling import is_chain

    assert is_chain(SMALL_CNN)
    assert not is_chain(prunable_layers(build_model("resnet20"), (3, 32, 32)))  # shortcut convolutions


def test_a_configuration_timed_in_any_round_counts_and_zero_rounds_is_refused() -> None:
    class Flaky:
        name, precisions = "flaky", ("fp16",)
        calls = 0

        def describe(self) -> dict:
            return {}

        def measure(self, config):
            Flaky.calls += 1
            return float("nan") if Flaky.calls % 2 else 1.0  # a glitch in one round, a timing in the next

    plan = [PlannedConfig("a", SMALL_CNN[1].config(precision="fp16"))]
    assert run_profile(Flaky(), plan, rounds=2).column("status").to_pylist() == ["ok"]
    from hdap.errors import HdapError

    with pytest.raises(HdapError, match="at least one round"):
        run_profile(Flaky(), plan, rounds=0)


def test_a_surrogate_learns_blocked_kernels_whose_narrow_inputs_run_unpadded() -> None:
    """ONNX Runtime's blocked CPU convolutions: channels padded to 16, except inputs narrower than
    one block (measured on this machine: 8 input channels cost 0.6x of 16, 24 the same as 32)."""
    truth = GroupModel(16, 0.004, 9.0, 0.3, 0.1, 0.0, 1.0, in_tile=16, in_unpadded_below_tile=True)
    shape = LayerConfig("conv", 32, 64, 3, 1, 32, 32, "fp32")
    configs = [shape.with_channels(cin, cout) for cin in range(8, 33, 8) for cout in range(8, 65, 8)]
    latencies = np.array([float(truth.latency("conv", 3, 1, 32, 32, torch.tensor(float(c.in_channels)), torch.tensor(float(c.out_channels))))
                          for c in configs])
    surrogate = fit_surrogate(configs, latencies)
    fitted = surrogate.groups[group_key(shape)]
    assert (fitted.input_tile, fitted.in_unpadded_below_tile, fitted.tile) == (16, True, 16)
    predicted = np.array([surrogate.predict(c) for c in configs])
    assert within(predicted, latencies, 0.01) == 1.0
    # Still monotone in input channels, and the rounding passes gradients straight through.
    cin = torch.arange(1.0, 33.0, requires_grad=True)
    rounded = straight_through_ceil(cin, 16, True)
    assert torch.all(torch.diff(rounded) >= 0) and rounded[7] == 8 and rounded[16] == 32
    rounded.sum().backward()
    assert torch.all(cin.grad == 1)


def test_whole_models_are_timed_in_rounds_and_one_that_cannot_be_timed_is_skipped() -> None:
    backend = SimulatedBackend(COOL)
    good = [shape.config(precision="fp16") for shape in SMALL_CNN]
    bad = [SMALL_CNN[0].config(3, 0, "fp16")] + good[1:]  # a layer with no channels
    timed = time_models(backend, [good, bad, good], rounds=2)
    assert timed[0] == pytest.approx(timed[2]) and timed[0] > 0 and timed[1] is None


def test_a_cpu_fleet_keeps_fp32_on_the_menu_beside_int8_and_a_jetson_fleet_drops_it_for_fp16() -> None:
    from hdap.latency.fleet_profiling import precisions_for

    assert precisions_for("cpu-onnxruntime", ("fp32", "int8")) == ("fp32", "int8")
    assert precisions_for("jetson-xavier-nx", ("fp32", "fp16", "int8")) == ("fp16", "int8")
    assert precisions_for("jetson-nano", ("fp32", "fp16", "int8")) == ("fp16",)


def test_a_cpu_fleet_without_its_devices_profiles_is_refused_saying_how_to_profile_them() -> None:
    from hdap.errors import HdapError
    from hdap.fleet.cluster import cluster_devices
    from hdap.latency.fleet_profiling import build_cluster_surrogates
    from hdap.models import build_model, prunable_layers
    from hdap.stages.cluster import ClusterConfig
    from hdap.stages.surrogate import SurrogateConfig
    from tests.test_cluster import _cpu_features

    features = _cpu_features(["1", "all"])
    clusters = cluster_devices(features, ClusterConfig(cpu_states="1,all")).summary()
    layers = prunable_layers(build_model("small-cnn", (1, 8, 8)), (1, 8, 8))
    with pytest.raises(HdapError, match=r"no profile of gw\d-1 under s3://hdap/profiles: a cpu-onnxruntime fleet is profiled by its devices"):
        build_cluster_surrogates(None, clusters, features, layers, SurrogateConfig())


def test_whole_models_of_varied_depth_and_mixed_precision_teach_the_surrogate_what_a_model_costs() -> None:
    """Layers timed alone each paid a run's overhead, and no layer alone pays for changing precision: the
    model's own variants (of varied depth, each precision in turn, then random mixes) recover a scale per
    precision, a per-layer cost and a cost per boundary (the search's compiled cost counts
    them as the surrogate does: test_search)."""
    from hdap.latency.fleet_profiling import simulated_surrogate
    from hdap.latency.model_variants import model_variants
    from hdap.latency.surrogate import fit_model_overhead

    layers = prunable_layers(build_model("resnet20", (1, 8, 8)), (1, 8, 8))
    surrogate = simulated_surrogate(SimulatedDevice("jetson-xavier-nx", "15W", 50, 0.05), layers, ("fp16", "int8"), 6)
    variants = [configs for _, configs in model_variants("resnet20", (1, 8, 8), ("fp16", "int8"), 18, seed=1)]
    assert len(variants[0]) == len(variants[1]) == len(layers)  # the whole model at each precision first,
    assert len({len(v) for v in variants}) > 2  # then pruned ones
    assert {c.precision for c in variants[1]} == {"int8"} and {c.precision for c in variants[3]} == {"fp16"}
    assert {c.precision for c in variants[2]} == {"fp16", "int8"}  # every third one mixes them

    truth = LatencySurrogate.from_json(surrogate.to_json())
    truth.layer_floor_ms = min(truth.predict(c) for v in variants for c in v)
    truth.precision_scale, truth.model_offset_ms, truth.layer_offset_ms = {"fp16": 0.9, "int8": 0.4}, 0.05, 0.004
    truth.transition_ms_per_melement = {"fp16>int8": 0.3, "int8>fp16": 0.2}
    fit_model_overhead(surrogate, [(v, truth.predict_model(v)) for v in variants])
    assert surrogate.layer_offset_ms == pytest.approx(0.004, abs=1e-6) and surrogate.precision_scale == pytest.approx(truth.precision_scale)
    assert surrogate.transition_ms_per_melement == pytest.approx(truth.transition_ms_per_melement, abs=1e-6)
    assert surrogate.predict_model(variants[5]) == pytest.approx(truth.predict_model(variants[5]), rel=1e-6)
    assert LatencySurrogate.from_json(surrogate.to_json()).to_json() == surrogate.to_json()


def test_where_the_per_model_terms_cannot_match_every_model_they_match_the_ones_that_keep_everything() -> None:
    """The uncompressed model (every speed-up's reference) and the whole model at one precision (where
    searches start, often published) are predicted closely even when pruned variants disagree with them."""
    from hdap.latency.fleet_profiling import simulated_surrogate
    from hdap.latency.model_variants import model_variants
    from hdap.latency.surrogate import fit_model_overhead, keeps_everything

    layers = prunable_layers(build_model("resnet20", (1, 8, 8)), (1, 8, 8))
    surrogate = simulated_surrogate(SimulatedDevice("jetson-xavier-nx", "15W", 50, 0.05), layers, ("fp16", "int8"), 6)
    variants = [configs for _, configs in model_variants("resnet20", (1, 8, 8), ("fp16", "int8"), 18, seed=1)]
    whole = keeps_everything(variants)
    assert whole[:2] == [True, True] and not any(whole[2:])  # the whole model at each precision, then pruned ones
    # Whole models 20% cheaper than the layers say, as a chain of int8 layers skips conversions a layer alone paid.
    measured = [(v, surrogate.predict_model(v) * (0.8 if w else 1.0)) for v, w in zip(variants, whole)]
    fit_model_overhead(surrogate, measured)
    errors = [surrogate.predict_model(v) / m - 1 for v, m in measured]
    assert max(abs(e) for e, w in zip(errors, whole) if w) < 0.05
    assert max(abs(e) for e, w in zip(errors, whole) if not w) > 0.05  # the pruned ones give way


def test_the_nominal_device_of_a_measured_fleet_is_its_fastest_state_alone() -> None:
    from hdap.latency.fleet_profiling import fastest_state_cost, simulated_surrogate

    layers = prunable_layers(build_model("small-cnn", (1, 8, 8)), (1, 8, 8))
    slow, fast = (simulated_surrogate(SimulatedDevice("jetson-xavier-nx", mode, 50, 0.05), layers, ("fp32", "int8"), 4)
                  for mode in ("10W", "20W"))
    nominal = fastest_state_cost(FleetCost([slow, fast], [0.7, 0.3], ("fp32", "int8")), layers)
    assert nominal.surrogates == [fast] and nominal.weights == [1.0]

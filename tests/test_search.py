"""The search space, the searchable model, the compiled fleet cost, the search and its spec."""

from __future__ import annotations

import copy
import io
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from hdap.compress.branch_removal import branch_removal_order
from hdap.compress.search import SearchPoint, choose, distinct_architectures, front_size, mark_pareto, run_search
from hdap.compress.searchable import SearchableModel
from hdap.compress.space import build_search_space
from hdap.compress.spec import ArchitectureSpec, LayerSpec, apply_spec, export_spec
from hdap.compress.training import evaluate, train_epochs
from hdap.data import DataConfig, load_dataset
from hdap.errors import HdapError
from hdap.fleet.sku import QdqPlacement
from hdap.latency.backends.simulated import SimulatedDevice
from hdap.latency.fleet_cost import CompiledFleetCost, FleetCost, stack_decisions
from hdap.latency.fleet_profiling import nominal_device, simulated_surrogate
from hdap.latency.surrogate import GroupModel, LatencySurrogate, group_key
from hdap.models import build_model, prunable_layers
from hdap.preprocessing import ValidationSource
from hdap.stages.search import SearchConfig, SearchSetting, SettingKind

DIGITS = (1, 8, 8)
MENU = ("fp16", "int8")


def random_surrogate(layers, precisions, seed: int) -> LatencySurrogate:
    rng = random.Random(seed)
    groups = {group_key(shape.config(), p): GroupModel(rng.choice([1, 8, 32]), rng.random() * 0.03, rng.random(), rng.random(),
                                                       rng.random(), rng.random(), 1 + rng.random() * 3)
              for shape in layers for p in precisions}
    return LatencySurrogate(groups, 1.1, 0.2, {"fp16>int8": 0.5, "int8>int8": -0.1})


def two_cluster_fleet(model: str, samples_per_layer: int) -> FleetCost:
    """A fleet of two simulated Xavier NX clusters: healthy at 20 W (60%) and busy at 10 W (40%)."""
    layers = prunable_layers(build_model(model, DIGITS), DIGITS)
    devices = (SimulatedDevice("jetson-xavier-nx", "20W", 55, 0.05), SimulatedDevice("jetson-xavier-nx", "10W", 50, 0.55))
    return FleetCost([simulated_surrogate(d, layers, MENU, samples_per_layer) for d in devices], [0.6, 0.4], MENU)


def randomised(searchable: SearchableModel, seed: int = 0) -> SearchableModel:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for logits in searchable.keep_logits:
            logits.copy_(torch.rand(logits.shape, generator=generator) * 4 - 2)
        for logits in searchable.precision_logits.values():
            logits.copy_(torch.rand(logits.shape, generator=generator) * 2 - 1)
        for logit in searchable.branch_logits.values():
            logit.copy_(torch.rand((), generator=generator) * 6 - 1)  # most branches stay, some go
    return searchable


def test_residual_tied_channels_form_one_group_and_are_pruned_together() -> None:
    model = build_model("resnet20", DIGITS)
    space = build_search_space(model, DIGITS, MENU)
    stage = next(g for g in space.groups if g.root == "conv1")
    writers = {m.layer for m in stage.members if m.side == "out"}
    assert writers == {"conv1", "stages.0.conv2", "stages.1.conv2", "stages.2.conv2"}
    searchable = randomised(SearchableModel(model, space))
    spec = export_spec(searchable, "resnet20", DIGITS, 10)
    kept = {tuple(spec.layer(name).kept_out_channels) for name in writers if not spec.layer(name).removed}
    assert len(kept) == 1  # every layer writing into the residual stream keeps the same channels
    rebuilt = apply_spec(spec)
    assert rebuilt(torch.zeros(2, *DIGITS)).shape == (2, 10)


def test_the_compiled_fleet_cost_equals_the_surrogates_own_model_cost_and_gradient() -> None:
    model = build_model("resnet20", DIGITS)
    space = build_search_space(model, DIGITS, MENU)
    searchable = randomised(SearchableModel(model, space))
    cost = FleetCost([random_surrogate(space.layers, MENU, s) for s in (1, 2)], [0.3, 0.7], MENU)
    for index, surrogate in enumerate(cost.surrogates):
        surrogate.layer_offset_ms = -0.002 * (index + 1)  # a layer inside a model costs less than timed alone
        surrogate.transition_ms_per_melement = {f"{a}>{b}": 0.01 * (index + 1) * (i + 1) * (a != b) - 0.001 * (a == b)
                                                for i, (a, b) in enumerate((a, b) for a in MENU for b in MENU)}
        surrogate.layer_floor_ms = 0.001 * index
        surrogate.precision_scale = {p: 0.5 + 0.2 * i + 0.1 * index for i, p in enumerate(MENU)}
    reference = cost.fleet_weighted_latency(searchable.decisions())
    compiled = CompiledFleetCost(cost, [d.config for d in searchable.decisions()])
    fast = compiled.fleet_weighted_latency(*stack_decisions(searchable.decisions()))
    assert fast.item() == pytest.approx(reference.item(), rel=1e-9)
    parameters = searchable.architecture_parameters()
    slow_grad = torch.autograd.grad(reference, parameters)
    fast_grad = torch.autograd.grad(compiled.fleet_weighted_latency(*stack_decisions(searchable.decisions())), parameters)
    for a, b in zip(slow_grad, fast_grad):
        assert torch.allclose(a, b, atol=1e-12)


def test_a_target_the_smallest_architecture_cannot_reach_is_placed_inside_the_reachable_range() -> None:
    """A small model on a CPU is mostly fixed overhead: a target below its smallest architecture's cost would
    prune everything the search may drop. The smallest cost is what every layer at its cheapest precision,
    every removable branch removed, costs; targets below it move as far into the reachable range."""
    from hdap.compress.search import ArchitectureCost, reachable_settings, smallest_cost
    from hdap.stages.search import Objective

    model = build_model("resnet20", DIGITS)
    space_of = lambda m: build_search_space(m, DIGITS, MENU)  # noqa: E731
    reference = SearchableModel(copy.deepcopy(model), space_of(model))
    reference.freeze()
    full = reference.decisions()
    fleet = FleetCost([random_surrogate(space.layers, MENU, 1) for space in [space_of(model)]], [1.0], MENU)
    fleet.surrogates[0].model_offset_ms = 10.0  # a fixed cost dwarfing the layers
    compiled = CompiledFleetCost(fleet, [d.config for d in full])
    cost = ArchitectureCost(Objective.LATENCY, compiled, float(compiled.fleet_weighted_latency(*stack_decisions(full))))
    floor = smallest_cost(model, space_of, cost)
    assert 0.5 < floor < 1.0
    targets = [SearchSetting(SettingKind.TARGET, t) for t in (0.99, 0.2)] + [SearchSetting(SettingKind.STRENGTH, 0.1)]
    kept, placed, strength = reachable_settings(targets, floor)
    assert kept.value == 0.99 and strength.value == 0.1
    assert placed.value == pytest.approx(floor + (1 - floor) * 0.2, abs=1e-3) and floor < placed.value < 1


@pytest.mark.parametrize("name", ["resnet20", "small-cnn", "mobilenetv2"])
def test_the_searchables_fast_cost_inputs_equal_its_decisions_with_their_gradients(name: str) -> None:
    model = build_model(name, DIGITS)
    searchable = randomised(SearchableModel(model, build_search_space(model, DIGITS, MENU)), seed=3)
    searchable.temperature = 0.7
    parameters = searchable.architecture_parameters()
    slow, fast = stack_decisions(searchable.decisions()), searchable.cost_inputs()
    for a, b in zip(slow, fast):
        assert torch.allclose(a, b, atol=1e-9)
    weights = [torch.randn(t.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i, t in enumerate(slow)]
    slow_grad = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, slow)), parameters, allow_unused=True)
    fast_grad = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, fast)), parameters, allow_unused=True)
    for a, b in zip(slow_grad, fast_grad):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-7)


def test_the_fleet_cost_gradient_reaches_every_keep_and_precision_logit() -> None:
    model = build_model("resnet20", DIGITS)
    space = build_search_space(model, DIGITS, MENU)
    searchable = SearchableModel(model, space)
    cost = FleetCost([random_surrogate(space.layers, MENU, 3)], [1.0], MENU)
    compiled = CompiledFleetCost(cost, [d.config for d in searchable.decisions()])
    compiled.fleet_weighted_latency(*stack_decisions(searchable.decisions())).backward()
    for logits in searchable.keep_logits:
        assert logits.grad is not None and logits.grad.abs().sum() > 0
    for logits in searchable.precision_logits.values():
        assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert len(searchable.branch_logits) == 9  # one per ResNet-20 basic block
    for logit in searchable.branch_logits.values():
        assert logit.grad is not None and logit.grad.abs() > 0


def test_the_task_loss_reaches_every_branch_logit_past_the_branchs_batch_norm() -> None:
    """A scale applied inside a branch would be undone by its batch norm; the branch logit scales
    what the branch adds to the skip, so the task loss says what each branch is worth."""
    torch.manual_seed(0)
    model = build_model("resnet20", DIGITS)
    space = build_search_space(model, DIGITS, MENU)
    assert {g.branch_end for g in space.groups if g.removable} == {f"stages.{b}.bn2" for b in range(9)}
    searchable = SearchableModel(model, space)
    loss = nn.functional.cross_entropy(searchable(torch.randn(16, *DIGITS)), torch.randint(0, 10, (16,)))
    loss.backward()
    for logit in searchable.branch_logits.values():
        assert logit.grad is not None and logit.grad.abs() > 0


def test_a_branch_probability_scales_its_batch_norms_output_exactly_and_not_once_frozen() -> None:
    """The branch's scale rides on its batch norm's weight and bias (cheaper than scaling the
    feature map): BN(x) * p in training and in eval, and nothing once the architecture is frozen."""
    torch.manual_seed(0)
    model = build_model("resnet20", DIGITS)
    searchable = SearchableModel(model, build_search_space(model, DIGITS, MENU))
    key = next(iter(searchable.branch_logits))
    searchable.branch_logits[key].data.fill_(-0.7)
    group = searchable.space.groups[int(key)]
    norm = dict(model.named_modules())[group.branch_end]
    weight, bias = norm.parametrizations.weight.original, norm.parametrizations.bias.original
    x = torch.randn(8, norm.num_features, 4, 4)
    p = torch.sigmoid(torch.tensor(-0.7))
    for training in (True, False):
        norm.train(training)
        expected = nn.functional.batch_norm(x, norm.running_mean.clone(), norm.running_var.clone(), weight, bias, training, 0.0, norm.eps) * p
        assert torch.allclose(norm(x), expected, atol=1e-6)
    searchable.freeze()
    assert torch.allclose(norm(x), nn.functional.batch_norm(x, norm.running_mean, norm.running_var, weight, bias, False, 0.0, norm.eps), atol=1e-6)
    plain = searchable.remove()
    assert {"weight", "bias"} <= set(dict(plain.named_modules())[group.branch_end].state_dict())


class _FlattenedHead(nn.Module):
    """Two convolutions, then a searched linear layer that reads the flattened feature map (16
    input features per channel), then the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, 1, 1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, 2, 1, padding_mode="reflect"), nn.BatchNorm2d(16)
        self.hidden, self.classifier = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.classifier(torch.relu(self.hidden(torch.flatten(x, 1))))


@pytest.mark.parametrize("name", ["resnet20", "flattened head"])
def test_the_soft_search_scales_weights_as_scaling_the_input_channels_would(name: str, monkeypatch) -> None:
    """Where a layer's weights are smaller than its input, the soft search applies the channels'
    keep probabilities to the weights (and rounds same-shaped weights as one stack): the same
    function, and the same gradient for every parameter, as masking the input and mixing each
    weight on its own. In float64, training mode, activations unrounded (rounding a channel before
    or after its scale differs by rounding noise)."""
    monkeypatch.setattr("hdap.compress.searchable.round_activation", lambda x, precision, amax: x.clone())
    torch.manual_seed(0)
    model = build_model("resnet20", DIGITS) if name == "resnet20" else _FlattenedHead()
    space = build_search_space(model, DIGITS, MENU, protect_first_and_last=name == "resnet20")
    searchable = randomised(SearchableModel(model, space)).double().train()
    x = torch.randn(8, *DIGITS, dtype=torch.float64)
    searchable(x)  # activation ranges measured once, before the two passes
    assert searchable.forward_state(len(x)).masked_on_weights, "no layer carries its mask on its weights: nothing to compare"

    def output_and_gradients() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        searchable.zero_grad(set_to_none=True)
        out = searchable(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in searchable.named_parameters() if p.grad is not None}

    batched, batched_grads = output_and_gradients()
    searchable._searched_weights = lambda state, batch: ({}, set())  # each input masked, each weight mixed on its own
    per_layer, per_layer_grads = output_and_gradients()
    assert torch.allclose(batched, per_layer, rtol=1e-9, atol=1e-12)
    assert batched_grads.keys() == per_layer_grads.keys()
    for key, grad in per_layer_grads.items():
        assert torch.allclose(batched_grads[key], grad, rtol=1e-7, atol=1e-12), key  # (a conv bias before a batch norm: ~0)
    for logits in ("keep_logits", "precision_logits"):  # gradients that the comparison actually checks
        assert all(float(g.abs().max()) > 1e-6 for k, g in per_layer_grads.items() if k.startswith(logits)), logits


def test_a_reloaded_spec_rebuilds_the_searched_model_exactly(tmp_path) -> None:
    """With no quantisation (an fp32 menu), the frozen searchable model and the physically pruned
    model built from its reloaded spec compute the same function: masks are pruning."""
    torch.manual_seed(0)
    model = build_model("resnet20", DIGITS)
    model.eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    space = build_search_space(model, DIGITS, ("fp32",))
    searchable = randomised(SearchableModel(model, space), seed=4)
    with torch.no_grad():  # remove one residual branch by its channels, one by its branch logit, keep the rest
        searchable.keep_logits[next(g.index for g in space.groups if g.root == "stages.4.conv1")].fill_(-5)
        for group in space.groups:
            if group.removable:
                searchable.branch_logits[str(group.index)].fill_(-1.0 if group.root == "stages.7.conv1" else 1.0)
    searchable.freeze()
    searchable.eval()
    spec = export_spec(searchable, "resnet20", DIGITS, 10)
    assert spec.layer("stages.4.conv1").removed and spec.layer("stages.4.conv2").removed
    assert spec.layer("stages.7.conv1").removed and spec.layer("stages.7.conv2").removed
    x = torch.randn(4, *DIGITS)
    with torch.no_grad():
        expected = searchable(x)
    trained = copy.deepcopy(searchable).remove()
    path = tmp_path / "spec.json"
    spec.save(path)
    rebuilt = apply_spec(ArchitectureSpec.load(path), trained)
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), expected, atol=1e-4)
    modules = dict(rebuilt.named_modules())
    for layer in spec.layers:
        if layer.removed:
            assert layer.name not in modules
        else:
            module = modules[layer.name]
            assert (module.out_channels if isinstance(module, nn.Conv2d) else module.out_features) == len(layer.kept_out_channels)
            assert module.hdap_precision == (layer.weight_precision, layer.activation_precision)


def test_depthwise_channels_are_tied_to_the_layer_that_feeds_them() -> None:
    shape = (3, 32, 32)
    model = build_model("mobilenetv1", shape, width=0.25)
    space = build_search_space(model, shape, MENU)
    for group in space.groups:
        writers = [m.layer for m in group.members if m.side == "out"]
        depthwise = [w for w in writers if next(s for s in space.layers if s.name == w).op == "depthwise"]
        assert len(depthwise) <= 1 and (not depthwise or len(writers) == 2)


def test_a_model_with_a_layer_the_search_cannot_handle_is_refused_naming_the_layer() -> None:
    class WithLstm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.memory = nn.LSTM(8, 8)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(HdapError, match="layer memory \\(LSTM\\) is not supported"):
        build_search_space(WithLstm(), DIGITS, MENU)
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(HdapError, match="grouped convolution"):
        build_search_space(grouped, (4, 8, 8), MENU)


def test_an_unknown_precision_mode_or_objective_is_a_clear_error() -> None:
    with pytest.raises(HdapError, match="precision menu"):
        build_search_space(build_model("small-cnn", DIGITS), DIGITS, ("fp8",))
    with pytest.raises(HdapError, match="search_mode='fastest' is not one of its choices: use fleet, nominal or per-cluster"):
        SearchConfig(mode="fastest")
    with pytest.raises(HdapError, match="search_targets='1.5' must be fractions of the uncompressed cost"):
        SearchConfig(targets=(1.5,))
    with pytest.raises(HdapError, match="search_finetune_epochs=0 must be 1 or more"):
        SearchConfig(finetune_epochs=0)


class _SharedReluBlock(nn.Module):
    """A residual block whose branch ends in the one ReLU module the stem also uses."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        x = x + self.relu(self.bn(self.conv2(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def test_a_branch_is_scaled_only_at_a_module_of_its_own() -> None:
    model = _SharedReluBlock()
    space = build_search_space(model, DIGITS, MENU)
    branch = next(g for g in space.groups if g.root == "conv1")
    assert branch.removable and branch.branch_end == ""  # the ReLU module also runs in the stem
    assert len(SearchableModel(model, space).branch_logits) == 0  # no logit the task loss cannot see


def test_pareto_points_are_the_non_dominated_ones_counted_once_and_the_choice_respects_the_accuracy_tolerance() -> None:
    def point(accuracy, latency, size):  # the test split's accuracy is the validation's, less a point
        return SearchPoint(SearchSetting(SettingKind.TARGET, 1.0), accuracy - 1, accuracy, latency, [latency], size, spec=None)

    points = [point(99.0, 1.0, 10), point(98.9, 0.5, 10), point(97.0, 0.4, 10), point(96.0, 0.6, 12), point(98.9, 0.5, 10)]
    mark_pareto(points)
    assert [p.pareto for p in points] == [True, True, True, False, True]
    assert front_size(points) == 3  # the repeat of the second point is one point of the front
    dominated_twice = [point(99.0, 0.5, 10), point(98.0, 0.6, 10), point(98.0, 0.6, 10)]
    mark_pareto(dominated_twice)
    assert [p.pareto for p in dominated_twice] == [True, False, False] and front_size(dominated_twice) == 1
    assert choose(points, baseline_accuracy=99.2, tolerance=0.5) is points[1]
    # None close enough: the most accurate, and of equally accurate points the fastest.
    tied = [point(98.6, 0.59, 10), point(98.6, 0.37, 8), point(98.3, 0.29, 6)]
    assert choose(tied, baseline_accuracy=99.2, tolerance=0.5) is tied[1]


def test_the_choice_and_the_front_read_the_validation_split_and_count_equal_architectures_once() -> None:
    spec_a = ArchitectureSpec("m", [1, 8, 8], 10, ["fp16"], [LayerSpec("conv", "conv", 1, 8, list(range(8)), "fp16", "fp16")])
    spec_b = ArchitectureSpec("m", [1, 8, 8], 10, ["fp16"], [LayerSpec("conv", "conv", 1, 4, list(range(4)), "fp16", "fp16")])

    def point(test, validation, latency, spec):
        return SearchPoint(SearchSetting(SettingKind.TARGET, latency), test, validation, latency, [latency], 10, spec=spec)

    # The faster point is better on the test split but 2 points worse on the validation split: not chosen.
    points = [point(97.0, 99.0, 0.8, spec_a), point(99.5, 97.0, 0.4, spec_b), point(97.0, 99.0, 0.8, copy.deepcopy(spec_a))]
    mark_pareto(points)
    assert choose(points, baseline_accuracy=99.2, tolerance=0.5) is points[0]
    assert distinct_architectures(points) == 2 and front_size(points) == 2


def test_every_zoo_model_yields_a_search_space() -> None:
    for name in ("small-cnn", "resnet20", "mobilenetv1", "resnet18", "mobilenetv2", "vgg16-bn"):
        shape = (3, 32, 32)
        model = build_model(name, shape)
        space = build_search_space(model, shape, MENU)
        assert space.groups and len(space.layers) == len(prunable_layers(model, shape)), name


def test_the_search_returns_a_pareto_front_on_digits_with_removed_branches() -> None:
    dataset = load_dataset(DataConfig("digits", input_shape=DIGITS))
    fleet = two_cluster_fleet("resnet20", samples_per_layer=12)
    config = SearchConfig(targets=(0.8, 0.4), pretrain_epochs=3, epochs=4, finetune_epochs=1)
    result = run_search(config, dataset, fleet)
    assert result.baseline_accuracy > 80
    assert len(result.points) == 3 and result.front
    strong, quantized = result.points[1], result.points[2]
    assert quantized.setting.kind is SettingKind.QUANTIZED  # the front ends with quantisation alone:
    assert not any(layer.removed for layer in quantized.spec.layers)  # nothing pruned,
    precisions = [layer.weight_precision for layer in quantized.spec.layers]
    assert precisions.count("int8") >= len(precisions) - 2  # one precision for all but the stem and the classifier
    assert quantized.fleet_latency_ms < result.baseline_fleet_latency_ms  # the cheapest precision, cheaper
    assert strong.fleet_latency_ms < result.baseline_fleet_latency_ms
    assert strong.fleet_latency_ms <= result.points[0].fleet_latency_ms
    assert strong.fleet_latency_ms <= 0.4 * result.baseline_fleet_latency_ms + 1e-9  # the target is met
    assert any(layer.removed for layer in strong.spec.layers)  # the launch-bound target loses whole branches
    assert apply_spec(strong.spec)(torch.zeros(1, *DIGITS)).shape == (1, 10)


def test_the_nominal_device_is_the_fastest_power_mode_cool_and_idle() -> None:
    device = nominal_device("jetson-xavier-nx")
    assert device.power_mode == "20W" and device.background_load == 0.0


def test_per_cluster_mode_chooses_one_architecture_per_cluster_and_memory_mode_shrinks_weights() -> None:
    dataset = load_dataset(DataConfig("digits", input_shape=DIGITS))
    fleet = two_cluster_fleet("small-cnn", samples_per_layer=8)
    quick = dict(model="small-cnn", targets=(0.5,), pretrain_epochs=1, epochs=2, finetune_epochs=1, quantized_point=False)
    per_cluster = run_search(SearchConfig(mode="per-cluster", **quick), dataset, fleet)
    assert isinstance(per_cluster.chosen, list) and len(per_cluster.chosen) == 2
    assert [p.optimised_for for p in per_cluster.points] == ["cluster 0", "cluster 1"]

    memory = run_search(SearchConfig(objective="memory", **quick), dataset, fleet)
    assert memory.points[0].size_bits <= 0.5 * memory.baseline_size_bits + 1e-6


def test_a_concatenation_the_dependency_analysis_misreads_is_refused() -> None:
    def conv(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class ConcatThenFlatten(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.p, self.q = nn.Conv2d(3, 16, 3, 1, 1), conv(16, 8), conv(16, 24)
            self.fc = nn.Linear(32 * 4 * 4, 10)

        def forward(self, x):
            x = self.stem(x)
            return self.fc(torch.flatten(torch.cat([self.q(x), self.p(x)], 1), 1))

    with pytest.raises(HdapError, match="hdap cannot follow this graph"):
        build_search_space(ConcatThenFlatten(), (3, 8, 8), MENU, granule=4)


def test_a_branch_that_adds_nothing_is_the_first_to_remove_and_the_harmful_ones_last() -> None:
    dataset = load_dataset(DataConfig("digits", input_shape=DIGITS))
    torch.manual_seed(0)
    model = build_model("resnet20", DIGITS)
    train_epochs(model, dataset.train, 2, SearchConfig(), "training")
    space = build_search_space(model, DIGITS, MENU)
    key_of = {g.root: str(g.index) for g in space.groups}
    with torch.no_grad():  # stages.4's branch now adds exactly nothing: removing it costs nothing
        model.stages[4].bn2.weight.zero_()
        model.stages[4].bn2.bias.zero_()
    order = branch_removal_order(model, space, dataset.train)
    assert sorted(order) == sorted(SearchableModel(copy.deepcopy(model), space).branch_logits)
    assert order[0] == key_of["stages.4.conv1"]
    # The downsampling blocks, which change the feature map's width and resolution, are among the last four to go (seeds
    # 0-3 here). Which of the others goes when moves with float rounding between CPUs: not asserted.
    assert {key_of["stages.3.conv1"], key_of["stages.6.conv1"]} <= set(order[-4:])


def test_reordered_branches_keep_the_searchs_count_and_remove_the_first_of_the_order() -> None:
    model = build_model("resnet20", DIGITS)
    searchable = SearchableModel(model, build_search_space(model, DIGITS, MENU))
    keys = list(searchable.branch_logits)
    with torch.no_grad():
        for rank, key in enumerate(keys):
            searchable.branch_logits[key].fill_(float(rank) - 2.5)  # the first three below the threshold 0
        searchable.keep_logits[int(keys[-1])].fill_(-1.0)  # and one more branch gone by its granules alone
    searchable.freeze()
    removed_before = {key for key in keys if not any(searchable.kept_granules(int(key)))}
    assert removed_before == {*keys[:3], keys[-1]}
    order = keys[4:] + keys[:4]  # the granule-removed branch is fifth: it must come back
    searchable.reorder_branches(order)
    removed = {key for key in keys if not any(searchable.kept_granules(int(key)))}
    assert removed == set(order[:4])


def _stage_surrogates(model: str, tmp_path) -> Path:
    """What the surrogate stage hands the search: two simulated clusters' surrogates, and the fleet's features."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hdap.stages.surrogate import ClusterSurrogateEntry, SurrogateIndex

    fleet = two_cluster_fleet(model, samples_per_layer=8)
    surrogates = tmp_path / "surrogates"
    surrogates.mkdir()
    for cluster, surrogate in enumerate(fleet.surrogates):
        surrogate.save(surrogates / f"cluster-{cluster}.json")
    SurrogateIndex(model, DIGITS, MENU, [ClusterSurrogateEntry(c, w, f"dev-{c}", f"cluster-{c}.json", "simulated", 1.0, 0.0)
                                         for c, w in enumerate(fleet.weights)]).save(surrogates / "fleet.json")
    pq.write_table(pa.table({"device_id": ["xnx-0000000"], "sku": ["jetson-xavier-nx"]}), tmp_path / "features.parquet")
    return surrogates


def _run_search_stage(config: SearchConfig, object_store, bucket: str, tmp_path: Path):
    """The search stage on two simulated clusters' surrogates: its outputs, index and front."""
    from hdap.stages import StageContext
    from hdap.stages.search import Front, SearchIndex, SearchInputs, SearchOutputs
    from hdap.stages.search import run as run_search_stage

    surrogates = _stage_surrogates(config.model, tmp_path)
    outputs = SearchOutputs(tmp_path / "architecture", tmp_path / "front.json", tmp_path / "report.html")
    run_search_stage(config, SearchInputs(surrogates, tmp_path / "features.parquet"), outputs,
                     StageContext(object_store, f"s3://{bucket}/runs", "r1"))
    return outputs, SearchIndex.load(outputs.architecture / "index.json"), Front.load(outputs.front)


def test_given_weights_the_search_stage_trains_nothing_validates_on_half_the_test_images_and_keeps_their_preprocessing(
        object_store, bucket, tmp_path) -> None:
    """A user's checkpoint (DataParallel-prefixed, nested) and its preprocessing beside it, in the store."""
    import json

    torch.manual_seed(0)
    dataset = load_dataset(DataConfig("digits", input_shape=DIGITS, trained_on_all_training_images=True))
    trained = build_model("small-cnn", DIGITS)
    train_epochs(trained, dataset.train, 2, SearchConfig(), "training")
    uri = f"s3://{bucket}/models/digits.pt"
    buffer = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, buffer)
    object_store.put_bytes(uri, buffer.getvalue())
    mean, std = [float(v) for v in dataset.recipe.preprocessing.mean], [float(v) for v in dataset.recipe.preprocessing.std]
    object_store.put_bytes(uri + ".json", json.dumps({"mean": mean, "std": std}).encode())
    config = SearchConfig(model="small-cnn", weights_uri=uri, targets=(0.5,), pretrain_epochs=50, epochs=1, finetune_epochs=1)
    outputs, index, front = _run_search_stage(config, object_store, bucket, tmp_path)
    assert front.data.validation is ValidationSource.TEST and index.data == front.data
    assert front.data.preprocessing.mean == pytest.approx(mean) and front.data.preprocessing.std == pytest.approx(std)
    assert front.baseline_full_test_accuracy is not None
    assert front.baseline_validation_accuracy == pytest.approx(evaluate(trained, dataset.validation), abs=1e-3)
    uncompressed = torch.load(outputs.architecture / index.uncompressed_weights, weights_only=True)
    # the baseline is the user's model, untouched: none of the 50 pre-training epochs ran
    assert all(torch.equal(uncompressed[k], v) for k, v in trained.state_dict().items())


@pytest.mark.parametrize("mode", ["per-cluster", "nominal"])
def test_the_search_stage_writes_what_its_mode_chose_and_the_fine_tune_takes_only_one(mode: str, object_store, bucket, tmp_path) -> None:
    """The stage's own output for the modes the reference run does not take: per-cluster (one
    architecture per cluster, which the fine-tune refuses in one sentence) and nominal."""
    config = SearchConfig(model="small-cnn", mode=mode, targets=(0.5,), pretrain_epochs=1, epochs=2, finetune_epochs=1,
                          quantized_point=False)
    outputs, index, front = _run_search_stage(config, object_store, bucket, tmp_path)
    assert all((outputs.architecture / entry.spec).exists() and (outputs.architecture / entry.weights).exists()
               for entry in index.architectures)
    if mode == "per-cluster":
        assert [entry.cluster for entry in index.architectures] == [0, 1] and len(front.chosen) == 2
        assert [p.optimised_for for p in front.points] == ["cluster 0", "cluster 1"]
        with pytest.raises(HdapError, match=r"the search chose 2 architectures \(mode per-cluster\); the fine-tune and build "
                                            "stages take one: run the search in fleet or nominal mode"):
            index.single()
    else:
        assert index.single().cluster is None and [p.optimised_for for p in front.points] == ["nominal"]
        assert front.chosen[0].fleet_latency_ms < front.baseline_fleet_latency_ms  # reported on the fleet's scale


def test_an_option_a_resnet_prunes_each_stage_on_its_own_and_the_rebuilt_model_computes_what_the_masked_one_did() -> None:
    """The zero-padding shortcut splits the residual channels into one group per stage (Torch-Pruning
    alone ties all three stages into one and breaks the model); pruning the stream of one stage
    changes which channels the next stage's shortcut copies, in the masked and the pruned model alike."""
    torch.manual_seed(0)
    shape = (3, 32, 32)
    model = build_model("resnet20-a", shape)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model.eval()
    space = build_search_space(model, shape, ("fp32",))
    streams = {g.root: g.channels for g in space.groups if len([m for m in g.members if m.side == "out"]) > 2}
    assert sorted(streams.values()) == [16, 32, 64]
    assert {(r.layer, space.groups[r.group].channels) for r in space.channel_maps} == {("layer2.0.shortcut", 16),
                                                                                      ("layer3.0.shortcut", 32)}
    searchable = randomised(SearchableModel(model, space), seed=2)
    with torch.no_grad():  # prune a third of every stream's granules, whatever the random logits said
        for group in space.groups:
            if group.channels in streams.values() and group.root in streams:
                searchable.keep_logits[group.index][: group.granules // 3].fill_(-5)
    searchable.freeze()
    searchable.eval()
    spec = export_spec(searchable, "resnet20-a", shape, 10)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        expected = searchable(x)
    rebuilt = apply_spec(spec, copy.deepcopy(searchable).remove())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), expected, atol=1e-4)
    kept = {layer.name: len(layer.kept_out_channels) for layer in spec.layers if not layer.removed}
    assert kept["layer2.2.conv2"] < 32 and kept["layer3.2.conv2"] < 64


@pytest.mark.parametrize("placement", list(QdqPlacement))
def test_the_ends_are_searched_for_onnxruntime_and_held_at_the_default_precision_for_tensorrt(placement: QdqPlacement) -> None:
    """An fp32 first or last layer costs ONNX Runtime a Q/DQ border and a float kernel; TensorRT practice keeps them wide."""
    dataset = load_dataset(DataConfig("digits", input_shape=DIGITS))
    fleet = two_cluster_fleet("small-cnn", samples_per_layer=8)
    fleet.placement = placement
    config = SearchConfig(model="small-cnn", targets=(0.9,), pretrain_epochs=1, epochs=1, finetune_epochs=1)
    quantized = run_search(config, dataset, fleet).points[-1]
    assert quantized.setting.kind is SettingKind.QUANTIZED
    ends = [quantized.spec.layers[0].weight_precision, quantized.spec.layers[-1].weight_precision]
    assert ends == (["int8", "int8"] if placement is QdqPlacement.ONNXRUNTIME else ["fp16", "fp16"])
    assert {layer.weight_precision for layer in quantized.spec.layers[1:-1]} == {"int8"}

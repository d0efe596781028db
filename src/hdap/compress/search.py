"""The joint pruning + mixed-precision search against the fleet-weighted cost.

One search trains a copy of the (pre-trained) model wrapped in `SearchableModel` with either

    loss = cross-entropy + strength * cost(architecture) / cost(uncompressed model)      (penalty)
    loss = cross-entropy + multiplier * (cost / (target * cost(uncompressed)) - 1)          (constraint)

where the constraint's multiplier rises while the cost is above the target and falls below it
(dual ascent), so the search lands near the asked-for fraction of the uncompressed cost. The
temperature falls, the architecture freezes, the weights fine-tune a few epochs, and accuracy is
measured. Several targets (or strengths) give a Pareto front of (accuracy, fleet latency, size),
and the front ends with the model quantised and nothing pruned (`quantize_only`): what quantisation
alone gives, which a pruned point must beat to be chosen. Every search starts there too, at the
one precision that makes the model cheapest (`cheapest_precision`): a pre-trained CNN loses little
to int8 (the quantised-only CIFAR ResNet-20 and ResNet-56 were published 0.06 and 0.08 points above
their uncompressed validation accuracy), and a search that began with precisions undecided settled
them by the noise of its first steps, pruning where quantising would have done (ResNet-20 on this
machine's CPU fleet, target 0.7: 2 layers removed, 0.58 points lost, 1.56x measured; quantised
only: 1.64x; bench/results/cifar_resnet20-a_cpu_fleet.json holds the latter).
The cost is the fleet-weighted latency from the clusters' surrogates (mode `fleet`, HDAP), one
datasheet device's surrogate (`nominal`, the baseline to beat), or the weight memory in bits
(objective `memory`). Mode `per-cluster` searches one architecture per cluster against its own
surrogate. Every point is reported with its fleet-weighted latency as the fleet's surrogates
predict it, whatever it was optimised for, so modes compare on one scale.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from hdap.compress.apply import plain_state_dict
from hdap.compress.branch_removal import branch_removal_order
from hdap.compress.searchable import SearchableModel
from hdap.compress.space import SearchSpace, build_search_space
from hdap.compress.spec import ArchitectureSpec, export_spec
from hdap.compress.training import evaluate, train_epochs, training_device
from hdap.data import Dataset
from hdap.errors import HdapError
from hdap.latency.fleet_cost import CompiledFleetCost, FleetCost, stack_decisions, weight_bits
from hdap.models import build_model
from hdap.models.weights import load_trained_weights
from hdap.stages.search import BranchOrder, Objective, SearchConfig, SearchMode, SearchSetting, SettingKind

log = logging.getLogger("hdap")


@dataclass
class SearchPoint:
    setting: SearchSetting
    accuracy: float  # percent, on the test split (reported)
    validation_accuracy: float  # percent, on the validation split (what the choice reads)
    fleet_latency_ms: float  # fleet-weighted, by the fleet's surrogates
    cluster_latency_ms: list[float]
    size_bits: float
    spec: ArchitectureSpec
    optimised_for: str = "fleet"  # the cost the search minimised
    pareto: bool = False
    # The fine-tuned weights of the searched model, before its channels are removed (the
    # uncompressed model's state-dict keys): what the fine-tune stage starts from.
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return self.setting.label


@dataclass
class SearchResult:
    baseline_accuracy: float  # test split
    baseline_validation_accuracy: float
    baseline_fleet_latency_ms: float
    baseline_size_bits: float
    default_precision: str
    baseline_cluster_latency_ms: list[float]
    points: list[SearchPoint]
    chosen: list[SearchPoint]  # one point, or one per cluster in per-cluster mode
    seconds: dict[str, float] = field(default_factory=dict)
    baseline_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # the uncompressed model, trained
    baseline_full_test_accuracy: float | None = None  # every test image, where half of them validate

    @property
    def front(self) -> list[SearchPoint]:
        return [p for p in self.points if p.pareto]

    @property
    def front_size(self) -> int:
        return front_size(self.points)


# -- costs ------------------------------------------------------------------------------------
class ArchitectureCost:
    """What one search minimises, normalised by the uncompressed model's value."""

    def __init__(self, objective: Objective, latency: CompiledFleetCost | None, baseline: float) -> None:
        self.objective, self.latency, self.baseline = objective, latency, baseline

    def __call__(self, searchable: SearchableModel) -> torch.Tensor:
        if self.objective is Objective.MEMORY:
            return weight_bits(searchable.decisions(), searchable.space.precisions) / self.baseline
        return self.latency.fleet_weighted_latency(*searchable.cost_inputs()) / self.baseline


def _temperature(config: SearchConfig, epoch: int) -> float:
    """Warm for the first half of the search (the logits move freely), then falling
    exponentially to `temperature_end` (the choices harden before the freeze)."""
    warm = config.epochs // 2
    if epoch < warm or config.epochs - warm <= 1:
        return config.temperature_start if epoch < warm else config.temperature_end
    ratio = config.temperature_end / config.temperature_start
    return config.temperature_start * ratio ** ((epoch - warm) / (config.epochs - warm - 1))


# -- the search -------------------------------------------------------------------------------
def uncompressed_model(config: SearchConfig, dataset: Dataset, weights: dict[str, torch.Tensor] | None) -> tuple[nn.Module, float]:
    """The uncompressed model: the user's, with its trained weights, or trained plainly here. (model, seconds)"""
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.input_shape, classes=dataset.classes)
    started = time.perf_counter()
    if weights is not None:
        load_trained_weights(model, weights, config.model, config.weights_uri)
    model.to(training_device(config.device))
    if weights is None:
        train_epochs(model, dataset.train, config.pretrain_epochs, config, f"training {config.model}", augment=dataset.augment,
                     mixed_precision=True)
    return model, time.perf_counter() - started


def warn_if_near_chance(accuracy: float, classes: int, model: str) -> None:
    """A trained model near chance almost always means its inputs are not what it was trained on."""
    chance = 100.0 / classes
    if accuracy < 1.5 * chance:
        log.warning("the uncompressed %s is %.2f%% accurate on the validation split, near chance (%.1f%%): check its "
                    "preprocessing (mean, std, channel order, input size) and the dataset's label order (ImageFolder "
                    "numbers classes in the alphabetical order of their folders), the usual causes.", model, accuracy, chance)


class ConstraintPenalty:
    """multiplier * (cost / target - 1), the multiplier updated by dual ascent after every batch.
    The multiplier may turn negative: below the target the search is pushed back up, so it
    settles at the target instead of sliding past it (a pruned branch is a cliff in the cost)."""

    def __init__(self, cost, searchable: SearchableModel, target: float, rate: float) -> None:
        self.cost, self.searchable, self.target, self.rate = cost, searchable, target, rate
        self.multiplier = 0.0

    def __call__(self) -> torch.Tensor:
        excess = self.cost(self.searchable) / self.target - 1
        penalty = self.multiplier * excess
        self.multiplier = self.multiplier + self.rate * float(excess.detach())
        return penalty


def meet_target(searchable: SearchableModel, cost: ArchitectureCost, target: float) -> None:
    """Turn the soft result into the hard architecture that keeps the most channels within the
    target: granules and branches ranked by their logits across all groups, the threshold lowered as far as
    the cost allows. (Thresholding at 0 can land far from the target: a removed residual branch is
    a cliff in the cost, and the constraint holds logits near 0 where the soft and hard costs part.)"""
    _break_ties(searchable)
    logits = sorted(set(_logit_values(searchable)))
    with torch.no_grad():
        for threshold in [min(logits) - 1.0, *logits]:  # keep everything first, then drop the weakest
            searchable.keep_threshold = threshold
            if float(cost(searchable)) <= target + 1e-9:
                return
    log.warning("even the smallest architecture costs more than target %g of the uncompressed model", target)


TIE_STEP = 1e-6


def _break_ties(searchable: SearchableModel) -> None:
    """Make equal logits differ by a hair, so one threshold step drops one granule or branch, not
    every one that shares a value (after a short search many logits have moved alike: Adam's first
    steps move each by its learning rate whatever the gradient's size). Within a group the less
    important granule (by weight magnitude) goes first. (Branches: `reorder_branches` spaces them.)"""
    values = _logit_values(searchable)
    if len(set(values)) == len(values):
        return
    with torch.no_grad():
        for logits in searchable.keep_logits:
            logits.sub_(TIE_STEP * torch.arange(len(logits), dtype=logits.dtype) / len(logits))
        for index, logits in enumerate(searchable.keep_logits):  # and groups from one another
            logits.sub_(TIE_STEP * 1e-3 * index)


def search_one(pretrained: nn.Module, space_of, dataset: Dataset, config: SearchConfig, cost: ArchitectureCost,
               setting: SearchSetting, start_precision: int, removal_order: list[str] | None = None) -> SearchableModel:
    """One search (a target or a strength; or the quantised-only point): search, freeze, fine-tune.
    Returns the frozen searchable model. The search starts at `start_precision` (`cheapest_precision`).
    With a `removal_order` (`branch_removal_order`) the search says how many branches go, the
    measured harm which: the branches' removal values are handed out in that order before the threshold."""
    torch.manual_seed(config.seed)
    model = copy.deepcopy(pretrained)
    searchable = SearchableModel(model, space_of(model))
    if setting.kind is SettingKind.QUANTIZED:
        quantize_only(searchable, start_precision)
        return _finetune(searchable, pretrained, dataset, config, setting)
    searchable.architecture.lean_to_precision(start_precision)

    def on_epoch(epoch: int) -> None:
        searchable.temperature = _temperature(config, epoch)

    value = setting.value
    if setting.kind is SettingKind.TARGET:
        penalty = ConstraintPenalty(cost, searchable, value, config.multiplier_rate)
    else:
        def penalty() -> torch.Tensor:
            return value * cost(searchable)
    train_epochs(searchable, dataset.train, config.epochs, config, f"searching ({setting.label})",
                 augment=dataset.augment, penalty=penalty, architecture=searchable.architecture_parameters(), on_epoch=on_epoch,
                 arch_learning_rate=config.arch_learning_rate)
    searchable.freeze()
    if removal_order:
        searchable.reorder_branches(removal_order)
    if setting.kind is SettingKind.TARGET:
        meet_target(searchable, cost, value)
    return _finetune(searchable, pretrained, dataset, config, setting)


def _finetune(searchable: SearchableModel, pretrained: nn.Module, dataset: Dataset, config: SearchConfig,
              setting: SearchSetting) -> SearchableModel:
    """Fine-tune a frozen architecture before it is measured.
    The search chose the architecture; its weights were trained under soft channel masks and
    precision mixes and suit the hard architecture worse than the uncompressed model's do
    (ResNet-20 on digits, 12 layers removed: 92% from the searched weights, 99% from the
    pre-trained ones). So the fine-tune starts from the pre-trained weights, as one-shot
    architecture searches retrain what they found, and learns from the uncompressed model as
    well as the labels (distillation recovers more accuracy per epoch)."""
    searchable.load_plain_weights(pretrained.state_dict())
    torch.manual_seed(config.seed)
    teacher = copy.deepcopy(pretrained).eval()
    train_epochs(searchable, dataset.train, config.finetune_epochs, config, f"fine-tuning ({setting.label})", teacher=teacher,
                 augment=dataset.augment)
    return searchable


def _logit_values(searchable: SearchableModel) -> list[float]:
    """Every granule's and branch's keep logit."""
    return [float(v) for group in [*searchable.keep_logits, *searchable.branch_logits.values()] for v in group.detach().flatten()]


def _uniform_costs(pretrained: nn.Module, space_of, cost: ArchitectureCost, keep_all: bool) -> list[float]:
    """The cost of the model's architecture with every granule and branch kept (`keep_all`) or every
    one the search may drop dropped, and every searched layer at each precision of the menu in turn."""
    searchable = SearchableModel(copy.deepcopy(pretrained), space_of(pretrained))
    searchable.freeze()
    logits = _logit_values(searchable)
    searchable.keep_threshold = min(logits) - 1.0 if keep_all else max(logits) + 1.0
    costs = []
    with torch.no_grad():
        for index in range(len(searchable.space.precisions)):
            searchable.architecture.lean_to_precision(index)
            costs.append(float(cost(searchable)))
    searchable.remove()
    return costs


def quantize_only(searchable: SearchableModel, precision: int) -> None:
    """Freeze `searchable` as the uncompressed architecture quantised: every channel and branch kept,
    every searched layer at precision `precision` of the menu."""
    searchable.freeze()
    searchable.keep_threshold = min(_logit_values(searchable)) - 1.0
    searchable.architecture.lean_to_precision(precision)


def cheapest_precision(pretrained: nn.Module, space_of, cost: ArchitectureCost) -> int:
    """The precision (its index in the menu) at which the uncompressed architecture, every searched layer
    at that one precision, costs least: what quantisation alone makes of it. One precision for all,
    not a per-layer mix, which would pay for the borders between them."""
    costs = _uniform_costs(pretrained, space_of, cost, keep_all=True)
    return costs.index(min(costs))


def smallest_cost(pretrained: nn.Module, space_of, cost: ArchitectureCost) -> float:
    """What the cheapest architecture the search can reach costs, relative to the uncompressed model: every
    granule and branch it may drop dropped, every searched layer at each precision in turn (the cheapest)."""
    return min(_uniform_costs(pretrained, space_of, cost, keep_all=False))


def reachable_settings(settings: list[SearchSetting], floor: float) -> list[SearchSetting]:
    """Targets as given where the model can reach them. A target below what the smallest architecture
    costs would prune everything the search may drop, whatever it costs in accuracy (a small model on
    a CPU is mostly fixed overhead: the demo's ResNet-20 on 8x8 digits cannot go below about 0.78 of
    its latency on this machine's CPU states); such a target is placed as far into the reachable range instead: floor + (1 - floor) x target."""
    reachable = []
    for setting in settings:
        if setting.kind is SettingKind.TARGET and setting.value < floor:
            placed = round(floor + (1 - floor) * setting.value, 3)
            log.warning("target %g is below what the smallest architecture costs (%.3f of the uncompressed model): "
                        "searching at %g, as far into the reachable range", setting.value, floor, placed)
            setting = SearchSetting(SettingKind.TARGET, placed)
        reachable.append(setting)
    return reachable


def plain_weights(searchable: SearchableModel) -> dict[str, torch.Tensor]:
    """The searched model's own weights (unquantised, all channels), keyed like the zoo model's, on the CPU."""
    return {key: value.detach().cpu().clone() for key, value in plain_state_dict(searchable.model).items()}


def objectives(point: SearchPoint) -> tuple[float, float, float]:
    return point.validation_accuracy, point.fleet_latency_ms, point.size_bits


def mark_pareto(points: list[SearchPoint]) -> None:
    """Non-dominated points: no other is at least as accurate (on the validation split), as fast and as
    small, and better in one."""
    def dominates(a: SearchPoint, b: SearchPoint) -> bool:
        no_worse = a.validation_accuracy >= b.validation_accuracy and a.fleet_latency_ms <= b.fleet_latency_ms and a.size_bits <= b.size_bits
        return no_worse and objectives(a) != objectives(b)
    for point in points:
        point.pareto = not any(dominates(other, point) for other in points if other is not point)


def distinct_architectures(points: list[SearchPoint]) -> int:
    """How many different architectures the points are: two targets that found the same one count once."""
    return len({_architecture_key(p) for p in points})


def _architecture_key(point: SearchPoint) -> tuple:
    if point.spec is None:  # a point without a spec is known by its scores
        return objectives(point)
    return tuple((layer.name, layer.removed, tuple(layer.kept_out_channels), layer.weight_precision) for layer in point.spec.layers)


def front_size(points: list[SearchPoint]) -> int:
    """How many distinct architectures the Pareto front holds (each search stays marked)."""
    return distinct_architectures([p for p in points if p.pareto])


def choose(points: list[SearchPoint], baseline_accuracy: float, tolerance: float) -> SearchPoint:
    """The lowest fleet latency within `tolerance` points of the uncompressed accuracy, both on the
    validation split (or the most accurate point, the fastest of equals, if none is that close)."""
    close = [p for p in points if p.validation_accuracy >= baseline_accuracy - tolerance]
    if not close:
        best = max(points, key=lambda p: (p.validation_accuracy, -p.fleet_latency_ms))
        log.warning("no searched point is within %.2f points of the uncompressed validation accuracy %.2f%%; choosing the "
                    "most accurate (%.2f%%)", tolerance, baseline_accuracy, best.validation_accuracy)
        return best
    return min(close, key=lambda p: (p.fleet_latency_ms, -p.validation_accuracy))


@dataclass
class Baseline:
    """The uncompressed model as every point is measured against: its layers, accuracy and costs."""

    model: nn.Module
    accuracy: float  # test split
    validation_accuracy: float
    full_test_accuracy: float | None  # every test image, where half of them validate
    space: SearchSpace
    removal_order: list[str] | None  # residual branches, least harmful first (latency objective)
    configs: list  # its layers' LayerConfigs, every channel kept at the default precision
    inputs: tuple  # `CompiledFleetCost`'s inputs for that architecture
    fleet_latency: CompiledFleetCost  # the fleet's cost of these layers: every point is reported against it
    latency_ms: float
    size_bits: float


def measure_baseline(config: SearchConfig, dataset: Dataset, fleet: FleetCost, seconds: dict[str, float],
                     weights: dict[str, torch.Tensor] | None = None) -> Baseline:
    pretrained, seconds["pretrain"] = uncompressed_model(config, dataset, weights)
    validation_accuracy, accuracy = evaluate(pretrained, dataset.validation), evaluate(pretrained, dataset.test)
    full_test = evaluate(pretrained, dataset.full_test) if dataset.full_test is not None else None
    trained = f"from {config.weights_uri}" if weights is not None else f"after {config.pretrain_epochs} epochs"
    log.info("uncompressed %s %s: %.2f%% validation, %.2f%% test accuracy%s", config.model, trained, validation_accuracy,
             accuracy, f" ({full_test:.2f}% on the whole test split)" if full_test is not None else "")
    warn_if_near_chance(validation_accuracy, dataset.classes, config.model)
    uncompressed = copy.deepcopy(pretrained)
    reference = SearchableModel(uncompressed, build_search_space(uncompressed, config.input_shape, fleet.precisions, config.granule,
                                                                 protect_first_and_last=fleet.placement.protects_ends))
    log.info("search space: %s", reference.space.describe())
    measured = config.branch_order is BranchOrder.MEASURED and config.objective is Objective.LATENCY
    removal_order = branch_removal_order(pretrained, reference.space, dataset.train, config.seed) if measured else None
    reference.freeze()
    full = reference.decisions()  # every channel kept; every layer at the default precision:
    for d in full:
        d.precision_probs = torch.tensor([float(p == reference.space.default_precision) for p in fleet.precisions], dtype=torch.float64)
    configs = [d.config for d in full]
    fleet_latency = CompiledFleetCost(fleet, configs)
    inputs = stack_decisions(full)
    return Baseline(pretrained, accuracy, validation_accuracy, full_test, reference.space, removal_order, configs, inputs, fleet_latency,
                    float(fleet_latency.fleet_weighted_latency(*inputs)), float(weight_bits(full, fleet.precisions)))


def architecture_cost(config: SearchConfig, baseline: Baseline, surrogates: FleetCost) -> ArchitectureCost:
    """What a search minimises: the memory, or the latency by `surrogates`, relative to the uncompressed model's."""
    if config.objective is Objective.MEMORY:
        return ArchitectureCost(Objective.MEMORY, None, baseline.size_bits)
    compiled = CompiledFleetCost(surrogates, baseline.configs)
    return ArchitectureCost(Objective.LATENCY, compiled, float(compiled.fleet_weighted_latency(*baseline.inputs)))


def measure_point(searchable: SearchableModel, setting: SearchSetting, optimised_for: str, config: SearchConfig,
                  dataset: Dataset, baseline: Baseline) -> SearchPoint:
    """A searched architecture's accuracy on the validation and test splits, its fleet latency and size, and its spec."""
    accuracy, validation_accuracy = evaluate(searchable, dataset.test), evaluate(searchable, dataset.validation)
    with torch.no_grad():
        inputs = stack_decisions(searchable.decisions())
        per_cluster = baseline.fleet_latency.per_cluster_latency(*inputs)
        latency = float((baseline.fleet_latency.weights * per_cluster).sum())
        bits = float(weight_bits(searchable.decisions(), searchable.space.precisions))
    metrics = {"accuracy": accuracy, "validation_accuracy": validation_accuracy, "fleet_latency_ms": latency, "size_bits": bits, setting.kind.value: setting.value}
    spec = export_spec(searchable, config.model, config.input_shape, dataset.classes, metrics)
    log.info("%s: %.2f%% validation, %.2f%% test accuracy, fleet latency %.4f ms (%.2fx lower), %.0f kbit", setting.label,
             validation_accuracy, accuracy, latency, baseline.latency_ms / latency, bits / 1e3)
    return SearchPoint(setting, accuracy, validation_accuracy, latency, [float(v) for v in per_cluster], bits, spec, optimised_for,
                       weights=plain_weights(searchable))


def search_front(config: SearchConfig, dataset: Dataset, baseline: Baseline, cost: ArchitectureCost,
                 optimised_for: str) -> tuple[list[SearchPoint], SearchPoint]:
    """One search per setting against `cost`, the points marked on their Pareto front, and the chosen one."""
    def space_of(model: nn.Module) -> SearchSpace:
        return build_search_space(model, config.input_shape, baseline.space.precisions, config.granule,
                                  protect_first_and_last=bool(baseline.space.protected))

    floor, start = smallest_cost(baseline.model, space_of, cost), cheapest_precision(baseline.model, space_of, cost)
    points = [measure_point(search_one(baseline.model, space_of, dataset, config, cost, s, start, baseline.removal_order), s,
                            optimised_for, config, dataset, baseline) for s in reachable_settings(config.settings(), floor)]
    mark_pareto(points)
    return points, choose(points, baseline.validation_accuracy, config.accuracy_tolerance)


def run_search(config: SearchConfig, dataset: Dataset, fleet: FleetCost, nominal: FleetCost | None = None,
               weights: dict[str, torch.Tensor] | None = None) -> SearchResult:
    """The Pareto front of one mode. `fleet` holds the clusters' surrogates and weights (every
    point is reported against it); `nominal` the datasheet device's, for mode `nominal`;
    `weights` the user's trained weights (else the model is trained here first)."""
    if config.mode is SearchMode.NOMINAL and nominal is None:
        raise HdapError("nominal mode needs the datasheet device's latency surrogate.")
    seconds: dict[str, float] = {}
    baseline = measure_baseline(config, dataset, fleet, seconds, weights)
    started = time.perf_counter()
    if config.mode is SearchMode.PER_CLUSTER:
        points, chosen = [], []
        for cluster, (surrogate, weight) in enumerate(zip(fleet.surrogates, fleet.weights)):
            own = architecture_cost(config, baseline, FleetCost([surrogate], [1.0], fleet.precisions, fleet.placement))
            cluster_points, best = search_front(config, dataset, baseline, own, f"cluster {cluster}")
            points += cluster_points
            chosen.append(best)
            log.info("cluster %d (weight %.2f): chose %s", cluster, weight, best.label)
    else:
        cost = architecture_cost(config, baseline, nominal if config.mode is SearchMode.NOMINAL else fleet)
        points, best = search_front(config, dataset, baseline, cost, config.mode.value)
        chosen = [best]
    seconds["search"] = time.perf_counter() - started
    baseline_clusters = [float(v) for v in baseline.fleet_latency.per_cluster_latency(*baseline.inputs)]
    return SearchResult(baseline.accuracy, baseline.validation_accuracy, baseline.latency_ms, baseline.size_bits, baseline.space.default_precision,
                        baseline_clusters, points, chosen, seconds, baseline_weights={k: v.detach().cpu().clone() for k, v in baseline.model.state_dict().items()},
                        baseline_full_test_accuracy=baseline.full_test_accuracy)

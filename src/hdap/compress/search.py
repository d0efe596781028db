"""The joint pruning + mixed-precision search against the fleet-weighted cost.

One search trains a copy of the (pre-trained) model wrapped in `SearchableModel` with either

    loss = cross-entropy + strength * cost(architecture) / cost(uncompressed model)      (penalty)
    loss = cross-entropy + multiplier * (cost / (target * cost(uncompressed)) - 1)          (constraint)

where the constraint's multiplier rises while the cost is above the target and falls below it
(dual ascent), so the search lands near the asked-for fraction of the uncompressed cost. The
temperature falls, the architecture freezes, the weights fine-tune a few epochs, and accuracy is
measured. Several targets (or strengths) give a Pareto front of (accuracy, fleet latency, size).
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
from hdap.compress.training import evaluate, train_epochs
from hdap.data import Dataset
from hdap.errors import HdapError
from hdap.latency.fleet_cost import CompiledFleetCost, FleetCost, stack_decisions, weight_bits
from hdap.models import build_model

log = logging.getLogger("hdap")
MODES = ("fleet", "nominal", "per-cluster")
OBJECTIVES = ("latency", "memory")
BRANCH_ORDERS = ("measured", "logits")


@dataclass(frozen=True)
class SearchConfig:
    model: str = "resnet20"
    input_shape: tuple[int, int, int] = (1, 8, 8)
    mode: str = "fleet"
    objective: str = "latency"
    # Cost targets as fractions of the uncompressed model's cost, one search each (the constraint
    # form); penalty strengths, when given, replace them.
    targets: tuple[float, ...] = (0.8, 0.65, 0.5, 0.4, 0.3, 0.2)
    strengths: tuple[float, ...] = ()
    multiplier_rate: float = 0.05  # dual-ascent step of the constraint's multiplier, per batch
    pretrain_epochs: int = 15  # plain training of the uncompressed model (the accuracy reference)
    # 20, not 10: with 10 the branch logits had not separated, and on digits 4 of 6 seeds removed the
    # branch of the first 64-channel block at target 0.4 (88-90% accuracy); with 20, none (97.2-99.7%).
    search_epochs: int = 20
    finetune_epochs: int = 10  # weights only, architecture frozen
    batch_size: int = 64
    learning_rate: float = 0.05
    arch_learning_rate: float = 0.1
    granule: int = 8  # channels decided together: 8 (fp16 tiles) or 32 (int8 tiles)
    temperature_start: float = 1.0
    temperature_end: float = 0.05
    accuracy_tolerance: float = 0.5  # points of accuracy the chosen point may lose
    # Which residual branches a target removes: "measured" (least harm to the pre-trained model
    # first, `hdap.compress.branch_removal`) or "logits" (the search's own branch logits). The
    # measured order does not weigh what each branch costs, which suits the latency objective
    # (branches of a ResNet cost alike: equal FLOPs per block, one launch per kernel) but not the
    # memory one (a 64-channel block has 16x the weights of a 16-channel one): memory uses the logits.
    branch_order: str = "measured"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HdapError(f"unknown search mode '{self.mode}': use one of {', '.join(MODES)}.")
        if self.objective not in OBJECTIVES:
            raise HdapError(f"unknown search objective '{self.objective}': use one of {', '.join(OBJECTIVES)}.")
        if not self.targets and not self.strengths:
            raise HdapError("give the search cost targets (fractions of the uncompressed cost, e.g. 0.8,0.5,0.3) or strengths.")
        if any(not 0 < t <= 1 for t in self.targets):
            raise HdapError(f"cost targets {self.targets} must be fractions of the uncompressed cost in (0, 1], e.g. 0.8,0.5,0.3.")
        if self.finetune_epochs < 1:
            raise HdapError(f"finetune_epochs={self.finetune_epochs}: each searched architecture needs at least one epoch of "
                            "fine-tuning (it restarts from the pre-trained weights and measures its activation ranges then).")
        if self.branch_order not in BRANCH_ORDERS:
            raise HdapError(f"unknown branch order '{self.branch_order}': use one of {', '.join(BRANCH_ORDERS)}.")
        if any(s < 0 for s in self.strengths):
            raise HdapError(f"search strengths {self.strengths} must be non-negative numbers, e.g. 0.5,1,2,4,8.")

    def settings(self) -> list[tuple[str, float]]:
        """One (kind, value) per search: ("target", 0.5) or ("strength", 2.0). Strengths, when
        given, replace the targets."""
        return [("strength", s) for s in self.strengths] if self.strengths else [("target", t) for t in self.targets]


@dataclass
class SearchPoint:
    setting: tuple[str, float]  # ("target", fraction of the uncompressed cost) or ("strength", penalty weight)
    accuracy: float  # percent, on the test split
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
        kind, value = self.setting
        return f"{kind} {value:g}"

    def summary(self) -> dict:
        return {"setting": self.label, "accuracy": round(self.accuracy, 3), "fleet_latency_ms": round(self.fleet_latency_ms, 5),
                "cluster_latency_ms": [round(v, 5) for v in self.cluster_latency_ms], "size_bits": self.size_bits,
                "optimised_for": self.optimised_for, "pareto": self.pareto}


@dataclass
class SearchResult:
    baseline_accuracy: float
    baseline_fleet_latency_ms: float
    baseline_size_bits: float
    default_precision: str
    baseline_cluster_latency_ms: list[float]
    points: list[SearchPoint]
    chosen: SearchPoint | list[SearchPoint]  # one point, or one per cluster in per-cluster mode
    seconds: dict[str, float] = field(default_factory=dict)
    baseline_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # the uncompressed model, trained

    @property
    def front(self) -> list[SearchPoint]:
        return [p for p in self.points if p.pareto]

    @property
    def front_size(self) -> int:
        return front_size(self.points)


# -- costs ------------------------------------------------------------------------------------
class ArchitectureCost:
    """What one search minimises, normalised by the uncompressed model's value."""

    def __init__(self, objective: str, latency: CompiledFleetCost | None, baseline: float) -> None:
        self.objective, self.latency, self.baseline = objective, latency, baseline

    def __call__(self, searchable: SearchableModel) -> torch.Tensor:
        if self.objective == "memory":
            return weight_bits(searchable.decisions(), searchable.space.precisions) / self.baseline
        return self.latency.fleet_weighted_latency(*searchable.cost_inputs()) / self.baseline


def _temperature(config: SearchConfig, epoch: int) -> float:
    """Warm for the first half of the search (the logits move freely), then falling
    exponentially to `temperature_end` (the choices harden before the freeze)."""
    warm = config.search_epochs // 2
    if epoch < warm or config.search_epochs - warm <= 1:
        return config.temperature_start if epoch < warm else config.temperature_end
    ratio = config.temperature_end / config.temperature_start
    return config.temperature_start * ratio ** ((epoch - warm) / (config.search_epochs - warm - 1))


# -- the search -------------------------------------------------------------------------------
def pretrain(config: SearchConfig, dataset: Dataset) -> tuple[nn.Module, float, float]:
    """The uncompressed model trained plainly: (model, accuracy, seconds)."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.input_shape, classes=dataset.classes)
    started = time.perf_counter()
    train_epochs(model, dataset.train, config.pretrain_epochs, config, f"training {config.model}")
    return model, evaluate(model, dataset.test), time.perf_counter() - started


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
    logits = sorted({float(v) for group in [*searchable.keep_logits, *searchable.branch_logits.values()]
                     for v in group.detach().flatten()})
    with torch.no_grad():
        for threshold in [min(logits) - 1.0, *logits]:  # keep everything first, then drop the weakest
            searchable.keep_threshold = threshold
            if float(cost(searchable)) <= target + 1e-9:
                return
    log.warning("even the smallest architecture costs more than target %g of the uncompressed model", target)


def search_one(pretrained: nn.Module, space_of, dataset: Dataset, config: SearchConfig, cost: ArchitectureCost,
               setting: tuple[str, float], removal_order: list[str] | None = None) -> SearchableModel:
    """One search (a target or a strength): search, freeze, fine-tune. Returns the frozen searchable model.
    With a `removal_order` (`branch_removal_order`) the search says how many branches go, the
    measured harm which: the branches' removal values are handed out in that order before the threshold."""
    torch.manual_seed(config.seed)
    model = copy.deepcopy(pretrained)
    searchable = SearchableModel(model, space_of(model))

    def on_epoch(epoch: int) -> None:
        searchable.temperature = _temperature(config, epoch)

    kind, value = setting
    if kind == "target":
        penalty = ConstraintPenalty(cost, searchable, value, config.multiplier_rate)
    else:
        def penalty() -> torch.Tensor:
            return value * cost(searchable)
    train_epochs(searchable, dataset.train, config.search_epochs, config, f"searching ({kind} {value:g})",
                 penalty=penalty, architecture=searchable.architecture_parameters(), on_epoch=on_epoch,
                 arch_learning_rate=config.arch_learning_rate)
    searchable.freeze()
    if removal_order:
        searchable.reorder_branches(removal_order)
    if kind == "target":
        meet_target(searchable, cost, value)
    # The search chose the architecture; its weights were trained under soft channel masks and
    # precision mixes and suit the hard architecture worse than the uncompressed model's do
    # (ResNet-20 on digits, 12 layers removed: 92% from the searched weights, 99% from the
    # pre-trained ones). So the fine-tune starts from the pre-trained weights, as one-shot
    # architecture searches retrain what they found, and learns from the uncompressed model as
    # well as the labels (distillation recovers more accuracy per epoch).
    searchable.load_plain_weights(pretrained.state_dict())
    torch.manual_seed(config.seed)
    teacher = copy.deepcopy(pretrained).eval()
    train_epochs(searchable, dataset.train, config.finetune_epochs, config, f"fine-tuning ({kind} {value:g})", teacher=teacher)
    return searchable


def plain_weights(searchable: SearchableModel) -> dict[str, torch.Tensor]:
    """The searched model's own weights (unquantised, all channels), keyed like the zoo model's."""
    return {key: value.clone() for key, value in plain_state_dict(searchable.model).items()}


def objectives(point: SearchPoint) -> tuple[float, float, float]:
    return point.accuracy, point.fleet_latency_ms, point.size_bits


def mark_pareto(points: list[SearchPoint]) -> None:
    """Non-dominated points: no other is at least as accurate, as fast and as small, and better in one."""
    def dominates(a: SearchPoint, b: SearchPoint) -> bool:
        no_worse = a.accuracy >= b.accuracy and a.fleet_latency_ms <= b.fleet_latency_ms and a.size_bits <= b.size_bits
        return no_worse and objectives(a) != objectives(b)
    for point in points:
        point.pareto = not any(dominates(other, point) for other in points if other is not point)


def front_size(points: list[SearchPoint]) -> int:
    """How many points the front has in (accuracy, latency, size): searches that scored alike, often
    two targets that found the same architecture, are one point of it (each stays marked)."""
    return len({objectives(p) for p in points if p.pareto})


def choose(points: list[SearchPoint], baseline_accuracy: float, tolerance: float) -> SearchPoint:
    """The lowest fleet latency within `tolerance` points of the uncompressed accuracy
    (or the most accurate point, the fastest of equals, if none is that close)."""
    close = [p for p in points if p.accuracy >= baseline_accuracy - tolerance]
    if not close:
        best = max(points, key=lambda p: (p.accuracy, -p.fleet_latency_ms))
        log.warning("no searched point is within %.2f points of the uncompressed accuracy %.2f%%; choosing the most "
                    "accurate (%.2f%%)", tolerance, baseline_accuracy, best.accuracy)
        return best
    return min(close, key=lambda p: (p.fleet_latency_ms, -p.accuracy))


def run_search(config: SearchConfig, dataset: Dataset, fleet: FleetCost, nominal: FleetCost | None = None) -> SearchResult:
    """The Pareto front of one mode. `fleet` holds the clusters' surrogates and weights (every
    point is reported against it); `nominal` the datasheet device's, for mode `nominal`."""
    if config.mode == "nominal" and nominal is None:
        raise HdapError("nominal mode needs the datasheet device's latency surrogate.")
    seconds: dict[str, float] = {}
    pretrained, baseline_accuracy, seconds["pretrain"] = pretrain(config, dataset)
    log.info("uncompressed %s: %.2f%% test accuracy after %d epochs", config.model, baseline_accuracy, config.pretrain_epochs)

    def space_of(model: nn.Module) -> SearchSpace:
        return build_search_space(model, config.input_shape, fleet.precisions, config.granule)

    uncompressed = copy.deepcopy(pretrained)
    reference = SearchableModel(uncompressed, space_of(uncompressed))
    log.info("search space: %s", reference.space.describe())
    removal_order = (branch_removal_order(pretrained, reference.space, dataset.train, config.seed)
                     if config.branch_order == "measured" and config.objective == "latency" else None)
    reference.freeze()
    full = reference.decisions()  # every channel kept; every layer at the default precision:
    for d in full:
        d.precision_probs = torch.tensor([float(p == reference.space.default_precision) for p in fleet.precisions], dtype=torch.float64)
    configs = [d.config for d in full]
    fleet_latency = CompiledFleetCost(fleet, configs)
    baseline_inputs = stack_decisions(full)
    baseline_latency = float(fleet_latency.fleet_weighted_latency(*baseline_inputs))
    baseline_bits = float(weight_bits(full, fleet.precisions))

    def cost_for(surrogates: FleetCost) -> ArchitectureCost:
        if config.objective == "memory":
            return ArchitectureCost("memory", None, baseline_bits)
        compiled = CompiledFleetCost(surrogates, configs)
        return ArchitectureCost("latency", compiled, float(compiled.fleet_weighted_latency(*baseline_inputs)))

    def point(searchable: SearchableModel, setting: tuple[str, float], optimised_for: str) -> SearchPoint:
        accuracy = evaluate(searchable, dataset.test)
        with torch.no_grad():
            inputs = stack_decisions(searchable.decisions())
            per_cluster = fleet_latency.per_cluster_latency(*inputs)
            latency = float((fleet_latency.weights * per_cluster).sum())
            bits = float(weight_bits(searchable.decisions(), searchable.space.precisions))
        metrics = {"accuracy": accuracy, "fleet_latency_ms": latency, "size_bits": bits, setting[0]: setting[1]}
        spec = export_spec(searchable, config.model, config.input_shape, dataset.classes, metrics)
        weights = plain_weights(searchable)
        log.info("%s %g: %.2f%% accuracy, fleet latency %.4f ms (%.2fx lower), %.0f kbit", *setting, accuracy,
                 latency, baseline_latency / latency, bits / 1e3)
        return SearchPoint(setting, accuracy, latency, [float(v) for v in per_cluster], bits, spec, optimised_for, weights=weights)

    started = time.perf_counter()
    if config.mode == "per-cluster":
        points, chosen_per_cluster = [], []
        for cluster, (surrogate, weight) in enumerate(zip(fleet.surrogates, fleet.weights)):
            own = cost_for(FleetCost([surrogate], [1.0], fleet.precisions))
            cluster_points = [point(search_one(pretrained, space_of, dataset, config, own, s, removal_order), s, f"cluster {cluster}")
                              for s in config.settings()]
            mark_pareto(cluster_points)
            best = choose(cluster_points, baseline_accuracy, config.accuracy_tolerance)
            chosen_per_cluster.append(best)
            points += cluster_points
            log.info("cluster %d (weight %.2f): chose %s", cluster, weight, best.label)
        chosen: SearchPoint | list[SearchPoint] = chosen_per_cluster
    else:
        surrogates = nominal if config.mode == "nominal" else fleet
        cost = cost_for(surrogates)
        points = [point(search_one(pretrained, space_of, dataset, config, cost, s, removal_order), s, config.mode) for s in config.settings()]
        mark_pareto(points)
        chosen = choose(points, baseline_accuracy, config.accuracy_tolerance)
    seconds["search"] = time.perf_counter() - started
    baseline_clusters = [float(v) for v in fleet_latency.per_cluster_latency(*baseline_inputs)]
    return SearchResult(baseline_accuracy, baseline_latency, baseline_bits, reference.space.default_precision,
                        baseline_clusters, points, chosen, seconds, baseline_weights=copy.deepcopy(pretrained.state_dict()))

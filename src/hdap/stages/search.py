"""Stage 4, search: joint pruning + mixed-precision search against the fleet-weighted latency.

Trains the uncompressed model, searches one architecture per cost target (`hdap.compress.search`)
and chooses the fastest within the accuracy tolerance. Writes the chosen architecture(s) with
their searched weights, the uncompressed model's weights, `index.json` (`SearchIndex`: what the
fine-tune takes), `front.json` (`Front`: every point, its accuracy and fleet latency, and, for a
simulated fleet, its true latency over every device) and an HTML report under
`<output_uri>/<run>/search/`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hdap.artifacts import Contract
from hdap.errors import HdapError
from hdap.preprocessing import ChannelOrder, DataRecipe, ValidationSource
from hdap.settings import (ACCURACY_TOLERANCE, DATASET, DATASET_URI, DEVICE, INPUT_SHAPE, MODEL, SEED, TRUTH_URI, Choice,
                           DatasetName, Device, Settings, Shape, at_least, check_dataset, internal, positive, s3_uri, setting)
from hdap.stages import Stage, StageContext

log = logging.getLogger("hdap")


class SearchMode(Choice):
    FLEET = "fleet"  # the fleet-weighted latency over the clusters (HDAP)
    NOMINAL = "nominal"  # the SKU's datasheet device (a measured CPU fleet: its fastest state): the baseline to beat
    PER_CLUSTER = "per-cluster"  # one architecture per cluster


class Objective(Choice):
    LATENCY = "latency"
    MEMORY = "memory"  # weight bits


class BranchOrder(Choice):
    MEASURED = "measured"  # least harm to the pre-trained model first (`hdap.compress.branch_removal`)
    LOGITS = "logits"  # the search's own branch logits


class SettingKind(Choice):
    TARGET = "target"  # a fraction of the uncompressed model's cost
    STRENGTH = "strength"  # a penalty weight
    QUANTIZED = "quantized"  # nothing pruned, every searched layer at the precision that makes the model cheapest


def _fractions(targets: tuple[float, ...]) -> str | None:
    return None if all(0 < t <= 1 for t in targets) else "must be fractions of the uncompressed cost in (0, 1], e.g. 0.8,0.5,0.3"


def _non_negative(strengths: tuple[float, ...]) -> str | None:
    return None if all(s >= 0 for s in strengths) else "must be non-negative numbers, e.g. 0.5,1,2,4,8"


@dataclass(frozen=True)
class SearchConfig(Settings):
    PREFIX = "search"
    model: str = MODEL()
    input_shape: Shape = INPUT_SHAPE()
    dataset: DatasetName = DATASET()
    dataset_uri: str = DATASET_URI()
    weights_uri: str = setting("", "The model's trained weights in the store: a state dict (.pt, .pth, .th; nested under "
                               "state_dict and DataParallel's module. prefix are fine) or .safetensors. Given, nothing is "
                               "pre-trained: the model as it is is the baseline and the teacher. Empty: hdap trains it.",
                               check=s3_uri)
    mean: tuple[float, ...] = setting((), "The model's input normalisation mean, one per channel of RGB in [0, 1] (e.g. "
                                      "0.485,0.456,0.406). Empty: a <weights>.json beside the weights, else the training "
                                      "images' own statistics.")
    std: tuple[float, ...] = setting((), "The model's input normalisation deviation, one per channel (e.g. 0.229,0.224,0.225).")
    channel_order: ChannelOrder = setting(ChannelOrder.RGB, f"Channel order the model expects: {ChannelOrder.choices()}.")
    train_images: int = setting(0, "Train the search (and the fine-tune after it) on a seeded, stratified subset of this many "
                                "training images, for a quicker run; 0: all of them.", check=at_least(0))
    validation: ValidationSource = setting(ValidationSource.AUTO, f"Where the validation split that the choice and the "
                                           f"quality gate read comes from: {ValidationSource.choices()}. auto: the dataset's "
                                           "val/ split; else, with weights_uri, half the test images (a checkpoint has "
                                           "usually seen every training image); else a tenth of the training images.")
    mode: SearchMode = setting(SearchMode.FLEET, f"{SearchMode.choices()}: the fleet weighted over its clusters, the "
                               "datasheet device, or one architecture per cluster (the run then stops after the search).")
    objective: Objective = setting(Objective.LATENCY, f"What the search lowers: {Objective.choices()} (weight bits).")
    targets: tuple[float, ...] = setting((0.8, 0.65, 0.5, 0.4, 0.3, 0.2), "Cost targets as fractions of the uncompressed "
                                         "model's, one search each: the points of the Pareto front.", check=_fractions)
    strengths: tuple[float, ...] = setting((), "Penalty strengths instead of cost targets (given, they replace "
                                           "search_targets), e.g. 0.5,1,2.", check=_non_negative)
    quantized_point: bool = setting(True, "Add to the front the model quantised and nothing pruned (every searched layer at "
                                    "the precision that makes it cheapest), fine-tuned like the searched points: what "
                                    "quantisation alone gives, so a pruned point is chosen only where it is faster at the "
                                    "accuracy asked for.")
    pretrain_epochs: int = setting(15, "Epochs of plain training of the uncompressed model.", check=at_least(0))
    # 20, not 10: with 10 the branch logits had not separated, and on digits 4 of 6 seeds removed the
    # branch of the first 64-channel block at target 0.4 (88-90% accuracy); with 20, none (97.2-99.7%).
    epochs: int = setting(20, "Epochs of each search (the architecture logits need about 20 to settle).", check=at_least(1))
    finetune_epochs: int = setting(10, "Epochs of fine-tuning each searched architecture, from the uncompressed model's "
                                   "weights and distilling it, before it is measured (at least 1: it measures the "
                                   "activation ranges).", check=at_least(1))
    granule: int = setting(8, "Channels pruned together: 8 suits fp16 tiles, 32 int8 tiles.", check=at_least(1))
    accuracy_tolerance: float = ACCURACY_TOLERANCE()
    truth_uri: str = TRUTH_URI()
    seed: int = SEED()
    device: Device = DEVICE()
    multiplier_rate: float = internal(0.05)  # dual-ascent step of the constraint's multiplier, per batch
    batch_size: int = internal(64)
    learning_rate: float = setting(0.05, "SGD learning rate of the weights in the search and its per-point fine-tunes "
                                   "(and the pre-training): lower it, e.g. to 0.002, for a model that is already trained (a converged model "
                                   "fine-tuned at 0.01 on a few thousand images loses accuracy).",
                                   check=positive)
    arch_learning_rate: float = internal(0.1)
    temperature_start: float = internal(1.0)
    temperature_end: float = internal(0.05)
    # Which residual branches a target removes. The measured order does not weigh what each branch
    # costs, which suits the latency objective (branches of a ResNet cost alike: equal FLOPs per
    # block, one launch per kernel) but not the memory one (a 64-channel block has 16x the weights
    # of a 16-channel one): memory uses the logits.
    branch_order: BranchOrder = internal(BranchOrder.MEASURED)

    def validate(self) -> None:
        if not self.targets and not self.strengths:
            raise HdapError("search_targets and search_strengths are both empty: give cost targets (fractions of the "
                            "uncompressed cost, e.g. 0.8,0.5,0.3) or strengths.")
        check_dataset(self.dataset, self.dataset_uri)
        if len(self.mean) != len(self.std):
            raise HdapError(f"search_mean {list(self.mean)} and search_std {list(self.std)} must be given together, one "
                            "number per input channel.")

    def settings(self) -> list[SearchSetting]:
        """One search per target, or per strength (strengths, when given, replace the targets), and the
        quantised-only point where asked for."""
        quantized = [SearchSetting(SettingKind.QUANTIZED, 0.0)] if self.quantized_point else []
        if self.strengths:
            return [SearchSetting(SettingKind.STRENGTH, s) for s in self.strengths] + quantized
        return [SearchSetting(SettingKind.TARGET, t) for t in self.targets] + quantized


@dataclass(frozen=True)
class SearchSetting:
    kind: SettingKind
    value: float

    @property
    def label(self) -> str:
        return "quantized only" if self.kind is SettingKind.QUANTIZED else f"{self.kind.value} {self.value:g}"

    @property
    def short(self) -> str:
        """The setting in a table's column or beside a plotted point."""
        return "quantized" if self.kind is SettingKind.QUANTIZED else f"{self.value:g}"


@dataclass
class FrontPoint:
    setting: SearchSetting
    accuracy: float  # percent, on the test split
    validation_accuracy: float  # percent, on the validation split: what the choice read
    fleet_latency_ms: float  # fleet-weighted, by the fleet's surrogates
    cluster_latency_ms: list[float]
    size_bits: float
    optimised_for: str  # the cost the search minimised: the mode, or "cluster <k>"
    layers_removed: int
    pareto: bool
    chosen: bool
    true_fleet_latency_ms: float | None = None  # mean over every device of a simulated fleet, deployed


@dataclass
class Front(Contract):
    FORMAT = "hdap.front/2"
    model: str
    mode: SearchMode
    objective: Objective
    data: DataRecipe
    baseline_accuracy: float  # test split
    baseline_validation_accuracy: float
    baseline_full_test_accuracy: float | None  # every test image, where half of them validate
    baseline_fleet_latency_ms: float
    baseline_size_bits: float
    baseline_cluster_latency_ms: list[float]
    default_precision: str
    seconds: dict[str, float]
    pareto_points: int  # the front's size in distinct architectures
    distinct_architectures: int  # of all the searches
    points: list[FrontPoint]

    @property
    def chosen(self) -> list[FrontPoint]:
        return [p for p in self.points if p.chosen]


@dataclass
class ArchitectureEntry:
    cluster: int | None  # the cluster it was chosen for; None: the whole fleet
    spec: str  # its ArchitectureSpec file, beside index.json
    weights: str  # its searched weights (a state dict of the uncompressed model's keys)


@dataclass
class SearchIndex(Contract):
    FORMAT = "hdap.search-index/2"
    mode: SearchMode
    architectures: list[ArchitectureEntry]
    uncompressed_weights: str  # the trained uncompressed model: the fine-tune's teacher, the build's baseline
    baseline_accuracy: float  # test split
    baseline_validation_accuracy: float
    default_precision: str
    data: DataRecipe  # the preprocessing and splits the fine-tune and build repeat

    def single(self) -> ArchitectureEntry:
        """The one architecture of a fleet or nominal search (what the fine-tune and build take)."""
        if len(self.architectures) != 1:
            raise HdapError(f"the search chose {len(self.architectures)} architectures (mode {self.mode.value}); the fine-tune "
                            "and build stages take one: run the search in fleet or nominal mode.")
        return self.architectures[0]


@dataclass(frozen=True)
class SearchInputs:
    surrogates: Path  # the surrogate stage's folder (SurrogateIndex)
    features: Path


@dataclass(frozen=True)
class SearchOutputs:
    architecture: Path  # a folder: index.json, the chosen spec(s) and weights
    front: Path  # Front
    report: Path


def run(config: SearchConfig, inputs: SearchInputs, outputs: SearchOutputs, context: StageContext) -> dict[str, float]:
    import pyarrow.parquet as pq

    from hdap.compress.search import run_search
    from hdap.data import DataConfig, load_dataset
    from hdap.latency.fleet_cost import FleetCost
    from hdap.fleet.sku import fleet_qdq_placement, get_sku
    from hdap.latency.fleet_profiling import fastest_state_cost, nominal_fleet_cost
    from hdap.models import build_model, prunable_layers
    from hdap.report.search import search_report_html
    from hdap.stages.surrogate import SurrogateIndex

    index = SurrogateIndex.load(inputs.surrogates / "fleet.json")
    if tuple(index.input_shape) != config.input_shape or index.model != config.model:
        raise HdapError(f"the surrogates were profiled for {index.model} on {list(index.input_shape)} inputs, not {config.model} "
                        f"on {list(config.input_shape)}: run the surrogate and search steps with the same model and input_shape.")
    features = pq.read_table(inputs.features)
    fleet = FleetCost.from_index(index, inputs.surrogates, fleet_qdq_placement(features))
    weights, beside = _trained_weights(config, context)
    mean, std = (config.mean, config.std) if config.mean else (tuple(beside.get("mean", ())), tuple(beside.get("std", ())))
    order = beside.get("channel_order", config.channel_order)
    if order not in {c.value for c in ChannelOrder}:
        raise HdapError(f"{config.weights_uri}.json gives channel_order {order!r}: use {ChannelOrder.choices()}.")
    data = load_dataset(DataConfig(config.dataset, config.dataset_uri, config.input_shape, config.seed, config.validation, mean,
                                   std, ChannelOrder(order),
                                   trained_on_all_training_images=weights is not None, train_images=config.train_images),
                        context.store)
    log.info("dataset %s: %s", config.dataset.value, data.describe())
    log.info("preprocessing: %s", data.recipe.preprocessing.describe())
    layers = prunable_layers(build_model(config.model, config.input_shape, classes=data.classes), config.input_shape)
    nominal = None
    if config.mode is SearchMode.NOMINAL:
        sku = features.column("sku")[0].as_py()
        nominal = (fastest_state_cost(fleet, layers) if get_sku(sku).self_measured
                   else nominal_fleet_cost(sku, layers, fleet.precisions, seed=config.seed))
    result = run_search(config, data, fleet, nominal, weights)

    true_latency = _true_latencies(config, result, layers, features, context)
    search_index = _save_architectures(config, result, index, data.recipe, outputs.architecture, context)
    front = _front(config, result, data.recipe, true_latency)
    front.save(outputs.front)
    context.store.put_file(context.uri("search", "front.json"), outputs.front)
    outputs.report.write_text(search_report_html(front, result.chosen[0].spec))
    context.store.put_file(context.uri("search", "report.html"), outputs.report)
    log.info("search index: %d architecture(s) in %s", len(search_index.architectures), outputs.architecture)
    return _metrics(result, front, fleet.weights)


def _trained_weights(config: SearchConfig, context: StageContext) -> tuple[dict | None, dict]:
    """The user's weights (None: hdap trains the model) and the preprocessing stored beside them."""
    if not config.weights_uri:
        return None, {}
    import tempfile

    from hdap.models.weights import read_state_dict
    from hdap.preprocessing import preprocessing_beside

    if not context.store.exists(config.weights_uri):
        raise HdapError(f"there are no weights at {config.weights_uri}: upload them, e.g. `mc cp model.pt "
                        "<alias>/<bucket>/models/`, and pass that URI as search_weights_uri.")
    with tempfile.TemporaryDirectory(prefix="hdap-weights-") as folder:
        path = context.store.get_file(config.weights_uri, Path(folder) / Path(config.weights_uri).name)
        weights = read_state_dict(path, config.weights_uri)
        beside_uri = config.weights_uri + ".json"
        beside = {}
        if context.store.exists(beside_uri):
            beside = preprocessing_beside(context.store.get_file(beside_uri, Path(folder) / "preprocessing.json"), beside_uri)
    return weights, beside


def _true_latencies(config: SearchConfig, result, layers, features, context: StageContext) -> dict[int, float]:
    """A simulated fleet knows its truth: what each point would cost the whole fleet, deployed (point index -> ms)."""
    if not config.truth_uri or config.mode is SearchMode.PER_CLUSTER:
        return {}
    from hdap.compress.spec import spec_layer_configs
    from hdap.latency.fleet_profiling import load_truth, simulated_fleet_latency_ms

    truth = load_truth(context.store, config.truth_uri)
    return {i: float(simulated_fleet_latency_ms(spec_layer_configs(point.spec, layers), features, truth).mean())
            for i, point in enumerate(result.points)}


def _save_architectures(config: SearchConfig, result, index, recipe: DataRecipe, directory: Path,
                        context: StageContext) -> SearchIndex:
    """The chosen spec(s) and searched weights, the uncompressed model's weights, and their index."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for cluster, point in enumerate(result.chosen):
        whole_fleet = len(result.chosen) == 1
        name = "architecture.json" if whole_fleet else f"cluster-{index.clusters[cluster].cluster}.json"
        weights = name.removesuffix(".json") + ".weights.pt"
        point.spec.save(directory / name)
        torch.save(point.weights, directory / weights)
        for file in (name, weights):
            context.store.put_file(context.uri("search", file), directory / file)
        entries.append(ArchitectureEntry(None if whole_fleet else index.clusters[cluster].cluster, name, weights))
    torch.save(result.baseline_weights, directory / "uncompressed.weights.pt")
    context.store.put_file(context.uri("search", "uncompressed.weights.pt"), directory / "uncompressed.weights.pt")
    search_index = SearchIndex(config.mode, entries, "uncompressed.weights.pt", result.baseline_accuracy,
                               result.baseline_validation_accuracy, result.default_precision, recipe)
    search_index.save(directory / "index.json")
    context.store.put_file(context.uri("search", "index.json"), directory / "index.json")
    return search_index


def _front(config: SearchConfig, result, recipe: DataRecipe, true_latency: dict[int, float]) -> Front:
    from hdap.compress.search import distinct_architectures

    chosen = {id(p) for p in result.chosen}
    points = [FrontPoint(p.setting, round(p.accuracy, 3), round(p.validation_accuracy, 3), round(p.fleet_latency_ms, 5), [round(v, 5) for v in p.cluster_latency_ms],
                         p.size_bits, p.optimised_for, sum(layer.removed for layer in p.spec.layers), p.pareto, id(p) in chosen,
                         true_latency.get(i)) for i, p in enumerate(result.points)]
    full_test = result.baseline_full_test_accuracy
    return Front(config.model, config.mode, config.objective, recipe, result.baseline_accuracy,
                 round(result.baseline_validation_accuracy, 3), None if full_test is None else round(full_test, 3),
                 result.baseline_fleet_latency_ms, result.baseline_size_bits, result.baseline_cluster_latency_ms,
                 result.default_precision, result.seconds, result.front_size, distinct_architectures(result.points), points)


def _metrics(result, front: Front, weights: list[float]) -> dict[str, float]:
    chosen = result.chosen
    best = chosen[0]
    latency = (sum(w * p.cluster_latency_ms[k] for k, (w, p) in enumerate(zip(weights, chosen))) if len(chosen) > 1
               else best.fleet_latency_ms)
    metrics = {
        "baseline_accuracy": round(result.baseline_accuracy, 3),
        "baseline_validation_accuracy": round(result.baseline_validation_accuracy, 3),
        "baseline_fleet_latency_ms": round(result.baseline_fleet_latency_ms, 5),
        "chosen_accuracy": round(best.accuracy, 3),
        "chosen_validation_accuracy": round(best.validation_accuracy, 3),
        "chosen_fleet_latency_ms": round(latency, 5),
        "pareto_points": result.front_size,
        "distinct_architectures": front.distinct_architectures,
        "search_seconds": round(result.seconds["search"], 1),
    }
    metrics["fleet_latency_reduction"] = round(result.baseline_fleet_latency_ms / metrics["chosen_fleet_latency_ms"], 3)
    true = [p.true_fleet_latency_ms for p in front.chosen]
    if len(chosen) == 1 and true[0] is not None:
        metrics["chosen_true_fleet_latency_ms"] = round(true[0], 5)
    return metrics


STAGE = Stage("search", "prune + precision search", SearchConfig, SearchInputs, SearchOutputs, run)

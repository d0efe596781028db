"""Stage 5, fine-tune: the chosen architecture pruned physically and trained quantization-aware.

Distils the uncompressed model (`hdap.compress.finetune`), with a checkpoint in the store after
every epoch so a retried step resumes. Writes the model folder (`architecture.json`,
`weights.pt`, `quantization.json` (`QuantizationRanges`), `summary.json` (`FinetuneSummary`) and
the uncompressed weights the build compares against) under `<output_uri>/<run>/finetune/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hdap.artifacts import Contract
from hdap.preprocessing import DataRecipe
from hdap.errors import HdapError
from hdap.settings import (DATASET, DATASET_URI, DEVICE, SEED, DatasetName, Device, Settings, at_least, check_dataset, internal,
                           positive, setting)
from hdap.stages import Stage, StageContext

if TYPE_CHECKING:
    from hdap.store import ObjectStore


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    PREFIX = "finetune"
    epochs: int = setting(8, "Epochs of quantization-aware fine-tuning of the chosen architecture (the best epoch on a "
                          "held-out tenth of the training images is kept; the searched model counts as epoch 0).",
                          check=at_least(0))
    learning_rate: float = setting(0.01, "Learning rate of the quantization-aware fine-tune.", check=positive)
    dataset: DatasetName = DATASET()
    dataset_uri: str = DATASET_URI()
    seed: int = SEED()
    device: Device = DEVICE()
    batch_size: int = internal(64)
    calibration_batches: int = internal(8)

    def validate(self) -> None:
        check_dataset(self.dataset, self.dataset_uri)
        if self.batch_size < 1:
            raise HdapError(f"fine-tune batch_size={self.batch_size} is out of range: batch_size >= 1.")


@dataclass
class QuantizationRanges(Contract):
    FORMAT = "hdap.quantization/1"
    activation_amax: dict[str, float]  # per quantised layer: its input's range (the Q/DQ scale is amax / 127)


@dataclass
class FinetuneSummary(Contract):
    FORMAT = "hdap.finetune-summary/2"
    teacher_accuracy: float  # test split, as every accuracy here but validation_accuracy
    accuracy_before: float  # pruned and quantised, before the fine-tune
    accuracy_after: float
    validation_accuracy: float  # the kept epoch's, on the validation split
    resumed_from_epoch: int
    kept_epoch: int  # the epoch whose weights were kept (0: the searched model's)
    finetune_seconds: float
    epochs: int
    classes: int
    data: DataRecipe  # the search's preprocessing and splits, for the build
    per_class_before: list[float] = field(default_factory=list)
    per_class_after: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {"teacher_accuracy": round(self.teacher_accuracy, 3), "accuracy_before": round(self.accuracy_before, 3),
                "accuracy_after": round(self.accuracy_after, 3), "resumed_from_epoch": self.resumed_from_epoch,
                "kept_epoch": self.kept_epoch, "finetune_seconds": round(self.finetune_seconds, 1)}


class StoreCheckpoints:
    """Fine-tune checkpoints as one object in the store: a retried step finds its predecessor's."""

    def __init__(self, store: ObjectStore, uri: str) -> None:
        self.store, self.uri = store, uri

    def load(self) -> bytes | None:
        return self.store.get_bytes(self.uri) if self.store.exists(self.uri) else None

    def save(self, data: bytes) -> None:
        self.store.put_bytes(self.uri, data)


@dataclass(frozen=True)
class FinetuneInputs:
    architecture: Path  # the search's folder (SearchIndex)


@dataclass(frozen=True)
class FinetuneOutputs:
    model: Path  # a folder: architecture.json, weights.pt, quantization.json, summary.json, uncompressed.weights.pt


def run(config: FinetuneConfig, inputs: FinetuneInputs, outputs: FinetuneOutputs, context: StageContext) -> dict[str, float]:
    import shutil

    import torch

    from hdap.compress.finetune import quantization_aware_finetune, save_finetuned
    from hdap.compress.spec import ArchitectureSpec
    from hdap.data import load_dataset, recipe_config
    from hdap.stages.search import SearchIndex

    index = SearchIndex.load(inputs.architecture / "index.json")
    entry = index.single()
    spec = ArchitectureSpec.load(inputs.architecture / entry.spec)
    data = load_dataset(recipe_config(index.data, config.dataset, config.dataset_uri, config.seed), context.store)
    result = quantization_aware_finetune(
        spec, torch.load(inputs.architecture / entry.weights, weights_only=True),
        torch.load(inputs.architecture / index.uncompressed_weights, weights_only=True), data, config,
        StoreCheckpoints(context.store, context.uri("finetune", "checkpoint.pt")))
    save_finetuned(result.model, spec, outputs.model)
    shutil.copy(inputs.architecture / index.uncompressed_weights, outputs.model / "uncompressed.weights.pt")
    summary = result.summary(config.epochs, spec.classes, index.data)
    summary.save(outputs.model / "summary.json")
    for name in ("architecture.json", "weights.pt", "quantization.json", "summary.json"):
        context.store.put_file(context.uri("finetune", name), outputs.model / name)
    return summary.metrics()


STAGE = Stage("finetune", "quantization-aware fine-tune", FinetuneConfig, FinetuneInputs, FinetuneOutputs, run)

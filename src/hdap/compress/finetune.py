"""Quantization-aware fine-tuning of the searched architecture, distilling the uncompressed model.

The searched weights are pruned physically (`build_pruned_model`), fake quantisation at each
layer's precision is attached, activation ranges are calibrated on a few batches, and the model
trains with labels plus the uncompressed model's softened predictions, keeping the epoch (the
searched model as epoch 0) that does best on a held-out share of the training set. After every epoch a
checkpoint goes wherever `checkpoints` puts it (the object store, in the pipeline), so a failed
run resumes from its last epoch instead of starting over.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from hdap.compress.apply import activation_amax, attach_fake_quantization, build_pruned_model, calibrate, plain_state_dict
from hdap.compress.spec import ArchitectureSpec
from hdap.compress.training import _loader, accuracy_percent, labels, per_class_accuracy, predictions, train_epochs, training_device
from hdap.data import Dataset
from hdap.preprocessing import DataRecipe
from hdap.models import build_model
from hdap.stages.finetune import FinetuneConfig, FinetuneSummary, QuantizationRanges

log = logging.getLogger("hdap")


class Checkpoints(Protocol):
    def load(self) -> bytes | None: ...
    def save(self, data: bytes) -> None: ...


@dataclass
class FinetuneResult:
    model: nn.Module  # fake-quantised, trained, in eval mode
    teacher_accuracy: float
    accuracy_before: float  # pruned and quantised, before the fine-tune
    accuracy_after: float
    per_class_before: list[float]
    per_class_after: list[float]
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    kept_epoch: int = 0  # the epoch whose weights were kept (0: the searched model's), by validation accuracy
    validation_accuracy: float = 0.0  # the kept epoch's

    def summary(self, epochs: int, classes: int, data: DataRecipe) -> FinetuneSummary:
        return FinetuneSummary(self.teacher_accuracy, self.accuracy_before, self.accuracy_after, self.validation_accuracy,
                               self.resumed_from_epoch, self.kept_epoch, self.seconds, epochs, classes, data,
                               self.per_class_before, self.per_class_after)


def trained_model(name: str, input_shape: tuple[int, ...], classes: int, weights: dict[str, torch.Tensor]) -> nn.Module:
    model = build_model(name, input_shape, classes=classes)
    model.load_state_dict(weights)
    return model.eval()


def _fingerprint(spec: ArchitectureSpec, config: FinetuneConfig, *weights: dict[str, torch.Tensor]) -> str:
    """What a checkpoint must match to be resumed: the architecture, the training settings and
    the weights it started from (the searched model's and the teacher's)."""
    digest = hashlib.sha256(json.dumps({"spec": spec.to_json() | {"metrics": {}}, "config": asdict(config)}, sort_keys=True).encode())
    for state in weights:
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def quantization_aware_finetune(spec: ArchitectureSpec, searched_weights: dict[str, torch.Tensor],
                                teacher_weights: dict[str, torch.Tensor], data: Dataset, config: FinetuneConfig,
                                checkpoints: Checkpoints | None = None) -> FinetuneResult:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    shape = tuple(spec.input_shape)
    device = training_device(config.device)
    teacher = trained_model(spec.model, shape, spec.classes, teacher_weights).to(device)
    model = attach_fake_quantization(build_pruned_model(spec, searched_weights)).to(device)
    train, validation = data.train, data.validation
    calibrate(model, (batch for _, batch in zip(range(config.calibration_batches),
                                                 _loader(train, config.batch_size, True, config.seed))))
    truth = labels(data.test)
    teacher_predicted = predictions(teacher, data.test)
    before = predictions(model, data.test)

    validation_truth = labels(validation)

    def validation_accuracy() -> float:
        return accuracy_percent(predictions(model, validation), validation_truth)

    best = {"epoch": 0, "accuracy": validation_accuracy(), "model": copy.deepcopy(model.state_dict())}

    fingerprint = _fingerprint(spec, config, searched_weights, teacher_weights)
    start_epoch, resume = 0, None
    saved = checkpoints.load() if checkpoints else None
    if saved is not None:
        state = torch.load(io.BytesIO(saved), map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            start_epoch, resume, best = state["epoch"] + 1, state["training"], state["best"]
            log.info("resuming the fine-tune after epoch %d of %d from its checkpoint", start_epoch, config.epochs)
        else:
            log.info("ignoring a checkpoint of another architecture or fine-tune setting")

    def after_epoch(epoch: int, training: dict) -> None:
        accuracy = validation_accuracy()
        if accuracy > best["accuracy"]:  # strictly better: a tie keeps the earlier weights
            best.update(epoch=epoch + 1, accuracy=accuracy, model=copy.deepcopy(model.state_dict()))
        if checkpoints is None:
            return
        buffer = io.BytesIO()
        torch.save({"fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(), "training": training, "best": best}, buffer)
        checkpoints.save(buffer.getvalue())

    train_epochs(model, train, config.epochs, config, "quantization-aware fine-tune", teacher=teacher,
                 start_epoch=start_epoch, resume=resume, after_epoch=after_epoch, augment=data.augment)
    model.load_state_dict(best["model"])
    model.eval()
    after = predictions(model, data.test)
    model.to("cpu")  # what is saved and exported: tensors any machine can load
    result = FinetuneResult(model, accuracy_percent(teacher_predicted, truth), accuracy_percent(before, truth),
                            accuracy_percent(after, truth), per_class_accuracy(before, truth, data.classes),
                            per_class_accuracy(after, truth, data.classes), start_epoch, time.perf_counter() - started,
                            kept_epoch=best["epoch"], validation_accuracy=best["accuracy"])
    log.info("fine-tune: %.2f%% -> %.2f%% test accuracy (uncompressed %.2f%%) in %.0f s; kept epoch %d of %d (%.2f%% on %d "
             "validation images)", result.accuracy_before, result.accuracy_after, result.teacher_accuracy, result.seconds,
             best["epoch"], config.epochs, best["accuracy"], len(validation))
    return result


# -- the fine-tuned model on disk ---------------------------------------------------------------
def save_finetuned(model: nn.Module, spec: ArchitectureSpec, directory: str | Path) -> None:
    """architecture.json + weights.pt (plain pruned weights) + quantization.json (activation ranges):
    everything `load_finetuned` needs, nothing of the training code's state."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec.save(directory / "architecture.json")
    torch.save(plain_state_dict(model), directory / "weights.pt")
    QuantizationRanges(activation_amax(model)).save(directory / "quantization.json")


def load_finetuned(directory: str | Path, fake_quantized: bool = True) -> tuple[nn.Module, ArchitectureSpec, dict[str, float]]:
    """(model in eval mode, its spec, activation ranges); fake-quantised unless asked otherwise."""
    directory = Path(directory)
    spec = ArchitectureSpec.load(directory / "architecture.json")
    amax = QuantizationRanges.load(directory / "quantization.json").activation_amax
    model = build_pruned_model(spec)
    model.load_state_dict(torch.load(directory / "weights.pt", weights_only=True))
    if fake_quantized:
        attach_fake_quantization(model, amax)
    return model.eval(), spec, amax

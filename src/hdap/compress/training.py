"""Training loops shared by the search and the fine-tune: SGD with a cosine schedule, optional
distillation from a teacher, evaluation, and resuming from a checkpoint."""

from __future__ import annotations

import math
import os
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from hdap.progress import progress

DISTILLATION_TEMPERATURE = 4.0


class TrainingSettings(Protocol):
    batch_size: int
    learning_rate: float
    seed: int


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, cuda: bool = False) -> DataLoader:
    """Batches in a seeded order. Re-seeding `loader.generator` before each epoch repeats the order of a fresh
    loader with that seed: exactly on the CPU; a GPU's persistent workers skip the seed a fresh loader draws
    for its workers, so there the order from the second epoch on is its own (still seeded)."""
    generator = torch.Generator().manual_seed(seed)
    options = _workers(cuda)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      persistent_workers=options["num_workers"] > 0, **options)


def _workers(cuda: bool) -> dict[str, Any]:
    """For batches going to a GPU, worker processes read and normalise the next batches while it computes (into
    pinned memory, for asynchronous copies); on the CPU they would only take cores from the training itself."""
    return {"num_workers": min(4, (os.cpu_count() or 1) - 1) if cuda else 0, "pin_memory": cuda}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def training_device(device: str) -> torch.device:
    """`auto`: a GPU where one is visible; `cuda` without one is a clear error."""
    from hdap.errors import HdapError

    if device == "cuda" and not torch.cuda.is_available():
        raise HdapError("device=cuda but no CUDA device is visible here: run the step on a GPU node (hdap compile "
                        "--train-accelerator nvidia.com/gpu) or set device to auto or cpu.")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels once
        return torch.device("cuda")
    return torch.device("cpu")


def predictions(model: nn.Module, dataset, batch_size: int = 256) -> torch.Tensor:
    """The model's predicted class for every example, in order (on the CPU)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        predicted = torch.cat([model(x.to(device, non_blocking=True)).argmax(1).cpu()
                               for x, _ in DataLoader(dataset, batch_size=batch_size, **_workers(device.type == "cuda"))])
    model.train(was_training)
    return predicted


def labels(dataset) -> torch.Tensor:
    return torch.cat([y for _, y in DataLoader(dataset, batch_size=1024)])


def accuracy_percent(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    return 100.0 * float((predicted == truth).float().mean())


def evaluate(model: nn.Module, dataset, batch_size: int = 256) -> float:
    """Accuracy in percent."""
    return accuracy_percent(predictions(model, dataset, batch_size), labels(dataset))


def per_class_accuracy(predicted: torch.Tensor, truth: torch.Tensor, classes: int) -> list[float]:
    """Accuracy in percent per class (NaN for a class with no test example)."""
    return [100.0 * float((predicted[truth == c] == c).float().mean()) if bool((truth == c).any()) else float("nan")
            for c in range(classes)]


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Hinton et al.'s soft-target loss at DISTILLATION_TEMPERATURE."""
    target = torch.softmax(teacher_logits / DISTILLATION_TEMPERATURE, dim=1)
    soft = torch.log_softmax(logits / DISTILLATION_TEMPERATURE, dim=1)
    return DISTILLATION_TEMPERATURE**2 * nn.functional.kl_div(soft, target, reduction="batchmean")


def train_epochs(model: nn.Module, dataset, epochs: int, config: TrainingSettings, description: str,
                 penalty=None, architecture: list[nn.Parameter] | None = None, on_epoch=None,
                 teacher: nn.Module | None = None, arch_learning_rate: float = 0.1,
                 start_epoch: int = 0, resume: dict[str, Any] | None = None, after_epoch=None, augment: bool = False,
                 mixed_precision: bool = False) -> None:
    """SGD with a cosine schedule on the weights; Adam on the architecture parameters, if any.
    `penalty()` is added to the loss on every batch; `on_epoch(epoch)` runs before each epoch;
    with a `teacher`, the loss also distils its softened predictions (Hinton et al.).
    To resume, pass `start_epoch` and the `resume` state an earlier `after_epoch(epoch, state)` was given.
    With `augment`, every training batch is shifted and flipped (`hdap.data.datasets.augment_batch`).
    Batches go to the model's device (a GPU, when the model is on one); `mixed_precision` runs the
    forward in bfloat16 there (plain training only: fake quantisation must see float32)."""
    from hdap.data.datasets import augment_batch

    if epochs <= 0 or start_epoch >= epochs:
        return
    ours = {id(p) for p in architecture or []}
    weights = [p for p in model.parameters() if id(p) not in ours and p.requires_grad]
    optimizer = torch.optim.SGD(weights, lr=config.learning_rate, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * math.ceil(len(dataset) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    # foreach: one multi-tensor step over the dozens of small logit tensors, not a Python loop over them
    arch_optimizer = torch.optim.Adam(architecture, lr=arch_learning_rate, foreach=True) if architecture else None
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
    loss_fn = nn.CrossEntropyLoss()
    if teacher is not None:
        teacher.eval()
    model.train()
    device = model_device(model)
    loader = _loader(dataset, config.batch_size, True, config.seed, device.type == "cuda")  # one for every epoch: its workers persist
    for epoch in progress(range(start_epoch, epochs), description):
        if on_epoch:
            on_epoch(epoch)
        shifts = torch.Generator().manual_seed(config.seed + epoch + 7919)
        loader.generator.manual_seed(config.seed + epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if augment:
                x = augment_batch(x, shifts)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mixed_precision and device.type == "cuda"):
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = loss + distillation_loss(logits, teacher_logits)
            if penalty is not None:
                loss = loss + penalty()
            optimizer.zero_grad(set_to_none=True)
            if arch_optimizer:
                arch_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if arch_optimizer:
                arch_optimizer.step()
            schedule.step()
        if after_epoch:
            after_epoch(epoch, {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})

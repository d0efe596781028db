"""What a model expects of its input, and which images each reported figure was measured on.

Preprocessing belongs to the model: the checkpoint was trained on inputs scaled to [0, 1], in one
channel order, normalised with one mean and deviation, at one size. hdap takes these from the
model source (settings, or a JSON file beside the weights), uses them in every stage, and writes
them into the published model's manifest so a device preprocesses exactly as training did.
(No torch here: stage modules import it for their contracts.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hdap.errors import HdapError
from hdap.settings import Choice


class ChannelOrder(Choice):
    RGB = "rgb"
    BGR = "bgr"


class ValidationSource(Choice):
    AUTO = "auto"  # a given validation split; else, with trained weights, half the test images; else held out of training
    TRAIN = "train"  # held out of the training images (seeded, stratified)
    TEST = "test"  # half the test images (seeded, stratified); the other half reports
    GIVEN = "given"  # the dataset's own validation split (an ImageFolder `val/` tree)


@dataclass
class Preprocessing:
    """pixel -> ((pixel / 255 in `channel_order`) - mean) / std, at `input_shape` (channels, height, width)."""

    mean: list[float]
    std: list[float]
    channel_order: ChannelOrder
    input_shape: list[int]

    def describe(self) -> str:
        c, h, w = self.input_shape
        return (f"{self.channel_order.value.upper()} in [0, 1], mean {_numbers(self.mean)}, std {_numbers(self.std)}, "
                f"{c}x{h}x{w}")


def _numbers(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass
class DataRecipe:
    """How the images were prepared and split: what the fine-tune and build repeat."""

    preprocessing: Preprocessing
    validation: ValidationSource  # where the validation split came from (never AUTO once resolved)
    train_images: int = 0  # a seeded, stratified subset of the training split the search and fine-tune train on; 0: all


def preprocessing_beside(path: Path, shown_as: str) -> dict:
    """Preprocessing stored beside a checkpoint: `<weights>.json` with mean, std and optionally
    channel_order ({} when there is none)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HdapError(f"{shown_as} is not JSON ({err}): write it as {{\"mean\": [...], \"std\": [...]}}.") from None
    if not isinstance(data, dict) or set(data) - {"mean", "std", "channel_order"}:
        raise HdapError(f"{shown_as} must be an object with mean, std and optionally channel_order, like "
                        "{\"mean\": [0.485, 0.456, 0.406], \"std\": [0.229, 0.224, 0.225]}.")
    return data

"""A model someone else trained: zoo, torchvision and factory models, and their weights read safely."""

from __future__ import annotations

import logging
import pickle
import sys

import pytest
import torch
from torch import nn

from hdap.compress.search import warn_if_near_chance
from hdap.compress.space import build_search_space
from hdap.errors import HdapError
from hdap.models import build_model
from hdap.models.weights import load_trained_weights, read_state_dict

CIFAR = (3, 32, 32)


def test_a_nested_dataparallel_checkpoint_saved_from_cuda_loads_on_the_cpu(tmp_path, monkeypatch) -> None:
    """The shared checkpoints' form: {"state_dict": {"module.conv1.weight": <cuda tensor>, ...}, "best_prec1": ...}.
    Saving from CUDA needs a GPU, so the tensors' storage location is rewritten to cuda:0 on save."""
    model = build_model("resnet20-a", CIFAR)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "resnet20.th"
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"state_dict": state, "best_prec1": 91.7}, path)
    monkeypatch.undo()
    with pytest.raises(RuntimeError):  # what a plain torch.load does on a machine without CUDA
        torch.load(path, weights_only=True)
    loaded = read_state_dict(path)
    assert set(loaded) == set(model.state_dict()) and all(v.device.type == "cpu" for v in loaded.values())
    fresh = build_model("resnet20-a", CIFAR)
    load_trained_weights(fresh, loaded, "resnet20-a", str(path))
    assert torch.equal(fresh.linear.weight, model.linear.weight)


def test_safetensors_weights_load(tmp_path) -> None:
    from safetensors.torch import save_file

    model = build_model("small-cnn", CIFAR)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    assert torch.equal(read_state_dict(tmp_path / "model.safetensors")["13.weight"], model.state_dict()["13.weight"])


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_needs_code_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    with open(path, "wb") as file:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Payload(marker)}, file, pickle_module=pickle)
    with pytest.raises(HdapError, match=r"needs code to load, which hdap does not run .*re-save its weights as a plain state dict"):
        read_state_dict(path, "s3://models/model.pt")
    assert not marker.exists()


def test_weights_that_do_not_fit_name_the_first_keys_and_shapes(tmp_path) -> None:
    model = build_model("resnet20-a", CIFAR)
    state = model.state_dict()
    state["linear.weight"] = torch.zeros(100, 64)
    del state["conv1.weight"]
    state["fc.extra"] = torch.zeros(1)
    with pytest.raises(HdapError, match=r"do not fit model resnet20-a \(missing conv1.weight; unexpected fc.extra; different "
                                        r"shapes: linear.weight \[100, 64\] \(the model's \[10, 64\]\)\)"):
        load_trained_weights(build_model("resnet20-a", CIFAR), state, "resnet20-a", "s3://m/w.pt")
    with pytest.raises(HdapError, match="holds no state dict"):
        torch.save([1, 2, 3], tmp_path / "list.pt")
        read_state_dict(tmp_path / "list.pt")


def test_a_factory_model_loads_and_a_layer_the_search_cannot_handle_is_named(tmp_path, monkeypatch) -> None:
    (tmp_path / "user_models.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def good(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n"
        "def with_lstm():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(1, 2), nn.LSTM(30, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("user_models:good", CIFAR, classes=7)
    assert model[-1].out_features == 7
    assert build_search_space(model, CIFAR, ("fp16",)).groups
    with pytest.raises(HdapError, match=r"layer 2 \(LSTM\) is not supported by the search"):
        build_search_space(build_model("user_models:with_lstm", CIFAR), CIFAR, ("fp16",))
    with pytest.raises(HdapError, match="cannot import no_such_package for model no_such_package:net"):
        build_model("no_such_package:net", CIFAR)
    assert isinstance(build_model("torchvision:resnet18", CIFAR, classes=5).fc, nn.Linear)
    sys.modules.pop("user_models", None)


def test_a_baseline_near_chance_warns_about_preprocessing_and_label_order(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="hdap"):
        warn_if_near_chance(10.4, 10, "resnet56-a")
    assert "near chance" in caplog.text and "preprocessing" in caplog.text and "label order" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hdap"):
        warn_if_near_chance(91.7, 10, "resnet56-a")
    assert not caplog.text

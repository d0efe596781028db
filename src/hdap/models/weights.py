"""A user's trained weights, read without running any code they might carry.

A `.pt`/`.pth`/`.th` file is read with `torch.load(weights_only=True)` (tensors and plain
containers only) onto the CPU, whatever device saved it; a `.safetensors` file holds tensors
only. A checkpoint that wraps its weights (`{"state_dict": ...}`, `{"model": ...}`) or was saved
from `nn.DataParallel` (every key `module.`-prefixed) is unwrapped.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from hdap.errors import HdapError

WRAPPING_KEYS = ("state_dict", "model_state_dict", "model")
RESAVE = ("re-save its weights as a plain state dict (`torch.save(model.state_dict(), path)`) or as safetensors "
          "(`safetensors.torch.save_file(model.state_dict(), path)`)")


def read_state_dict(path: Path, shown_as: str = "") -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint at `path`, keyed as the model names its parameters and buffers."""
    shown_as = shown_as or str(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise HdapError(f"{shown_as} is not a readable safetensors file ({err}).") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            what = str(err).splitlines()[0] if str(err) else "an object other than tensors"
            raise HdapError(f"{shown_as} needs code to load, which hdap does not run ({what[:160]}): {RESAVE}.") from None
        except (RuntimeError, EOFError, OSError) as err:
            raise HdapError(f"{shown_as} is not a PyTorch checkpoint hdap can read ({str(err)[:160]}): {RESAVE}.") from None
    return _unwrap(state, shown_as)


def _unwrap(state: object, shown_as: str) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in WRAPPING_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HdapError(f"{shown_as} holds no state dict (a mapping of parameter names to tensors, at its top or under "
                        f"{'/'.join(WRAPPING_KEYS)}): {RESAVE}.")
    if all(key.startswith("module.") for key in state):  # saved from nn.DataParallel / DistributedDataParallel
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_trained_weights(model: nn.Module, state: dict[str, torch.Tensor], model_name: str, shown_as: str) -> None:
    """Load `state` into `model` exactly: every key present, none extra, every shape equal, or one
    sentence naming the first few that differ."""
    own = model.state_dict()
    # Checkpoints from before PyTorch 0.4.1 have no batch-norm step counters: they only count.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} (the model's {list(v.shape)})" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shapes:", shapes)) if keys]
        raise HdapError(f"the weights in {shown_as} do not fit model {model_name} ({'; '.join(parts)}): give the model "
                        "they were trained as (and the dataset's number of classes).")
    model.load_state_dict(state, strict=True)

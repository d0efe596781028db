"""Models hdap does not define: torchvision's by name, or the user's own factory function.

    torchvision:resnet18              torchvision.models.get_model("resnet18", weights=None, num_classes=...)
    my_models.cifar:build_net         my_models.cifar.build_net(num_classes=...) (or classes=..., or nothing)

A factory is code the user installs in the step image (or has on the path locally); hdap imports
and calls it, and never anything named by data. It is called with the dataset's number of
classes where its signature takes `num_classes` or `classes`; the weights are loaded afterwards.
"""

from __future__ import annotations

import importlib
import inspect
import re

from torch import nn

from hdap.errors import HdapError

FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def factory_model(name: str, classes: int) -> nn.Module:
    module_name, function_name = name.split(":", 1)
    if module_name == "torchvision":
        from torchvision import models

        try:
            return models.get_model(function_name, weights=None, num_classes=classes)
        except ValueError:
            raise HdapError(f"torchvision has no model '{function_name}': see torchvision.models.list_models().") from None
    if not FACTORY.match(name):
        raise HdapError(f"model '{name}' is not a factory: write it as package.module:function.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise HdapError(f"cannot import {module_name} for model {name} ({err}): install the package that defines it in the "
                        "step's image (or put it on PYTHONPATH locally).") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise HdapError(f"{module_name} has no function {function_name} (model {name}).")
    parameters = _parameters(factory)
    keyword = next((k for k in ("num_classes", "classes") if k in parameters), None)
    model = factory(**({keyword: classes} if keyword else {}))
    if not isinstance(model, nn.Module):
        raise HdapError(f"{name} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _parameters(factory) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()

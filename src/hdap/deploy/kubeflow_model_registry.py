"""A published model registered in the Kubeflow Model Registry: the model, one version per publish, its ONNX artifact.

`register_model` (the `model-registry` client) with the registry entry's S3 URI, `model_format_name="onnx"`
and the entry's figures and lineage as the version's metadata, so KServe (or anything that reads the
Model Registry) finds the model where devices fetch it. The object-store registry stays the source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlparse

from hdap.errors import HdapError

log = logging.getLogger("hdap")


@dataclass(frozen=True)
class ModelRegistryEntry:
    model_id: str
    version: str


def register_in_model_registry(address: str, model_name: str, version: str, uri: str, description: str,
                               metadata: dict[str, str | int | float | bool]) -> ModelRegistryEntry:
    """Register `version` of `model_name` at `uri` (the ONNX model's folder); one sentence if the server refuses."""
    try:
        from model_registry import ModelRegistry
    except ImportError:
        raise HdapError("build_model_registry_uri is set but the model-registry client is not installed in this step's "
                        "image: install hdap[model-registry].") from None
    parsed = urlparse(address if "://" in address else f"http://{address}")
    secure = parsed.scheme == "https"
    port = parsed.port or (443 if secure else 8080)
    try:
        registry = ModelRegistry(f"{parsed.scheme}://{parsed.hostname}", port, author="hdap", is_secure=secure)
        model = registry.register_model(model_name, uri, model_format_name="onnx", model_format_version="1", version=version,
                                        version_description=description, metadata=metadata)
    except Exception as err:  # the client raises its own, aiohttp's and asyncio's errors alike
        raise HdapError(f"the Kubeflow Model Registry at {address} did not register {model_name} {version}: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    log.info("registered %s version %s in the Kubeflow Model Registry at %s", model_name, version, address)
    return ModelRegistryEntry(str(model.id), version)

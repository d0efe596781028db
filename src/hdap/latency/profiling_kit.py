"""What a device needs to profile a model without the model's code: its layers and whole variants.

A gateway runs ONNX Runtime, not torch. A workstation with hdap's pipeline writes the kit once
(`hdap profile-kit`): the model's prunable layers as the surrogate sees them, and eighteen whole
variants of it as ONNX graphs with their layers (`hdap.latency.model_variants`). Devices read it
(`hdap profile --kit-uri`) and time it with ONNX Runtime and numpy alone.

    <kit_uri>/kit.json             format, model, input shape, precisions, layers, each variant's file and layers
    <kit_uri>/variant-00.onnx ...  the variants, as the build exports a model
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import onnx

from hdap.errors import HdapError
from hdap.fleet.sku import QdqPlacement
from hdap.latency.layers import LayerConfig, LayerShape
from hdap.store import join_uri

if TYPE_CHECKING:
    from hdap.store import ObjectStore

KIT_FORMAT = "hdap-profiling-kit/1"


@dataclass
class ProfilingKit:
    model: str
    input_shape: tuple[int, ...]
    precisions: tuple[str, ...]  # of the variants: the backend's menu when the kit was written
    layers: list[LayerShape]
    variants: list[tuple[onnx.ModelProto, list[LayerConfig]]]


def build_kit(model: str, input_shape: tuple[int, ...], precisions: tuple[str, ...], variant_count: int,
              placement: QdqPlacement = QdqPlacement.ONNXRUNTIME) -> ProfilingKit:
    """The kit of `model` (needs torch: the model is built and exported here, int8 written for `placement`)."""
    from hdap.latency.model_variants import model_variants
    from hdap.models import build_model, prunable_layers

    layers = prunable_layers(build_model(model, input_shape), input_shape)
    variants = model_variants(model, input_shape, precisions, variant_count, placement=placement) if variant_count else []
    return ProfilingKit(model, tuple(input_shape), tuple(precisions), layers, variants)


def write_kit(store: ObjectStore, uri: str, kit: ProfilingKit) -> str:
    """Upload the kit under `uri`; the index (kit.json) last, so a half-written kit is never read."""
    files = []
    for index, (graph, layers) in enumerate(kit.variants):
        name = f"variant-{index:02d}.onnx"
        store.put_bytes(join_uri(uri, name), graph.SerializeToString())
        files.append({"file": name, "layers": [layer.as_dict() for layer in layers]})
    index_uri = join_uri(uri, "kit.json")
    store.put_json(index_uri, {"format": KIT_FORMAT, "model": kit.model, "input_shape": list(kit.input_shape),
                               "precisions": list(kit.precisions), "layers": [asdict(layer) for layer in kit.layers],
                               "variants": files})
    return index_uri


def read_kit(store: ObjectStore, uri: str) -> ProfilingKit:
    """The kit under `uri`, checked: an unknown format or a missing file is one sentence."""
    index_uri = join_uri(uri, "kit.json")
    if not store.exists(index_uri):
        raise HdapError(f"there is no profiling kit at {uri} (no kit.json): write one with `hdap profile-kit --kit-uri {uri}` "
                        "on a machine with hdap's pipeline installed.")
    index = store.get_json(index_uri)
    if not isinstance(index, dict) or index.get("format") != KIT_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise HdapError(f"{index_uri} is not a profiling kit this hdap reads (format {found!r}, expected {KIT_FORMAT}): "
                        "write it again with this version's `hdap profile-kit`.")
    try:
        layers = [LayerShape(**layer) for layer in index["layers"]]
        variants = []
        for variant in index["variants"]:
            graph = onnx.load_from_string(store.get_bytes(join_uri(uri, variant["file"])))
            variants.append((graph, [LayerConfig(**layer) for layer in variant["layers"]]))
    except (KeyError, TypeError, ValueError) as err:
        raise HdapError(f"the profiling kit at {uri} is damaged ({type(err).__name__}: {err}): write it again with "
                        "`hdap profile-kit`.") from None
    return ProfilingKit(index["model"], tuple(index["input_shape"]), tuple(index["precisions"]), layers, variants)

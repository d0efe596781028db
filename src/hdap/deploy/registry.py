"""The model registry in the object store: `s3://<registry>/<model>/<version>/`, where devices fetch models.

An entry holds the ONNX graph, any engines, the architecture spec and `manifest.json` (sha256
of every file, metrics, per-cluster latency, the pipeline run that made it). The manifest is
written last, so an entry without one is incomplete and `latest` never points at it. Versions
are never overwritten: publishing the same files again (a retried step) is a no-op, other files
under a published version are refused. A quality gate runs before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hdap.errors import HdapError
from hdap.store import ObjectStore, join_uri

log = logging.getLogger("hdap")
MANIFEST_FORMAT = "hdap.registry/1"


@dataclass(frozen=True)
class QualityGate:
    tolerance: float  # accuracy points the published model may lose against the uncompressed one

    def check(self, accuracy: float, baseline_accuracy: float) -> tuple[bool, str]:
        """(passed, one sentence saying why)."""
        lost = baseline_accuracy - accuracy
        if lost <= self.tolerance + 1e-9:
            return True, (f"accuracy {accuracy:.2f}% is within {self.tolerance:g} points of the uncompressed "
                          f"model's {baseline_accuracy:.2f}%")
        return False, (f"accuracy {accuracy:.2f}% lost {lost:.2f} points against the uncompressed model's "
                       f"{baseline_accuracy:.2f}%, more than the {self.tolerance:g} allowed: nothing was published; "
                       "search with more accuracy headroom (a higher cost target), fine-tune longer, or raise the tolerance")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def registry_name(model: str) -> str:
    """The model's folder in the registry: a factory's `package.module:function` without the colon."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model)


def entry_uri(registry_uri: str, model: str, version: str) -> str:
    return join_uri(registry_uri, registry_name(model), version)


def publish(store: ObjectStore, registry_uri: str, model: str, version: str, files: dict[str, Path], metadata: dict) -> str:
    """Upload `files` (name in the entry -> local path) and then their manifest; return the entry's URI."""
    uri = entry_uri(registry_uri, model, version)
    entries = {name: {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size} for name, path in files.items()}
    manifest_uri = join_uri(uri, "manifest.json")
    if store.exists(manifest_uri):
        if store.get_json(manifest_uri)["files"] != entries:
            raise HdapError(f"the registry already holds other files as {model} version {version} at {uri}: versions are never "
                            "overwritten; publish under a new version (a new run name).")
        log.info("%s version %s is already published with these files (a retried step)", model, version)
    else:
        for name, path in files.items():
            store.put_file(join_uri(uri, name), path)
        manifest = {"format": MANIFEST_FORMAT, "model": model, "version": version,
                    "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": entries,
                    **_finite_json(metadata)}
        store.put_json(manifest_uri, manifest)
        log.info("published %s version %s to %s (%d files)", model, version, uri, len(files))
    _advance_latest(store, registry_uri, model, version, manifest_uri)
    return uri


def _advance_latest(store: ObjectStore, registry_uri: str, model: str, version: str, manifest_uri: str) -> None:
    """Point latest.json at this version unless a version published later holds it already."""
    latest_uri = join_uri(registry_uri, registry_name(model), "latest.json")
    published_at = store.get_json(manifest_uri)["published_at"]
    if store.exists(latest_uri):
        current = store.get_json(latest_uri)
        if current.get("published_at", "") > published_at:
            return
    store.put_json(latest_uri, {"version": version, "manifest": manifest_uri, "published_at": published_at})


def _finite_json(value):
    """NaN and infinities become null: device clients parse the manifest as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def publish_if_accepted(store: ObjectStore, gate: QualityGate, accuracy: float, baseline_accuracy: float, registry_uri: str,
                        model: str, version: str, files: dict[str, Path], metadata: dict) -> tuple[str | None, str]:
    """(the entry's URI, or None when the gate refused the model; the gate's sentence). A refused
    model writes nothing to the registry."""
    passed, message = gate.check(accuracy, baseline_accuracy)
    if not passed:
        log.warning("quality gate: %s", message)
        return None, message
    return publish(store, registry_uri, model, version, files, metadata | {"gate": message}), message


def verify_entry(store: ObjectStore, uri: str) -> dict:
    """The entry's manifest, after checking every file it lists against its sha256."""
    manifest = store.get_json(join_uri(uri, "manifest.json"))
    for name, entry in manifest["files"].items():
        if hashlib.sha256(store.get_bytes(join_uri(uri, name))).hexdigest() != entry["sha256"]:
            raise HdapError(f"{join_uri(uri, name)} does not match its manifest's sha256: the entry is corrupt; publish it again.")
    return manifest


def load_published_model(store: ObjectStore, uri: str, fake_quantized: bool = True):
    """A registry entry back in PyTorch: (model in eval mode, its preprocessing). Every file is checked
    against the manifest first; the weights are read with weights_only. `fake_quantized=False` gives
    the plain pruned model (float weights, no Q/DQ rounding)."""
    import tempfile

    from hdap.artifacts import _decode_dataclass
    from hdap.compress.finetune import load_finetuned
    from hdap.preprocessing import Preprocessing

    manifest = verify_entry(store, uri)
    with tempfile.TemporaryDirectory(prefix="hdap-entry-") as folder:
        for name in ("architecture.json", "weights.pt", "quantization.json"):
            store.get_file(join_uri(uri, name), Path(folder) / name)
        model, _, _ = load_finetuned(folder, fake_quantized=fake_quantized)
    return model, _decode_dataclass(Preprocessing, manifest["preprocessing"], f"{uri}/manifest.json: preprocessing")


def entry_tags(manifest: dict, manifest_uri: str) -> dict[str, str]:
    """What leads from a catalogue's version (MLflow, the Kubeflow Model Registry) back to the entry: the
    pipeline run, the manifest's URI, each file's sha256, the fleet's clusters."""
    tags = {"hdap.run": manifest["version"], "hdap.entry": manifest_uri,
            "hdap.fleet_clusters": json.dumps([{"cluster": c["cluster"], "weight": round(c["weight"], 4),
                                                "predicted_ms": c["predicted_after_ms"]} for c in manifest.get("clusters", [])])}
    tags |= {f"hdap.sha256.{name}": entry["sha256"] for name, entry in manifest["files"].items()}
    return tags

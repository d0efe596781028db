"""The model registry in the object store: `s3://<registry>/<model>/<version>/`, where devices fetch models.

An entry holds the ONNX graph, any engines, the architecture spec and `manifest.json` (sha256
of every file, metrics, per-cluster latency, the pipeline run that made it). The manifest is
written last, so an entry without one is incomplete and `latest` never points at it. Versions
are never overwritten: publishing the same files again (a retried step) is a no-op, other files
under a published version are refused. A quality gate runs before anything is written.

Integrity: every object of an entry carries the sha256 it was written with, and is refused without
one; the manifest lists every file's sha256 and is signed (`hdap.deploy.signing`), so an entry
rewritten by anyone without the private key fails `check_entry`. An entry is checked before it is
reported published, and before a model is loaded from it. `kserve/<model>/1/model.onnx` repeats
the ONNX graph in Triton's model-repository layout: KServe's `storageUri` is `<entry>/kserve`.
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
from typing import TYPE_CHECKING

from hdap.deploy.signing import (SIGNATURE_NAME, EntryCheck, EntryState, check_signature, key_id, public_key_pem, sign,
                                 trusted_keys)
from hdap.errors import HdapError
from hdap.store import ObjectStore, join_uri

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

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


def kserve_name(model: str) -> str:
    """The entry's ONNX graph in Triton's layout (`<storageUri>/<model>/<numeric version>/model.onnx`), for KServe."""
    return f"kserve/{registry_name(model)}/1/model.onnx"


def publish(store: ObjectStore, registry_uri: str, model: str, version: str, files: dict[str, Path], metadata: dict,
            signing_key: Ed25519PrivateKey | None = None) -> str:
    """Upload `files` (name in the entry -> local path), the manifest's signature and then the manifest;
    check the entry as a device would; return its URI."""
    uri = entry_uri(registry_uri, model, version)
    if "model.onnx" in files:
        files = files | {kserve_name(model): files["model.onnx"]}
    entries = {name: {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size} for name, path in files.items()}
    manifest_uri = join_uri(uri, "manifest.json")
    if store.exists(manifest_uri):
        if store.get_json(manifest_uri, require_checksum=True)["files"] != entries:
            raise HdapError(f"the registry already holds other files as {model} version {version} at {uri}: versions are never "
                            "overwritten; publish under a new version (a new run name).")
        log.info("%s version %s is already published with these files (a retried step)", model, version)
    else:
        for name, path in files.items():
            store.put_file(join_uri(uri, name), path)
        manifest = {"format": MANIFEST_FORMAT, "model": model, "version": version,
                    "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": entries,
                    **_finite_json(metadata)}
        manifest_bytes = json.dumps(manifest, indent=2).encode()
        if signing_key is not None:  # before the manifest: an entry is never complete and unsigned
            store.put_bytes(join_uri(uri, SIGNATURE_NAME), sign(manifest_bytes, signing_key), "application/json")
            _publish_public_key(store, registry_uri, signing_key)
        store.put_bytes(manifest_uri, manifest_bytes, "application/json")
        log.info("published %s version %s to %s (%d files)", model, version, uri, len(files))
    check, _ = check_entry(store, uri, [signing_key.public_key()] if signing_key else [])
    if check.state is EntryState.INVALID:
        raise HdapError(f"the entry just published at {uri} does not verify ({check.reason}): something else writes to "
                        "the registry; find it before publishing again.")
    _advance_latest(store, registry_uri, model, version, manifest_uri)
    return uri


def _publish_public_key(store: ObjectStore, registry_uri: str, key: Ed25519PrivateKey) -> None:
    """`<registry>/keys/<key id>.pem`: where devices are provisioned from (they pin it; the store can be rewritten)."""
    uri = join_uri(registry_uri, "keys", f"{key_id(key.public_key())}.pem")
    if not store.exists(uri):
        store.put_bytes(uri, public_key_pem(key), "application/x-pem-file")


def _advance_latest(store: ObjectStore, registry_uri: str, model: str, version: str, manifest_uri: str) -> None:
    """Point latest.json at this version unless a version published later holds it already."""
    latest_uri = join_uri(registry_uri, registry_name(model), "latest.json")
    published_at = store.get_json(manifest_uri, require_checksum=True)["published_at"]
    if store.exists(latest_uri):
        current = store.get_json(latest_uri, require_checksum=True)
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
                        model: str, version: str, files: dict[str, Path], metadata: dict,
                        signing_key: Ed25519PrivateKey | None = None) -> tuple[str | None, str]:
    """(the entry's URI, or None when the gate refused the model; the gate's sentence). A refused
    model writes nothing to the registry."""
    passed, message = gate.check(accuracy, baseline_accuracy)
    if not passed:
        log.warning("quality gate: %s", message)
        return None, message
    return publish(store, registry_uri, model, version, files, metadata | {"gate": message}, signing_key), message


def check_entry(store: ObjectStore, uri: str, trusted: list[Ed25519PublicKey]) -> tuple[EntryCheck, dict | None]:
    """(VALID, UNSIGNED or INVALID and why; the manifest, None where it could not be read): every file
    against the manifest's sha256, every object against the sha256 it was written with, the manifest
    against its signature by one of the `trusted` keys."""
    manifest_uri = join_uri(uri, "manifest.json")
    if not store.exists(manifest_uri):
        raise HdapError(f"{uri} is not a registry entry (it has no manifest.json): give s3://<registry>/<model>/<version>.")
    try:
        manifest_bytes = store.get_bytes(manifest_uri, require_checksum=True)
        manifest = json.loads(manifest_bytes)
        for name, entry in manifest["files"].items():
            if hashlib.sha256(store.get_bytes(join_uri(uri, name), require_checksum=True)).hexdigest() != entry["sha256"]:
                return EntryCheck(EntryState.INVALID, f"{name} does not match its manifest's sha256"), manifest
        signature_uri = join_uri(uri, SIGNATURE_NAME)
        signature = store.get_bytes(signature_uri, require_checksum=True) if store.exists(signature_uri) else None
    except HdapError as err:
        return EntryCheck(EntryState.INVALID, str(err).rstrip(".")), None
    except (ValueError, KeyError, TypeError, AttributeError):
        return EntryCheck(EntryState.INVALID, "its manifest.json is not an hdap manifest"), None
    return check_signature(manifest_bytes, signature, trusted), manifest


def verify_entry(store: ObjectStore, uri: str, trusted: list[Ed25519PublicKey] | None = None) -> dict:
    """The entry's manifest, once every file matches it and its signature matches a trusted key (by
    default `trusted_keys()`); refused otherwise. An unsigned entry is accepted with a warning."""
    check, manifest = check_entry(store, uri, trusted_keys() if trusted is None else trusted)
    if check.state is EntryState.INVALID:
        raise HdapError(f"the registry entry {uri} does not verify: {check.reason}.")
    if check.state is EntryState.UNSIGNED:
        log.warning("registry entry %s: %s", uri, check.reason)
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
            store.get_file(join_uri(uri, name), Path(folder) / name, require_checksum=True)
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

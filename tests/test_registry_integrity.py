"""Issue 19, finding 8: a registry entry is checked on every load, signed, and verifiable by devices.

On commit 8e462de an object re-written without hdap's sha256 was returned unchecked and a manifest
rewritten to match replaced files passed `verify_entry`; nothing signed the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import pytest

from hdap.deploy.registry import check_entry, kserve_name, publish, verify_entry
from hdap.deploy.signing import EntryState, new_private_key_pem, private_key_from_pem, public_key_pem
from hdap.errors import HdapError


@pytest.fixture
def files(tmp_path):
    for name, text in (("model.onnx", b"onnx bytes"), ("architecture.json", b"{}")):
        (tmp_path / name).write_bytes(text)
    return {"model.onnx": tmp_path / "model.onnx", "architecture.json": tmp_path / "architecture.json"}


@pytest.fixture
def key():
    return private_key_from_pem(new_private_key_pem(), "test")


def _raw_put(object_store, uri: str, data: bytes) -> None:
    """A write that bypasses hdap (no sha256 metadata), as any S3 client with the credentials could make."""
    bucket, _, name = uri.removeprefix("s3://").partition("/")
    object_store.client.put_object(bucket, name, io.BytesIO(data), len(data))


def test_a_signed_entry_is_valid_and_a_manifest_rewritten_with_matching_sha256s_is_invalid(object_store, bucket, files, key) -> None:
    registry = f"s3://{bucket}/registry"
    uri = publish(object_store, registry, "resnet20", "r1", files, {"accuracy": 98.0}, key)
    check, manifest = check_entry(object_store, uri, [key.public_key()])
    assert check.state is EntryState.VALID and set(manifest["files"]) == {"model.onnx", "architecture.json", kserve_name("resnet20")}
    assert object_store.exists(f"{registry}/keys/{check.key_id}.pem")  # devices are provisioned from it
    # Someone with store credentials swaps the model and writes a manifest whose sha256s match (hdap's own writer).
    evil = b"evil onnx"
    object_store.put_bytes(f"{uri}/model.onnx", evil)
    manifest["files"]["model.onnx"]["sha256"] = hashlib.sha256(evil).hexdigest()
    object_store.put_bytes(f"{uri}/manifest.json", json.dumps(manifest, indent=2).encode())
    check, _ = check_entry(object_store, uri, [key.public_key()])
    assert check.state is EntryState.INVALID and "changed after it was signed" in check.reason
    with pytest.raises(HdapError, match="does not verify"):
        verify_entry(object_store, uri, [key.public_key()])


def test_an_object_rewritten_without_its_sha256_is_refused(object_store, bucket, files, key) -> None:
    uri = publish(object_store, f"s3://{bucket}/registry", "resnet20", "r1", files, {}, key)
    _raw_put(object_store, f"{uri}/model.onnx", b"onnx bytes")  # the same bytes, but nothing recorded with them
    check, _ = check_entry(object_store, uri, [key.public_key()])
    assert check.state is EntryState.INVALID and "sha256" in check.reason
    _raw_put(object_store, f"{uri}/architecture.json", b"{}")
    with pytest.raises(HdapError):
        object_store.get_bytes(f"{uri}/architecture.json", require_checksum=True)


def test_an_unsigned_entry_verifies_as_unsigned_never_as_valid(object_store, bucket, files, key) -> None:
    uri = publish(object_store, f"s3://{bucket}/registry", "resnet20", "old", files, {})
    check, _ = check_entry(object_store, uri, [key.public_key()])
    assert check.state is EntryState.UNSIGNED and "no signature" in check.reason
    assert verify_entry(object_store, uri, [key.public_key()])["version"] == "old"  # loadable, with a warning


def test_a_published_entry_holds_its_onnx_in_triton_s_layout_for_kserve(object_store, bucket, files) -> None:
    uri = publish(object_store, f"s3://{bucket}/registry", "resnet20", "r1", files, {})
    served = object_store.get_bytes(f"{uri}/kserve/resnet20/1/model.onnx", require_checksum=True)
    assert served == object_store.get_bytes(f"{uri}/model.onnx")


def _verify(store_env, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdap.cli", "registry", "verify", *arguments], capture_output=True, text=True,
                          timeout=120)


def test_hdap_registry_verify_says_valid_unsigned_or_invalid_with_its_exit_code(store_env, object_store, bucket, files, key,
                                                                                tmp_path) -> None:
    registry = f"s3://{bucket}/registry"
    signed = publish(object_store, registry, "resnet20", "r1", files, {}, key)
    unsigned = publish(object_store, registry, "resnet20", "r0", files, {})
    public = tmp_path / "key.pub.pem"
    public.write_bytes(public_key_pem(key))
    other = tmp_path / "other.pub.pem"
    other.write_bytes(public_key_pem(private_key_from_pem(new_private_key_pem(), "other")))

    done = _verify(store_env, signed, "--public-key", str(public))
    assert done.returncode == 0 and done.stdout.startswith("valid:"), done.stdout + done.stderr
    done = _verify(store_env, f"{registry}/resnet20", "--public-key", str(public))  # the model's latest: r0, published last
    assert done.returncode == 2 and "/r0" in done.stdout
    done = _verify(store_env, unsigned, "--public-key", str(public))
    assert done.returncode == 2 and done.stdout.startswith("unsigned:")
    done = _verify(store_env, signed, "--public-key", str(other))
    assert done.returncode == 1 and done.stdout.startswith("invalid:") and "not a trusted key" in done.stdout
    _raw_put(object_store, f"{signed}/manifest.json", b"{}")
    done = _verify(store_env, signed, "--public-key", str(public))
    assert done.returncode == 1 and "Traceback" not in done.stderr


def test_hdap_registry_keygen_writes_an_owner_only_key_pair_and_never_overwrites_one(tmp_path) -> None:
    from hdap.deploy.signing import private_key_from_pem, public_key_from_pem

    output = tmp_path / "hdap-signing.pem"
    done = subprocess.run([sys.executable, "-m", "hdap.cli", "registry", "keygen", "--output", str(output)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "create secret generic hdap-signing" in " ".join(done.stdout.split())
    assert output.stat().st_mode & 0o777 == 0o600
    key = private_key_from_pem(output.read_bytes(), str(output))
    public = public_key_from_pem((tmp_path / "hdap-signing.pub.pem").read_bytes(), "public")
    public.verify(key.sign(b"manifest"), b"manifest")  # the pair belongs together (raises otherwise)
    again = subprocess.run([sys.executable, "-m", "hdap.cli", "registry", "keygen", "--output", str(output)], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 1 and "does not overwrite a key" in " ".join(again.stderr.split())
    assert private_key_from_pem(output.read_bytes(), str(output)).public_key() == key.public_key()

"""Signed registry manifests: Ed25519, so a device holding only the public key can check an entry
but cannot forge one.

Anyone who can write to the store can rewrite `manifest.json` and the files it lists; the sha256s
in a manifest prove nothing by themselves. The build step signs the manifest's exact bytes with a
private key it reads from `HDAP_SIGNING_KEY` (PEM; on Kubeflow from the `hdap-signing` Secret,
on a laptop from `.hdap/signing/ed25519.pem`, created on first use), and writes the signature as
`manifest.json.sig` before the manifest itself. Devices verify with the public key, pinned when
they are provisioned (`hdap registry verify --public-key`). An entry published before signing, or
by a deployment without a key, verifies as UNSIGNED, never as VALID.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hdap.config import home_dir, write_private
from hdap.errors import HdapError

SIGNATURE_FORMAT = "hdap.signature/1"
SIGNING_KEY_ENV = "HDAP_SIGNING_KEY"
PUBLIC_KEY_ENV = "HDAP_SIGNING_PUBLIC_KEY"  # a PEM file: the key entries are checked against
SIGNATURE_NAME = "manifest.json.sig"  # beside manifest.json in the entry


class EntryState(str, Enum):
    VALID = "valid"  # the files match the manifest, and the manifest's signature matches a trusted key
    UNSIGNED = "unsigned"  # the files match the manifest, but nothing proves who wrote the manifest
    INVALID = "invalid"  # a file, the manifest or its signature does not match


@dataclass(frozen=True)
class EntryCheck:
    state: EntryState
    reason: str  # one sentence
    key_id: str = ""


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_private_key_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def private_key_from_pem(text: str | bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(text.encode() if isinstance(text, str) else text, password=None)
    except (ValueError, TypeError) as err:
        raise HdapError(f"the signing key in {where} is not an unencrypted PEM private key ({err}): "
                        "make one with `hdap registry keygen`.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise HdapError(f"the signing key in {where} is not an Ed25519 key: make one with `hdap registry keygen`.")
    return key


def public_key_from_pem(text: str | bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(text.encode() if isinstance(text, str) else text)
    except (ValueError, TypeError) as err:
        raise HdapError(f"{where} is not a PEM public key ({err}): use the .pem that `hdap registry keygen` wrote.") from None
    if not isinstance(key, Ed25519PublicKey):
        raise HdapError(f"{where} is not an Ed25519 public key: use the .pem that `hdap registry keygen` wrote.")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def signing_key_from_environment() -> Ed25519PrivateKey | None:
    """The build step's signing key, if the deployment gave it one."""
    text = os.environ.get(SIGNING_KEY_ENV, "").strip()
    return private_key_from_pem(text, SIGNING_KEY_ENV) if text else None


def local_key_folder() -> Path:
    return home_dir() / "signing"


def trusted_keys(files: list[Path] = ()) -> list[Ed25519PublicKey]:
    """The keys an entry may be signed by: the given files, else HDAP_SIGNING_PUBLIC_KEY's file, the public half
    of HDAP_SIGNING_KEY and of this machine's own signing key (local runs sign with it)."""
    if files:
        return [public_key_from_pem(_read(Path(f)), str(f)) for f in files]
    keys = [public_key_from_pem(_read(Path(os.environ[PUBLIC_KEY_ENV])), PUBLIC_KEY_ENV)] if os.environ.get(PUBLIC_KEY_ENV) else []
    own = signing_key_from_environment()
    local = local_key_folder() / "ed25519.pem"
    if own is None and local.is_file():
        own = private_key_from_pem(local.read_bytes(), str(local))
    return keys + ([own.public_key()] if own is not None else [])


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise HdapError(f"cannot read the public key {path} ({err.strerror}): give the .pem `hdap registry keygen` wrote.") from None


def local_signing_key_pem(folder: Path) -> str:
    """This machine's signing key for local runs: created on first use, readable by its owner only."""
    path = folder / "ed25519.pem"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, new_private_key_pem(), exclusive=True)
    return path.read_text()


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The signature document for these exact manifest bytes."""
    document = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "key_id": key_id(key.public_key()),
                "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
                "signature": base64.b64encode(key.sign(manifest_bytes)).decode()}
    return json.dumps(document, indent=2).encode()


def check_signature(manifest_bytes: bytes, signature: bytes | None, trusted: list[Ed25519PublicKey]) -> EntryCheck:
    """Whether `signature` (the entry's manifest.json.sig, None where there is none) signs these
    manifest bytes with one of the `trusted` keys."""
    if signature is None:
        return EntryCheck(EntryState.UNSIGNED, "the entry has no signature (published before signing, or without a "
                                               "signing key): its files match its manifest, but nothing proves who wrote it")
    try:
        document = json.loads(signature)
        assert document["format"] == SIGNATURE_FORMAT and document["algorithm"] == "ed25519"
        raw, signer = base64.b64decode(document["signature"], validate=True), str(document["key_id"])
    except (ValueError, KeyError, TypeError, AssertionError):
        return EntryCheck(EntryState.INVALID, f"its {SIGNATURE_NAME} is not an hdap signature")
    keys = [k for k in trusted if key_id(k) == signer]
    if not keys:
        known = ", ".join(key_id(k) for k in trusted) or "none"
        return EntryCheck(EntryState.INVALID, f"it is signed by key {signer}, which is not a trusted key (trusted: {known}); "
                                              f"give its public key with --public-key or {PUBLIC_KEY_ENV}", signer)
    try:
        keys[0].verify(raw, manifest_bytes)
    except InvalidSignature:
        return EntryCheck(EntryState.INVALID, f"its manifest does not match its signature by key {signer}: "
                                              "the manifest was changed after it was signed", signer)
    return EntryCheck(EntryState.VALID, f"signed by key {signer}; every file matches its manifest", signer)

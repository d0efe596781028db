"""The embedded store against another user of the same machine: every port weed opens is tried
without credentials, and its files must be its owner's alone. A real `weed`, started for this module."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hdap.embedded_store import EmbeddedStore
from hdap.store import ObjectStore
from tests.fixtures import free_port

BUCKET = "hdap"
MODEL_KEY = "registry/model/1/model.onnx"
MODEL = os.urandom(3_000_000) + b"model"  # several chunks: weed splits objects every 1-4 MB
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # and an empty SETTINGS frame
FORM = b'--X\r\nContent-Disposition: form-data; name="file"; filename="model.onnx"\r\n\r\nEVIL\r\n--X--\r\n'
FORM_HEADERS = {"Content-Type": "multipart/form-data; boundary=X"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    """(embedded store, its client, its ports) with a published model and its manifest in it."""
    embedded = EmbeddedStore(tmp_path_factory.mktemp("secured") / "store")
    store = ObjectStore(embedded.up(s3_port=free_port()))
    store.put_bytes(f"s3://{BUCKET}/{MODEL_KEY}", MODEL)
    store.put_json(f"s3://{BUCKET}/registry/model/1/manifest.json", {"sha256": "x"})
    yield embedded, store, json.loads(embedded.ports_file.read_text())
    embedded.down()


def _http(method: str, port: int, path: str, body: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _file_ids(data_dir: Path) -> list[str]:
    """The volume file ids of every stored needle, read as the owner from weed's .idx and .dat files
    (17-byte index entries: key, 5-byte offset in 8-byte units, size; the cookie heads each needle)."""
    ids = []
    for index in sorted(data_dir.glob("*.idx")):
        volume = int(index.stem.rsplit("_", 1)[-1])
        raw = index.read_bytes()
        with index.with_suffix(".dat").open("rb") as data:
            for at in range(0, len(raw) - 16, 17):
                key, low, high, size = struct.unpack(">QIBI", raw[at:at + 17])
                if size in (0, 0xFFFFFFFF):
                    continue
                data.seek(((high << 32) | low) * 8)
                cookie = struct.unpack(">I", data.read(4))[0]
                ids.append(f"{volume},{key:x}{cookie:08x}")
    return ids


def test_the_filer_http_port_takes_no_unsigned_reads_writes_or_deletes(secured) -> None:
    _, store, ports = secured
    path = f"/buckets/{BUCKET}/{MODEL_KEY}"
    assert _http("GET", ports["filer"], path) >= 400
    assert _http("GET", ports["filer"], path + "?metadata=true") >= 400
    assert _http("GET", ports["filer"], f"/buckets/{BUCKET}/", headers={"Accept": "application/json"}) >= 400
    assert _http("POST", ports["filer"], path, FORM, FORM_HEADERS) >= 400
    assert _http("PUT", ports["filer"], path, b"EVIL") >= 400
    assert _http("DELETE", ports["filer"], path) >= 400
    assert store.get_bytes(f"s3://{BUCKET}/{MODEL_KEY}", require_checksum=True) == MODEL


def test_the_volume_http_port_takes_no_unsigned_reads_writes_or_deletes(secured) -> None:
    embedded, store, ports = secured
    file_ids = _file_ids(embedded.data_dir)
    assert len(file_ids) >= 2  # the model and the manifest
    for file_id in file_ids:
        assert _http("GET", ports["volume"], f"/{file_id}") >= 400, file_id
        assert _http("POST", ports["volume"], f"/{file_id}", FORM, FORM_HEADERS) >= 400, file_id
        assert _http("DELETE", ports["volume"], f"/{file_id}") >= 400, file_id
        assert _http("GET", ports["master"], f"/{file_id}") >= 400, file_id  # the master redirects to the volume
    assert _http("GET", ports["volume"], "/ui/index.html") >= 400
    assert store.get_bytes(f"s3://{BUCKET}/{MODEL_KEY}") == MODEL


@pytest.mark.parametrize("method, path", [
    ("GET", "/dir/assign"), ("GET", "/dir/lookup?volumeId=1"), ("GET", "/dir/status"), ("GET", "/vol/status"),
    ("GET", "/vol/grow?count=1"), ("GET", "/vol/vacuum"), ("POST", "/submit"), ("GET", f"/col/delete?collection={BUCKET}"),
])
def test_the_master_http_port_has_no_unsigned_admin_api(secured, method: str, path: str) -> None:
    _, store, ports = secured
    body = FORM if method == "POST" else None
    assert _http(method, ports["master"], path, body, FORM_HEADERS if body else None) >= 400
    assert store.get_bytes(f"s3://{BUCKET}/{MODEL_KEY}") == MODEL  # /col/delete would have dropped the bucket


@pytest.mark.parametrize("role", ["master.grpc", "volume.grpc", "filer.grpc", "s3.grpc"])
def test_each_grpc_port_needs_the_store_client_certificate(secured, role: str) -> None:
    embedded, _, ports = secured
    assert not _speaks_h2(ports[role], None), "plaintext gRPC is accepted"
    anonymous = ssl.create_default_context()
    anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE
    assert not _speaks_h2(ports[role], anonymous), "TLS without a client certificate is accepted"
    owner = ssl.create_default_context(cafile=str(embedded.tls_dir / "ca.crt"))
    owner.check_hostname = False
    owner.load_cert_chain(embedded.tls_dir / "store.crt", embedded.tls_dir / "store.key")
    assert _speaks_h2(ports[role], owner), "the owner's certificate should be accepted (the test would prove nothing)"


def _speaks_h2(port: int, context: ssl.SSLContext | None) -> bool:
    """Whether the port answers an HTTP/2 connection preface with a SETTINGS frame (gRPC is HTTP/2)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            if context is not None:
                context.set_alpn_protocols(["h2"])
                raw = context.wrap_socket(raw)
            raw.sendall(H2_PREFACE)
            reply = raw.recv(9)
    except (OSError, ssl.SSLError):
        return False
    return len(reply) == 9 and reply[3] == 0x04


def test_s3_refuses_unsigned_requests(secured) -> None:
    _, _, ports = secured
    assert _http("GET", ports["s3"], "/") == 403
    assert _http("GET", ports["s3"], f"/{BUCKET}/{MODEL_KEY}") == 403
    assert _http("PUT", ports["s3"], f"/{BUCKET}/{MODEL_KEY}", b"EVIL") == 403
    assert _http("DELETE", ports["s3"], f"/{BUCKET}/{MODEL_KEY}") == 403


def test_the_store_files_and_sockets_are_its_owners_alone(secured) -> None:
    embedded, _, ports = secured
    for folder in [embedded.root, *[p for p in embedded.root.rglob("*") if p.is_dir()]]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for name in ("credentials.json", "s3.json", "security.toml", "ports.json", "state.json", "weed.log", "tls/store.key"):
        assert stat.S_IMODE((embedded.root / name).stat().st_mode) == 0o600, name
    # weed writes its small .vif volume descriptions 0644 whatever the umask: the 0700 folders guard them.
    loose = [p for p in embedded.root.rglob("*") if p.is_file() and p.suffix != ".vif" and p.stat().st_mode & 0o077]
    assert loose == []
    sockets = [Path(p) for p in embedded._socket_paths(ports) if Path(p).exists()]
    assert sockets, "weed's Unix sockets were not found where expected"
    assert [s for s in sockets if s.stat().st_mode & 0o077] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="trying as another user needs root to become one")
def test_another_user_can_open_nothing_of_the_store(secured) -> None:
    embedded, _, ports = secured
    targets = [str(p) for p in embedded.root.rglob("*")] + [str(p) for p in embedded._socket_paths(ports)]
    probe = ("import socket, sys\nopened = []\nfor path in sys.argv[1:]:\n"
             "    try:\n        if path.endswith('.sock'):\n            socket.socket(socket.AF_UNIX).connect(path)\n"
             "        else:\n            open(path, 'rb').read(1)\n        opened.append(path)\n"
             "    except OSError:\n        pass\nprint('\\n'.join(opened))\n")
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable  # one "nobody" may run
    result = subprocess.run([python, "-c", probe, *targets], check=False, user=65534, group=65534, capture_output=True,
                            text=True, timeout=30, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_a_store_made_by_an_older_hdap_is_locked_down_when_it_starts(tmp_path: Path) -> None:
    embedded = EmbeddedStore(tmp_path / "store")
    embedded.data_dir.mkdir(parents=True)
    embedded.root.chmod(0o755)
    embedded.data_dir.chmod(0o755)
    (embedded.root / "weed.log").write_text("old log\n")
    (embedded.root / "weed.log").chmod(0o644)
    (embedded.root / "ports.json").write_text(json.dumps({"s3": free_port()}))
    try:
        store = ObjectStore(embedded.up())
        store.put_bytes("s3://old/x", b"x")
        assert store.get_bytes("s3://old/x") == b"x"
        assert stat.S_IMODE(embedded.root.stat().st_mode) == 0o700
        assert stat.S_IMODE(embedded.data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((embedded.root / "weed.log").stat().st_mode) == 0o600
        assert (embedded.tls_dir / "store.key").is_file() and embedded.security_file.is_file()
    finally:
        embedded.down()

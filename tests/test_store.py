"""The object store client against a real SeaweedFS server."""

from __future__ import annotations

import hashlib
import io
import socket
from pathlib import Path

import pyarrow as pa
import pytest

from hdap.embedded_store import EmbeddedStore
from hdap.errors import HdapError
from hdap.store import ObjectStore, S3Uri, StoreConfig
from tests.fixtures import free_port


def test_bytes_json_and_tables_round_trip_with_their_sha256(object_store: ObjectStore, bucket: str) -> None:
    object_store.put_bytes(f"s3://{bucket}/a/raw.bin", b"\x00\x01payload")
    object_store.put_json(f"s3://{bucket}/a/doc.json", {"k": [1, 2]})
    object_store.put_table(f"s3://{bucket}/a/t.parquet", pa.table({"x": [1.5, 2.5]}))

    assert object_store.get_bytes(f"s3://{bucket}/a/raw.bin") == b"\x00\x01payload"
    assert object_store.get_json(f"s3://{bucket}/a/doc.json") == {"k": [1, 2]}
    assert object_store.get_table(f"s3://{bucket}/a/t.parquet").column("x").to_pylist() == [1.5, 2.5]
    stat = object_store.client.stat_object(bucket, "a/raw.bin")
    assert stat.metadata["x-amz-meta-sha256"] == hashlib.sha256(b"\x00\x01payload").hexdigest()
    assert [o.uri for o in object_store.list(f"s3://{bucket}/a/")] == [
        f"s3://{bucket}/a/doc.json",
        f"s3://{bucket}/a/raw.bin",
        f"s3://{bucket}/a/t.parquet",
    ]


def test_a_corrupted_object_is_refused_on_read(object_store: ObjectStore, bucket: str) -> None:
    # Written behind hdap's back with a sha256 that does not match its bytes.
    object_store.client.put_object(bucket, "bad.bin", io.BytesIO(b"changed"), 7, metadata={"sha256": "0" * 64})
    with pytest.raises(HdapError, match="does not match the sha256"):
        object_store.get_bytes(f"s3://{bucket}/bad.bin")


def test_a_wrong_secret_key_is_named_in_one_sentence(store_config: StoreConfig) -> None:
    wrong = StoreConfig(store_config.endpoint, store_config.access_key, "not-the-secret")
    with pytest.raises(HdapError, match="rejected the secret key.*HDAP_S3_SECRET_KEY"):
        ObjectStore(wrong).check()


def test_an_unknown_access_key_is_named(store_config: StoreConfig) -> None:
    wrong = StoreConfig(store_config.endpoint, "nobody", "x")
    with pytest.raises(HdapError, match="does not know the access key 'nobody'"):
        ObjectStore(wrong).check()


def test_a_missing_bucket_says_so(object_store: ObjectStore) -> None:
    with pytest.raises(HdapError, match="has no bucket 'no-such-bucket'"):
        object_store.list("s3://no-such-bucket/telemetry/")


def test_an_unreachable_store_says_how_to_start_one() -> None:
    config = StoreConfig(f"127.0.0.1:{free_port()}", "k", "s")
    with pytest.raises(HdapError, match="cannot reach the object store.*hdap store up"):
        ObjectStore(config).check()


def test_uris_parse_and_reject_non_s3() -> None:
    assert S3Uri.parse("s3://b/k/x.parquet") == S3Uri("b", "k/x.parquet")
    assert str(S3Uri.parse("s3://b/k").join("d", "e.json")) == "s3://b/k/d/e.json"
    with pytest.raises(HdapError, match="s3://bucket/key"):
        S3Uri.parse("/local/path")


def test_configuration_comes_from_the_environment_then_the_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("HDAP_S3_ENDPOINT", "HDAP_S3_ACCESS_KEY", "HDAP_S3_SECRET_KEY", "HDAP_S3_SECURE", "HDAP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "hdap.toml").write_text('[store]\nendpoint = "https://s3.example.com"\naccess_key = "fk"\nsecret_key = "fs"\n')
    from_file = StoreConfig.from_environment()
    assert (from_file.endpoint, from_file.secure, from_file.access_key) == ("s3.example.com", True, "fk")
    monkeypatch.setenv("HDAP_S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("HDAP_S3_ACCESS_KEY", "ek")
    monkeypatch.setenv("HDAP_S3_SECRET_KEY", "es")
    from_env = StoreConfig.from_environment()
    assert (from_env.endpoint, from_env.secure, from_env.access_key) == ("127.0.0.1:9000", False, "ek")


def test_the_embedded_store_keeps_its_data_across_restarts(tmp_path) -> None:
    embedded = EmbeddedStore(tmp_path / "store")
    port = free_port()
    try:
        ObjectStore(embedded.up(s3_port=port)).put_bytes("s3://keep/x.txt", b"still here")
        assert embedded.status().running
        assert embedded.down()
        assert not embedded.status().running
        restarted = ObjectStore(embedded.up())
        assert restarted.config.endpoint == f"127.0.0.1:{port}"  # same address after a restart
        assert restarted.get_bytes("s3://keep/x.txt") == b"still here"
        restarted.put_bytes("s3://keep-new/y.txt", b"new bucket after restart")
        assert restarted.get_bytes("s3://keep-new/y.txt") == b"new bucket after restart"
    finally:
        embedded.down()


def test_the_embedded_store_serves_many_buckets(object_store: ObjectStore) -> None:
    # Each bucket grows its own volumes: the store must not run out after a handful.
    for index in range(12):
        object_store.put_bytes(f"s3://many-{index:02d}/x", b"x")
    assert object_store.get_bytes("s3://many-11/x") == b"x"


def test_an_endpoint_with_a_path_or_a_bad_secure_flag_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    with pytest.raises(HdapError, match="has a path: give only host:port"):
        StoreConfig.from_endpoint("minio:9000/mlpipeline", "k", "s")
    monkeypatch.chdir(tmp_path)
    for name in ("HDAP_S3_ENDPOINT", "HDAP_S3_SECURE", "HDAP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "hdap.toml").write_text('[store]\nendpoint = "h:1"\naccess_key = "a"\nsecret_key = "b"\nsecure = 7\n')
    with pytest.raises(HdapError, match="secure in the config file=7 is not a yes/no value"):
        StoreConfig.from_environment()


def test_asking_an_unreachable_store_whether_an_object_exists_says_so() -> None:
    with pytest.raises(HdapError, match="cannot reach the object store"):
        ObjectStore(StoreConfig(f"127.0.0.1:{free_port()}", "k", "s")).exists("s3://bucket/x")


def test_a_recorded_pid_that_is_not_our_server_is_not_taken_for_it(tmp_path) -> None:
    import json
    import os

    embedded = EmbeddedStore(tmp_path / "store")
    embedded.root.mkdir(parents=True)
    embedded.state_file.write_text(json.dumps({"pid": os.getpid(), "s3_port": free_port()}))  # alive, but pytest
    assert embedded.running_config() is None
    assert not embedded.status().running


def test_each_embedded_server_gets_its_own_port_even_when_the_os_hands_one_out_twice(tmp_path: Path, monkeypatch) -> None:
    """The OS may give the same free port to two asks in a row (each is released at once): seaweed's s3 gRPC
    listener then found the filer on its port, and `make run` stopped with 'address already in use'."""
    import hdap.embedded_store as embedded

    handed = iter([41001, 41001, 41002, 41002, 41003, 41004, 41004, 41005, 41006, 41007, 41008])
    monkeypatch.setattr(embedded, "_free_port", lambda: next(handed))
    monkeypatch.setattr(embedded, "_port_is_free", lambda port: True)
    ports = embedded.EmbeddedStore(tmp_path)._ports(s3_port=41000)
    assert len(set(ports.values())) == len(ports) == len(embedded._PORT_NAMES) + 1


def test_an_object_hdap_did_not_write_is_refused_where_a_checksum_is_required(object_store: ObjectStore, bucket: str) -> None:
    object_store.client.put_object(bucket, "foreign.json", io.BytesIO(b"{}"), 2)  # no sha256 metadata
    assert object_store.get_json(f"s3://{bucket}/foreign.json") == {}  # still read where none is required
    with pytest.raises(HdapError, match="has no sha256 recorded with it.*publish it again with hdap"):
        object_store.get_bytes(f"s3://{bucket}/foreign.json", require_checksum=True)
    with pytest.raises(HdapError, match="has no sha256 recorded"):
        object_store.get_json(f"s3://{bucket}/foreign.json", require_checksum=True)
    object_store.put_json(f"s3://{bucket}/own.json", {"a": 1})
    assert object_store.get_json(f"s3://{bucket}/own.json", require_checksum=True) == {"a": 1}


@pytest.mark.parametrize("port", [70000, 0, -1])
def test_an_invalid_port_is_refused_before_anything_starts(tmp_path: Path, port: int) -> None:
    embedded = EmbeddedStore(tmp_path / "store")
    with pytest.raises(HdapError, match=f"{port} is not a port: give a number from 1 to 65535"):
        embedded.up(s3_port=port)
    assert not embedded.state_file.exists()


def test_a_taken_port_is_named_at_once(tmp_path: Path) -> None:
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(HdapError, match=f"port {port} on 127.0.0.1 is already in use"):
            EmbeddedStore(tmp_path / "store").up(s3_port=port)
        assert time.monotonic() - started < 2


def test_a_port_weed_cannot_bind_fails_the_start_with_weeds_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port taken between hdap's check and weed's bind: weed's own failure is reported, not a long wait."""
    import json
    import time

    import hdap.embedded_store as embedded_module

    embedded = EmbeddedStore(tmp_path / "store")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        embedded.root.mkdir(parents=True)
        embedded.ports_file.write_text(json.dumps({"filer.grpc": taken.getsockname()[1]}))
        monkeypatch.setattr(embedded_module, "_port_is_free", lambda port: True)  # the race, made certain
        started = time.monotonic()
        with pytest.raises(HdapError, match="could not open its ports.*address already in use"):
            embedded.up(s3_port=free_port())
        assert time.monotonic() - started < 20
    assert not embedded.status().running


def test_an_http_server_that_is_not_s3_is_named(tmp_path: Path) -> None:
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = ObjectStore(StoreConfig(f"127.0.0.1:{server.server_address[1]}", "k", "s"))
        with pytest.raises(HdapError, match="is not an S3 endpoint.*fix HDAP_S3_ENDPOINT"):
            store.check()
        with pytest.raises(HdapError, match="is not an S3 endpoint"):
            store.exists("s3://bucket/x")
    finally:
        server.shutdown()
        server.server_close()


def test_a_store_that_accepts_connections_but_never_answers_fails_in_seconds() -> None:
    import time

    with socket.socket() as silent:  # the kernel completes connections to a listening socket; nobody replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        store = ObjectStore(StoreConfig(f"127.0.0.1:{silent.getsockname()[1]}", "k", "s"))
        started = time.monotonic()
        with pytest.raises(HdapError, match="accepts connections but is not answering"):
            store.check()
        assert time.monotonic() - started < ObjectStore.QUICK_READ_TIMEOUT_S + 5


def test_a_frozen_embedded_store_is_reported_running_but_not_answering(tmp_path: Path) -> None:
    import os
    import signal
    import time

    embedded = EmbeddedStore(tmp_path / "store")
    embedded.up(s3_port=free_port())
    try:
        assert embedded.status().answering
        os.kill(embedded.status().pid, signal.SIGSTOP)
        started = time.monotonic()
        status = embedded.status()
        assert status.running, status
        assert not status.answering, status
        with pytest.raises(HdapError, match="running but not answering.*hdap store down"):
            embedded.up()
        assert time.monotonic() - started < 2 * ObjectStore.QUICK_READ_TIMEOUT_S + 5
    finally:
        assert embedded.down()  # a stopped weed is still stopped
    assert not embedded.status().running

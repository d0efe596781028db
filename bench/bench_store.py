"""A throwaway embedded object store for one benchmark run, as a user's first `hdap store up` gives."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hdap.embedded_store import EmbeddedStore
from hdap.store import ObjectStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def bench_store(bucket: str = "hdap") -> Iterator[ObjectStore]:
    """SeaweedFS on a free port with its data and hdap's home in a temporary folder, the environment
    pointing at it, and `bucket`; stopped and deleted afterwards."""
    with bench_store_parts(bucket) as (store, _, _):
        yield store


@contextmanager
def bench_store_parts(bucket: str = "hdap", prefix: str = "hdap-bench-") -> Iterator[tuple[ObjectStore, EmbeddedStore, Path]]:
    """The same, with the server (its pid, for memory figures) and the temporary folder."""
    with tempfile.TemporaryDirectory(prefix=prefix) as root:
        embedded = EmbeddedStore(Path(root) / "store")
        config = embedded.up(s3_port=free_port())
        os.environ.update(config.as_environment())
        os.environ["HDAP_HOME"] = str(Path(root) / ".hdap")
        try:
            store = ObjectStore(config)
            store.ensure_bucket(bucket)
            yield store, embedded, Path(root)
        finally:
            embedded.down()

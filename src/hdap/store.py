"""The object store: every artifact hdap reads or writes goes through here.

One client (the minio SDK) talks to MinIO, SeaweedFS and AWS S3 alike. Objects are addressed
as `s3://bucket/key` URIs. Every object written carries the sha256 of its bytes in its
metadata (`x-amz-meta-sha256`), and reads verify it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from xml.etree.ElementTree import ParseError

import certifi
import pyarrow as pa
import pyarrow.parquet as pq
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error

from hdap.config import file_section
from hdap.errors import HdapError
from hdap.settings import from_parameter

SHA256_METADATA_KEY = "sha256"


class CorruptObject(HdapError):
    """An object whose bytes do not match the sha256 recorded when it was written (a reader may set it aside)."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise HdapError(f"'{uri}' is not an object-store URI: write it as s3://bucket/key.")
        return cls(bucket=parsed.netloc, key=parsed.path.lstrip("/"))

    def join(self, *parts: str) -> S3Uri:
        key = "/".join([self.key.rstrip("/"), *(p.strip("/") for p in parts)]).lstrip("/")
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def join_uri(uri: str, *parts: str) -> str:
    return str(S3Uri.parse(uri).join(*parts))


@dataclass(frozen=True)
class StoreConfig:
    """How to reach the object store. `endpoint` is host:port, or a URL whose scheme sets `secure`."""

    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = False
    region: str | None = None
    source: str = "environment"  # where these settings came from, for messages

    @classmethod
    def configured(cls) -> StoreConfig | None:
        """The store the environment (HDAP_S3_*) or the config file's [store] table names; None if neither does."""
        section = file_section("store")
        endpoint = os.environ.get("HDAP_S3_ENDPOINT") or section.get("endpoint")
        if not endpoint:
            return None
        source = "HDAP_S3_ENDPOINT" if os.environ.get("HDAP_S3_ENDPOINT") else "config file"
        access_key = os.environ.get("HDAP_S3_ACCESS_KEY", section.get("access_key", ""))
        secret_key = os.environ.get("HDAP_S3_SECRET_KEY", section.get("secret_key", ""))
        secure_setting = os.environ.get("HDAP_S3_SECURE", section.get("secure", False))
        region = os.environ.get("HDAP_S3_REGION", section.get("region")) or None
        if not access_key or not secret_key:
            raise HdapError(
                f"the object store endpoint {endpoint} is set but its credentials are not: "
                "set HDAP_S3_ACCESS_KEY and HDAP_S3_SECRET_KEY."
            )
        secure = from_parameter(secure_setting, bool, "HDAP_S3_SECURE" if "HDAP_S3_SECURE" in os.environ else "secure in the config file")
        return cls.from_endpoint(endpoint, access_key, secret_key, secure, region, source)

    @classmethod
    def from_environment(cls) -> StoreConfig:
        """The configured store, and nothing else: a pipeline step never falls back to a laptop's embedded store."""
        config = cls.configured()
        if config is None:
            raise HdapError("this step has no object store settings: set HDAP_S3_ENDPOINT, HDAP_S3_ACCESS_KEY and "
                            "HDAP_S3_SECRET_KEY (on Kubeflow the pipeline fills them from the hdap-s3 secret: apply manifests/base).")
        return config

    @classmethod
    def from_endpoint(
        cls,
        endpoint: str,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        source: str = "environment",
    ) -> StoreConfig:
        if not isinstance(endpoint, str):
            raise HdapError(f"the object store endpoint ({source}) must be text like host:9000, not {endpoint!r}.")
        if "://" in endpoint:
            parsed = urlparse(endpoint)
            secure = parsed.scheme == "https"
            path, endpoint = parsed.path, parsed.netloc
        else:
            endpoint, _, path = endpoint.partition("/")
        if path.strip("/"):
            raise HdapError(
                f"the object store endpoint {endpoint}/{path.strip('/')} ({source}) has a path: give only host:port; "
                "buckets go in the s3:// URIs."
            )
        return cls(endpoint, access_key, secret_key, secure, region, source)

    def as_environment(self) -> dict[str, str]:
        """The HDAP_S3_* variables that make a child process (a pipeline step) use this store."""
        env = {
            "HDAP_S3_ENDPOINT": self.endpoint,
            "HDAP_S3_ACCESS_KEY": self.access_key,
            "HDAP_S3_SECRET_KEY": self.secret_key,
            "HDAP_S3_SECURE": "true" if self.secure else "false",
        }
        if self.region:
            env["HDAP_S3_REGION"] = self.region
        return env


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int


class ObjectStore:
    """A thin, checked layer over the minio client: URIs in, bytes/files/tables out."""

    # Seconds a request may wait for the server's next bytes. Object transfers get long: the server
    # answers a big upload only once it has stored it. Everything else (checks, listings, stats,
    # buckets) is small, so a store that accepts connections but never answers fails in seconds.
    TRANSFER_READ_TIMEOUT_S = 120.0
    QUICK_READ_TIMEOUT_S = 5.0

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.client = self._client(self.TRANSFER_READ_TIMEOUT_S)
        self.quick_client = self._client(self.QUICK_READ_TIMEOUT_S)

    def _client(self, read_timeout_s: float) -> Minio:
        # Few retries, none after a read timeout: a wrong or frozen endpoint should fail in
        # seconds, not after minio's long backoff.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=read_timeout_s),
            maxsize=8,
            cert_reqs="CERT_REQUIRED" if self.config.secure else "CERT_NONE",
            ca_certs=certifi.where() if self.config.secure else None,
            retries=urllib3.Retry(total=2, read=0, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        return Minio(
            self.config.endpoint,
            access_key=self.config.access_key,
            secret_key=self.config.secret_key,
            secure=self.config.secure,
            region=self.config.region,
            http_client=http,
        )

    @classmethod
    def from_environment(cls) -> ObjectStore:
        """The store named by HDAP_S3_* or the config file (what a pipeline step uses)."""
        return cls(StoreConfig.from_environment())

    # -- errors -----------------------------------------------------------------------------
    @contextmanager
    def _explained(self, what: str) -> Iterator[None]:
        """Turn the SDK's exceptions into one sentence that says what to fix."""
        where = f"the object store at {self.config.endpoint}"
        try:
            yield
        except S3Error as err:
            if err.code == "InvalidAccessKeyId":
                raise HdapError(
                    f"{where} does not know the access key '{self.config.access_key}' ({self.config.source}): "
                    "set HDAP_S3_ACCESS_KEY to a key it accepts."
                ) from None
            if err.code == "SignatureDoesNotMatch":
                raise HdapError(
                    f"{where} rejected the secret key for access key '{self.config.access_key}': "
                    "check HDAP_S3_SECRET_KEY."
                ) from None
            if err.code == "AccessDenied":
                raise HdapError(
                    f"{where} denied access while {what}: give access key '{self.config.access_key}' "
                    "read and write rights on that bucket."
                ) from None
            if err.code == "NoSuchBucket":
                raise HdapError(
                    f"{where} has no bucket '{err.bucket_name}' ({what}): create it or fix the s3:// URI."
                ) from None
            if err.code in {"NoSuchKey", "NoSuchObject"}:
                raise HdapError(f"{where} has no object {what.split(' ', 1)[-1]}: check the URI.") from None
            raise HdapError(f"{where} failed while {what}: {err.code}: {err.message}") from None
        except (InvalidResponseError, ParseError) as err:  # an HTTP server, but not an S3 one
            status = f"HTTP {getattr(err, '_code', '?')}" if isinstance(err, InvalidResponseError) else "a reply that is not S3's XML"
            raise HdapError(
                f"{where} is not an S3 endpoint (it answered {what} with {status}): "
                "fix HDAP_S3_ENDPOINT to name an S3 store's host:port."
            ) from None
        except (urllib3.exceptions.MaxRetryError, urllib3.exceptions.ReadTimeoutError) as err:
            reason = getattr(err, "reason", None) or err
            if isinstance(reason, urllib3.exceptions.ResponseError):
                raise HdapError(
                    f"{where} answered with server errors while {what}: see its log (.hdap/store/weed.log "
                    "for the embedded one); it may be out of disk space."
                ) from None
            if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
                raise HdapError(
                    f"{where} accepts connections but is not answering ({what}): restart it "
                    "(`hdap store down` then `hdap store up` for the embedded one)."
                ) from None
            raise HdapError(
                f"cannot reach {where} ({type(reason).__name__}): start it (`hdap store up` for the "
                "embedded one) or fix HDAP_S3_ENDPOINT."
            ) from None
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError) as err:
            raise HdapError(
                f"{where} broke off while {what} ({type(err).__name__}): is HDAP_S3_ENDPOINT an S3 store? "
                "If it is, see its log."
            ) from None
        except ValueError as err:  # the SDK validates bucket names and URLs this way
            raise HdapError(f"{what} is not possible: {err}; fix the s3:// URI.") from None

    def check(self) -> None:
        """Fail with a clear message unless the store answers and accepts our credentials."""
        with self._explained("listing buckets"):
            self.quick_client.list_buckets()

    def ensure_bucket(self, bucket: str) -> None:
        with self._explained(f"creating bucket {bucket}"):
            if not self.quick_client.bucket_exists(bucket):
                self.quick_client.make_bucket(bucket)

    def require_bucket(self, bucket: str) -> None:
        with self._explained(f"looking for bucket {bucket}"):
            exists = self.quick_client.bucket_exists(bucket)
        if not exists:
            raise HdapError(
                f"the object store at {self.config.endpoint} has no bucket '{bucket}': "
                "create it, or fix the s3:// URI."
            )

    # -- writing ----------------------------------------------------------------------------
    def put_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        target = S3Uri.parse(uri)
        self.ensure_bucket(target.bucket)
        digest = hashlib.sha256(data).hexdigest()
        with self._explained(f"writing {uri}"):
            self.client.put_object(
                target.bucket,
                target.key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata={SHA256_METADATA_KEY: digest},
            )
        return ObjectInfo(uri=str(target), size=len(data))

    def put_file(self, uri: str, path: str | Path, content_type: str = "application/octet-stream") -> ObjectInfo:
        return self.put_bytes(uri, Path(path).read_bytes(), content_type)

    def put_json(self, uri: str, value: Any) -> ObjectInfo:
        return self.put_bytes(uri, json.dumps(value, indent=2, default=str).encode(), "application/json")

    def put_table(self, uri: str, table: pa.Table) -> ObjectInfo:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return self.put_bytes(uri, sink.getvalue(), "application/vnd.apache.parquet")

    # -- reading ----------------------------------------------------------------------------
    def get_bytes(self, uri: str, verify: bool = True, require_checksum: bool = False) -> bytes:
        """The object's bytes, checked against the sha256 hdap wrote with them. With
        require_checksum an object without one (not written by hdap) is refused: for what must not
        be swapped behind hdap's back, such as published models."""
        source = S3Uri.parse(uri)
        with self._explained(f"reading {uri}"):
            response = self.client.get_object(source.bucket, source.key)
            try:
                data = response.read()
                expected = _sha256_header(response.headers)
            finally:
                response.close()
                response.release_conn()
        if require_checksum and expected is None:
            raise HdapError(f"{uri} has no sha256 recorded with it, so it cannot be checked: it was not written "
                            "by hdap; publish it again with hdap.")
        if verify and expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise CorruptObject(f"{uri} does not match the sha256 it was written with: it is corrupt; write it again.")
        return data

    def get_json(self, uri: str, *, require_checksum: bool = False) -> Any:
        return json.loads(self.get_bytes(uri, require_checksum=require_checksum))

    def get_table(self, uri: str, *, require_checksum: bool = False) -> pa.Table:
        return pq.read_table(io.BytesIO(self.get_bytes(uri, require_checksum=require_checksum)))

    def get_file(self, uri: str, path: str | Path, *, require_checksum: bool = False) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.get_bytes(uri, require_checksum=require_checksum))
        return target

    def exists(self, uri: str) -> bool:
        target = S3Uri.parse(uri)
        with self._explained(f"looking for {uri}"):
            try:
                self.quick_client.stat_object(target.bucket, target.key)
                return True
            except S3Error as err:
                if err.code in {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}:
                    return False
                raise

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        """Every object under a folder, recursively, sorted by URI. The URI names a folder:
        s3://b/fleet-a lists fleet-a/..., never a sibling fleet-a-old/..."""
        prefix = S3Uri.parse(prefix_uri)
        if prefix.key and not prefix.key.endswith("/"):
            prefix = S3Uri(prefix.bucket, prefix.key + "/")
        self.require_bucket(prefix.bucket)
        with self._explained(f"listing {prefix_uri}"):
            objects = [
                ObjectInfo(uri=f"s3://{prefix.bucket}/{obj.object_name}", size=obj.size or 0)
                for obj in self.quick_client.list_objects(prefix.bucket, prefix=prefix.key, recursive=True)
                if not obj.is_dir
            ]
        return sorted(objects, key=lambda o: o.uri)


def _sha256_header(headers: Any) -> str | None:
    for name, value in headers.items():
        if name.lower() == f"x-amz-meta-{SHA256_METADATA_KEY}":
            return value
    return None

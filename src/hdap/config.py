"""Where hdap finds its settings: environment variables first, then a TOML config file.

The config file is `$HDAP_CONFIG`, else `./hdap.toml`. Every setting is optional; with no
object-store endpoint anywhere, hdap uses the embedded store started by `hdap store up`.

    [store]
    endpoint = "minio.kubeflow:9000"   # or https://s3.amazonaws.com
    access_key = "..."
    secret_key = "..."
    secure = false
    region = "us-east-1"
"""

from __future__ import annotations

import os
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hdap.errors import HdapError


def home_dir() -> Path:
    """The project-local directory for hdap's own state (embedded store data, local runs)."""
    return Path(os.environ.get("HDAP_HOME", ".hdap")).resolve()


def config_file() -> Path | None:
    explicit = os.environ.get("HDAP_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise HdapError(f"HDAP_CONFIG points at {path}, which is not a file: fix the path or unset it.")
        return path
    local = Path("hdap.toml")
    return local if local.is_file() else None


def file_section(name: str) -> dict[str, Any]:
    """One `[name]` table of the config file, or {} when there is no file or no such table."""
    path = config_file()
    if path is None:
        return {}
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise HdapError(f"the config file {path} is not valid TOML ({err}): fix it.") from None
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise HdapError(f"the config file {path} has '{name}' as a value, not a [{name}] table: fix it.")
    return section


def parse_bool(value: str | bool, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise HdapError(f"{setting}={value!r} is not a yes/no value: use true or false.")


def parse_time(value: str, setting: str) -> datetime:
    """An ISO-8601 time; one without a zone is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise HdapError(f"{setting}={value!r} is not an ISO-8601 time: write it like 2026-11-20T12:00:00+00:00.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_shape(value: str, setting: str) -> tuple[int, ...]:
    """A model input shape written as channels,height,width."""
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise HdapError(f"{setting}={value!r} is not an input shape: write channels,height,width, like 3,32,32.")
    return shape

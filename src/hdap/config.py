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


def write_private(path: Path, data: str | bytes, *, exclusive: bool = False) -> None:
    """Write a file only its owner can read, from the first byte on (no window at the umask's mode).
    `exclusive`: refuse to replace an existing file (FileExistsError), as a key must never be."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)

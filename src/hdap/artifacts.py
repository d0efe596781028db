"""Artifacts: the files one stage hands another, as typed dataclasses with a format version.

Each contract (`IngestSummary`, `ClusterSummary`, `Front`, `BuildSummary`, ...) lives in the module
of the stage that writes it and derives from `Contract`, which writes it as JSON with its
`format` ("hdap.front/1") and reads it back into the same types, nested dataclasses, enums and
tuples included. The writer, every reader, the reports, the CLI's summary and the tests all go
through these classes, so a renamed field breaks them all at once instead of none. A reader
refuses a file in a format it does not know, and a file missing a field or carrying an unknown
one, in one sentence.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Union

from hdap.errors import HdapError

if TYPE_CHECKING:
    from hdap.store import ObjectStore

C = TypeVar("C", bound="Contract")


class Contract:
    """Base of a dataclass written as a versioned JSON file."""

    FORMAT: ClassVar[str]  # e.g. "hdap.front/1": bump the number when a field changes meaning or goes

    def to_json(self) -> dict[str, Any]:
        return {"format": self.FORMAT, **plain(self)}

    @classmethod
    def from_json(cls: type[C], data: Any, source: str = "") -> C:
        where = source or f"this {cls.__name__} file"
        found = data.get("format") if isinstance(data, dict) else None
        if found != cls.FORMAT:
            raise HdapError(f"{where} is in format {found!r}, which this hdap does not read (it reads {cls.FORMAT}): "
                            "re-run the stage that wrote it with this version of hdap.")
        return _decode_dataclass(cls, {k: v for k, v in data.items() if k != "format"}, where)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(self.dumps())
        return Path(path)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise HdapError(f"cannot read {path} as a {cls.__name__} ({err}): re-run the stage that wrote it.") from None
        return cls.from_json(data, str(path))

    def put(self, store: ObjectStore, uri: str) -> None:
        store.put_bytes(uri, self.dumps().encode(), "application/json")

    @classmethod
    def get(cls: type[C], store: ObjectStore, uri: str) -> C:
        return cls.from_json(store.get_json(uri), uri)


def plain(value: Any) -> Any:
    """A contract's value as plain JSON data: dataclasses as objects, enums as their text, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k.value if isinstance(k, Enum) else k): plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _decode_dataclass(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise HdapError(f"{where}: expected an object for {cls.__name__}, found {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise HdapError(f"{where} has fields {unknown} that {cls.__name__} does not know: it was written by another "
                        "version of hdap; re-run the stage that wrote it.")
    values = {}
    for name, item in fields.items():
        if name in data:
            values[name] = _decode(data[name], hints[name], f"{where}: {name}")
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise HdapError(f"{where} has no '{name}', which {cls.__name__} needs: re-run the stage that wrote it.")
    return cls(**values)


def _decode(value: Any, hint: Any, where: str) -> Any:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        options = [a for a in arguments if a is not type(None)]
        return _decode(value, options[0], where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, value, where)
    if origin is list:
        return [_decode(v, arguments[0], where) for v in value]
    if origin is tuple:
        kinds = [arguments[0]] * len(value) if Ellipsis in arguments else list(arguments)
        return tuple(_decode(v, kind, where) for v, kind in zip(value, kinds))
    if origin is dict:
        key, item = arguments
        return {(int(k) if key is int else k): _decode(v, item, where) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(str(member.value) for member in hint)
            raise HdapError(f"{where} is {value!r}, not one of {choices}: re-run the stage that wrote it.") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value

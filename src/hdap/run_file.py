"""The run configuration file: every pipeline setting, in TOML, checked by the same configs as the options.

    telemetry_uri = "s3://hdap/telemetry/jetson-xavier-nx"   # shared settings at the top
    model = "resnet20"
    seed = 0

    [cluster]                                                 # each stage's own settings in its table
    k = 5

    [search]
    targets = [0.8, 0.5, 0.3]                                 # lists, numbers and text as TOML writes them
    mode = "fleet"

`hdap run --config run.toml` reads it; options given beside it override it. A key hdap does not
know is refused, naming what it is called now where it was renamed. `hdap config` prints one with
every setting at its default (`run_file_template`).
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from hdap.errors import HdapError
from hdap.settings import Exposed, from_parameter, to_parameter
from hdap.stages import NAMES, RENAMED, pipeline_settings


def read_run_file(path: Path) -> dict[str, Any]:
    """The file's settings as pipeline parameters, keyed by parameter name (each value checked for its type)."""
    try:
        data = tomllib.loads(Path(path).read_bytes().decode("utf-8"))  # TOML is UTF-8, whatever the locale says
    except OSError as err:
        raise HdapError(f"cannot read the run configuration {path}: {err.strerror}; fix the path.") from None
    except UnicodeDecodeError as err:
        raise HdapError(f"the run configuration {path} is not UTF-8 text (byte {err.start}): save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as err:
        raise HdapError(f"the run configuration {path} is not valid TOML ({err}): fix it.") from None
    except RecursionError:  # tomllib recurses once per nested array or table
        raise HdapError(f"the run configuration {path} nests arrays or tables too deeply for a TOML reader: flatten it.") from None
    settings = {e.section_key: e for e in pipeline_settings()}
    parameters: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in NAMES:
            for field, item in value.items():
                parameters[_name(settings, (key, field), path)] = item
        else:
            parameters[_name(settings, ("", key), path)] = value
    by_name = {e.name: e for e in settings.values()}
    return {name: to_parameter(from_parameter(value, by_name[name].annotation, name)) for name, value in parameters.items()}


def _name(settings: dict, section_key: tuple[str, str], path: Path) -> str:
    """The parameter name of a [section] key; an unknown one is refused, saying where the setting goes."""
    if section_key in settings:
        return settings[section_key].name
    section, key = section_key
    where = f"[{section}] {key}" if section else key
    name = f"{section}_{key}" if section else key
    by_name = {e.name: e for e in settings.values()}
    meant = RENAMED.get(name) or RENAMED.get(key) or next(iter(difflib.get_close_matches(name, list(by_name), n=1)), None)
    if meant is None:
        raise HdapError(f"the run configuration {path} names {where}, which is not a setting: `hdap config` prints them all.")
    table, right = by_name[meant].section_key
    raise HdapError(f"the run configuration {path} names {where}, which is not a setting: did you mean "
                    f"{f'[{table}] {right}' if table else right} ({meant})?")


def run_file_template() -> str:
    """A run file with every setting at its default and its help as a comment (it reads back as the defaults)."""
    lines = ["# hdap run configuration: `hdap run --config <this file>`. Every setting is at its default; delete what you",
             "# do not change. Shared settings come first, then each stage's own in its table.", ""]
    section = ""
    for setting in pipeline_settings():
        table, key = setting.section_key
        if table != section:
            lines += ["", f"[{table}]"]
            section = table
        lines += [f"# {setting.help}", f"{key} = {_toml(setting)}"]
    return "\n".join(lines) + "\n"


def _toml(setting: Exposed) -> str:
    value = to_parameter(setting.default)
    if isinstance(setting.default, tuple):
        return "[" + ", ".join(str(v) for v in setting.default) + "]"
    return repr(value) if isinstance(value, (int, float)) else '"' + str(value).replace('"', '\\"') + '"'

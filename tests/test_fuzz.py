"""Property-based fuzzing (issue 19): the telemetry reader (Parquet and JSON lines) and the run configuration file.

Hostile input may be refused, never crash: the reader quarantines a row with a reason or lists the object
(`UnreadableObject`), the run file raises one HdapError sentence. Everything runs in-process, not through
the store, and deterministically (`derandomize`): the whole file takes seconds, well under CI's 2 minutes.
"""

from __future__ import annotations

import io
import json
import math
import os
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hdap.errors import HdapError
from hdap.fleet.ingest import UnreadableObject, combine, read_rows
from hdap.fleet.quarantine import ObjectReason
from hdap.fleet.schema import TELEMETRY_SCHEMA
from hdap.fleet.simulate import simulate_chunk
from hdap.fleet.sku import get_sku
from hdap.run_file import read_run_file
from hdap.stages import NAMES, RunSettings, pipeline_settings
from tests.fixtures import AS_OF, SIMULATION_END

SKU = "jetson-xavier-nx"
# HDAP_FUZZ_EXAMPLES=5000 fuzzes longer on a laptop; CI keeps the default: about 12 s on 2 cores.
FUZZ = settings(max_examples=int(os.environ.get("HDAP_FUZZ_EXAMPLES", "300")), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
GOOD = [row for _, table in simulate_chunk(get_sku(SKU), 0, 2, 2, SIMULATION_END, seed=5).days for row in table.to_pylist()]
COLUMNS = [f.name for f in TELEMETRY_SCHEMA]

# -- telemetry --------------------------------------------------------------------------------
odd_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "\n", "a/../../evil", "..", "<b>x</b>", "NaN", "inf", "-0", "1e999", "0001-01-01T00:00:00+00:00",
                     "1970-01-01T00:00:00Z", "9999-12-31T23:59:59+14:00", "2026-11-20T12:00:00", "\u2028", "\x00", "x" * 5000]),
)
hostile = st.one_of(
    st.none(), st.booleans(), odd_text,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def rows(draw: st.DrawFn) -> list[dict]:
    """Good rows, some of them changed: hostile values, columns dropped, columns added."""
    out = []
    for template in draw(st.lists(st.sampled_from(GOOD), min_size=0, max_size=6)):
        row = dict(template)
        for name in draw(st.lists(st.sampled_from(COLUMNS), max_size=4)):
            if draw(st.booleans()):
                row.pop(name, None)
            else:
                row[name] = draw(hostile)
        row.update(draw(st.dictionaries(st.text(max_size=8), hostile, max_size=2)))
        out.append(row)
    return out


def json_text(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


@st.composite
def json_lines(draw: st.DrawFn) -> bytes:
    lines = [json.dumps({k: json_text(v) for k, v in row.items()}) for row in draw(rows())]
    lines += draw(st.lists(st.one_of(st.text(max_size=30), st.just("[" * 5000), st.just('{"a": ' + "1" * 5000 + "}")), max_size=3))
    data = "\n".join(draw(st.permutations(lines))).encode()
    return data if draw(st.booleans()) else data[: draw(st.integers(0, len(data)))]


# Column types a writer could choose for any column; values of the type, hostile within it.
TYPED = {
    pa.string(): odd_text,
    pa.float64(): st.floats(allow_nan=True, allow_infinity=True),
    pa.float32(): st.floats(width=32, allow_nan=True, allow_infinity=True),
    pa.int64(): st.integers(min_value=-(2**63), max_value=2**63 - 1),
    pa.int8(): st.integers(min_value=-128, max_value=127),
    pa.bool_(): st.booleans(),
    pa.binary(): st.binary(max_size=8),
    pa.timestamp("ms"): st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    pa.timestamp("s", tz="UTC"): st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(timezone.utc)),
    pa.date32(): st.dates(),
    pa.list_(pa.int32()): st.lists(st.integers(-100, 100), max_size=2),
    pa.struct([("a", pa.int8())]): st.fixed_dictionaries({"a": st.integers(-128, 127)}),
    pa.map_(pa.string(), pa.int8()): st.lists(st.tuples(st.text(max_size=3), st.integers(-128, 127)), max_size=2),
    pa.dictionary(pa.int32(), pa.string()): odd_text,
    pa.large_string(): odd_text,
    pa.decimal128(12, 2): st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False),
    pa.duration("s"): st.timedeltas(min_value=timedelta(days=-10**5), max_value=timedelta(days=10**5)),
    pa.time32("s"): st.times().map(lambda t: t.replace(microsecond=0)),
    pa.null(): st.none(),
}


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    """The good rows as Parquet writes them, with some columns retyped (every row hostile in it) or dropped."""
    table = pa.Table.from_pylist(draw(st.lists(st.sampled_from(GOOD), min_size=0, max_size=6)), schema=pa.schema(
        [pa.field(f.name, pa.int64() if f.name == "schema_version" else f.type) for f in TELEMETRY_SCHEMA]))
    for name in draw(st.lists(st.sampled_from(COLUMNS), max_size=3, unique=True)):
        index = table.schema.get_field_index(name)
        kind = draw(st.sampled_from(list(TYPED)))
        if draw(st.booleans()) and kind != pa.null():
            table = table.remove_column(index)
        else:
            values = draw(st.lists(st.one_of(st.none(), TYPED[kind]), min_size=table.num_rows, max_size=table.num_rows))
            table = table.set_column(index, name, pa.array(values, type=kind))
    return table


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def check_read(data: bytes, uri: str, rows_in: int | None) -> None:
    """The properties every object must have: refused whole with a reason, or every row valid or quarantined with one."""
    try:
        part = read_rows(data, uri, SKU, AS_OF)
    except UnreadableObject as err:
        assert err.problem.reason is ObjectReason.UNPARSEABLE and str(err)
        event("object listed as unparseable")
        return
    except HdapError as err:  # the one error that stops ingest: a schema version hdap does not read
        assert "schema version" in str(err)
        event("stopped: schema version")
        return
    if rows_in is not None:
        assert part.rows == rows_in
    reasons = part.quarantine.column("reason").to_pylist()
    assert all(isinstance(r, str) and r for r in reasons)
    features, quarantine, valid = combine([part], get_sku(SKU))
    event(f"rows read: {'some valid' if valid else 'none valid'}, {'some' if quarantine.num_rows else 'none'} quarantined")
    assert valid + quarantine.num_rows == part.rows
    assert features.num_rows <= valid
    for name in features.column_names:  # what clustering reads: no NaN or infinity slipped through
        if pa.types.is_floating(features.schema.field(name).type):
            assert all(math.isfinite(v) for v in features.column(name).to_pylist()), name


@FUZZ
@given(json_lines())
def test_json_lines_are_read_or_quarantined_row_by_row(data: bytes) -> None:
    check_read(data, "s3://b/t/a.jsonl", sum(1 for line in data.split(b"\n") if line.strip()))


@FUZZ
@given(parquet_tables())
def test_parquet_of_any_column_types_is_read_or_quarantined_row_by_row(table: pa.Table) -> None:
    check_read(parquet_bytes(table), "s3://b/t/a.parquet", table.num_rows)


@FUZZ
@given(parquet_tables(), st.data())
def test_damaged_parquet_is_listed_or_read_never_a_crash(table: pa.Table, data: st.DataObject) -> None:
    raw = bytearray(parquet_bytes(table))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    check_read(bytes(raw), "s3://b/t/a.PARQUET", None)


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(["a.parquet", "a.jsonl", "a.json", "a.ndjson"]))
def test_random_bytes_are_listed_or_quarantined_never_a_crash(data: bytes, name: str) -> None:
    check_read(data, f"s3://b/t/{name}", None)


# -- the run configuration file ----------------------------------------------------------------
DEFAULTS = {e.section_key: e.default_parameter for e in pipeline_settings()}
SETTING_KEYS = list(DEFAULTS)


def toml_value(value: object) -> str:
    """A value as TOML writes it (json.dumps' strings and escapes are TOML's basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (int, datetime, date, time)):
        return value.isoformat() if not isinstance(value, int) else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


toml_scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(), odd_text,
    st.datetimes(timezones=st.one_of(st.none(), st.just(timezone.utc), st.just(timezone(timedelta(hours=-7))))),
    st.dates(), st.times(),
)
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=2)), max_leaves=6)
keys = st.one_of(st.sampled_from(SETTING_KEYS), st.tuples(st.sampled_from(["", *NAMES, "nope"]), st.text(max_size=12)))


@st.composite
def run_files(draw: st.DrawFn) -> str:
    """Settings at their right place or not, of any TOML type."""
    tables: dict[str, dict[str, object]] = {}
    for section, key in draw(st.lists(keys, max_size=6)):
        known = (section, key) in DEFAULTS  # its default half the time: a file of good settings and one hostile value
        tables.setdefault(section, {})[key] = draw(st.one_of(st.just(DEFAULTS[section, key]), toml_values) if known else toml_values)
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in tables.pop("", {}).items()]
    for section, items in tables.items():
        lines += [f"[{json.dumps(section)}]", *(f"{json.dumps(k)} = {toml_value(v)}" for k, v in items.items())]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "run.toml"


def check_run_file(path: Path) -> None:
    """Read, then checked as `hdap run --config` checks it: settings, or one HdapError sentence."""
    try:
        RunSettings.from_parameters(read_run_file(path))
        event("run file accepted")
    except HdapError as err:
        event("run file refused")
        assert str(err).endswith((".", "?")) and "\n" not in str(err).strip(), str(err)


@FUZZ
@given(run_files())
def test_a_run_file_of_any_settings_and_types_gives_settings_or_one_sentence(run_file: Path, text: str) -> None:
    run_file.write_text(text)
    check_run_file(run_file)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.sampled_from([b"a = " + b"[" * 5000, b"[" * 3000 + b"a]", b"x = {" * 2000, b"\xff\xfe= 1", b"seed = 1\x00"])))
def test_a_run_file_of_any_bytes_gives_one_sentence(run_file: Path, data: bytes) -> None:
    run_file.write_bytes(data)
    check_run_file(run_file)

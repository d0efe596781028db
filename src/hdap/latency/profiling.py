"""Build predictors' data: sample layer configurations from a model and time them on a backend.

The plan is stratified: every prunable layer shape gets samples at every precision the target
runs, with input and output channels drawn from one granule up to the original count. Channel
counts move in granules (the search prunes in the same granules), because hardware kernels are
tuned to them: off-granule counts can be slower than larger aligned ones, which no monotone
model could follow. A configuration that fails is recorded with its reason, not fatal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute is only there once imported)

from hdap.errors import HdapError
from hdap.latency.backends.base import Backend, MeasurementFailed
from hdap.latency.layers import LayerConfig, LayerShape
from hdap.progress import progress

log = logging.getLogger("hdap")

PROFILE_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("op", pa.string()),
        ("in_channels", pa.int32()),
        ("out_channels", pa.int32()),
        ("kernel_size", pa.int32()),
        ("stride", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("precision", pa.string()),
        ("latency_ms", pa.float64()),
        ("status", pa.string()),  # ok | failed
        ("reason", pa.string()),
    ]
)


@dataclass(frozen=True)
class PlannedConfig:
    layer: str
    config: LayerConfig


def _channels(rng: np.random.Generator, original: int, granule: int) -> int:
    if original <= granule:
        return original
    return int(rng.integers(1, original // granule + 1)) * granule


def plan_profile(
    layers: list[LayerShape],
    precisions: tuple[str, ...],
    samples_per_layer: int,
    granule: int = 8,
    seed: int = 0,
    protect_input: bool = True,
) -> list[PlannedConfig]:
    """Sample configurations of every layer at every precision; the model's input channels
    (an image's 3) are fixed when `protect_input`."""
    rng = np.random.default_rng(seed)
    planned: list[PlannedConfig] = []
    for index, shape in enumerate(layers):
        for precision in precisions:
            seen: set[tuple[int, int]] = set()
            # The original layer always, then distinct random prunings of it.
            candidates = [(shape.in_channels, shape.out_channels)]
            for _ in range(samples_per_layer * 4):
                cin = shape.in_channels if (protect_input and index == 0) else _channels(rng, shape.in_channels, granule)
                candidates.append((cin, _channels(rng, shape.out_channels, granule)))
            for cin, cout in candidates:
                if shape.op == "depthwise":
                    cin = cout
                if (cin, cout) in seen:
                    continue
                seen.add((cin, cout))
                planned.append(PlannedConfig(shape.name, shape.config(cin, cout, precision)))
                if len(seen) == samples_per_layer:
                    break
    return planned


def _quietest_rounds(measure, count: int, rounds: int, seed: int, description: str) -> tuple[list[float | None], list[str | None]]:
    """Time items 0..count-1 with `measure(index)` in `rounds` shuffled rounds; per item the
    quietest round's latency (None if no round timed it) and the reason it failed."""
    if rounds < 1:
        raise HdapError(f"rounds={rounds}: profiling needs at least one round.")
    rng = np.random.default_rng(seed)
    best: list[float | None] = [None] * count
    reasons: list[str | None] = [None] * count
    unbuildable: set[int] = set()  # failed to build or run: another round cannot help
    visits = [int(i) for _ in range(rounds) for i in rng.permutation(count)]
    for index in progress(visits, description):
        if index in unbuildable:
            continue
        try:
            latency = float(measure(index))
        except MeasurementFailed as err:
            reasons[index] = str(err)
            unbuildable.add(index)
            continue
        if not np.isfinite(latency) or latency <= 0:
            reasons[index] = f"timing gave {latency} ms"  # a glitch: a later round may time it
            continue
        best[index] = latency if best[index] is None else min(best[index], latency)
    return best, reasons


def run_profile(backend: Backend, plan: list[PlannedConfig], rounds: int = 1, seed: int = 0, description: str = "profiling") -> pa.Table:
    """Time every planned configuration; failures are rows with status 'failed' and a reason.

    With several rounds, each round visits the plan in a new random order and a configuration's
    latency is its quietest round's median. On a shared machine the speed drifts by tens of
    percent over seconds; other load only ever adds time, and shuffling spreads a slow spell
    over all layers instead of biasing the ones measured during it.
    """
    best, reasons = _quietest_rounds(lambda i: backend.measure(plan[i].config), len(plan), rounds, seed,
                                     f"{description}: {len(plan)} layer configurations x {rounds} on {backend.name}")
    rows = []
    for item, latency, reason in zip(plan, best, reasons):
        failed = latency is None  # a configuration counts if any round timed it
        rows.append({"layer": item.layer, **item.config.as_dict(), "latency_ms": latency,
                     "status": "failed" if failed else "ok", "reason": (reason or "never timed") if failed else None})
    failures = sum(b is None for b in best)
    if failures:
        log.warning("%d of %d configurations could not be timed on %s (see the profile's reason column)", failures, len(plan), backend.name)
    return pa.Table.from_pylist(rows, schema=PROFILE_SCHEMA)


def time_models(backend: Backend, models: list[list[LayerConfig]], rounds: int = 1, seed: int = 0,
                description: str = "timing whole models") -> list[float | None]:
    """Whole models (chains of layers) timed as `run_profile` times layers: shuffled rounds, the
    quietest round's latency; None (logged with its reason) where no round could time one."""
    def measure(index: int) -> float:
        chain = models[index]
        if hasattr(backend, "measure_chain"):
            return backend.measure_chain(chain)
        return sum(backend.measure(c) for c in chain)

    best, reasons = _quietest_rounds(measure, len(models), rounds, seed, f"{description}: {len(models)} x {rounds} on {backend.name}")
    for index, (latency, reason) in enumerate(zip(best, reasons)):
        if latency is None:
            log.warning("whole model %d could not be timed on %s (%s): skipped", index, backend.name, reason or "never timed")
    return best


def time_graphs(backend, graphs: list, rounds: int = 1, seed: int = 0, description: str = "timing whole models") -> list[float | None]:
    """Whole ONNX models timed as `run_profile` times layers (a backend with `measure_graph`)."""
    best, _ = _quietest_rounds(lambda i: backend.measure_graph(graphs[i]), len(graphs), rounds, seed,
                               f"{description}: {len(graphs)} x {rounds} on {backend.name}")
    return best


def profile_configs(profile: pa.Table) -> tuple[list[LayerConfig], np.ndarray]:
    """The successfully timed configurations of a profile and their latencies."""
    ok = profile.filter(pa.compute.equal(profile.column("status"), "ok")).to_pylist()
    configs = [
        LayerConfig(r["op"], r["in_channels"], r["out_channels"], r["kernel_size"], r["stride"], r["height"], r["width"], r["precision"])
        for r in ok
    ]
    return configs, np.array([r["latency_ms"] for r in ok])


def models_table(models: list[list[LayerConfig]], latencies: list[float | None]) -> pa.Table:
    """Timed whole models as rows, one per layer: the model's index, the layer and the model's latency."""
    rows = [{"model": index, "position": position, **config.as_dict(), "model_latency_ms": latency}
            for index, (chain, latency) in enumerate(zip(models, latencies)) if latency is not None
            for position, config in enumerate(chain)]
    return pa.Table.from_pylist(rows)


def timed_models(table: pa.Table) -> list[tuple[list[LayerConfig], float]]:
    """`models_table` read back: each model's layers in order, and its latency."""
    models: dict[int, tuple[list, float]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r["model"], r["position"])):
        chain, _ = models.setdefault(row["model"], ([], row["model_latency_ms"]))
        chain.append(LayerConfig(row["op"], row["in_channels"], row["out_channels"], row["kernel_size"], row["stride"],
                                 row["height"], row["width"], row["precision"]))
    return list(models.values())

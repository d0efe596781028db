"""A cluster's surrogate latency model: differentiable, monotone in channels, saved as plain JSON.

One model per cluster, trained on its representative's profile. (One model conditioned on the
cluster centroid would share data between clusters, but clusters differ in kind, not only in
degree: a throttled GPU, a busy CPU and a low power mode move different terms. Per-cluster
models stay exact where it matters and need no data from other clusters.)

Per layer shape (op, kernel, stride, input size) and precision, latency is a roofline:

    t = b0 + ((a_c * MACs)^p + (a_i * inputs + a_o * outputs + a_w * weights)^p)^(1/p)

MACs count channels rounded up to the group's tiles (tensor-core and SIMD kernels work in
tiles, so latency is a staircase in channels). Input and output channels have tiles of their
own, and input channels below one tile may run unpadded: ONNX Runtime's blocked (NCHWc) CPU
convolutions pad both to 16 on AVX-512, except an input narrower than a block, which a kernel
of its own reads as it is (measured: 8 input channels cost 0.6x of 16, 24 the same as 32).
Every coefficient is non-negative and p >= 1, so the model is monotone non-decreasing in input
and output channels. In PyTorch, channel counts may be soft (expected kept channels during the
search): the tile rounding passes gradients straight through, and a precision mix weighs each
precision's latency.

A whole model is not the sum of its layers timed alone (each of those paid a whole run's
overhead), so its per-model terms are fitted on a few measured whole models, some of them mixing
precisions:

    model = offset + sum over layers (scale_p * (t_layer - floor) + per_layer) + boundaries

with `floor` the cheapest layer timed alone (so `per_layer` >= 0 is what the cheapest layer adds
inside a model: removing a layer never makes the model slower), a scale per precision, and, at
each change of precision between layers, a non-negative cost per activation element (a dequantize
and a quantize). Boundaries between layers of one precision are left to the scales: fitted as
well, on 18 models of a CPU's states, they took one state's whole cost from the layers, and the
search then saw nothing it could make faster. (A fixed cost for using int8 at all fits a small
CPU model better still, but a search cannot follow it: a soft "any layer is int8" stays near 1
until every layer leaves int8 together, so no one layer's gradient sees it.) Where these terms
cannot match every timed model, the fit favours those that keep every layer (`WHOLE_MODEL_WEIGHT`):
the uncompressed model and the whole model at one precision anchor every speed-up and every search.

Fitting is two steps: non-negative least squares of relative error with p = 1 (convex, so it
cannot land in a bad local optimum) for every tile candidate, then a gradient refinement of all
coefficients and p from that start, kept only where it lowers the error. CPUs come out near
p = 1 (their costs add up), roofline devices with a large p (the slower resource dominates).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

from hdap.errors import HdapError
from hdap.latency.layers import LayerConfig

FORMAT = "hdap.latency-surrogate/4"  # /2 in_tile, in_unpadded_below_tile; /3 layer_offset_ms; /4 per-precision terms
# /1: one tile, always padded; /2: no per-layer offset; /3: one scale, no floor, no precision costs (the defaults)
READABLE_FORMATS = ("hdap.latency-surrogate/1", "hdap.latency-surrogate/2", "hdap.latency-surrogate/3", FORMAT)
GroupKey = tuple[str, int, int, int, int, str]  # op, kernel size, stride, height, width, precision


def group_key(config: LayerConfig, precision: str | None = None) -> GroupKey:
    return (config.op, config.kernel_size, config.stride, config.height, config.width, precision or config.precision)


TILE_CANDIDATES = (1, 4, 8, 16, 32)


def straight_through_ceil(channels: torch.Tensor, tile: int | torch.Tensor,
                          unpadded_below_tile: bool | torch.Tensor = False) -> torch.Tensor:
    """Round up to a multiple of `tile` going forward (but leave counts below one tile as they
    are where `unpadded_below_tile`); gradient as if unrounded. Monotone either way."""
    rounded = torch.ceil(channels / tile - 1e-6) * tile
    rounded = torch.where(torch.as_tensor(unpadded_below_tile) & (channels < tile), channels, rounded)
    return channels + (rounded - channels).detach()


@dataclass(frozen=True)
class LayerWork:
    """A layer's roofline terms: multiply-accumulates on channels rounded up to tiles, and the
    elements it reads and writes (its input as channels x area, likewise its output)."""

    macs: torch.Tensor
    in_channels: torch.Tensor
    in_area: torch.Tensor | int
    out_channels: torch.Tensor
    out_area: torch.Tensor | int
    weights: torch.Tensor


def layer_work(depthwise: bool | torch.Tensor, kernel_area: int | torch.Tensor, in_area: int | torch.Tensor,
               out_area: int | torch.Tensor, cin: torch.Tensor, cout: torch.Tensor, tile: int | torch.Tensor,
               input_tile: int | torch.Tensor, in_unpadded_below_tile: bool | torch.Tensor = False) -> LayerWork:
    """The terms of a layer (or of many: every argument broadcasts) on channels rounded up to
    tiles. A depthwise layer reads one input channel per output channel and has no input tile."""
    depthwise = torch.as_tensor(depthwise)
    cin = torch.where(depthwise, cout, cin)
    tiled_out = straight_through_ceil(cout, tile)
    tiled_in = straight_through_ceil(cin, input_tile, in_unpadded_below_tile)
    tiled_in = torch.where(depthwise, torch.ones_like(tiled_in), tiled_in)
    macs = out_area * kernel_area * tiled_out * tiled_in
    weights = kernel_area * cout * torch.where(depthwise, torch.ones_like(cin), cin)
    return LayerWork(macs, cin, in_area, cout, out_area, weights)


def roofline_ms(model: GroupModel, work: LayerWork) -> torch.Tensor:
    """t = b0 + ((a_c * MACs)^p + (a_i * inputs + a_o * outputs + a_w * weights)^p)^(1/p), the one
    place the roofline is written: for a layer, a profile's configurations while fitting, and every
    cluster x precision x layer of the search's cost (`CompiledFleetCost`, whose model holds tensors)."""
    compute = model.compute_ms_per_gmac * work.macs / 1e9
    memory = (model.input_ms_per_melement * work.in_channels * work.in_area
              + model.output_ms_per_melement * work.out_channels * work.out_area + model.weight_ms_per_melement * work.weights) / 1e6
    p = model.sharpness
    # (c^p + m^p)^(1/p) computed stably as max * (1 + (min/max)^p)^(1/p).
    big = torch.maximum(compute, memory).clamp_min(1e-12)
    small = torch.minimum(compute, memory)
    return model.overhead_ms + big * (1 + (small / big) ** p) ** (1 / p)


@dataclass
class GroupModel:
    tile: int  # output channels' tile (and the input channels', unless in_tile is set)
    overhead_ms: float
    compute_ms_per_gmac: float
    input_ms_per_melement: float
    output_ms_per_melement: float
    weight_ms_per_melement: float
    sharpness: float  # p: 1 adds compute and memory time, large takes their maximum
    in_tile: int = 0  # input channels' tile; 0: the same as `tile`
    in_unpadded_below_tile: bool = False  # fewer input channels than one tile run unpadded

    @property
    def input_tile(self) -> int:
        return self.in_tile or self.tile

    def latency(self, op: str, kernel_size: int, stride: int, height: int, width: int, cin: torch.Tensor, cout: torch.Tensor) -> torch.Tensor:
        out_area = -(-height // stride) * -(-width // stride)
        work = layer_work(op == "depthwise", kernel_size**2, height * width, out_area, cin, cout, self.tile, self.input_tile,
                          self.in_unpadded_below_tile)
        return roofline_ms(self, work)


@dataclass
class LayerDecision:
    """One layer as the search holds it: its shape, soft channel counts, a soft precision choice."""

    config: LayerConfig  # the original layer (its static shape)
    in_channels: torch.Tensor
    out_channels: torch.Tensor
    precision_probs: torch.Tensor  # over the cost model's precisions
    # The probability the layer exists at all: below 1 where the search may remove the residual
    # branch it belongs to (a removed layer costs nothing, not even its launch).
    present: torch.Tensor | float = 1.0


def transition_key(before: str, after: str) -> str:
    return f"{before}>{after}"


@dataclass
class LatencySurrogate:
    groups: dict[GroupKey, GroupModel]
    model_scale: float = 1.0
    model_offset_ms: float = 0.0
    transition_ms_per_melement: dict[str, float] = field(default_factory=dict)  # "fp32>int8" -> ms per 1e6 elements
    device: dict = field(default_factory=dict)  # what was profiled: backend and device state
    # Per layer present in a model, beside its scaled time above the floor (fitted on whole models
    # of varied depth; 0 where none were timed; negative in /3 surrogates, whose floor is 0).
    layer_offset_ms: float = 0.0
    layer_floor_ms: float = 0.0  # the cheapest layer timed alone
    precision_scale: dict[str, float] = field(default_factory=dict)  # per precision; model_scale where absent

    def scale_of(self, precision: str) -> float:
        return self.precision_scale.get(precision, self.model_scale)

    # -- prediction ---------------------------------------------------------------------------
    def group(self, config: LayerConfig, precision: str | None = None) -> GroupModel:
        key = group_key(config, precision)
        try:
            return self.groups[key]
        except KeyError:
            op, k, stride, h, w, p = key
            raise HdapError(
                f"the latency surrogate has no data for {op} {k}x{k}/{stride} layers on {h}x{w} inputs at {p}: "
                "profile this model's layers with that precision in the target's menu."
            ) from None

    def layer_latency(self, config: LayerConfig, in_channels: torch.Tensor | float | None = None,
                      out_channels: torch.Tensor | float | None = None, precision: str | None = None) -> torch.Tensor:
        """Latency (ms) of a layer with (possibly soft) channel counts at one precision."""
        cin = torch.as_tensor(config.in_channels if in_channels is None else in_channels, dtype=torch.float64)
        cout = torch.as_tensor(config.out_channels if out_channels is None else out_channels, dtype=torch.float64)
        model = self.group(config, precision)
        return model.latency(config.op, config.kernel_size, config.stride, config.height, config.width, cin, cout)

    def predict(self, config: LayerConfig) -> float:
        with torch.no_grad():
            return float(self.layer_latency(config))

    def predict_model(self, configs: list[LayerConfig]) -> float:
        """A whole chain of layers at hard choices (what a fine-tuned model will be)."""
        terms = model_terms(self, configs)
        return float(sum(self.scale_of(p) * terms.get(f"above_floor:{p}", 0.0) for p in _precisions(terms))
                     + self.model_offset_ms + self.layer_offset_ms * terms["count"]
                     + sum(self.transition_ms_per_melement.get(k, 0.0) * v for k, v in terms.items() if ">" in k))

    def model_cost(self, decisions: list[LayerDecision], precisions: tuple[str, ...]) -> torch.Tensor:
        """Expected latency (ms) of a chain of soft layer decisions: differentiable in every
        soft channel count and precision probability."""
        total = self.model_offset_ms + self.layer_offset_ms * sum(d.present for d in decisions)
        for i, p in enumerate(precisions):
            above = sum(d.present * d.precision_probs[i] * (self.layer_latency(d.config, d.in_channels, d.out_channels, p)
                                                           - self.layer_floor_ms) for d in decisions)
            total = total + self.scale_of(p) * above
        for before, after in zip(decisions[:-1], decisions[1:]):
            elements = before.out_channels * before.config.out_height * before.config.out_width / 1e6
            for i, p in enumerate(precisions):
                for j, q in enumerate(precisions):
                    coefficient = self.transition_ms_per_melement.get(transition_key(p, q), 0.0)
                    if coefficient:
                        total = total + coefficient * elements * before.precision_probs[i] * after.precision_probs[j]
        return total

    # -- saving -------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "model_scale": self.model_scale,
            "model_offset_ms": self.model_offset_ms,
            "layer_offset_ms": self.layer_offset_ms,
            "layer_floor_ms": self.layer_floor_ms,
            "precision_scale": self.precision_scale,
            "transition_ms_per_melement": self.transition_ms_per_melement,
            "device": self.device,
            "groups": [{"op": op, "kernel_size": k, "stride": st, "height": h, "width": w, "precision": p, **asdict(g)}
                       for (op, k, st, h, w, p), g in sorted(self.groups.items())],
        }

    @classmethod
    def from_json(cls, data: dict) -> LatencySurrogate:
        if data.get("format") not in READABLE_FORMATS:
            raise HdapError(f"this is not a latency surrogate hdap can read (format {data.get('format')!r}, expected {FORMAT}).")
        groups = {}
        for entry in data["groups"]:
            entry = dict(entry)
            key = (entry.pop("op"), int(entry.pop("kernel_size")), int(entry.pop("stride")), int(entry.pop("height")),
                   int(entry.pop("width")), entry.pop("precision"))
            groups[key] = GroupModel(**entry)
        return cls(groups, data["model_scale"], data["model_offset_ms"], data.get("transition_ms_per_melement", {}),
                   data.get("device", {}), data.get("layer_offset_ms", 0.0), data.get("layer_floor_ms", 0.0),
                   data.get("precision_scale", {}))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> LatencySurrogate:
        return cls.from_json(json.loads(Path(path).read_text()))


# -- fitting ----------------------------------------------------------------------------------
_FIELDS = ("overhead_ms", "compute_ms_per_gmac", "input_ms_per_melement", "output_ms_per_melement", "weight_ms_per_melement")


def _terms(configs: list[LayerConfig], tile: int, in_tile: int, in_unpadded: bool) -> np.ndarray:
    """Per configuration of one group (one layer shape): 1, GMACs (tiled), input, output and weight
    elements (millions): the roofline's terms at p = 1, for a linear fit."""
    c = configs[0]
    work = layer_work(c.op == "depthwise", c.kernel_size**2, c.height * c.width, c.out_height * c.out_width,
                      torch.tensor([float(x.in_channels) for x in configs], dtype=torch.float64),
                      torch.tensor([float(x.out_channels) for x in configs], dtype=torch.float64), tile, in_tile, in_unpadded)
    columns = [torch.ones_like(work.macs), work.macs / 1e9, work.in_channels * work.in_area / 1e6,
               work.out_channels * work.out_area / 1e6, work.weights / 1e6]
    return torch.stack(columns, dim=1).numpy()


def _log_error(model: GroupModel, configs: list[LayerConfig], latencies: np.ndarray) -> float:
    predicted = np.array([float(_predict(model, c)) for c in configs])
    return float(np.mean(np.log(predicted / latencies) ** 2))


def _predict(model: GroupModel, c: LayerConfig) -> torch.Tensor:
    return model.latency(c.op, c.kernel_size, c.stride, c.height, c.width,
                         torch.tensor(float(c.in_channels), dtype=torch.float64), torch.tensor(float(c.out_channels), dtype=torch.float64))


def _additive_fit(configs: list[LayerConfig], latencies: np.ndarray, tile: int, in_tile: int,
                  in_unpadded: bool) -> tuple[GroupModel, float]:
    """p = 1: latency is linear in the terms; NNLS on rows scaled to relative error. Returns
    the model and its mean squared log error."""
    terms = _terms(configs, tile, in_tile, in_unpadded)
    weights = 1.0 / latencies
    coefficients, _ = nnls(terms * weights[:, None], latencies * weights)
    overhead, compute, inputs, outputs, weight = (float(v) for v in coefficients)
    predicted = np.maximum(terms @ coefficients, 1e-12)
    model = GroupModel(tile, overhead, compute, inputs, outputs, weight, 1.0, in_tile if in_tile != tile else 0, in_unpadded)
    return model, float(np.mean(np.log(predicted / latencies) ** 2))


def _refine(model: GroupModel, configs: list[LayerConfig], latencies: np.ndarray, steps: int) -> GroupModel:
    """Gradient descent on log-coefficients and p, from the additive fit's coefficients and
    p = 3 (at p = 1 exactly the gradient in p vanishes for terms that are zero)."""
    start = [max(getattr(model, f), 1e-9) for f in _FIELDS]
    raw = torch.tensor([math.log(v) for v in start] + [math.log(2.0)], dtype=torch.float64, requires_grad=True)
    cin = torch.tensor([float(c.in_channels) for c in configs], dtype=torch.float64)
    cout = torch.tensor([float(c.out_channels) for c in configs], dtype=torch.float64)
    target = torch.log(torch.tensor(latencies, dtype=torch.float64))
    c0 = configs[0]

    def candidate(values: torch.Tensor) -> GroupModel:
        e = torch.exp(values)
        return replace(model, **dict(zip(_FIELDS, e[:5])), sharpness=1 + e[5])  # tiles kept

    def loss() -> torch.Tensor:
        predicted = candidate(raw).latency(c0.op, c0.kernel_size, c0.stride, c0.height, c0.width, cin, cout)
        return ((torch.log(predicted) - target) ** 2).mean()

    optimizer = torch.optim.LBFGS([raw], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        fitted = candidate(raw)
    return replace(fitted, **{f: float(getattr(fitted, f)) for f in _FIELDS}, sharpness=float(fitted.sharpness))


def fit_group(configs: list[LayerConfig], latencies: np.ndarray, steps: int = 200) -> GroupModel:
    """The best of: the additive fit at each candidate of output tile, input tile and whether
    narrow inputs run unpadded, and the best one's refinement with free p."""
    candidates = [(tile, in_tile, unpadded) for tile in TILE_CANDIDATES for in_tile in TILE_CANDIDATES
                  for unpadded in ((False, True) if in_tile > 1 else (False,))]
    additive, _ = min((_additive_fit(configs, latencies, *c) for c in candidates), key=lambda fit: fit[1])
    refined = _refine(additive, configs, latencies, steps)
    return min((additive, refined), key=lambda m: _log_error(m, configs, latencies) if np.isfinite(m.sharpness) else math.inf)


def fit_surrogate(configs: list[LayerConfig], latencies: np.ndarray, device: dict | None = None, steps: int = 200) -> LatencySurrogate:
    """One group model per layer shape and precision."""
    if len(configs) == 0:
        raise HdapError("there are no timed layer configurations to train a latency surrogate on: every profiling run failed.")
    by_group: dict[GroupKey, list[int]] = {}
    for index, config in enumerate(configs):
        by_group.setdefault(group_key(config), []).append(index)
    groups = {key: fit_group([configs[i] for i in indices], np.asarray(latencies)[indices], steps) for key, indices in sorted(by_group.items())}
    return LatencySurrogate(groups, device=device or {})


def model_terms(surrogate: LatencySurrogate, configs: list[LayerConfig]) -> dict[str, float]:
    """A chain's terms: per precision, its layers' predicted time above the floor (`above_floor:<p>`); its
    layer count; per pair of precisions, the activation elements (1e6) crossing between layers (fitted
    only where they differ; /3 surrogates priced all)."""
    terms: dict[str, float] = {"count": float(len(configs))}
    for c in configs:
        terms[f"above_floor:{c.precision}"] = terms.get(f"above_floor:{c.precision}", 0.0) + surrogate.predict(c) - surrogate.layer_floor_ms
    for before, after in zip(configs[:-1], configs[1:]):
        key = transition_key(before.precision, after.precision)
        terms[key] = terms.get(key, 0.0) + before.out_channels * before.out_height * before.out_width / 1e6
    return terms


def _precisions(terms: dict[str, float]) -> list[str]:
    return [k.split(":", 1)[1] for k in terms if k.startswith("above_floor:")]


# How much more a model that keeps every layer and channel counts in the per-model fit than a pruned one.
# The uncompressed model is what every speed-up is measured against, and the whole model at one
# precision is where every search starts and often what is published (the quantised-only point);
# weighted alike, pruned variants pulled the fit 16-36% over the whole int8 model (CIFAR ResNets on
# this machine's CPU states, 2026-12-01, bench/README.md) although the per-model terms
# can match it.
WHOLE_MODEL_WEIGHT = 10.0


def keeps_everything(models: list[list[LayerConfig]]) -> list[bool]:
    """Per model: whether it has every layer of the deepest models, each with as many channels as any model has there."""
    depth = max(len(chain) for chain in models)
    deepest = [chain for chain in models if len(chain) == depth]
    widest = [
        (max(chain[i].in_channels for chain in deepest), max(chain[i].out_channels for chain in deepest))
        for i in range(depth)
    ]
    return [
        len(chain) == depth and all((c.in_channels, c.out_channels) == w for c, w in zip(chain, widest))
        for chain in models
    ]


def fit_model_overhead(surrogate: LatencySurrogate, models: list[tuple[list[LayerConfig], float]]) -> LatencySurrogate:
    """Fit the per-model terms on measured whole models (relative error, the models that keep
    everything weighted `WHOLE_MODEL_WEIGHT`): a scale (>= 0) per precision, an offset, a per-layer
    cost (>= 0, where the models' depths vary) and a cost (>= 0) per change of precision. Fewer than
    two models per term: one scale, the offset and the per-layer cost only."""
    from scipy.optimize import lsq_linear

    surrogate.layer_floor_ms = min(surrogate.predict(c) for configs, _ in models for c in configs)
    terms = [model_terms(surrogate, configs) for configs, _ in models]
    keys = sorted({k for t in terms for k in t})
    scales = [k for k in keys if k.startswith("above_floor:")]
    depth = ["count"] if len({t["count"] for t in terms}) > 1 else []
    transitions = [k for k in keys if ">" in k and len(set(k.split(">"))) == 2]
    columns = [*scales, "offset", *depth, *transitions]
    if len(models) < 2 * len(columns):
        for t in terms:  # one shared scale
            t["above_floor"] = sum(v for k, v in t.items() if k.startswith("above_floor:"))
        columns = ["above_floor", "offset", *depth]
    design = np.array([[1.0 if c == "offset" else t.get(c, 0.0) for c in columns] for t in terms])
    measured = np.array([m for _, m in models])
    weights = np.where(keeps_everything([chain for chain, _ in models]), WHOLE_MODEL_WEIGHT, 1.0) / measured
    lower = [-np.inf if c == "offset" else 0.0 for c in columns]
    solution = lsq_linear(design * weights[:, None], measured * weights, bounds=(lower, [np.inf] * len(columns))).x
    fitted = dict(zip(columns, (float(v) for v in solution)))
    shared = fitted.get("above_floor")
    surrogate.precision_scale = {k.split(":", 1)[1]: v for k, v in fitted.items() if k.startswith("above_floor:")}
    surrogate.model_scale = shared if shared is not None else float(np.mean(list(surrogate.precision_scale.values())))
    surrogate.model_offset_ms = fitted["offset"]
    surrogate.layer_offset_ms = fitted.get("count", 0.0)
    surrogate.transition_ms_per_melement = {k: v for k, v in fitted.items() if ">" in k}
    return surrogate


def within(predicted: np.ndarray, measured: np.ndarray, tolerance: float = 0.10) -> float:
    """Share of predictions within +-tolerance of the measurement."""
    return float(np.mean(np.abs(np.asarray(predicted) / np.asarray(measured) - 1) <= tolerance))

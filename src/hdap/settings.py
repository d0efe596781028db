"""Settings: every knob a user can turn, declared once, with its default, its help and its checks.

A stage's settings are the fields of its config dataclass (`hdap.stages.<stage>`). A field made
with `setting()` is *exposed*: it is a pipeline parameter, a `hdap run` option and a key of the run
configuration file, all named after it: `<stage>_<field>` (`search_targets`, `cluster_k`), or, for
a setting several stages share (`seed`, `model`, `dataset`: the `SHARED` ones below), its own name.
A field made with `internal()` is a hyperparameter of the library's own: Python callers may set
it, the pipeline does not carry it.

Kubeflow carries parameters as text, integers and floats. A typed value (a tuple of targets, an
input shape, a choice, a time) travels as text: `to_parameter` and `from_parameter` convert, and
every config checks its values when it is made, so a bad value is refused in one sentence that
names the setting, wherever it came from.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, ClassVar, TypeVar, Union

from hdap.errors import HdapError
from hdap.fleet.sku import SKUS
from hdap.latency.cpu_states import DEFAULT_CPU_STATES, cpu_states_problem

Shape = tuple[int, int, int]  # a model input: channels, height, width
ParameterValue = Union[str, int, float]  # what a Kubeflow pipeline parameter holds
Check = Callable[[Any], Union[str, None]]  # a value -> what is wrong with it (None: nothing)
SETTING = "hdap.setting"  # dataclass field metadata key
S = TypeVar("S", bound="Settings")


class Choice(str, Enum):
    """A setting with a fixed set of values; its text is the value (`SearchMode.FLEET == "fleet"`)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def choices(cls) -> str:
        values = [member.value for member in cls]
        return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


@dataclass(frozen=True)
class SettingInfo:
    help: str
    check: Check | None = None
    name: str = ""  # the parameter name; "" for <prefix>_<field>


def setting(default: Any, help: str, *, check: Check | None = None, name: str = "") -> Any:
    """An exposed field: a pipeline parameter, a CLI option and a run-file key."""
    return field(default=default, metadata={SETTING: SettingInfo(help, check, name)})


def internal(default: Any) -> Any:
    """A field the library uses but the pipeline does not carry."""
    return field(default=default)


@dataclass(frozen=True)
class Shared:
    """A setting that several stages read (declared once here; each stage's config holds a field made from it)."""

    name: str
    default: Any
    help: str
    check: Check | None = None

    def __call__(self) -> Any:
        return setting(self.default, self.help, check=self.check, name=self.name)


# -- checks -----------------------------------------------------------------------------------
def at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be {low:g} or more"


def between(low: float, high: float, why: str = "") -> Check:
    """A bounded setting; `why` says where the upper bound comes from."""
    return lambda value: None if low <= value <= high else f"must be between {low:g} and {high:g}" + (f" ({why})" if why else "")


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def s3_uri(value: str) -> str | None:
    return None if not value or (value.startswith("s3://") and len(value) > 5 and value[5] != "/") else \
        "is not an object-store URI: write it as s3://bucket/key"


# -- settings several stages share ------------------------------------------------------------
class DatasetName(Choice):
    DIGITS = "digits"  # scikit-learn's 8x8 digits, shipped with it
    CIFAR10 = "cifar10"  # CIFAR-10's python tarball, from the store
    IMAGEFOLDER = "imagefolder"  # a <class>/<image> tree in the store


TELEMETRY_URI = Shared("telemetry_uri", "", "Folder holding the fleet's telemetry objects; empty: s3://hdap/telemetry/<sku>.",
                       check=s3_uri)


def telemetry_folder(telemetry_uri: str, sku: str) -> str:
    """Where a fleet's telemetry lives: the given folder, or the SKU's default one."""
    return telemetry_uri or f"s3://hdap/telemetry/{sku}"



def check_dataset(dataset: DatasetName, dataset_uri: str) -> None:
    """Every dataset but the digits is read from the store: its URI must be given."""
    if dataset is not DatasetName.DIGITS and not dataset_uri:
        raise HdapError(f"dataset={dataset.value} is read from the store: give its s3:// URI as dataset_uri.")


SKU = Shared("sku", "jetson-xavier-nx", f"The fleet's hardware SKU: {', '.join(SKUS)}.",
             check=lambda value: None if value in SKUS else f"is not a SKU hdap knows: use one of {', '.join(SKUS)}")
SEED = Shared("seed", 0, "Random seed of every stage: clustering, profiling plans, data split, training.")
OUTPUT_URI = Shared("output_uri", "s3://hdap/runs", "Where runs write their outputs: <output_uri>/<run name>/<stage>/.",
                    check=lambda v: s3_uri(v) if v else "must name a folder in the store, like s3://hdap/runs")
class Device(Choice):
    AUTO = "auto"  # CUDA where a GPU is visible, else the CPU
    CPU = "cpu"
    CUDA = "cuda"


def _model_name(name: str) -> str | None:
    """Checked for its form here (no torch at config time); an unknown zoo name is refused when the model is built."""
    if re.fullmatch(r"[\w.-]+|torchvision:\w+|[A-Za-z_][\w.]*:[A-Za-z_]\w*", name):
        return None
    return "is not a model: give a zoo name (resnet20, resnet56-a, ...), torchvision:<name>, or a factory package.module:function"


MODEL = Shared("model", "resnet20", "Model to compress: a zoo name (small-cnn, resnet20, resnet56, resnet20-a and resnet56-a "
               "in the paper's option-A form, mobilenetv1, resnet18, resnet50, mobilenetv2, vgg16-bn), torchvision:<name>, or "
               "your factory package.module:function (installed in the step image).", check=_model_name)
DEVICE = Shared("device", Device.AUTO, f"Where training and evaluation run: {Device.choices()} (auto: a GPU when one is "
                "visible, else the CPU).")
INPUT_SHAPE = Shared("input_shape", (1, 8, 8), "Model input, channels,height,width (digits are 1,8,8; CIFAR-10 3,32,32).",
                     check=lambda shape: None if min(shape) >= 1 and shape[0] <= 64 and max(shape[1:]) <= 4096 else
                     "is not an input shape: write channels,height,width, like 3,32,32 (at most 64 channels and 4096 pixels a side)")
DATASET = Shared("dataset", DatasetName.DIGITS, f"Training data: {DatasetName.choices()} (digits ship with scikit-learn; "
                 "the others are read from dataset_uri).")
DATASET_URI = Shared("dataset_uri", "", "The dataset in the store: CIFAR-10's python tarball, or an ImageFolder tree.",
                     check=s3_uri)
TRUTH_URI = Shared("truth_uri", "", "A simulated fleet's hidden truth (its devices' bins and caps): profiles its "
                   "representatives and reports every point's true fleet latency. Empty for a real fleet.", check=s3_uri)
PROFILES_URI = Shared("profiles_uri", "s3://hdap/profiles", "Where device agents upload their profiles (`hdap profile`): "
                      "<profiles_uri>/<device id>/profile.parquet.", check=s3_uri)
ACCURACY_TOLERANCE = Shared("accuracy_tolerance", 0.5, "Accuracy points the chosen architecture may lose against the "
                            "uncompressed model; also the registry's quality gate.", check=at_least(0))
REGISTRY_URI = Shared("registry_uri", "s3://hdap/registry", "The model registry: entries go to "
                      "<registry_uri>/<model>/<run name>/.", check=lambda v: s3_uri(v) if v else "must name a folder in the "
                      "store, like s3://hdap/registry")
CPU_STATES = Shared("cpu_states", DEFAULT_CPU_STATES, "The CPU states of a CPU fleet (sku cpu-onnxruntime), each a cluster of "
                    "its own, and the states the build times both models in: threads (a number or all), +load (+loadN: N busy "
                    "processes beside), @share of the fleet (equal if none given), comma-separated.", check=cpu_states_problem)
# Listed in the order the pipeline and `hdap run --help` show them.
SHARED = (TELEMETRY_URI, SKU, MODEL, INPUT_SHAPE, DATASET, DATASET_URI, ACCURACY_TOLERANCE, SEED, DEVICE, OUTPUT_URI, REGISTRY_URI,
          TRUTH_URI, PROFILES_URI, CPU_STATES)


# -- one setting of a config class --------------------------------------------------------------
@dataclass(frozen=True)
class Exposed:
    """One exposed field of a settings class, as the pipeline, the CLI and the run file see it."""

    name: str  # the parameter name (e.g. search_targets)
    field: str  # the field of the config class (e.g. targets)
    prefix: str  # the stage prefix of the name ("" for a shared setting)
    annotation: Any
    default: Any
    help: str
    check: Check | None

    @property
    def parameter_type(self) -> type:
        """What Kubeflow carries: int, float or str."""
        return parameter_type(self.annotation)

    @property
    def default_parameter(self) -> ParameterValue:
        return to_parameter(self.default)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def section_key(self) -> tuple[str, str]:
        """Where the run file holds it: ([section], key); no section ("") for a shared setting."""
        return (self.prefix, self.field) if self.prefix else ("", self.name)


def parameter_type(annotation: Any) -> type:
    if annotation in (int, float):
        return annotation
    return str


# -- typed values <-> pipeline parameters --------------------------------------------------------
def to_parameter(value: Any) -> ParameterValue:
    """The typed value as a pipeline parameter: text, except integers and floats."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, tuple):
        return ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)  # exact: 0.1234567 stays itself
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None:
        return ""
    return str(value)


def _display(value: Any) -> str:
    """A value as an error message shows it: numbers short (6 digits), text in quotes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, tuple):
        return repr(",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
    return repr(to_parameter(value))


def from_parameter(value: Any, annotation: Any, name: str) -> Any:
    """A pipeline parameter (or a run-file value, or a Python value) as the field's type; an
    HdapError naming the setting where it does not convert."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType) and type(None) in arguments:  # X | None: "" or None is None
        if value is None or value == "":
            return None
        return from_parameter(value, next(a for a in arguments if a is not type(None)), name)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _choice(value, annotation, name)
    if annotation is datetime:
        return value if isinstance(value, datetime) else _time(value, name)
    if origin is tuple:
        return _numbers(value, arguments, name)
    if annotation is bool:
        return _flag(value, name)
    if annotation in (int, float):
        return _number(value, annotation, name)
    if annotation is str:
        if not isinstance(value, str):
            raise HdapError(f"{name}={value!r} is not text: write it in quotes.")
        return value
    return value


def _choice(value: Any, choice: type[Enum], name: str) -> Enum:
    try:
        return choice(value.value if isinstance(value, Enum) else value)
    except ValueError:
        raise HdapError(f"{name}={value!r} is not one of its choices: use {choice.choices()}.") from None


def _time(value: Any, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise HdapError(f"{name}={value!r} is not an ISO-8601 time: write it like 2026-11-20T12:00:00+00:00.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _numbers(value: Any, arguments: tuple, name: str) -> tuple:
    """Comma-separated text (or a list) as a tuple of numbers: any count for tuple[X, ...], else exactly as many."""
    kind, fixed = arguments[0], None if Ellipsis in arguments else len(arguments)
    items = list(value) if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
    try:
        numbers = tuple(_number(item, kind, name) for item in items)
    except HdapError:
        numbers = None
    if numbers is None or (fixed is not None and len(numbers) != fixed):
        shown = ",".join(str(item) for item in items) if isinstance(value, (list, tuple)) else value
        example = "3,32,32" if fixed == 3 else "0.8,0.5,0.3"
        raise HdapError(f"{name}={shown!r} is not {fixed or 'a list of'} numbers separated by commas: write it like {example}.")
    return numbers


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise HdapError(f"{name}={value!r} is not a yes/no value: use true or false.")


def _number(value: Any, kind: type, name: str) -> int | float:
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise HdapError(f"{name}={value!r} is not {'a whole number' if kind is int else 'a number'}.")
    try:
        return kind(value) if not isinstance(value, str) else kind(value.strip())
    except (TypeError, ValueError):
        raise HdapError(f"{name}={value!r} is not {'a whole number' if kind is int else 'a number'}.") from None


# -- the base of every config -------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """A frozen, self-checking set of settings. Subclasses set PREFIX (their exposed fields are
    named <PREFIX>_<field>) and may add `validate()` for checks across fields."""

    PREFIX: ClassVar[str] = ""
    PASSED: ClassVar[tuple[str, ...]] = ()  # internal fields the pipeline passes to the stage's component (not settings)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            info: SettingInfo | None = item.metadata.get(SETTING)
            name = self.parameter_name(item.name)
            value = from_parameter(getattr(self, item.name), hints[item.name], name)
            object.__setattr__(self, item.name, value)
            problem = info.check(value) if info and info.check and value is not None else None
            if problem:
                raise HdapError(f"{name}={_display(value)} {problem}.")
        self.validate()

    def validate(self) -> None:
        """Checks across fields; raise HdapError naming the settings."""

    @classmethod
    def parameter_name(cls, field_name: str) -> str:
        """How messages name a field: its parameter name if exposed, else the class's field (not a parameter)."""
        for item in dataclasses.fields(cls):
            if item.name == field_name:
                info = item.metadata.get(SETTING)
                if info is None:
                    return f"{cls.__name__}.{field_name}"
                if info.name:
                    return info.name
        return f"{cls.PREFIX}_{field_name}" if cls.PREFIX else field_name

    @classmethod
    def exposed(cls) -> list[Exposed]:
        """Every exposed setting, in declaration order."""
        hints = typing.get_type_hints(cls)
        return [Exposed(cls.parameter_name(item.name), item.name, "" if info.name else cls.PREFIX, hints[item.name], item.default,
                        info.help, info.check)
                for item in dataclasses.fields(cls) if (info := item.metadata.get(SETTING)) is not None]

    @classmethod
    def from_parameters(cls: type[S], values: Mapping[str, Any], **internal: Any) -> S:
        """The config from parameter values keyed by parameter name (missing ones take their default)."""
        given = {e.field: values[e.name] for e in cls.exposed() if e.name in values}
        return cls(**given, **internal)

    @classmethod
    def from_fields(cls: type[S], values: Mapping[str, Any]) -> S:
        """The config from values keyed by field name (a component's parameters: its settings and the internal
        fields the pipeline passes, `PASSED`); other keys ignored."""
        return cls(**{e.field: values[e.field] for e in cls.exposed() if e.field in values},
                   **{name: values[name] for name in cls.PASSED if name in values})

    def to_parameters(self) -> dict[str, ParameterValue]:
        """Every exposed setting as a pipeline parameter, keyed by its name."""
        return {e.name: to_parameter(getattr(self, e.field)) for e in self.exposed()}

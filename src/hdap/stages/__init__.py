"""The pipeline's stages, in the order data flows through them (the drift gate decides whether the rest run).

Each stage is one module here: its config (the settings it reads, `hdap.settings`), the files it
receives and writes (`Inputs`, `Outputs`: paths a Kubeflow component hands it), the typed
artifacts it leaves for the next stages (`hdap.artifacts`), and one entry function

    run(config, inputs, outputs, context) -> metrics

A stage module imports only light things at the top, so the CLI and the pipeline compiler read
every config without loading torch; a stage loads its machinery when it runs.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hdap.errors import HdapError
from hdap.settings import OUTPUT_URI, SHARED, Exposed, ParameterValue, Settings

if TYPE_CHECKING:
    from hdap.store import ObjectStore

NAMES = ("ingest", "drift", "cluster", "surrogate", "search", "finetune", "build")
# Parameters renamed when every stage's settings got their stage's prefix (issue 15): an old name
# in a run file or a submission says what it is called now.
RENAMED = {"as_of": "ingest_as_of", "k": "cluster_k", "k_min": "cluster_k_min", "k_max": "cluster_k_max",
           "profiling_backend": "surrogate_backend", "samples_per_layer": "surrogate_samples_per_layer",
           "objective": "search_objective", "targets": "search_targets", "strengths": "search_strengths",
           "pretrain_epochs": "search_pretrain_epochs", "granule": "search_granule", "qat_epochs": "finetune_epochs",
           "qat_learning_rate": "finetune_learning_rate", "tensorrt": "build_tensorrt",
           "onnxruntime_threads": "cpu_states", "build_onnxruntime_threads": "cpu_states"}
# A name that stayed but now means another setting: said when it is given.
MEANING_CHANGED = {"finetune_epochs": "finetune_epochs sets the quantization-aware fine-tune's epochs (it was qat_epochs); "
                                      "the search's fine-tune of each point, which it set before, is search_finetune_epochs."}


@dataclass(frozen=True)
class StageContext:
    """Where a stage runs: the store, and the run whose outputs it writes under <output_uri>/<run_name>/<stage>/."""

    store: ObjectStore
    output_uri: str
    run_name: str

    def uri(self, stage: str, *parts: str) -> str:
        from hdap.store import join_uri

        return join_uri(self.output_uri, self.run_name, stage, *parts)

    @property
    def run_uri(self) -> str:
        """The folder of every stage's outputs, <output_uri>/<run_name>/."""
        from hdap.store import join_uri

        return join_uri(self.output_uri, self.run_name, "")


@dataclass(frozen=True)
class OutputSettings(Settings):
    """Where every stage writes (each component also takes the run's name, which Kubeflow gives)."""

    output_uri: str = OUTPUT_URI()


@dataclass(frozen=True)
class Stage:
    name: str
    title: str  # the task's name in the Kubeflow UI
    config: type[Settings]
    inputs: type  # a dataclass of Path fields: the artifacts the component reads
    outputs: type  # a dataclass of Path fields: the artifacts it writes (its metrics aside)
    run: Callable[..., dict[str, float]]


def stage(name: str) -> Stage:
    if name not in NAMES:
        raise HdapError(f"there is no stage '{name}': the stages are {', '.join(NAMES)}.")
    return importlib.import_module(f"hdap.stages.{name}").STAGE


def stages() -> list[Stage]:
    return [stage(name) for name in NAMES]


def pipeline_settings() -> list[Exposed]:
    """Every setting the pipeline takes, once each, in the order the pipeline and `hdap run` list them:
    the shared ones first, then each stage's own."""
    by_name: dict[str, Exposed] = {}
    for config in [OutputSettings, *(s.config for s in stages())]:
        for exposed in config.exposed():
            by_name.setdefault(exposed.name, exposed)
    order = {s.name: index for index, s in enumerate(SHARED)}
    shared = sorted((e for e in by_name.values() if not e.prefix), key=lambda e: order.get(e.name, len(order)))
    return shared + [e for e in by_name.values() if e.prefix]


def pipeline_defaults() -> dict[str, ParameterValue]:
    """Every pipeline parameter's default, as the pipeline carries it."""
    return {e.name: e.default_parameter for e in pipeline_settings()}


def unknown_settings(names: list[str]) -> str:
    """One sentence naming the first unknown setting and what it is called now (or the closest)."""
    known = [e.name for e in pipeline_settings()]
    name = names[0]
    if name in RENAMED:
        return f"the setting '{name}' is now called '{RENAMED[name]}'."
    close = difflib.get_close_matches(name, known, n=1)
    return f"there is no setting '{name}'" + (f": did you mean '{close[0]}'?" if close else f"; the settings are {', '.join(known)}.")


@dataclass(frozen=True)
class RunSettings:
    """Every stage's config for one pipeline run, made from one mapping of parameter values."""

    output: OutputSettings
    configs: dict[str, Settings]  # stage name -> its config

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> RunSettings:
        unknown = [name for name in values if name not in {e.name for e in pipeline_settings()}]
        if unknown:
            raise HdapError(unknown_settings(unknown))
        return cls(OutputSettings.from_parameters(values), {s.name: s.config.from_parameters(values) for s in stages()})

    def to_parameters(self) -> dict[str, ParameterValue]:
        """The pipeline's arguments."""
        merged = self.output.to_parameters()
        for config in self.configs.values():
            merged |= config.to_parameters()
        return merged

    def __getitem__(self, stage_name: str) -> Any:
        return self.configs[stage_name]

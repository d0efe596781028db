"""The typed spine: every setting declared once and carried alike by the configs, the pipeline, the CLI and
the components; every artifact read back as written; stages that import only what they need."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from hdap.artifacts import Contract
from hdap.cli import app
from hdap.compress.spec import ArchitectureSpec, LayerSpec
from hdap.errors import HdapError
from hdap.settings import SHARED, Settings
from hdap.stages import OutputSettings, RunSettings, pipeline_settings, stages
from hdap.stages.finetune import FinetuneSummary, QuantizationRanges
from hdap.stages.ingest import IngestSummary
from hdap.stages.search import ArchitectureEntry, SearchIndex, SearchMode
from hdap.stages.surrogate import ClusterSurrogateEntry, SurrogateIndex
from tests.examples import RECIPE, build_input, fleet_inputs, front_input
from tests.fixtures import free_port

ROOT = Path(__file__).parent.parent
COMPONENT_CONTEXT = {"output_uri", "run_name"}  # what every component takes besides its stage's settings and artifacts
KFP_TYPES = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    from pipelines.compile import compile_pipeline

    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    compile_pipeline(path)
    return list(yaml.safe_load_all(path.read_text()))[0]


def component(name: str):
    """The stage's Kubeflow component (components/<name>/)."""
    return getattr(importlib.import_module(f"components.{name}"), name)


# -- each setting declared once -------------------------------------------------------------------
def test_every_setting_has_its_config_default_in_the_compiled_pipeline(compiled: dict) -> None:
    parameters = compiled["root"]["inputDefinitions"]["parameters"]
    settings = pipeline_settings()
    assert set(parameters) == {e.name for e in settings}
    for e in settings:
        declared = parameters[e.name]
        assert declared["parameterType"] == KFP_TYPES[e.parameter_type], e.name
        default = declared.get("defaultValue")
        assert default == e.default_parameter and type(default) is not bool, (e.name, default, e.default_parameter)
        assert declared["description"] == e.help, e.name  # what the Kubeflow UI shows beside it


def test_every_setting_is_a_run_option_stating_the_default_the_compiled_pipeline_has(compiled: dict) -> None:
    parameters = compiled["root"]["inputDefinitions"]["parameters"]
    run = typer.main.get_command(app).commands["run"]
    options = {p.name: p for p in run.params}
    assert set(options) == {e.name for e in pipeline_settings()} | {"config"}
    for e in pipeline_settings():
        option = options[e.name]
        assert option.opts == [e.option] and option.default is None, e.name  # not given: the config's default
        stated = option.help.rsplit("[default: ", 1)[1].removesuffix("]")
        compiled_default = parameters[e.name]["defaultValue"]
        if e.parameter_type is str:
            assert stated == (compiled_default or "empty"), (e.name, stated, compiled_default)
        else:
            assert float(stated) == float(compiled_default), (e.name, stated, compiled_default)
    # ... and the values `hdap run` passes when nothing is given are the configs' defaults
    assert RunSettings.from_parameters({}).to_parameters() == {e.name: e.default_parameter for e in pipeline_settings()}


@pytest.mark.parametrize("stage", [s.name for s in stages()])
def test_each_component_takes_exactly_its_stage_settings_and_artifacts_and_defaults_none(stage: str) -> None:
    from hdap.stages import stage as find

    current = find(stage)
    signature = inspect.signature(component(stage).python_func)
    settings = {e.field: e for e in current.config.exposed()}
    artifacts = {f.name for f in dataclasses.fields(current.inputs)} | {f.name for f in dataclasses.fields(current.outputs)} | {"metrics"}
    assert set(signature.parameters) == set(settings) | artifacts | COMPONENT_CONTEXT | set(current.config.PASSED)
    for name, parameter in signature.parameters.items():
        assert parameter.default is inspect.Parameter.empty, f"{stage}.{name} has a default of its own: {parameter.default!r}"
        if name in settings:
            assert parameter.annotation is settings[name].parameter_type, (stage, name)


def test_the_pipeline_hands_each_component_the_parameter_of_its_own_setting(compiled: dict) -> None:
    tasks = {name: task for dag in [compiled["root"]["dag"], *(c["dag"] for c in compiled["components"].values() if "dag" in c)]
             for name, task in dag["tasks"].items()}

    checked = 0
    for current in stages():
        names = {e.field: e.name for e in current.config.exposed()} | {"output_uri": "output_uri"}
        for field, source in tasks[current.name]["inputs"]["parameters"].items():
            if field == "run_name" or field in current.config.PASSED or field.startswith("pipelinechannel--"):
                continue  # (the channels the drift gate's settings text is made from)
            assert source["componentInputParameter"].removeprefix("pipelinechannel--") == names[field], (current.name, field)
            checked += 1
    assert checked == sum(len(s.config.exposed()) + 1 for s in stages())
    # The drift gate gets the search's weights and every lineage setting's value, in one text
    drift = tasks["drift"]["inputs"]["parameters"]
    assert drift["weights_uri"]["componentInputParameter"] == "pipelinechannel--search_weights_uri"
    from hdap.stages.drift import lineage_settings

    lineage = drift["settings"]["runtimeValue"]["constant"]
    assert [line.split("=")[0] for line in lineage.splitlines()] == lineage_settings()
    assert "model={{$.inputs.parameters['pipelinechannel--model']}}" in lineage.splitlines()


def test_the_readme_names_every_pipeline_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    assert [e.name for e in pipeline_settings() if f"`{e.name}`" not in readme] == []


def test_components_and_the_pipeline_call_by_keyword_only() -> None:
    files = [*sorted((ROOT / "components").glob("*/component.py")), ROOT / "pipelines" / "hdap_pipeline.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in {
                    "run_step", "ingest", "cluster", "surrogate", "search", "finetune", "build"}:
                assert not node.args, f"{path.name}:{node.lineno} passes arguments by position"


def test_a_setting_without_a_stage_prefix_is_one_of_the_shared_declarations() -> None:
    """Shared settings are declared once (hdap.settings.SHARED); a stage cannot declare one of its own unprefixed."""
    shared = {s.name: s for s in SHARED}
    for config in [OutputSettings, *(s.config for s in stages())]:
        for e in config.exposed():
            if not e.prefix:
                declared = shared[e.name]
                assert (e.default, e.help, e.check) == (declared.default, declared.help, declared.check), (config.__name__, e.name)


# -- configs check themselves ---------------------------------------------------------------------
@pytest.mark.parametrize(("values", "message"), [
    ({"search_targets": "0.5,x"}, "search_targets='0.5,x' is not a list of numbers separated by commas"),
    ({"search_mode": "fastest"}, "search_mode='fastest' is not one of its choices: use fleet, nominal or per-cluster"),
    ({"input_shape": "3,32"}, "input_shape='3,32' is not 3 numbers separated by commas"),
    ({"cluster_k_min": 5, "cluster_k_max": 2}, "cluster_k_min=5 and cluster_k_max=2 are not a range"),
    ({"finetune_learning_rate": 0}, "finetune_learning_rate=0 must be positive"),
    ({"accuracy_tolerance": -5}, "accuracy_tolerance=-5 must be 0 or more"),
    ({"build_tensorrt": "maybe"}, "build_tensorrt='maybe' is not one of its choices: use auto, off or required"),
    ({"dataset": "cifar10"}, "dataset=cifar10 is read from the store: give its s3:// URI as dataset_uri"),
    ({"qat_epochs": 3}, "the setting 'qat_epochs' is now called 'finetune_epochs'"),
    ({"search_epoch": 3}, "there is no setting 'search_epoch': did you mean 'search_epochs'?"),
])
def test_a_bad_setting_is_refused_in_one_sentence_naming_it(values: dict, message: str) -> None:
    with pytest.raises(HdapError) as caught:
        RunSettings.from_parameters(values)
    assert message in str(caught.value) and str(caught.value).count(". ") == 0


def test_a_run_file_goes_through_the_same_configs_and_options_override_it(tmp_path: Path) -> None:
    from hdap.run_file import read_run_file

    path = tmp_path / "run.toml"
    path.write_text('model = "small-cnn"\nseed = 3\n[search]\ntargets = [0.7, 0.35]\nmode = "nominal"\n[cluster]\nk = 4\n')
    settings = RunSettings.from_parameters(read_run_file(path) | {"seed": 5})
    assert settings["search"].targets == (0.7, 0.35) and settings["search"].mode is SearchMode.NOMINAL
    assert settings["cluster"].k == 4 and settings["search"].model == settings["surrogate"].model == "small-cnn"
    assert {config.seed for name, config in settings.configs.items() if name not in ("ingest", "drift")} == {5}
    path.write_text("[finetune]\nqat_epochs = 2\n")
    with pytest.raises(HdapError, match=r"names \[finetune\] qat_epochs, which is not a setting: did you mean \[finetune\] epochs "
                                        r"\(finetune_epochs\)\?"):
        read_run_file(path)
    path.write_text("targets = [0.5]\n")
    with pytest.raises(HdapError, match=r"names targets, which is not a setting: did you mean \[search\] targets \(search_targets\)\?"):
        read_run_file(path)
    path.write_text('[search]\ntargets = "fast"\n')
    with pytest.raises(HdapError, match="search_targets='fast' is not a list of numbers"):
        read_run_file(path)


def test_hdap_config_writes_a_run_file_that_reads_back_as_every_default(tmp_path: Path) -> None:
    from hdap.run_file import read_run_file
    from hdap.stages import pipeline_defaults

    path = tmp_path / "run.toml"
    result = subprocess.run([sys.executable, "-m", "hdap.cli", "config", "--output", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert read_run_file(path) == pipeline_defaults()
    again = subprocess.run([sys.executable, "-m", "hdap.cli", "config", "--output", str(path)], capture_output=True, text=True)
    assert again.returncode == 1 and "does not overwrite it" in again.stderr


# -- artifacts read back as written ---------------------------------------------------------------
def contract_examples() -> list[Contract]:
    clusters, _, _ = fleet_inputs()
    clusters.silhouette_scores = {2: 0.61, 3: 0.74}  # integer keys, written as JSON's text keys
    unmeasured = front_input()
    for point in unmeasured.points:
        point.true_fleet_latency_ms = None  # a real fleet has no simulated truth
    spec = ArchitectureSpec("resnet20", [1, 8, 8], 10, ["fp16", "int8"],
                            [LayerSpec("conv1", "conv", 1, 16, list(range(16)), "fp16", "fp16"),
                             LayerSpec("stages.0.conv1", "conv", 0, 0, [], "", "", removed=True)],
                            [{"root": "conv1", "channels": 16, "kept": list(range(16)), "layers": ["conv1"], "collapsible": []}],
                            {"accuracy": 98.3, "target": 0.4})
    return [
        IngestSummary("s3://b/t", "jetson-nano", 3, 30, 28, 2, 10, {"missing_probe_launch_ms": 2}, {"s3://b/t/x.parquet": "bad"}),
        clusters,
        SurrogateIndex("resnet20", (1, 8, 8), ("fp16", "int8"), [ClusterSurrogateEntry(0, 1.0, "dev-0", "cluster-0.json", "simulated",
                                                                                       0.98, 12.5)]),
        front_input(),
        unmeasured,
        SearchIndex(SearchMode.FLEET, [ArchitectureEntry(None, "architecture.json", "architecture.weights.pt")], "u.pt", 98.0, 98.4, "fp16",
                    RECIPE),
        SearchIndex(SearchMode.PER_CLUSTER, [ArchitectureEntry(0, "cluster-0.json", "cluster-0.weights.pt"),
                                             ArchitectureEntry(1, "cluster-1.json", "cluster-1.weights.pt")], "u.pt", 98.0, 98.4, "fp16",
                    RECIPE),
        FinetuneSummary(98.0, 90.0, 97.5, 97.8, 0, 3, 12.5, 8, 10, RECIPE, [90.0] * 10, [97.0] * 10),
        QuantizationRanges({"conv1": 2.5}),
        build_input(published=True),
        build_input(published=False),
        spec,
    ]


@pytest.mark.parametrize("example", contract_examples(), ids=lambda c: type(c).__name__)
def test_each_artifact_contract_reads_back_what_it_wrote(example: Contract, tmp_path: Path) -> None:
    path = example.save(tmp_path / "artifact.json")
    assert type(example).load(path) == example
    assert json.loads(path.read_text())["format"] == type(example).FORMAT


@pytest.mark.parametrize("example", contract_examples(), ids=lambda c: type(c).__name__)
def test_a_reader_refuses_another_format_version_a_missing_or_an_unknown_field_in_one_sentence(example: Contract) -> None:
    data = example.to_json()
    kind = type(example)
    newer = data | {"format": kind.FORMAT.rsplit("/", 1)[0] + "/99"}
    with pytest.raises(HdapError, match=r"is in format '[\w.-]+/99', which this hdap does not read \(it reads [\w./-]+\): re-run"):
        kind.from_json(newer, "x.json")
    field = next(f.name for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING
                 and f.default_factory is dataclasses.MISSING)
    with pytest.raises(HdapError, match=f"has no '{field}'"):
        kind.from_json({k: v for k, v in data.items() if k != field}, "x.json")
    with pytest.raises(HdapError, match=r"has fields \['renamed'\]"):
        kind.from_json(data | {"renamed": 1}, "x.json")


def test_a_choice_an_artifact_does_not_know_is_refused_in_one_sentence() -> None:
    data = contract_examples()[5].to_json() | {"mode": "fastest"}
    with pytest.raises(HdapError, match="x.json: mode is 'fastest', not one of fleet, nominal, per-cluster: re-run"):
        SearchIndex.from_json(data, "x.json")


# -- stages import what they need, steps find their store ------------------------------------------
def test_the_ingest_and_cluster_stages_and_the_cli_load_without_torch() -> None:
    code = "import sys, hdap.stages.ingest, hdap.stages.cluster, hdap.cli; print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == "[]"


def test_the_store_does_not_import_the_embedded_store() -> None:
    code = "import sys, hdap.store; print('hdap.embedded_store' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_step_with_no_store_settings_fails_in_one_sentence_and_never_uses_a_local_embedded_store(tmp_path: Path) -> None:
    """A laptop's embedded store runs under HDAP_HOME, but a pipeline step has no HDAP_S3_* settings:
    it must say so, not quietly read and write that store."""
    from hdap.embedded_store import EmbeddedStore

    embedded = EmbeddedStore(tmp_path / ".hdap" / "store")
    embedded.up(s3_port=free_port())
    before = sorted(p.name for p in embedded.data_dir.rglob("*"))
    try:
        code = ("from types import SimpleNamespace as A; from components.ingest import ingest; "
                "ingest.python_func(telemetry_uri='s3://hdap/t', sku='jetson-nano', as_of='', output_uri='s3://hdap/runs', "
                "run_name='r', features=A(path='f'), quarantine=A(path='q'), metrics=A(log_metric=print))")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HDAP_S3_")} | {"HDAP_HOME": str(tmp_path / ".hdap")}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
        after = sorted(p.name for p in embedded.data_dir.rglob("*"))
    finally:
        embedded.down()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["hdap: this step has no object store settings: set HDAP_S3_ENDPOINT, "
                                                  "HDAP_S3_ACCESS_KEY and HDAP_S3_SECRET_KEY (on Kubeflow the pipeline fills them "
                                                  "from the hdap-s3 secret: apply manifests/base)."]
    assert after == before  # no bucket, no object: the embedded store was not touched


def test_every_config_has_a_default_for_every_field_and_the_defaults_are_valid() -> None:
    from hdap.fleet.simulate import SimulationConfig
    from hdap.latency.agent import ProfileConfig

    for config in [OutputSettings, SimulationConfig, ProfileConfig, *(s.config for s in stages())]:
        assert issubclass(config, Settings)
        for item in dataclasses.fields(config):
            assert item.default is not dataclasses.MISSING, f"{config.__name__}.{item.name} has no default"
        config()  # raises if a default fails its own check

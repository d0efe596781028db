"""The `hdap` command.

The library does the work; this module parses options, prints what happened, and turns an
expected failure (HdapError) into one red line and exit code 1. Only `compile` and `run`
touch Kubeflow, through the `pipelines` package, imported when they run.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from hdap.config import file_section, home_dir, parse_shape, parse_time
from hdap.errors import HdapError

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
app.add_typer(store_app, name="store")
app.add_typer(fleet_app, name="fleet")

DEFAULT_SKU = "jetson-xavier-nx"


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # the store's retries are ours to report


# -- store -------------------------------------------------------------------------------------
@store_app.command("up")
def store_up(port: Annotated[Optional[int], typer.Option(help="S3 port; default 8333, or a free one if taken.")] = None) -> None:
    """Start the embedded store (or report the running one). Data survives restarts."""
    from hdap.embedded_store import EmbeddedStore

    store = EmbeddedStore.default()
    config = store.up(s3_port=port)
    console.print(f"object store: [bold]http://{config.endpoint}[/] (data in {store.data_dir})")
    console.print(f"  access key {config.access_key}; the secret is in {store.credentials_file}")


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
    state = f"[green]running[/] at http://{status.endpoint} (pid {status.pid})" if status.running else "[yellow]stopped[/]"
    console.print(f"embedded object store: {state}; data {status.data_bytes / 1e6:.1f} MB in {status.data_dir}")
    if os.environ.get("HDAP_S3_ENDPOINT"):
        console.print(f"note: HDAP_S3_ENDPOINT={os.environ['HDAP_S3_ENDPOINT']} is set, so hdap uses that store instead")


# -- fleet -------------------------------------------------------------------------------------
@fleet_app.command("simulate")
def fleet_simulate(
    sku: Annotated[str, typer.Option(help="Hardware SKU: jetson-nano, jetson-xavier-nx, jetson-orin-nano.")] = DEFAULT_SKU,
    devices: Annotated[int, typer.Option(help="Number of devices in the fleet.")] = 1000,
    days: Annotated[int, typer.Option(help="Days of daily reports per device.")] = 7,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same fleet.")] = 0,
    telemetry_uri: Annotated[Optional[str], typer.Option(help="Where to write telemetry; default s3://hdap/telemetry/<sku>.")] = None,
    truth_uri: Annotated[Optional[str], typer.Option(help="Where to write the hidden ground truth; default s3://hdap/ground-truth/<sku>.")] = None,
    end: Annotated[Optional[str], typer.Option(help="Time of the newest report, ISO 8601; default now.")] = None,
) -> None:
    """Write a realistic fleet's telemetry (power modes, throttling, bins, aging, load) to the store."""
    from hdap.fleet.simulate import SimulationConfig, simulate_fleet
    from hdap.store import ObjectStore

    _setup_logging()
    config = SimulationConfig(
        sku=sku,
        devices=devices,
        days=days,
        seed=seed,
        telemetry_uri=telemetry_uri or f"s3://hdap/telemetry/{sku}",
        truth_uri=truth_uri or f"s3://hdap/ground-truth/{sku}",
        end=parse_time(end, "--end") if end else datetime.now(timezone.utc),
    )
    from hdap.fleet.sku import get_sku

    get_sku(sku)
    if devices < 1 or days < 1:
        raise HdapError(f"a fleet needs at least one device and one day (got --devices {devices}, --days {days}).")
    result = simulate_fleet(ObjectStore.from_environment(), config)
    console.print(
        f"wrote {result.reports:,} reports from {result.devices:,} devices in {len(result.telemetry_objects)} objects "
        f"under [bold]{config.telemetry_uri}[/]; ground truth under {config.truth_uri}"
    )


# -- profile -----------------------------------------------------------------------------------
@app.command("profile")
def profile_command(
    backend: Annotated[str, typer.Option(help="onnxruntime (this machine's CPU) or tensorrt (this machine's GPU).")] = "onnxruntime",
    model: Annotated[str, typer.Option(help="Model whose layers to profile: small-cnn, resnet20, resnet56.")] = "resnet20",
    input_shape: Annotated[str, typer.Option(help="Model input, channels,height,width.")] = "3,32,32",
    threads: Annotated[int, typer.Option(help="onnxruntime: intra-op threads (a device state).")] = 1,
    samples_per_layer: Annotated[int, typer.Option(help="Configurations per layer and precision.")] = 30,
    rounds: Annotated[int, typer.Option(help="Shuffled rounds; each configuration keeps its quietest round.")] = 3,
    device_id: Annotated[Optional[str], typer.Option(help="The id this device reports in its telemetry; default the host name.")] = None,
    upload_uri: Annotated[str, typer.Option(help="Where profiles go: <upload-uri>/<device id>/profile.parquet.")] = "s3://hdap/profiles",
) -> None:
    """Profile this machine's layers, as a device agent does, and upload the profile to the store.

    The surrogate stage uses an uploaded profile for any cluster representative with that device
    id, instead of profiling it with a backend: run this on the representative devices.
    """
    import socket

    from hdap.latency.backends import BackendUnavailable, get_backend
    from hdap.latency.profiling import plan_profile, run_profile
    from hdap.models import build_model, prunable_layers
    from hdap.store import ObjectStore

    _setup_logging()
    shape = parse_shape(input_shape, "--input-shape")
    if backend not in ("onnxruntime", "tensorrt"):
        raise HdapError(f"--backend {backend}: `hdap profile` measures this machine, with onnxruntime or tensorrt.")
    if rounds < 1 or samples_per_layer < 1:
        raise HdapError("--rounds and --samples-per-layer must be at least 1.")
    build_model(model)
    try:
        profiler = get_backend(backend, **({"threads": threads} if backend == "onnxruntime" else {}))
    except BackendUnavailable as err:
        raise HdapError(str(err)) from None
    store = ObjectStore.from_environment()
    store.check()
    device = device_id or socket.gethostname()
    layers = prunable_layers(build_model(model, shape), shape)
    plan = plan_profile(layers, profiler.precisions, samples_per_layer, granule=8)
    profile = run_profile(profiler, plan, rounds=rounds, description=f"profiling {model} on {device}")
    target = f"{upload_uri.rstrip('/')}/{device}"
    store.put_table(f"{target}/profile.parquet", profile)
    store.put_json(f"{target}/device.json", {"device_id": device, "model": model, "input_shape": list(shape), **profiler.describe(),
                                             "profiled_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    ok = sum(1 for s in profile.column("status").to_pylist() if s == "ok")
    console.print(f"profiled {ok} of {len(plan)} layer configurations of {model} on {device}; uploaded to [bold]{target}/[/]")


# -- pipeline ----------------------------------------------------------------------------------
@app.command("compile")
def compile_command(
    output: Annotated[Path, typer.Option(help="Where to write the pipeline's IR YAML.")] = Path("hdap-pipeline.yaml"),
    image: Annotated[Optional[str], typer.Option(help="Step image the components run in on a cluster (sets HDAP_STEP_IMAGE).")] = None,
    gpu_image: Annotated[Optional[str], typer.Option(help="Image of the build step, with TensorRT (images/Dockerfile.gpu); default the step image.")] = None,
    build_accelerator: Annotated[str, typer.Option(help="Accelerator the build step requests, e.g. nvidia.com/gpu; empty: none.")] = "",
    build_node_label: Annotated[str, typer.Option(help="Pin the build step to nodes with this label (key=value), e.g. of the target SKU.")] = "",
) -> None:
    """Compile the pipeline to Kubeflow IR YAML, to upload in the Kubeflow UI or submit with the kfp client."""
    if build_node_label and "=" not in build_node_label:
        raise HdapError(f"--build-node-label {build_node_label!r} is not a node label: write it as key=value.")
    for name, value in (("HDAP_STEP_IMAGE", image), ("HDAP_GPU_STEP_IMAGE", gpu_image or image),
                        ("HDAP_BUILD_ACCELERATOR", build_accelerator), ("HDAP_BUILD_NODE_LABEL", build_node_label)):
        if value:
            os.environ[name] = value
    from pipelines.compile import compile_pipeline

    compile_pipeline(output)
    console.print(f"pipeline written to [bold]{output}[/] (step image {os.environ.get('HDAP_STEP_IMAGE', 'hdap-step:0.1.0')})")


def run_pipeline_locally(arguments: dict[str, Any]) -> dict[str, Any]:
    """Check what can be checked up front, then run every step with kfp.local."""
    from hdap.fleet.sku import get_sku
    from hdap.store import ObjectStore, StoreConfig

    get_sku(arguments["sku"])
    if arguments.get("as_of"):
        parse_time(arguments["as_of"], "--as-of")
    if arguments.get("input_shape"):
        parse_shape(arguments["input_shape"], "--input-shape")
    from hdap.models import build_model

    shape = parse_shape(arguments.get("input_shape", "1,8,8"), "--input-shape")
    build_model(arguments.get("model", "resnet20"), shape)
    from hdap.compress.search import SearchConfig
    from hdap.data import DATASETS
    from hdap.steps import parse_numbers

    SearchConfig(mode=arguments.get("search_mode", "fleet"), objective=arguments.get("objective", "latency"),
                 targets=parse_numbers(arguments.get("targets", "0.5"), "--targets"),
                 strengths=parse_numbers(arguments.get("strengths", ""), "--strengths"))
    if arguments.get("dataset", "digits") not in DATASETS:
        raise HdapError(f"--dataset {arguments['dataset']}: use one of {', '.join(DATASETS)}.")
    if arguments.get("dataset", "digits") != "digits" and not arguments.get("dataset_uri"):
        raise HdapError(f"--dataset {arguments['dataset']} is read from the store: give its s3:// URI with --dataset-uri.")
    if arguments.get("profiling_backend", "simulated") not in ("simulated", "onnxruntime", "tensorrt"):
        raise HdapError(f"--profiling-backend {arguments['profiling_backend']}: use simulated, onnxruntime or tensorrt.")
    if arguments.get("tensorrt", "auto") not in ("auto", "off", "required"):
        raise HdapError(f"--tensorrt {arguments['tensorrt']}: use auto, off or required.")
    if arguments.get("qat_epochs", 8) < 0 or arguments.get("qat_learning_rate", 0.01) <= 0 or arguments.get("onnxruntime_threads", 1) < 1:
        raise HdapError("--qat-epochs must be 0 or more, --qat-learning-rate positive and --onnxruntime-threads at least 1.")
    if arguments.get("k", 0) < 0 or arguments.get("samples_per_layer", 30) < 3:
        raise HdapError("--k must be 0 (automatic) or positive, and --samples-per-layer at least 3.")
    config = StoreConfig.resolve()
    store = ObjectStore(config)
    store.check()
    if not store.list(arguments["telemetry_uri"]):
        raise HdapError(
            f"there is no telemetry under {arguments['telemetry_uri']}: upload device reports there "
            "(or `hdap fleet simulate`), or fix --telemetry-uri."
        )
    os.environ.update(config.as_environment())  # the steps are subprocesses: they inherit these
    from pipelines.local import PipelineFailed, run_locally

    with tempfile.NamedTemporaryFile(prefix="hdap-failure-", delete=False) as handle:
        failure_file = Path(handle.name)
    os.environ["HDAP_FAILURE_FILE"] = str(failure_file)
    try:
        summary = run_locally(arguments, home_dir() / "local_outputs")
    except PipelineFailed as err:
        reason = failure_file.read_text().strip()
        raise HdapError(f"the pipeline stopped in step {reason}" if reason else f"the pipeline failed: {err}") from None
    finally:
        failure_file.unlink(missing_ok=True)
        os.environ.pop("HDAP_FAILURE_FILE", None)
    _setup_logging()  # kfp.local replaced the handlers
    run_uri = summary["store_prefix"].rsplit("/", 1)[0]
    ingest_summary = store.get_json(run_uri + "/ingest/summary.json")
    summary["surrogates"] = store.get_json(run_uri + "/surrogate/fleet.json")
    surrogate_report = home_dir() / "runs" / summary["run_name"] / "surrogate-report.html"
    report = home_dir() / "runs" / summary["run_name"] / "fleet-report.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    store.get_file(summary["store_prefix"] + "/report.html", report)
    store.get_file(run_uri + "/surrogate/report.html", surrogate_report)
    summary["surrogate_report_path"] = str(surrogate_report)
    summary["search"] = store.get_json(run_uri + "/search/front.json")
    search_report = report.parent / "search-report.html"
    store.get_file(run_uri + "/search/report.html", search_report)
    summary["search_report_path"] = str(search_report)
    summary["ingest"] = ingest_summary
    summary["report_path"] = str(report)
    if store.exists(run_uri + "/build/build.json"):
        summary["build"] = store.get_json(run_uri + "/build/build.json")
        run_report = report.parent / "report.html"
        store.get_file(run_uri + "/build/report.html", run_report)
        summary["run_report_path"] = str(run_report)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    ingest = summary["ingest"]
    console.rule("[bold]hdap run summary")
    console.print(
        f"telemetry: {ingest['rows_read']:,} reports from {ingest['objects_read']} objects -> "
        f"[bold]{ingest['devices']:,} devices[/] ingested, {ingest['rows_quarantined']:,} rows quarantined"
        + (f" ({', '.join(f'{k}: {v}' for k, v in ingest['quarantine_reasons'].items())})" if ingest["rows_quarantined"] else "")
    )
    if ingest.get("unreadable_objects"):
        console.print(f"[yellow]unreadable objects:[/] {', '.join(ingest['unreadable_objects'])}")
    console.print(f"clusters: {summary['k']} ({summary['selection']})")
    table = Table(show_edge=False)
    for column in ("cluster", "devices", "share", "representative", "conv3x3 fp16 ms", "launch ms"):
        table.add_column(column, justify="left" if column == "representative" else "right")
    for c in summary["clusters"]:
        centroid = c["centroid"]
        table.add_row(
            str(c["id"]),
            f"{c['size']:,}",
            f"{100 * c['weight']:.1f}%",
            c["representative"],
            f"{centroid.get('probe_conv3x3_fp16_median_ms', float('nan')):.4f}",
            f"{centroid.get('probe_launch_median_ms', float('nan')):.4f}",
        )
    console.print(table)
    surrogates = summary["surrogates"]
    accuracy = ", ".join(f"{100 * c['held_out_within_10pct']:.0f}%" for c in surrogates["clusters"])
    console.print(
        f"latency surrogates for {surrogates['model']} ({'/'.join(surrogates['precisions'])}), one per cluster, "
        f"profiled by {', '.join(sorted({c['source'] for c in surrogates['clusters']}))}: "
        f"held-out layers within +-10%: {accuracy}"
    )
    print_search(summary["search"])
    if "build" in summary:
        print_build(summary["build"])
    console.print(f"outputs in the store: [bold]{summary['store_prefix'].rsplit('/', 1)[0]}/[/]")
    if "run_report_path" in summary:
        console.print(f"report: [bold]{summary['run_report_path']}[/]")
    console.print(f"stage reports: {summary['search_report_path']}, {summary['report_path']} and {summary['surrogate_report_path']}")


def print_build(build: dict[str, Any]) -> None:
    accuracy, fleet, ort_timing, trt = build["accuracy"], build["fleet"], build["onnxruntime"], build["tensorrt"]
    true = (f", simulated fleet truth {fleet['true_before_ms']:.4f} -> {fleet['true_after_ms']:.4f} ms ({fleet['true_speedup']:.2f}x)"
            if "true_speedup" in fleet else "")
    console.print(
        f"fine-tuned and built: accuracy {accuracy['uncompressed']:.2f}% uncompressed -> {accuracy['onnxruntime']:.2f}% "
        f"(ONNX Runtime; agrees with the fake-quantised model on {100 * accuracy['onnxruntime_agreement']:.1f}% of test images)"
    )
    console.print(f"fleet-weighted latency predicted {fleet['predicted_before_ms']:.4f} -> {fleet['predicted_after_ms']:.4f} ms "
                  f"([bold]{fleet['predicted_speedup']:.2f}x[/]){true}")
    console.print(f"ONNX Runtime on this machine ({ort_timing['threads']} thread): {ort_timing['uncompressed_latency_ms']:.4f} -> "
                  f"{ort_timing['latency_ms']:.4f} ms ({ort_timing['speedup']:.2f}x); ONNX {build['size']['uncompressed_onnx_bytes'] / 1e3:.0f} -> "
                  f"{build['size']['onnx_bytes'] / 1e3:.0f} kB")
    console.print(f"TensorRT: {trt['latency_ms']:.4f} ms on {trt['gpu']} ({trt['speedup']:.2f}x)" if trt["built"]
                  else f"TensorRT engine not built: {trt.get('reason', '')}")
    console.print(f"published to [bold]{build['registry_uri']}[/]" if build["published"]
                  else f"[yellow]not published:[/] {build['gate']['message']}")


def print_search(front: dict[str, Any]) -> None:
    baseline = front["baseline_fleet_latency_ms"]
    console.print(
        f"search ({front['mode']}, {front['objective']}): uncompressed {front['model']} {front['baseline_accuracy']:.2f}% accurate, "
        f"{baseline:.4f} ms fleet-weighted at {front['default_precision']}"
    )
    truth = any("true_fleet_latency_ms" in p for p in front["points"])
    table = Table(show_edge=False)
    kind = front["points"][0]["setting"].split()[0]
    for column in (kind, "accuracy", "fleet latency ms", "speed-up", "weights kB", *(["true fleet ms"] if truth else []), "Pareto", "chosen"):
        table.add_column(column, justify="right")
    for p in front["points"]:
        table.add_row(p["setting"].split()[1], f"{p['accuracy']:.2f}%", f"{p['fleet_latency_ms']:.4f}", f"{baseline / p['fleet_latency_ms']:.2f}x",
                      f"{p['size_bits'] / 8e3:.1f}", *([f"{p.get('true_fleet_latency_ms', float('nan')):.4f}"] if truth else []),
                      "yes" if p["pareto"] else "", "<-" if p.get("chosen") else "")
    console.print(table)


@app.command("run")
def run_command(
    telemetry_uri: Annotated[Optional[str], typer.Option(help="Folder holding the fleet's telemetry objects; default s3://hdap/telemetry/<sku>.")] = None,
    sku: Annotated[str, typer.Option(help="The fleet's hardware SKU.")] = DEFAULT_SKU,
    k: Annotated[int, typer.Option(help="Number of clusters; 0 chooses it by silhouette within [k-min, k-max].")] = 0,
    k_min: Annotated[int, typer.Option(help="Smallest k to consider when choosing.")] = 2,
    k_max: Annotated[int, typer.Option(help="Largest k to consider when choosing.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed for clustering.")] = 0,
    output_uri: Annotated[str, typer.Option(help="Where runs write their outputs: <output-uri>/<run name>/.")] = "s3://hdap/runs",
    as_of: Annotated[str, typer.Option(help="ISO time taken as 'now' when rejecting future timestamps; default the clock.")] = "",
    model: Annotated[str, typer.Option(help="Model to compress: small-cnn, resnet20, resnet56, mobilenetv1, resnet18, resnet50, mobilenetv2, vgg16-bn.")] = "resnet20",
    profiling_backend: Annotated[str, typer.Option(help="How representatives without an uploaded profile are profiled: simulated, onnxruntime, tensorrt.")] = "simulated",
    samples_per_layer: Annotated[int, typer.Option(help="Profiled configurations per layer and precision.")] = 30,
    truth_uri: Annotated[str, typer.Option(help="A simulated fleet's hidden truth (its devices' bins and caps), for the simulated backend.")] = "",
    profiles_uri: Annotated[str, typer.Option(help="Where device agents upload their profiles (`hdap profile`).")] = "s3://hdap/profiles",
    input_shape: Annotated[str, typer.Option(help="Model input, channels,height,width (digits are 1,8,8; CIFAR-10 3,32,32).")] = "1,8,8",
    dataset: Annotated[str, typer.Option(help="Training data: digits (shipped with scikit-learn), cifar10 or imagefolder (from --dataset-uri).")] = "digits",
    dataset_uri: Annotated[str, typer.Option(help="The dataset in the store: CIFAR-10's python tarball, or an ImageFolder tree.")] = "",
    search_mode: Annotated[str, typer.Option(help="fleet (weighted over clusters), nominal (the datasheet device) or per-cluster.")] = "fleet",
    objective: Annotated[str, typer.Option(help="What the search lowers: latency, or memory (weight bits).")] = "latency",
    targets: Annotated[str, typer.Option(help="Cost targets as fractions of the uncompressed model's, one search each: the points of the Pareto front.")] = "0.8,0.65,0.5,0.4,0.3,0.2",
    strengths: Annotated[str, typer.Option(help="Penalty strengths instead of cost targets (given, they replace --targets), e.g. 0.5,1,2.")] = "",
    pretrain_epochs: Annotated[int, typer.Option(help="Epochs of plain training of the uncompressed model.")] = 15,
    search_epochs: Annotated[int, typer.Option(help="Epochs of each search (the architecture logits need about 20 to settle).")] = 20,
    finetune_epochs: Annotated[int, typer.Option(help="Epochs of fine-tuning each searched architecture, from the uncompressed model's weights and distilling it, before it is measured.")] = 10,
    granule: Annotated[int, typer.Option(help="Channels pruned together: 8 suits fp16 tiles, 32 int8 tiles.")] = 8,
    accuracy_tolerance: Annotated[float, typer.Option(help="Accuracy points the chosen architecture may lose; also the registry's quality gate.")] = 0.5,
    qat_epochs: Annotated[int, typer.Option(help="Epochs of quantization-aware fine-tuning of the chosen architecture.")] = 8,
    qat_learning_rate: Annotated[float, typer.Option(help="Learning rate of the quantization-aware fine-tune.")] = 0.01,
    registry_uri: Annotated[str, typer.Option(help="The model registry: entries go to <registry-uri>/<model>/<run name>/.")] = "s3://hdap/registry",
    tensorrt: Annotated[str, typer.Option(help="TensorRT engine: auto (where a GPU and TensorRT exist), off, or required.")] = "auto",
    onnxruntime_threads: Annotated[int, typer.Option(help="Threads ONNX Runtime uses when timing the built model.")] = 1,
) -> None:
    """Run the pipeline on this machine with kfp.local (no Kubernetes, no Docker) and print a summary."""
    _setup_logging()
    summary = run_pipeline_locally(
        dict(telemetry_uri=telemetry_uri or f"s3://hdap/telemetry/{sku}", sku=sku, k=k, k_min=k_min, k_max=k_max, seed=seed,
             output_uri=output_uri, as_of=as_of,
             model=model, profiling_backend=profiling_backend, samples_per_layer=samples_per_layer, truth_uri=truth_uri,
             profiles_uri=profiles_uri, input_shape=input_shape, dataset=dataset, dataset_uri=dataset_uri,
             search_mode=search_mode, objective=objective, targets=targets, strengths=strengths, pretrain_epochs=pretrain_epochs,
             search_epochs=search_epochs, finetune_epochs=finetune_epochs, granule=granule,
             accuracy_tolerance=accuracy_tolerance, qat_epochs=qat_epochs, qat_learning_rate=qat_learning_rate,
             registry_uri=registry_uri, tensorrt=tensorrt, onnxruntime_threads=onnxruntime_threads)
    )
    print_summary(summary)


@app.command("demo")
def demo_command(
    devices: Annotated[int, typer.Option(help="Devices in the simulated fleet.")] = 5000,
    days: Annotated[int, typer.Option(help="Days of daily reports.")] = 7,
    sku: Annotated[str, typer.Option(help="Hardware SKU of the simulated fleet.")] = DEFAULT_SKU,
    seed: Annotated[int, typer.Option(help="Random seed of the simulated fleet.")] = 0,
) -> None:
    """The whole demo: start the embedded store if no store is configured, simulate a fleet, run the pipeline."""
    from hdap.fleet.simulate import SimulationConfig, simulate_fleet
    from hdap.store import ObjectStore, StoreConfig

    _setup_logging()
    if not (os.environ.get("HDAP_S3_ENDPOINT") or file_section("store").get("endpoint")):
        from hdap.embedded_store import EmbeddedStore

        embedded = EmbeddedStore.default()
        config = embedded.up()
        console.print(f"embedded object store at http://{config.endpoint} (data in {embedded.data_dir}; stop it with `hdap store down`)")
    store = ObjectStore(StoreConfig.resolve())
    today = datetime.now(timezone.utc).date()
    # The prefix names the fleet and the day, so re-running the demo reuses it instead of rewriting.
    fleet_uri = f"s3://hdap/demo/{sku}/{devices}x{days}d-seed{seed}/{today.isoformat()}"
    telemetry_uri = f"{fleet_uri}/telemetry"
    if store.exists(f"{telemetry_uri}/date={today.isoformat()}/part-00000.parquet"):
        console.print(f"reusing today's simulated fleet under {telemetry_uri}")
    else:
        simulation = SimulationConfig(
            sku=sku, devices=devices, days=days, seed=seed,
            telemetry_uri=telemetry_uri, truth_uri=f"{fleet_uri}/ground-truth",
        )
        result = simulate_fleet(store, simulation)
        console.print(f"simulated {result.devices:,} {sku} devices x {days} days of telemetry -> {telemetry_uri}")
    summary = run_pipeline_locally(
        dict(telemetry_uri=telemetry_uri, sku=sku, k=0, k_min=2, k_max=8, seed=seed, output_uri="s3://hdap/runs", as_of="",
             truth_uri=f"{fleet_uri}/ground-truth")
    )
    print_summary(summary)


def main() -> None:
    try:
        app()
    except HdapError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()

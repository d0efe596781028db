"""The pipeline on this machine (`hdap run`, `hdap demo`): check up front, run with kfp.local, summarise.

The run itself is the real Kubeflow pipeline (`pipelines/`), executed by kfp.local, each step a
subprocess. What it wrote is read back through the stages' contracts for the summary.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hdap.config import home_dir
from hdap.errors import HdapError
from hdap.settings import INPUT_SHAPE, MODEL, Choice
from hdap.stages import RunSettings
from hdap.stages.build import BuildSummary
from hdap.stages.cluster import ClusterSummary
from hdap.stages.drift import DriftDecision
from hdap.stages.ingest import IngestSummary
from hdap.stages.search import Front
from hdap.stages.surrogate import SurrogateIndex
from hdap.store import ObjectStore, S3Uri, join_uri


@dataclass
class LocalRun:
    """What a finished run wrote, as its stages' contracts, and its reports on this machine."""

    run_uri: str
    ingest: IngestSummary
    drift: DriftDecision
    clusters: ClusterSummary | None  # None, as every later stage, where the drift gate found nothing to do
    surrogates: SurrogateIndex | None
    front: Front | None
    build: BuildSummary | None  # None also where the run stopped after the search (per-cluster mode)
    reports: dict[str, Path]  # "fleet", "surrogate", "search" and, once built, "run"

    @property
    def retrained(self) -> bool:
        return self.drift.retrain


def preflight(settings: RunSettings, store: ObjectStore) -> None:
    """What can be checked before any step runs: the store answers and the telemetry is there. (Each
    setting was checked when `settings` was made; the model against its input shape, just before.)"""
    store.check()
    telemetry_uri = settings["ingest"].folder
    if not store.list(telemetry_uri):
        raise HdapError(f"there is no telemetry under {telemetry_uri}: upload device reports there (or `hdap fleet simulate`), "
                        "or fix --telemetry-uri.")
    search = settings["search"]
    if search.weights_uri and not store.exists(search.weights_uri):
        raise HdapError(f"there are no weights at {search.weights_uri}: upload them (`hdap store put`) or fix --search-weights-uri.")
    if search.dataset_uri and not store.exists(search.dataset_uri) and not store.list(search.dataset_uri):
        raise HdapError(f"there is no dataset at {search.dataset_uri}: upload it (`hdap store put`) or fix --dataset-uri.")


def run_pipeline_locally(settings: RunSettings, store: ObjectStore | None = None, console: Console | None = None) -> LocalRun:
    """Check, then run every step with kfp.local in this machine's store; the run's outputs. kfp.local's
    output goes to a log file under .hdap/logs/; `console` gets its path and a line per step."""
    from hdap.deploy.signing import SIGNING_KEY_ENV, local_key_folder, local_signing_key_pem
    from hdap.embedded_store import local_store_config
    from hdap.models import check_input_shape
    from pipelines.local import PipelineFailed, run_locally

    search = settings["search"]
    check_input_shape(search.model, search.input_shape)  # before the store: a wrong shape is the first thing to fix
    config = store.config if store is not None else local_store_config()
    store = store or ObjectStore(config)
    preflight(settings, store)
    os.environ.update(config.as_environment())  # the steps are subprocesses: they inherit these
    if not os.environ.get(SIGNING_KEY_ENV):  # this machine's own key signs what the build step publishes
        os.environ[SIGNING_KEY_ENV] = local_signing_key_pem(local_key_folder())
    with tempfile.NamedTemporaryFile(prefix="hdap-failure-", delete=False) as handle:
        failure_file = Path(handle.name)
    os.environ["HDAP_FAILURE_FILE"] = str(failure_file)
    log_file = home_dir() / "logs" / f"run-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.log"
    console = console or Console(quiet=True)
    console.print(f"running the pipeline with kfp.local; its full log: {escape(str(log_file))}")
    try:
        run_name = run_locally(settings.to_parameters(), home_dir() / "local_outputs", log_file, StepLines(console))
    except PipelineFailed as err:
        reason = failure_file.read_text().strip()
        stopped = f"the pipeline stopped in step {reason}" if reason else f"the pipeline failed: {err}"
        raise HdapError(f"{stopped} (the run's log: {log_file})") from None
    finally:
        failure_file.unlink(missing_ok=True)
        os.environ.pop("HDAP_FAILURE_FILE", None)
    return collect_run(store, join_uri(settings.output.output_uri, run_name, ""), run_name)


class StepLines:
    """One console line per finished step, with its time: kfp.local's own output is in the log file."""

    def __init__(self, console: Console) -> None:
        self.console, self.started, self.done = console, {}, 0

    def __call__(self, task: str, status: str) -> None:
        import time

        if status == "started":
            self.started[task] = time.monotonic()
            return
        self.done += 1
        seconds = time.monotonic() - self.started.get(task, time.monotonic())
        colour = "green" if status == "SUCCESS" else "red"
        self.console.print(f"  step {self.done}: {escape(task)} [{colour}]{escape(status.lower())}[/] in {seconds:.1f} s")


def collect_run(store: ObjectStore, run_uri: str, run_name: str) -> LocalRun:
    """The run's contracts from the store, and its reports copied to .hdap/runs/<run name>/."""
    ingest = IngestSummary.get(store, join_uri(run_uri, "ingest", "summary.json"))
    drift = DriftDecision.get(store, join_uri(run_uri, "drift", "decision.json"))
    if not drift.retrain:
        return LocalRun(run_uri, ingest, drift, None, None, None, None, {})
    folder = home_dir() / "runs" / run_name
    reports = {"fleet": "cluster/report.html", "surrogate": "surrogate/report.html", "search": "search/report.html"}
    build_uri = join_uri(run_uri, "build", "build.json")
    built = store.exists(build_uri)
    if built:
        reports["run"] = "build/report.html"
    paths = {name: store.get_file(join_uri(run_uri, key), folder / ("report.html" if name == "run" else f"{name}-report.html"))
             for name, key in reports.items()}
    return LocalRun(run_uri, ingest, drift, ClusterSummary.get(store, join_uri(run_uri, "cluster", "clusters.json")),
                    SurrogateIndex.get(store, join_uri(run_uri, "surrogate", "fleet.json")),
                    Front.get(store, join_uri(run_uri, "search", "front.json")),
                    BuildSummary.get(store, build_uri) if built else None, paths)


class DemoFleet(Choice):
    SIMULATED = "simulated"  # a simulated Jetson fleet (nothing to measure)
    CPU = "cpu"  # this machine's CPU states, measured (hdap profile --cpu-states)


def run_demo(devices: int, days: int, sku: str, seed: int, console: Console, fleet: DemoFleet = DemoFleet.SIMULATED,
             drift_force: bool = False) -> LocalRun:
    """`make run`: the embedded store (unless one is configured), a simulated fleet (reused the same day), the pipeline.
    With the CPU fleet, this machine is profiled in each CPU state instead (reused the same day)."""
    from hdap.embedded_store import EmbeddedStore, local_store_config
    from hdap.fleet.simulate import SimulationConfig, simulate_fleet
    from hdap.store import StoreConfig

    if StoreConfig.configured() is None:
        embedded = EmbeddedStore.default()
        config = embedded.up()
        console.print(escape(f"embedded object store at http://{config.endpoint} (data in {embedded.data_dir}; stop it with `hdap store down`)"))
    store = ObjectStore(local_store_config())
    today = datetime.now(timezone.utc).date()
    forced = {"drift_force": drift_force}
    if fleet is DemoFleet.CPU:
        return run_pipeline_locally(RunSettings.from_parameters(profile_cpu_fleet(store, seed, today, console) | forced), store,
                                    console)
    # The prefix names the fleet and the day, so re-running the demo reuses it instead of rewriting.
    fleet_uri = f"s3://hdap/demo/{sku}/{devices}x{days}d-seed{seed}/{today.isoformat()}"
    simulation = SimulationConfig(sku=sku, devices=devices, days=days, seed=seed, telemetry_uri=f"{fleet_uri}/telemetry",
                                  truth_uri=f"{fleet_uri}/ground-truth")
    if store.exists(f"{simulation.telemetry_uri}/date={today.isoformat()}/part-00000.parquet"):
        console.print(f"reusing today's simulated fleet under {escape(simulation.telemetry_uri)}")
    else:
        result = simulate_fleet(store, simulation)
        console.print(escape(f"simulated {result.devices:,} {sku} devices x {days} days of telemetry -> {simulation.telemetry_uri}"))
    settings = RunSettings.from_parameters({"telemetry_uri": simulation.telemetry_uri, "sku": sku, "seed": seed,
                                            "truth_uri": simulation.truth_uri} | forced)
    return run_pipeline_locally(settings, store, console)


def profile_cpu_fleet(store: ObjectStore, seed: int, today: date, console: Console, model: str = MODEL.default,
                      input_shape: tuple[int, int, int] = INPUT_SHAPE.default) -> dict:
    """This machine profiled for `model` in each default CPU state, as that many devices (reused the same day):
    the run's parameters."""
    import socket

    from hdap.fleet.sku import CPU_SKU
    from hdap.latency.agent import ProfileConfig, profile_device

    fleet_uri = f"s3://hdap/demo/{CPU_SKU}/{socket.gethostname()}/{today.isoformat()}/{model.replace(':', '-')}"
    agent = ProfileConfig(model=model, input_shape=input_shape, profiles_uri=f"{fleet_uri}/profiles",
                          telemetry_uri=f"{fleet_uri}/telemetry")
    store.ensure_bucket(S3Uri.parse(fleet_uri).bucket)
    if store.list(agent.telemetry_uri + "/"):
        console.print(f"reusing today's CPU-state profiles and telemetry under {escape(fleet_uri)}")
    else:
        for profile in profile_device(agent, store):
            console.print(f"profiled this machine as {escape(profile.device_id)}: {profile.timed} layer configurations, telemetry row -> "
                          f"{escape(profile.telemetry_uri)}")
    return {"telemetry_uri": agent.telemetry_uri, "profiles_uri": agent.profiles_uri, "sku": CPU_SKU, "seed": seed}


# -- the summary -----------------------------------------------------------------------------
def print_summary(run: LocalRun, console: Console) -> None:
    """What the run did, stage by stage, in a few lines and tables; text from data is printed as text."""
    ingest = run.ingest
    console.rule("[bold]hdap run summary")
    reasons = ", ".join(f"{k}: {v}" for k, v in ingest.quarantine_reasons.items())
    console.print(f"telemetry: {ingest.rows_read:,} reports from {ingest.objects_read} of {ingest.objects_listed} objects -> "
                  f"[bold]{ingest.devices:,} devices[/] ingested, {ingest.rows_quarantined:,} rows quarantined"
                  + (f" ({escape(reasons)})" if ingest.rows_quarantined else ""))
    for kind, objects in (("unreadable", ingest.unreadable_objects), ("skipped", ingest.skipped_objects)):
        if objects:  # every object listed is read, unreadable or skipped: the counts add up
            shown = "; ".join(f"{uri} ({why})" for uri, why in list(objects.items())[:5]) + ("; ..." if len(objects) > 5 else "")
            console.print(f"[yellow]{len(objects)} {kind} objects:[/] {escape(shown)}")
    if not run.retrained:
        console.print(f"[bold]{escape(run.drift.summary)}[/]")
        console.print("To retrain anyway: the same command with --drift-force true (hdap run, hdap demo). Outputs in the store: "
                      + escape(run.run_uri))
        return
    console.print(f"drift gate: {escape(run.drift.summary)}")
    console.print(f"clusters: {run.clusters.k} ({escape(run.clusters.selection)})")
    console.print(_cluster_table(run.clusters))
    surrogates = run.surrogates
    accuracy = ", ".join(f"{100 * c.held_out_within_10pct:.0f}%" for c in surrogates.clusters)
    console.print(
        f"latency surrogates for {escape(surrogates.model)} ({'/'.join(surrogates.precisions)}), one per cluster, "
        f"profiled by {', '.join(sorted({c.source for c in surrogates.clusters}))}: held-out layers within +-10%: {accuracy}"
    )
    _print_search(run.front, console)
    if run.build is not None:
        _print_build(run.build, console)
    console.print(f"outputs in the store: [bold]{escape(run.run_uri)}[/]")
    if "run" in run.reports:
        console.print(f"report: [bold]{escape(str(run.reports['run']))}[/]")
    console.print(escape(f"stage reports: {run.reports['search']}, {run.reports['fleet']} and {run.reports['surrogate']}"))


def _cluster_table(clusters: ClusterSummary) -> Table:
    table = Table(show_edge=False)
    # Two probes the fleet reports: a convolution and the per-kernel overhead (a CPU fleet: two convolutions).
    probes = [p for p in ("probe_conv3x3_fp16_median_ms", "probe_launch_median_ms", "probe_cpu_conv3x3_fp32_median_ms",
                          "probe_cpu_conv3x3_int8_median_ms") if p in clusters.clusters[0].centroid][:2]
    for column in ("cluster", "devices", "share", "representative", *(p.removeprefix("probe_").removesuffix("_median_ms") + " ms"
                                                                     for p in probes)):
        table.add_column(column, justify="left" if column == "representative" else "right")
    for c in clusters.clusters:
        table.add_row(str(c.id), f"{c.size:,}", f"{100 * c.weight:.1f}%", escape(c.representative),
                      *(f"{c.centroid[p]:.4f}" for p in probes))
    return table


def _print_search(front: Front, console: Console) -> None:
    baseline = front.baseline_fleet_latency_ms
    console.print(f"search ({front.mode.value}, {front.objective.value}): uncompressed {escape(front.model)} "
                  f"{front.baseline_accuracy:.2f}% accurate, {baseline:.4f} ms fleet-weighted at {front.default_precision}")
    truth = any(p.true_fleet_latency_ms is not None for p in front.points)
    table = Table(show_edge=False)
    for column in (front.points[0].setting.kind.value, "accuracy", "fleet latency ms", "speed-up", "weights kB",
                   *(["true fleet ms"] if truth else []), "Pareto", "chosen"):
        table.add_column(column, justify="right")
    for p in front.points:
        true = [f"{p.true_fleet_latency_ms if p.true_fleet_latency_ms is not None else float('nan'):.4f}"] if truth else []
        table.add_row(p.setting.short, f"{p.accuracy:.2f}%", f"{p.fleet_latency_ms:.4f}", f"{baseline / p.fleet_latency_ms:.2f}x",
                      f"{p.size_bits / 8e3:.1f}", *true, "yes" if p.pareto else "", "<-" if p.chosen else "")
    console.print(table)


def _print_build(build: BuildSummary, console: Console) -> None:
    accuracy, fleet, timing, trt = build.accuracy, build.fleet, build.onnxruntime, build.tensorrt
    true = (f", simulated fleet truth {fleet.true_before_ms:.4f} -> {fleet.true_after_ms:.4f} ms ({fleet.true_speedup:.2f}x)"
            if fleet.true_speedup is not None else "")
    console.print(f"fine-tuned and built: accuracy {accuracy.uncompressed:.2f}% uncompressed -> {accuracy.onnxruntime:.2f}% "
                  f"(ONNX Runtime; agrees with the fake-quantised model on {100 * accuracy.onnxruntime_agreement:.1f}% of test images)")
    console.print(f"fleet-weighted latency predicted {fleet.predicted_before_ms:.4f} -> {fleet.predicted_after_ms:.4f} ms "
                  f"([bold]{fleet.predicted_speedup:.2f}x[/]){true}")
    states = "; ".join(f"{s.description} {s.speedup:.2f}x" + (f" (surrogate {100 * s.prediction_error:+.0f}%)"
                                                              if s.prediction_error is not None else "") for s in timing.states)
    console.print(f"ONNX Runtime on this machine, measured: {timing.uncompressed_latency_ms:.4f} -> {timing.latency_ms:.4f} ms "
                  f"fleet-weighted ({timing.speedup:.2f}x; {states}); ONNX {build.size.uncompressed_onnx_bytes / 1e3:.0f} -> "
                  f"{build.size.onnx_bytes / 1e3:.0f} kB")
    console.print(f"TensorRT: {trt.latency_ms:.4f} ms on {escape(trt.gpu)} ({trt.speedup:.2f}x)" if trt.built
                  else f"TensorRT engine not built: {escape(trt.reason)}")
    console.print(f"published to [bold]{escape(build.registry_uri)}[/]" if build.published
                  else f"[yellow]not published:[/] {escape(build.gate.message)}")

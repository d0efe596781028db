"""The pipeline as users meet it: `hdap compile`, `hdap run` through kfp.local, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hdap.deploy.registry import verify_entry
from hdap.store import ObjectStore, StoreConfig
from tests.fixtures import AS_OF, simulate


def hdap(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdap.cli", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=600,
    )


def test_hdap_store_put_uploads_a_file_and_a_folder_to_the_store_hdap_uses(store_env: StoreConfig, object_store: ObjectStore,
                                                                          bucket: str, tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights")
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "0.png").write_bytes(b"png")
    assert hdap("store", "put", str(tmp_path / "model.pt"), f"s3://{bucket}/models/model.pt").returncode == 0
    result = hdap("store", "put", str(tmp_path / "images"), f"s3://{bucket}/datasets/pets/")
    assert result.returncode == 0 and "uploaded 1 file(s)" in result.stdout
    assert object_store.get_bytes(f"s3://{bucket}/models/model.pt") == b"weights"
    assert object_store.get_bytes(f"s3://{bucket}/datasets/pets/cat/0.png") == b"png"
    missing = hdap("store", "put", str(tmp_path / "nothing.pt"), f"s3://{bucket}/models/x.pt")
    assert missing.returncode != 0 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_hdap_compile_asks_for_a_gpu_for_the_training_steps_when_told(tmp_path: Path) -> None:
    output = tmp_path / "pipeline.yaml"
    result = hdap("compile", "--output", str(output), "--train-accelerator", "nvidia.com/gpu")
    assert result.returncode == 0, result.stderr
    executors = yaml.safe_load_all(output.read_text()).__next__()["deploymentSpec"]["executors"]
    accelerated = {name for name, e in executors.items() if e["container"].get("resources", {}).get("accelerator")}
    assert accelerated == {"exec-search", "exec-finetune"}


def _tasks(spec: dict, dag: dict) -> dict[str, dict]:
    """Every task of the compiled pipeline by name, inside conditions too."""
    found = {}
    for name, task in dag["tasks"].items():
        inner = spec["components"].get(task["componentRef"]["name"], {}).get("dag")
        found.update(_tasks(spec, inner) if inner else {name: task})
    return found


def test_the_compiled_pipeline_retries_every_step_and_caches_only_steps_whose_inputs_cannot_change(tmp_path: Path) -> None:
    """A scheduled run must read this week's telemetry, profiles and registry, not replay a cached step."""
    output = tmp_path / "pipeline.yaml"
    result = hdap("compile", "--output", str(output), "--build-toleration", "dedicated=jetson:NoSchedule")
    assert result.returncode == 0, result.stderr
    spec, platform = list(yaml.safe_load_all(output.read_text()))[:2]
    tasks = _tasks(spec, spec["root"]["dag"])
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert set(tasks) == {"ingest", "drift", "cluster", "surrogate", "search", "finetune", "build", "run-status"}
    assert cached == {"cluster", "search", "finetune"}  # not ingest, drift and build (the registry), surrogate (profiles)
    assert tasks["run-status"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # the exit handler
    retrain = spec["root"]["dag"]["tasks"]["exit-handler-1"]
    inner = spec["components"][retrain["componentRef"]["name"]]["dag"]["tasks"]
    gate = next(t for t in inner.values() if t.get("triggerPolicy", {}).get("condition"))
    assert gate["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--drift-Output'] == 'retrain'"
    for task in tasks.values():
        assert task["retryPolicy"] == {"maxRetryCount": 3, "backoffDuration": "30s", "backoffFactor": 2.0,
                                       "backoffMaxDuration": "600s"}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        resources = executor["container"]["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"], name
        assert resources["cpuLimit"] == 2 * resources["cpuRequest"], name
    build = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-build"]
    assert build["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "jetson", "effect": "NoSchedule"}]
    wrong = hdap("compile", "--output", str(output), "--build-toleration", "dedicated=jetson:Sometimes")
    assert wrong.returncode == 1 and "is not a toleration" in wrong.stderr and "Traceback" not in wrong.stderr


def test_hdap_compile_writes_ir_yaml_with_every_component_and_the_parameters(tmp_path: Path) -> None:
    output = tmp_path / "pipeline.yaml"
    result = hdap("compile", "--output", str(output), "--image", "registry.example.com/hdap-step:1")
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(output.read_text()))
    spec, platform = documents[0], documents[1]
    assert {"comp-ingest", "comp-cluster", "comp-surrogate", "comp-search", "comp-finetune", "comp-build"} <= set(spec["components"])
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert {"telemetry_uri", "sku", "cluster_k", "cluster_k_min", "cluster_k_max", "seed", "output_uri", "ingest_as_of", "model",
            "surrogate_backend", "surrogate_samples_per_layer", "truth_uri", "profiles_uri", "dataset", "dataset_uri",
            "search_mode", "search_objective", "search_targets", "search_strengths", "search_granule", "accuracy_tolerance",
            "finetune_epochs", "registry_uri", "build_tensorrt"} <= set(parameters)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/hdap-step:1"}
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["secretAsEnv"][0]["secretName"] == "hdap-s3" for e in secrets.values())


def test_the_build_step_can_ask_for_a_gpu_and_be_pinned_to_nodes_of_the_target_sku(tmp_path: Path) -> None:
    output = tmp_path / "pipeline.yaml"
    result = hdap("compile", "--output", str(output), "--image", "reg/step:1", "--gpu-image", "reg/step-gpu:1",
                  "--build-accelerator", "nvidia.com/gpu", "--build-node-label", "nvidia.com/gpu.product=Orin")
    assert result.returncode == 0, result.stderr
    spec, platform = list(yaml.safe_load_all(output.read_text()))[:2]
    build = spec["deploymentSpec"]["executors"]["exec-build"]["container"]
    assert build["image"] == "reg/step-gpu:1"
    assert build["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu" and build["resources"]["accelerator"]["resourceCount"] == "1"
    assert spec["deploymentSpec"]["executors"]["exec-search"]["container"]["image"] == "reg/step:1"
    selector = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-build"]["nodeSelector"]
    assert selector == {"labels": {"nvidia.com/gpu.product": "Orin"}}


@pytest.mark.slow
def test_hdap_run_executes_the_pipeline_locally_and_prints_a_summary(store_env: StoreConfig, object_store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    config = simulate(object_store, bucket, devices=800, days=4, seed=2)
    arguments = (
        "--telemetry-uri", config.telemetry_uri, "--output-uri", f"s3://{bucket}/runs", "--ingest-as-of", AS_OF.isoformat(),
        "--model", "small-cnn", "--surrogate-samples-per-layer", "12", "--truth-uri", config.truth_uri,
        "--search-targets", "0.6,0.3", "--search-pretrain-epochs", "2", "--search-epochs", "2", "--search-finetune-epochs", "1",
        "--finetune-epochs", "1", "--accuracy-tolerance", "100", "--registry-uri", f"s3://{bucket}/registry")
    result = hdap("run", *arguments, cwd=tmp_path, env={"COLUMNS": "500"})  # wide enough that rich wraps no path
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = " ".join(result.stdout.split())
    assert "hdap run summary" in printed
    above_summary = result.stdout.split("hdap run summary")[0].splitlines()
    assert len(above_summary) <= 40 and "step 7: build success" in printed  # kfp.local's dumps are in the log file
    log_file = next((tmp_path / ".hdap" / "logs").glob("run-*.log"))
    assert f"its full log: {log_file}" in printed and "Executing task 'build'" in log_file.read_text()
    assert "800 devices ingested, 0 rows quarantined" in printed
    assert "latency surrogates for small-cnn (fp16/int8), one per cluster, profiled by simulated" in printed
    assert "search (fleet, latency): uncompressed small-cnn" in printed
    assert "fine-tuned and built: accuracy" in printed and "TensorRT engine not built" in printed
    assert f"published to s3://{bucket}/registry/small-cnn/" in printed
    run_report = next((tmp_path / ".hdap" / "runs").glob("*/report.html"))
    assert f"report: {run_report}" in printed
    assert run_report.read_text().count("<img") >= 5
    latest = object_store.get_json(f"s3://{bucket}/registry/small-cnn/latest.json")
    manifest = verify_entry(object_store, latest["manifest"].removesuffix("/manifest.json"))
    assert {"model.onnx", "architecture.json", "quantization.json", "weights.pt"} <= set(manifest["files"])
    assert manifest["accuracy"]["onnxruntime_agreement"] >= 0.99 and manifest["run"]["name"] == latest["version"]
    report = next((tmp_path / ".hdap" / "runs").glob("*/fleet-report.html"))
    assert next((tmp_path / ".hdap" / "runs").glob("*/search-report.html")).read_text().count("<img") >= 2
    front = object_store.get_json(next(o.uri for o in object_store.list(f"s3://{bucket}/runs/") if o.uri.endswith("front.json")))
    assert all(p["true_fleet_latency_ms"] > 0 for p in front["points"]) and sum(p["chosen"] for p in front["points"]) == 1
    assert report.read_text().count("<img") >= 3
    assert "drift gate: retraining: nothing is published yet for small-cnn" in printed
    status = object_store.get_json(f"s3://{bucket}/runs/{latest['version']}/status.json")
    assert status["state"] == "SUCCEEDED" and status["drift"].startswith("retraining: nothing is published yet")
    # The same fleet, model and settings again: the drift gate finds nothing to do, the heavy steps are skipped, the run is green
    again = hdap("run", *arguments, cwd=tmp_path, env={"COLUMNS": "500"})
    printed_again = " ".join(again.stdout.split())
    assert again.returncode == 0 and "no drift: nothing to do" in printed_again and "--drift-force true" in printed_again
    assert "step 2: drift success" in printed_again and "cluster" not in printed_again.split("no drift")[0]
    assert object_store.get_json(f"s3://{bucket}/registry/small-cnn/latest.json") == latest
    runs = object_store.list(f"s3://{bucket}/runs/")
    assert {Path(o.uri).name for o in runs} >= {"features.parquet", "quarantine.parquet", "clusters.json", "assignments.parquet",
                                                "report.html", "fleet.json", "cluster-0.json", "profile-cluster-0.parquet",
                                                "front.json", "architecture.json", "index.json", "checkpoint.pt",
                                                "quantization.json", "build.json", "model.onnx", "uncompressed.onnx"}


@pytest.mark.slow
def test_a_cpu_fleet_profiled_in_its_states_runs_through_every_stage_and_is_measured_and_predicted_per_state(
        store_env: StoreConfig, object_store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    from hdap.stages.build import BuildSummary

    states, fleet = "1,all+load", [f"--profiles-uri=s3://{bucket}/profiles", f"--telemetry-uri=s3://{bucket}/telemetry"]
    profiled = hdap("profile", "--model", "small-cnn", "--samples-per-layer", "4", "--rounds", "1", "--device-id", "gw",
                    "--cpu-states", states, *fleet, cwd=tmp_path)
    assert profiled.returncode == 0, profiled.stderr[-2000:]
    result = hdap(
        "run", "--sku", "cpu-onnxruntime", "--cpu-states", states, *fleet, "--output-uri", f"s3://{bucket}/runs", "--model", "small-cnn",
        "--search-targets", "0.6", "--search-pretrain-epochs", "2", "--search-epochs", "1", "--search-finetune-epochs", "1",
        "--finetune-epochs", "1", "--accuracy-tolerance", "100", "--registry-uri", f"s3://{bucket}/registry",
        cwd=tmp_path, env={"COLUMNS": "500"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = " ".join(result.stdout.split())
    assert "clusters: 2 (declared CPU states, one cluster each: 1 thread, every core beside 1 busy process)" in printed
    assert "latency surrogates for small-cnn (fp32/int8), one per cluster, profiled by uploaded" in printed
    build = BuildSummary.get(object_store, next(o.uri for o in object_store.list(f"s3://{bucket}/runs/") if o.uri.endswith("build.json")))
    assert [s.state for s in build.onnxruntime.states] == ["1", "all+load"]
    assert all(s.predicted_latency_ms > 0 and s.predicted_uncompressed_latency_ms > 0 for s in build.onnxruntime.states)


@pytest.mark.slow
def test_a_step_that_fails_reports_its_reason_in_one_line(store_env: StoreConfig, object_store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    import pyarrow as pa

    table = pa.table({"schema_version": pa.array([9], pa.int16()), "device_id": ["x"]})
    object_store.put_table(f"s3://{bucket}/v9/a.parquet", table)
    result = hdap("run", "--telemetry-uri", f"s3://{bucket}/v9", "--output-uri", f"s3://{bucket}/runs", cwd=tmp_path)
    assert result.returncode == 1
    printed = " ".join(result.stderr.split())
    assert "error: the pipeline stopped in step ingest: " in printed
    assert "schema version 9" in printed and "the run's log:" in printed and "\x1b[" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_wrong_secret_key_ends_the_command_with_one_sentence_and_no_traceback(store_env: StoreConfig, tmp_path: Path) -> None:
    result = hdap("run", env={"HDAP_S3_SECRET_KEY": "wrong"}, cwd=tmp_path)
    assert result.returncode == 1
    printed = " ".join(result.stderr.split())
    assert "rejected the secret key" in printed and "HDAP_S3_SECRET_KEY" in printed
    assert "Traceback" not in result.stderr + result.stdout


def test_a_missing_bucket_ends_the_command_with_one_sentence(store_env: StoreConfig, tmp_path: Path) -> None:
    result = hdap("run", "--telemetry-uri", "s3://no-such-bucket/telemetry", cwd=tmp_path)
    assert result.returncode == 1
    assert "has no bucket 'no-such-bucket'" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_no_store_configured_says_how_to_get_one(tmp_path: Path) -> None:
    env = {name: "" for name in ("HDAP_S3_ENDPOINT", "HDAP_S3_ACCESS_KEY", "HDAP_S3_SECRET_KEY")}
    result = hdap("run", env={**env, "HDAP_HOME": str(tmp_path / ".hdap")}, cwd=tmp_path)
    assert result.returncode == 1
    assert "hdap store up" in " ".join(result.stderr.split())


def test_help_explains_the_commands() -> None:
    result = hdap("--help")
    assert result.returncode == 0
    for command in ("demo", "run", "compile", "store", "fleet"):
        assert command in result.stdout


def test_hdap_profile_measures_each_cpu_state_as_a_device_whose_telemetry_passes_ingest(store_env: StoreConfig, object_store: ObjectStore,
                                                                                          bucket: str, tmp_path: Path) -> None:
    from hdap.fleet.ingest import ingest_telemetry
    from hdap.latency.profiling import timed_models
    from hdap.stages.ingest import IngestConfig

    result = hdap(
        "profile", "--model", "small-cnn", "--samples-per-layer", "2", "--rounds", "1", "--device-id", "bench-host",
        "--cpu-states", "1,all+load", "--profiles-uri", f"s3://{bucket}/profiles", "--telemetry-uri", f"s3://{bucket}/telemetry",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for device, state in (("bench-host-1", "1"), ("bench-host-all_load", "all+load")):
        profile = object_store.get_table(f"s3://{bucket}/profiles/{device}/profile.parquet")
        assert set(profile.column("precision").to_pylist()) == {"fp32", "int8"}
        assert set(profile.column("status").to_pylist()) == {"ok"}
        models = timed_models(object_store.get_table(f"s3://{bucket}/profiles/{device}/models.parquet"))
        assert len(models) >= 10 and all(latency > 0 for _, latency in models)  # the model's own variants, timed whole
        assert len({tuple((c.out_channels, c.precision) for c in chain) for chain, _ in models}) == len(models)  # each its own
        described = object_store.get_json(f"s3://{bucket}/profiles/{device}/device.json")
        assert described["backend"] == "onnxruntime" and described["cpu_state"] == state
    ingested = ingest_telemetry(object_store, IngestConfig(telemetry_uri=f"s3://{bucket}/telemetry", sku="cpu-onnxruntime"))
    assert ingested.rows_read == 2 and ingested.rows_quarantined == 0
    features = ingested.features.sort_by("device_id")
    assert features.column("power_mode").to_pylist() == ["1", "all+load"]
    assert min(features.column("probe_cpu_conv3x3_int8_median_ms").to_pylist()) > 0
    assert features.column("background_load_median").to_pylist() == [0.0, pytest.approx(1 / len(os.sched_getaffinity(0)))]


# What a gateway has not installed: the agent must run without every one of them.
PIPELINE_ONLY = ("torch", "torchvision", "torch_pruning", "kfp", "sklearn", "scipy", "matplotlib", "safetensors")


def test_a_device_without_torch_profiles_from_a_kit_written_where_the_pipeline_runs(store_env: StoreConfig,
                                                                                    object_store: ObjectStore, bucket: str,
                                                                                    tmp_path: Path) -> None:
    from hdap.latency.profiling import timed_models

    kit = f"s3://{bucket}/kits/small-cnn"
    written = hdap("profile-kit", "--model", "small-cnn", "--kit-uri", kit, cwd=tmp_path)
    assert written.returncode == 0, written.stderr[-2000:]
    blocked = "import sys; sys.modules.update(dict.fromkeys(%r)); from hdap.cli import main; main()" % (PIPELINE_ONLY,)
    profiled = subprocess.run(
        [sys.executable, "-c", blocked, "profile", "--kit-uri", kit, "--samples-per-layer", "2", "--rounds", "1",
         "--device-id", "gateway", "--cpu-states", "1", "--profiles-uri", f"s3://{bucket}/profiles",
         "--telemetry-uri", f"s3://{bucket}/telemetry"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env=os.environ.copy())
    assert profiled.returncode == 0, profiled.stderr[-2000:]
    assert "of small-cnn on gateway-1" in profiled.stdout
    assert set(object_store.get_table(f"s3://{bucket}/profiles/gateway-1/profile.parquet").column("status").to_pylist()) == {"ok"}
    assert len(timed_models(object_store.get_table(f"s3://{bucket}/profiles/gateway-1/models.parquet"))) >= 10
    assert object_store.get_json(f"s3://{bucket}/profiles/gateway-1/device.json")["model"] == "small-cnn"
    without_kit = subprocess.run([sys.executable, "-c", blocked, "profile", "--model", "small-cnn"], capture_output=True, text=True,
                                 cwd=tmp_path, timeout=600, env=os.environ.copy())
    assert without_kit.returncode == 1 and "pip install 'hdap[pipeline]'" in without_kit.stderr and "Traceback" not in without_kit.stderr
    missing = hdap("profile", "--kit-uri", f"s3://{bucket}/kits/none", cwd=tmp_path)
    assert missing.returncode == 1 and "no profiling kit at" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "--ingest-as-of", "yesterday"), "ingest_as_of='yesterday' is not an ISO-8601 time"),
        (("fleet", "simulate", "--end", "soon"), "end='soon' is not an ISO-8601 time"),
        (("profile", "--input-shape", "3x32x32"), "input_shape='3x32x32' is not 3 numbers separated by commas"),
        (("run", "--sku", "jetson-tx9"), "sku='jetson-tx9' is not a SKU hdap knows"),
        (("run", "--telemetry-uri", "/data/telemetry"), "telemetry_uri='/data/telemetry' is not an object-store URI"),
        (("run", "--search-targets", "0.5,1.5"), "search_targets='0.5,1.5' must be fractions of the uncompressed cost"),
        (("run", "--cluster-k", "-1"), "cluster_k=-1 is not a number of clusters"),
        (("run", "--config", "missing.toml"), "cannot read the run configuration missing.toml"),
    ],
)
def test_malformed_options_end_with_one_sentence_and_no_traceback(store_env: StoreConfig, tmp_path: Path, args, message) -> None:
    result = hdap(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr

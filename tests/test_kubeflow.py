"""hdap submit / schedule / runs against a local stand-in for the Kubeflow Pipelines API (v2beta1):
the real API server cannot run here (tests/kfp_api_stub.py implements the endpoints the kfp client calls)."""

from __future__ import annotations

import socket

import pytest
import yaml

from hdap.errors import HdapError
from pipelines.kubeflow import KubeflowTarget, Submission, list_runs, schedule, submit, wait_for_run
from tests.kfp_api_stub import KfpApiStub
from tests.test_pipeline import hdap


@pytest.fixture
def api():
    stub = KfpApiStub(token="s3cret")
    host = stub.start()
    yield stub, KubeflowTarget(host=host, token="s3cret")
    stub.stop()


def test_submit_uploads_the_pipeline_then_a_new_version_and_starts_runs_with_the_parameters(api) -> None:
    stub, target = api
    first = submit(target, Submission(parameters={"seed": 3, "telemetry_uri": "s3://hdap/telemetry/jetson-orin"}))
    second = submit(target, Submission(parameters={"seed": 4}, run_name="weekly", service_account="hdap-steps"))
    assert first.pipeline_id == second.pipeline_id and first.version_id != second.version_id and len(stub.pipelines) == 1
    package = next(yaml.safe_load_all(stub.versions[second.version_id]["package"]))
    assert package["pipelineInfo"]["name"] == "hdap" and "comp-ingest" in package["components"]
    assert len(stub.experiments) == 1 and next(iter(stub.experiments.values()))["display_name"] == "hdap"
    run = stub.runs[second.run_id]
    assert run["display_name"] == "weekly" and run["experiment_id"] == second.experiment_id
    assert run["pipeline_version_reference"] == {"pipeline_id": second.pipeline_id, "pipeline_version_id": second.version_id}
    assert run["runtime_config"] == {"parameters": {"seed": 4}} and run["service_account"] == "hdap-steps"
    assert "service_account" not in stub.runs[first.run_id]
    assert all(r["headers"].get("authorization") == "Bearer s3cret" for r in stub.requests)


def test_schedule_creates_one_recurring_run_at_a_time_without_catch_up_on_a_six_field_cron(api) -> None:
    stub, target = api
    done = schedule(target, Submission(parameters={"seed": 1}), cron="0 0 3 * * 1")
    body = stub.recurring_runs[done.recurring_run_id]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["experiment_id"] == done.experiment_id and body["description"] == "hdap, Mondays at 03:00:00"
    assert body["pipeline_version_reference"]["pipeline_version_id"] == done.version_id
    every = schedule(target, Submission(), interval_seconds=7 * 86400)
    assert int(stub.recurring_runs[every.recurring_run_id]["trigger"]["periodic_schedule"]["interval_second"]) == 7 * 86400


@pytest.mark.parametrize("cron, says", [
    ("0 3 * * 1", "has five fields, but Kubeflow's cron has six, seconds first, and would read it shifted by one: write "
                  "'0 0 3 * * 1' (Mondays at 03:00:00)"),
    ("0 0 25 * * *", "its hour field '25' has 25, outside 0-23"),
    ("0 0 3 * * FUNDAY", "its day of week field 'FUNDAY' has 'FUNDAY', which is not a number or a name"),
    ("* *", "has 2 fields"),
])
def test_a_cron_kubeflow_would_misread_is_refused_with_what_to_write_before_anything_is_sent(api, cron: str, says: str) -> None:
    stub, target = api
    with pytest.raises(HdapError, match="cron") as refused:
        schedule(target, Submission(), cron=cron)
    assert says in str(refused.value) and not stub.requests


def test_runs_lists_the_experiment_and_waits_for_a_run_to_end(api) -> None:
    stub, target = api
    done = submit(target, Submission(parameters={"seed": 2}))
    assert [run.run_id for run in list_runs(target, "hdap")] == [done.run_id]
    stub.runs[done.run_id]["state"] = "SUCCEEDED"
    assert wait_for_run(target, done.run_id, timeout_seconds=30).state == "SUCCEEDED"
    with pytest.raises(HdapError, match="there is no experiment 'other'"):
        list_runs(target, "other")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_way_of_not_reaching_kubeflow_is_one_sentence_from_the_command(api, tmp_path) -> None:
    stub, target = api
    cases = [
        (["submit", "--host", f"http://127.0.0.1:{_closed_port()}"], "cannot reach Kubeflow Pipelines at http://127.0.0.1:"),
        (["submit", "--host", target.host, "--token", "wrong"], "refused the credentials (HTTP 401)"),
        (["submit", "--host", target.host + "/not-the-api", "--token", "s3cret"], "answered HTTP 404 to /apis/v2beta1/healthz"),
        (["submit"], "say where Kubeflow Pipelines is"),
        (["submit", "--host", target.host, "--sku", "jetson-tx9"], "sku='jetson-tx9' is not a SKU hdap knows"),
        (["schedule", "--host", target.host, "--token", "s3cret", "--cron", "0 3 * * 1"], "write '0 0 3 * * 1'"),
        (["schedule", "--host", target.host, "--token", "s3cret", "--every", "soon"], "--every 'soon' is not an interval"),
        (["runs", "--host", target.host, "--token", "s3cret", "--experiment", "nothing"], "there is no experiment 'nothing'"),
    ]
    for args, says in cases:
        result = hdap(*args, cwd=tmp_path, env={"COLUMNS": "400"})
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert says in " ".join(result.stderr.split()) and "Traceback" not in result.stderr, (args, result.stderr)
    assert not stub.runs and not stub.recurring_runs


def test_hdap_submit_from_the_command_line_sends_the_run_settings_it_was_given(api, tmp_path) -> None:
    stub, target = api
    result = hdap("submit", "--host", target.host, "--token", "s3cret", "--seed", "7", "--search-targets", "0.6,0.4",
                  "--experiment", "fleet-a", cwd=tmp_path, env={"COLUMNS": "400"})
    assert result.returncode == 0, result.stderr
    run = next(iter(stub.runs.values()))
    assert run["runtime_config"]["parameters"]["seed"] == 7 and run["runtime_config"]["parameters"]["search_targets"] == "0.6,0.4"
    assert f"run {run['run_id']} started in experiment fleet-a" in " ".join(result.stdout.split())

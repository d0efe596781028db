"""The pipeline on a Kubeflow Pipelines server: upload it (or a new version), run it, schedule it, list runs.

    target = KubeflowTarget(host="https://kubeflow.example.com/pipeline", token=..., namespace="team-a")
    submitted = submit(target, Submission(parameters={...}))
    scheduled = schedule(target, Submission(parameters={...}), cron="0 0 3 * * 1")

Everything goes through the kfp client (`kfp.Client`, API v2beta1). Before the client is made,
one GET of the API's healthz endpoint, with the same credentials and a timeout in seconds, turns
an unreachable host, a refused credential or something that is not the Pipelines API into one
sentence each (the client itself would retry for half a minute, then raise a traceback).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from hdap.errors import HdapError
from hdap.settings import ParameterValue

HEALTHZ = "/apis/v2beta1/healthz"
PROBE_SECONDS = 10


@dataclass(frozen=True)
class KubeflowTarget:
    host: str  # the Pipelines API, e.g. https://<kubeflow>/pipeline or http://ml-pipeline.kubeflow:8888
    token: str = ""  # a bearer token (existing_token)
    cookies: str = ""  # e.g. the authservice session cookie, "authservice_session=..."
    in_cluster: bool = False  # the pod's projected service-account token (ServiceAccountTokenVolumeCredentials)
    namespace: str = ""  # the profile namespace of a multi-user Kubeflow; empty: single-user

    def base(self) -> str:
        host = self.host.rstrip("/")
        return host if host.startswith(("http://", "https://")) else f"https://{host}"


@dataclass(frozen=True)
class Submission:
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    pipeline_name: str = "hdap"
    version_name: str = ""  # empty: hdap-<UTC time>
    experiment: str = "hdap"
    run_name: str = ""  # empty: the pipeline name and the UTC time
    package: Path | None = None  # a compiled pipeline; None: compile this one
    service_account: str = ""  # the runs' Kubernetes identity (manifests/: hdap-steps); empty: the namespace's default


@dataclass(frozen=True)
class Submitted:
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str = ""
    recurring_run_id: str = ""


def probe(target: KubeflowTarget) -> None:
    """One healthz GET with the target's credentials; HdapError naming what to fix if it fails."""
    request = urllib.request.Request(target.base() + HEALTHZ, headers=_auth_headers(target))
    try:
        with urllib.request.urlopen(request, timeout=PROBE_SECONDS) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise HdapError(f"Kubeflow Pipelines at {target.base()} refused the credentials (HTTP {err.code}): pass a valid --token, "
                            "--cookies from a signed-in browser session, or --in-cluster inside the cluster.") from None
        raise HdapError(f"{target.base()} answered HTTP {err.code} to {HEALTHZ}: is --host the Pipelines API "
                        "(https://<kubeflow>/pipeline, or http://ml-pipeline.kubeflow:8888 in the cluster)?") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise HdapError(f"cannot reach Kubeflow Pipelines at {target.base()} ({reason}): check --host and that the "
                        "API is reachable from here (kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80).") from None
    try:
        json.loads(body or b"{}")
    except ValueError:
        raise HdapError(f"{target.base()}{HEALTHZ} did not answer JSON: is --host the Pipelines API, not the UI's front page?") from None


def _auth_headers(target: KubeflowTarget) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    token = target.token or (_service_account_token() if target.in_cluster else "")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if target.cookies:
        headers["Cookie"] = target.cookies
    return headers


def _service_account_token() -> str:
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    path = Path(ServiceAccountTokenVolumeCredentials()._token_path)  # the kfp client's own choice: its env variable, or the default
    if not path.exists():
        raise HdapError(f"--in-cluster needs the pod's pipelines token at {path}: mount it (a projected service-account token "
                        "with audience pipelines.kubeflow.org), or pass --token.")
    return path.read_text().strip()


def client(target: KubeflowTarget):
    """A kfp client for the target, after the probe; its chatter (links it prints) kept out of the console."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    probe(target)
    with contextlib.redirect_stdout(io.StringIO()):
        return kfp.Client(host=target.base(), existing_token=target.token or None, cookies=target.cookies or None,
                          credentials=ServiceAccountTokenVolumeCredentials() if target.in_cluster and not target.token else None,
                          namespace=target.namespace or "kubeflow")


def _api_call(what: str, call, *args, **kwargs):
    """A client call with the API's refusals as one sentence."""
    from kfp_server_api.exceptions import ApiException

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return call(*args, **kwargs)
    except ApiException as err:
        detail = _api_message(err.body) or err.reason
        raise HdapError(f"Kubeflow Pipelines refused to {what} (HTTP {err.status}: {detail}).") from None


def _api_message(body: str | bytes | None) -> str:
    try:
        return str(json.loads(body or "{}").get("message", "")).strip()
    except (ValueError, AttributeError):
        return ""


def upload(kfp_client, submission: Submission, package: Path) -> tuple[str, str]:
    """The pipeline's id and a new version's id: the pipeline is created on first upload, versioned after."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    version = submission.version_name or f"{submission.pipeline_name}-{stamp}"
    pipeline_id = _api_call("look up the pipeline", kfp_client.get_pipeline_id, submission.pipeline_name)
    if pipeline_id is None:  # the first upload creates the pipeline and its first version
        pipeline = _api_call("upload the pipeline", kfp_client.upload_pipeline, str(package), pipeline_name=submission.pipeline_name,
                             description="hdap: compress a DNN for a fleet of edge devices")
        versions = _api_call("list the pipeline's versions", kfp_client.list_pipeline_versions, pipeline.pipeline_id)
        return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    created = _api_call("upload a pipeline version", kfp_client.upload_pipeline_version, str(package), version, pipeline_id=pipeline_id)
    return pipeline_id, created.pipeline_version_id


@contextlib.contextmanager
def _package(submission: Submission):
    """The compiled pipeline: the given file, or this pipeline compiled into a temporary one."""
    if submission.package is not None:
        if not submission.package.exists():
            raise HdapError(f"{submission.package} does not exist: compile it with `hdap compile --output {submission.package}`.")
        yield submission.package
        return
    from pipelines.compile import compile_pipeline

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hdap-pipeline.yaml"
        compile_pipeline(path)
        yield path


def submit(target: KubeflowTarget, submission: Submission) -> Submitted:
    """Upload (a new version of) the pipeline and start one run of it with the parameters."""
    kfp_client = client(target)
    with _package(submission) as package:
        pipeline_id, version_id = upload(kfp_client, submission, package)
    experiment = _api_call("create the experiment", kfp_client.create_experiment, submission.experiment,
                           namespace=target.namespace or None)
    name = submission.run_name or f"{submission.pipeline_name} {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}"
    run = _api_call("start the run", kfp_client.run_pipeline, experiment.experiment_id, name, params=submission.parameters,
                    pipeline_id=pipeline_id, version_id=version_id, service_account=submission.service_account or None)
    return Submitted(pipeline_id, version_id, experiment.experiment_id, run_id=run.run_id)


def schedule(target: KubeflowTarget, submission: Submission, cron: str = "", interval_seconds: int = 0, max_concurrency: int = 1,
             catchup: bool = False) -> Submitted:
    """Upload (a new version of) the pipeline and create a recurring run of it: on `cron` (six fields,
    checked: `hdap.schedule`) or every `interval_seconds`; one at a time and no catch-up by default."""
    from hdap.schedule import check_cron, explain_cron

    if bool(cron) == bool(interval_seconds):
        raise HdapError("give the schedule as --cron (six fields, seconds first) or --every, one of the two.")
    cron = check_cron(cron) if cron else ""
    if max_concurrency < 1:
        raise HdapError(f"--max-concurrency {max_concurrency}: at least 1 run must be allowed at a time.")
    kfp_client = client(target)
    with _package(submission) as package:
        pipeline_id, version_id = upload(kfp_client, submission, package)
    experiment = _api_call("create the experiment", kfp_client.create_experiment, submission.experiment,
                           namespace=target.namespace or None)
    when = explain_cron(cron) if cron else f"every {interval_seconds} s"
    recurring = _api_call("create the recurring run", kfp_client.create_recurring_run, experiment.experiment_id,
                          submission.run_name or f"{submission.pipeline_name}-recurring", description=f"hdap, {when}",
                          cron_expression=cron or None, interval_second=interval_seconds or None, max_concurrency=max_concurrency,
                          no_catchup=not catchup, params=submission.parameters, pipeline_id=pipeline_id, version_id=version_id,
                          service_account=submission.service_account or None)
    return Submitted(pipeline_id, version_id, experiment.experiment_id, recurring_run_id=recurring.recurring_run_id)


@dataclass(frozen=True)
class RunState:
    run_id: str
    name: str
    state: str
    created_at: str


def list_runs(target: KubeflowTarget, experiment: str, count: int = 20) -> list[RunState]:
    """The experiment's latest runs, newest first."""
    kfp_client = client(target)
    try:
        found = _api_call("find the experiment", kfp_client.get_experiment, experiment_name=experiment,
                          namespace=target.namespace or None)
    except ValueError:
        raise HdapError(f"there is no experiment '{experiment}' on {target.base()}: submit a run first (`hdap submit`), "
                        "or name the experiment with --experiment.") from None
    response = _api_call("list the runs", kfp_client.list_runs, experiment_id=found.experiment_id, page_size=count,
                         sort_by="created_at desc", namespace=target.namespace or None)
    return [RunState(run.run_id, run.display_name, str(run.state), str(run.created_at)) for run in response.runs or []]


def wait_for_run(target: KubeflowTarget, run_id: str, timeout_seconds: int) -> RunState:
    """The run once it has ended (or HdapError after `timeout_seconds`)."""
    kfp_client = client(target)
    try:
        run = _api_call("follow the run", kfp_client.wait_for_run_completion, run_id, timeout=timeout_seconds, sleep_duration=2)
    except TimeoutError:
        raise HdapError(f"run {run_id} had not ended after {timeout_seconds} s: wait longer with --timeout.") from None
    return RunState(run.run_id, run.display_name, str(run.state), str(run.created_at))

"""A local stand-in for the Kubeflow Pipelines API server (v2beta1), which cannot run here.

It implements exactly the endpoints `hdap submit`, `hdap schedule` and `hdap runs` call through the
kfp client, as the API documents them (https://www.kubeflow.org/docs/components/pipelines/reference/api/kubeflow-pipeline-api-spec/):

    GET  /apis/v2beta1/healthz
    GET  /apis/v2beta1/pipelines?filter=...            POST /apis/v2beta1/pipelines/upload?name=...
    GET  /apis/v2beta1/pipelines/{id}/versions
    POST /apis/v2beta1/pipelines/upload_version?name=...&pipelineid=...
    GET  /apis/v2beta1/experiments?filter=...          POST /apis/v2beta1/experiments
    POST /apis/v2beta1/runs     GET /apis/v2beta1/runs?experiment_id=...     GET /apis/v2beta1/runs/{id}
    POST /apis/v2beta1/recurringruns

and keeps what it was sent (`requests`, the stored objects) for the tests to read. With a token, it
answers 401 to a request without `Authorization: Bearer <token>`, as an authenticated deployment does.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PREFIX = "/apis/v2beta1"


@dataclass
class KfpApiStub:
    token: str = ""
    requests: list[dict] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)  # version id -> version, with its uploaded YAML under "package"
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def start(self) -> str:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                stub._handle(self, "GET")

            def do_POST(self) -> None:
                stub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self.ids)}"

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        record = {"method": method, "path": url.path, "query": query, "headers": {k.lower(): v for k, v in handler.headers.items()}}
        content_type = handler.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
            record["files"] = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                               for part in message.iter_parts()}
        elif raw:
            record["body"] = json.loads(raw)
        self.requests.append(record)
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            return _reply(handler, 401, {"error": "Unauthorized", "code": 16, "message": "Unauthorized: invalid or missing token"})
        status, body = self._route(method, url.path.removeprefix(PREFIX), query, record)
        _reply(handler, status, body)

    def _route(self, method: str, path: str, query: dict, record: dict) -> tuple[int, dict]:
        if (method, path) == ("GET", "/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", "/pipelines"):
            return 200, {"pipelines": _filtered(self.pipelines.values(), query), "total_size": len(self.pipelines)}
        if (method, path) == ("POST", "/pipelines/upload"):
            pipeline = {"pipeline_id": self._new_id("pipeline"), "display_name": query["name"], "description": query.get("description", "")}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self._add_version(pipeline["pipeline_id"], query["name"], record["files"]["uploadfile"])
            return 200, pipeline
        if (method, path) == ("POST", "/pipelines/upload_version"):
            if query.get("pipelineid") not in self.pipelines:
                return 404, {"code": 5, "message": f"Pipeline {query.get('pipelineid')} not found"}
            return 200, self._add_version(query["pipelineid"], query["name"], record["files"]["uploadfile"])
        if method == "GET" and path.startswith("/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[2]
            versions = [{k: v for k, v in version.items() if k != "package"} for version in self.versions.values()
                        if version["pipeline_id"] == pipeline_id]
            return 200, {"pipeline_versions": versions, "total_size": len(versions)}
        if (method, path) == ("GET", "/experiments"):
            return 200, {"experiments": _filtered(self.experiments.values(), query), "total_size": len(self.experiments)}
        if (method, path) == ("POST", "/experiments"):
            experiment = {**record["body"], "experiment_id": self._new_id("experiment")}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, path) == ("POST", "/runs"):
            run = {**record["body"], "run_id": self._new_id("run"), "state": "PENDING", "created_at": "2026-11-30T12:00:00Z"}
            self.runs[run["run_id"]] = run
            return 200, run
        if (method, path) == ("GET", "/runs"):
            runs = [r for r in self.runs.values() if r.get("experiment_id") == query.get("experiment_id", r.get("experiment_id"))]
            return 200, {"runs": runs, "total_size": len(runs)}
        if method == "GET" and path.startswith("/runs/"):
            run = self.runs.get(path.removeprefix("/runs/"))
            return (200, run) if run else (404, {"code": 5, "message": "run not found"})
        if (method, path) == ("POST", "/recurringruns"):
            recurring = {**record["body"], "recurring_run_id": self._new_id("recurring")}
            self.recurring_runs[recurring["recurring_run_id"]] = recurring
            return 200, recurring
        return 404, {"code": 5, "message": f"{method} {path} is not an endpoint"}

    def _add_version(self, pipeline_id: str, name: str, package: bytes) -> dict:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": self._new_id("version"), "display_name": name}
        self.versions[version["pipeline_version_id"]] = {**version, "package": package}
        return version


def _filtered(items, query: dict) -> list[dict]:
    """The items an API filter (JSON predicates, EQUALS on one key) selects."""
    if "filter" not in query:
        return list(items)
    predicates = json.loads(query["filter"]).get("predicates", [])
    return [item for item in items
            if all(p.get("operation") in ("EQUALS", 1) and item.get(p["key"]) == p.get("string_value", p.get("stringValue"))
                   for p in predicates)]


def _reply(handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)

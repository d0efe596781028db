"""A published model registered in MLflow: one run and one registered model version per publish.

The run holds the ONNX graph in MLflow's ONNX flavour, the build's metrics, the lineage settings
as params, and tags that lead back: the pipeline run, the registry entry (`s3://.../manifest.json`),
each file's sha256, the fleet's clusters with their shares and predicted latencies. The registered
model is named as the entry's folder in hdap's registry; its version carries the same tags. The
object-store registry stays what devices read; MLflow is the catalogue MLOps tooling reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hdap.errors import HdapError

log = logging.getLogger("hdap")
MAX_PARAM_CHARS = 500  # MLflow's limit on a param's value


@dataclass(frozen=True)
class MlflowEntry:
    run_id: str
    model_name: str
    version: str


def register_in_mlflow(tracking_uri: str, experiment: str, model_name: str, onnx_path: Path, params: dict[str, str],
                       metrics: dict[str, float], tags: dict[str, str]) -> MlflowEntry:
    """Log a run with the ONNX model, params, metrics and tags, and register the model; one sentence if the server refuses."""
    try:
        import mlflow
        import mlflow.onnx
        import onnx
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise HdapError("build_mlflow_uri is set but MLflow is not installed in this step's image: install hdap[mlflow].") from None
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=tags.get("hdap.run", None)) as run:
            mlflow.log_params({k: v[:MAX_PARAM_CHARS] for k, v in params.items()})
            mlflow.log_metrics(metrics)
            mlflow.set_tags(tags)
            info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", registered_model_name=model_name)
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
    except MlflowException as err:
        raise HdapError(f"MLflow at {tracking_uri} refused the model: {str(err).splitlines()[0]}") from None
    except OSError as err:  # requests' connection errors derive from it
        raise HdapError(f"MLflow at {tracking_uri} could not be reached ({type(err).__name__}): check build_mlflow_uri.") from None
    log.info("registered %s version %s in MLflow at %s (run %s)", model_name, version, tracking_uri, run.info.run_id)
    return MlflowEntry(run.info.run_id, model_name, version)

"""Run the pipeline on this machine: kfp.local, each step a subprocess of this Python.

No Kubernetes and no Docker: SubprocessRunner(use_venv=False) runs the lightweight components
with the installed hdap. Steps reach the object store through the HDAP_S3_* variables they
inherit; Kubernetes settings (secrets, resources) are ignored locally.
"""

import logging
import warnings
from pathlib import Path

from kfp import local

from hdap.settings import ParameterValue
from hdap.stages.cluster import ClusterSummary
from pipelines.hdap_pipeline import hdap_pipeline


class PipelineFailed(Exception):
    pass


def run_locally(arguments: dict[str, ParameterValue], pipeline_root: Path) -> ClusterSummary:
    """Run the whole pipeline; return the cluster stage's summary (the pipeline's output, naming the run)."""
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    # The step image is not used locally; kfp.local warns about it for every task.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    try:
        task = hdap_pipeline(**arguments)
    except RuntimeError as err:
        raise PipelineFailed(str(err)) from None
    finally:
        logging.getLogger().handlers.clear()
    return ClusterSummary.load(Path(task.output.path))

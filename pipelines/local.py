"""Run the pipeline on this machine: kfp.local, each step a subprocess of this Python.

No Kubernetes and no Docker: SubprocessRunner(use_venv=False) runs the lightweight components
with the installed hdap. Steps reach the object store through the HDAP_S3_* variables they
inherit; Kubernetes settings (secrets, resources) are ignored locally.
"""

import logging
import warnings
from pathlib import Path
from typing import Any

from kfp import local

from pipelines.hdap_pipeline import hdap_pipeline


class PipelineFailed(Exception):
    pass


def run_locally(arguments: dict[str, Any], pipeline_root: Path) -> dict[str, Any]:
    """Run the whole pipeline; return the summary the cluster step wrote (clusters.json)."""
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
    import json

    return json.loads(Path(task.output.path).read_text())

"""What every Kubeflow component does with its stage: the one adapter between kfp and the library.

A component's body hands `run_step` its parameters, by name (`arguments = dict(locals())`). Settings become the
stage's config (checked, so a bad value ends the step in one sentence), artifacts become paths, the
store comes from the step's environment (HDAP_S3_*, which the pipeline fills from the hdap-s3
secret), and the metrics the stage returns are logged for the Kubeflow UI. An expected failure
(HdapError) ends the step with its message and exit code 1, not a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hdap.errors import HdapError


def run_step(*, stage: str, arguments: dict[str, Any]) -> dict[str, float]:
    """Run one stage from a component's parameters; log its metrics to the component's `metrics` output."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    try:
        metrics = _run(stage, arguments)
    except HdapError as err:
        print(f"hdap: {err}", file=sys.stderr, flush=True)
        # A local run (`hdap run`) names a file to hear why a step failed, in one line.
        failure_file = os.environ.get("HDAP_FAILURE_FILE")
        if failure_file:
            Path(failure_file).write_text(f"{stage}: {err}")
        raise SystemExit(1) from None
    if "metrics" in arguments:
        for name, value in metrics.items():
            arguments["metrics"].log_metric(name, value)
    return metrics


def _run(stage_name: str, arguments: dict[str, Any]) -> dict[str, float]:
    from hdap.stages import OutputSettings, StageContext
    from hdap.stages import stage as find_stage
    from hdap.store import ObjectStore

    current = find_stage(stage_name)
    config = current.config.from_fields(arguments)
    output = OutputSettings.from_fields(arguments)
    inputs = current.inputs(**{f.name: Path(arguments[f.name].path) for f in dataclasses.fields(current.inputs)})
    outputs = current.outputs(**{f.name: Path(arguments[f.name].path) for f in dataclasses.fields(current.outputs)})
    context = StageContext(ObjectStore.from_environment(), output.output_uri, arguments["run_name"])
    started = time.perf_counter()
    metrics = current.run(config, inputs=inputs, outputs=outputs, context=context)
    return metrics | {"step_seconds": round(time.perf_counter() - started, 1)}

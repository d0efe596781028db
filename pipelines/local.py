"""Run the pipeline on this machine: kfp.local, each step a subprocess of this Python.

No Kubernetes and no Docker: SubprocessRunner(use_venv=False) runs the lightweight components
with the installed hdap. Steps reach the object store through the HDAP_S3_* variables they
inherit; Kubernetes settings (secrets, resources) are ignored locally.

kfp.local prints every step's executor input, output and logs to stdout, and warns about task
settings it ignores: all of that goes to the run's log file, and one line per step (its start,
its end and status) to `on_step`.

Each step runs once here: the retries the pipeline asks of a cluster (a pod evicted, a store that
blips) would, locally, only re-run a step that failed for a reason that does not change (a quality
gate's refusal, three more builds after 30, 60 and 120 s).
"""

import contextlib
import io
import logging
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from kfp import local

from hdap.settings import ParameterValue
from pipelines.hdap_pipeline import hdap_pipeline

TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([\w-]+)'")
FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")


class PipelineFailed(Exception):
    pass


class _RunLog(io.TextIOBase):
    """A stream that keeps everything in the log file and tells `on_step(task, status)` when a step
    starts ("started") or ends (kfp.local's status, e.g. SUCCESS or FAILURE)."""

    def __init__(self, log: io.TextIOBase, on_step: Callable[[str, str], None]) -> None:
        self.log, self.on_step, self.pending = log, on_step, ""
        self.terminal = sys.stdout  # where on_step's lines go while this stream stands in for stdout

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(TERMINAL_CODES.sub("", text))
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            line = TERMINAL_CODES.sub("", line)
            found = STARTED.search(line) or FINISHED.search(line)
            if found:
                with contextlib.redirect_stdout(self.terminal):
                    self.on_step(found[1], found[2] if found.re is FINISHED else "started")
        if lines:
            self.log.flush()  # so that `tail -f` on the log follows the run
        return len(text)

    def flush(self) -> None:
        self.log.flush()


@contextlib.contextmanager
def _steps_run_once():
    """The pipeline without its tasks' retry policies, for the block (restored after)."""
    spec = hdap_pipeline.pipeline_spec
    dags = [spec.root.dag] + [component.dag for component in spec.components.values() if component.HasField("dag")]
    kept = []
    for task in (task for dag in dags for task in dag.tasks.values() if task.HasField("retry_policy")):
        policy = type(task.retry_policy)()
        policy.CopyFrom(task.retry_policy)
        kept.append((task, policy))
        task.ClearField("retry_policy")
    try:
        yield
    finally:
        for task, policy in kept:
            task.retry_policy.CopyFrom(policy)


def run_locally(arguments: dict[str, ParameterValue], pipeline_root: Path, log_file: Path,
                on_step: Callable[[str, str], None] = lambda task, status: None) -> str:
    """Run the whole pipeline, kfp.local's output in `log_file`; return the run's name (the pipeline's output)."""
    pipeline_root.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as log, contextlib.redirect_stdout(_RunLog(log, on_step)), \
            contextlib.redirect_stderr(log), warnings.catch_warnings():
        warnings.simplefilter("always")  # kfp.local's notes on settings it ignores: to the log, every time
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
        try:
            with _steps_run_once():
                task = hdap_pipeline(**arguments)
        except RuntimeError as err:
            raise PipelineFailed(TERMINAL_CODES.sub("", str(err))) from None
        finally:
            logging.getLogger().handlers.clear()
    return task.output

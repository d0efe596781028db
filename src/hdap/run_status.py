"""A run's final status, written by the pipeline's exit handler whatever happened in the run.

`<output_uri>/<run name>/status.json`: the state Kubeflow reports (SUCCEEDED, FAILED, ...), its
error message, and the drift gate's decision when the gate ran (a scheduled run that had nothing
to do ends SUCCEEDED with "no drift: nothing to do" and why).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

log = logging.getLogger("hdap")
FORMAT = "hdap.run-status/1"


def record_run_status(output_uri: str, run_name: str, state: str, error: str) -> dict:
    """Write the run's status beside its outputs; return what was written. A store that cannot be
    reached is said on stderr, and the exit handler still ends (the run's state stands without it)."""
    from hdap.errors import HdapError
    from hdap.store import ObjectStore, join_uri

    status = {"format": FORMAT, "run": run_name, "state": state, "error": error,
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        store = ObjectStore.from_environment()
        decision_uri = join_uri(output_uri, run_name, "drift", "decision.json")
        if store.exists(decision_uri):
            status["drift"] = store.get_json(decision_uri)["summary"]
        store.put_json(join_uri(output_uri, run_name, "status.json"), status)
    except HdapError as err:
        print(f"hdap: the run's status was not recorded: {err}", file=sys.stderr, flush=True)
    return status

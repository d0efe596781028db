"""Where benchmark figures go: bench/results/<name>.json, with when, where and how they were measured."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """The architecture, core count, CPU model and the instruction sets that decide its kernels."""
    from hdap.latency.cpu_telemetry import X86_INSTRUCTION_SETS, cpu_info, instruction_sets, processor

    model = next(iter(cpu_info("model name")), platform.processor() or "CPU unknown")
    found = instruction_sets()
    return (f"{platform.machine()}, {os.cpu_count()} cores, {model} ({processor()}), "
            + (" ".join(found) or "none of " + "/".join(X86_INSTRUCTION_SETS)))


def record(name: str, results: dict, quick: bool, started: float, saved_as: str = "") -> dict:
    """Add the run's circumstances (the command line as it was typed from the project's root) to
    `results`; save them (as `saved_as`, default `name`) unless it was a --quick smoke run."""
    results |= {
        "quick": quick,
        "seconds": round(time.perf_counter() - started),
        "machine": machine(),
        "command": "python " + " ".join(shlex.quote(a) for a in [f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if not quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{saved_as or name}.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"saved to {path}")
    return results

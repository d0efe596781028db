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
# The instruction sets ONNX Runtime's int8 kernels run fastest with: int8 against fp32 speed-ups differ
# by several times between two x86 hosts with and without them (2026-12-01, bench/README.md).
INT8_INSTRUCTION_SETS = ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "amx_int8")


def machine() -> str:
    """The architecture, core count, CPU model and the int8-relevant instruction sets it has."""
    described = f"{platform.machine()}, {os.cpu_count()} cores"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the platform's own name is what there is
        return f"{described}, {platform.processor() or 'CPU unknown'}"
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "CPU unknown")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return f"{described}, {model}, " + (" ".join(f for f in INT8_INSTRUCTION_SETS if f in flags) or "none of " + "/".join(INT8_INSTRUCTION_SETS))


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

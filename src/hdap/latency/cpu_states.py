"""The states a CPU device runs a model in: how many threads ONNX Runtime gets, whether other
processes keep cores busy, and how much of the fleet runs that way.

One machine in several states is a real fleet of CPU devices in miniature (a gateway alone at
night, the same gateway beside its other services by day). States are written as a list:

    1,all,all+load          # 1 thread; every core; every core beside a busy process (equal shares)
    1@0.5,2@0.3,2+load2@0.2 # shares given; +loadN: N busy processes
    1/0,all/2-3+load        # /cores: pinned to core 0; every core of 2-3, beside a busy process on them

`all` is every core this process may use (or, pinned, every pinned core), counted where the state
is measured. A pinned state is measured with this process's affinity set to its cores, and its busy
processes run on those cores too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hdap.errors import HdapError

DEFAULT_CPU_STATES = "1,all,all+load"
_TOKEN = re.compile(r"^(?P<threads>all|\d+)(?:/(?P<first>\d+)(?:-(?P<last>\d+))?)?(?:\+load(?P<load>\d*))?"
                    r"(?:@(?P<share>\d+(?:\.\d*)?|\.\d+))?$")


@dataclass(frozen=True)
class CpuState:
    name: str  # as written: 1, all, all+load
    threads: int  # 0: every core this process may use
    background_processes: int  # busy loops beside the model, each on a core of its own
    share: float  # of the fleet
    cores: tuple[int, ...] = ()  # pinned to these cores; empty: wherever this process may run

    def thread_count(self) -> int:
        return self.threads or len(self.cores) or usable_cores()

    def describe(self) -> str:
        threads = "every core" if not self.threads else f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        if self.cores:
            threads += " on " + _cores_text(self.cores)
        load = f" beside {self.background_processes} busy process{'es' if self.background_processes > 1 else ''}" \
            if self.background_processes else ""
        return threads + load


def _cores_text(cores: tuple[int, ...]) -> str:
    return f"cores {cores[0]}-{cores[-1]}" if len(cores) > 1 else f"core {cores[0]}"


@contextmanager
def pinned(state: CpuState) -> Iterator[None]:
    """This process (and the threads and processes it starts) on the state's cores for the block."""
    if not state.cores:
        yield
        return
    allowed = os.sched_getaffinity(0)
    if not set(state.cores) <= allowed:
        raise HdapError(f"CPU state {state.name} is pinned to {_cores_text(state.cores)}, but this process may use "
                        f"only cores {sorted(allowed)}: declare states on cores this machine has.")
    os.sched_setaffinity(0, set(state.cores))
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)



def usable_cores() -> int:
    """The cores this process may run on (`all` in a state)."""
    return len(os.sched_getaffinity(0))


def metric_key(name: str) -> str:
    """A state's name as part of a metric's name: 1, all, all_load."""
    return re.sub(r"[^0-9a-z]+", "_", name).strip("_")


def cpu_states_problem(text: str) -> str | None:
    """Why `text` is not a list of CPU states, or None (a setting's check)."""
    try:
        parse_cpu_states(text)
    except ValueError as err:
        return str(err)
    return None


def parse_cpu_states(text: str) -> list[CpuState]:
    """The states `text` lists, with shares summing to 1 (equal where none is given)."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise ValueError("lists no CPU state: write e.g. 1,all,all+load")
    states = []
    for token in tokens:
        match = _TOKEN.match(token)
        if match is None or match["threads"] == "0":
            raise ValueError(f"has '{token}', which is not a state: write threads (a number or all), then optionally "
                             "/cores (0 or 0-3), +load or +loadN (N busy processes) and @share, e.g. 2/0-1+load@0.25")
        load = 0 if token.find("+load") < 0 else int(match["load"] or 1)
        share = float(match["share"]) if match["share"] is not None else None
        first = match["first"]
        cores = () if first is None else tuple(range(int(first), int(match["last"] or first) + 1))
        if first is not None and not cores:
            raise ValueError(f"has '{token}', whose cores run backwards: write the lower core first, e.g. 2-3")
        states.append((token.split("@")[0], 0 if match["threads"] == "all" else int(match["threads"]), load, share, cores))
    given = [share for *_, share, _cores in states if share is not None]
    if given and len(given) != len(states):
        raise ValueError("gives a share to some states but not all: give every state one, or none (equal shares)")
    if len({name for name, *_ in states}) != len(states):
        raise ValueError("lists a state twice")
    total = sum(given) if given else float(len(states))
    if total <= 0:
        raise ValueError("has shares that sum to 0")
    return [CpuState(name, threads, load, (share if given else 1.0) / total, cores) for name, threads, load, share, cores in states]

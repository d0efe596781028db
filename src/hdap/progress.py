"""Progress for long steps: a live bar on a terminal, a few log lines in a pipeline's log."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from rich.progress import track

T = TypeVar("T")
log = logging.getLogger("hdap")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and isinstance(items, Sized):
        total = len(items)
    if sys.stderr.isatty():
        yield from track(items, description=description, total=total, transient=True)
        return
    # Not a terminal (a Kubeflow step, CI): one line per ~10% keeps logs readable.
    step = max(1, (total or 0) // 10)
    for index, item in enumerate(items, start=1):
        yield item
        if total and (index % step == 0 or index == total):
            log.info("%s: %d/%d", description, index, total)

"""Stopping one row of a batch task: a request cancelled alone stops its own generation, not its neighbours'.

The gateway runs a user's concurrent requests as one batch task (altlas_dask/api/request_batching.py); a
request cancelled alone is answered ``cancelled`` at once, and ``client.run(stop_row, key, index)`` asks
every GPU worker to stop that row: the worker running the batch stops it at its next cancellation check,
and a worker that has not started it yet remembers the stop for when it does. No torch here: the gateway
imports this module.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

#: Stops asked for rows of batches this worker has not started (yet, or ever): the oldest are forgotten.
MAX_EARLY_STOPS = 10_000

_LOCK = threading.Lock()
_RUNNING: dict[str, list[threading.Event]] = {}
_EARLY: OrderedDict[tuple[str, int], None] = OrderedDict()


def stop_row(key: str, index: int) -> bool:
    """Stop row ``index`` of batch task ``key`` on this worker: ``True`` if it is running here, else the stop is
    kept for when it starts."""
    with _LOCK:
        rows = _RUNNING.get(key)
        if rows is not None:
            if 0 <= index < len(rows):
                rows[index].set()
            return True
        _EARLY[(key, index)] = None
        while len(_EARLY) > MAX_EARLY_STOPS:
            _EARLY.popitem(last=False)
        return False


@contextmanager
def row_stops(key: str, rows: int) -> Iterator[list[threading.Event]]:
    """One stop flag per row of batch task ``key`` while it runs here (set already if asked before it started)."""
    flags = [threading.Event() for _ in range(rows)]
    with _LOCK:
        for index, flag in enumerate(flags):
            if (key, index) in _EARLY:
                del _EARLY[(key, index)]
                flag.set()
        _RUNNING[key] = flags
    try:
        yield flags
    finally:
        with _LOCK:
            _RUNNING.pop(key, None)


class EitherStop:
    """Set when the task is cancelled or its row is stopped (what ``predict_many`` checks per row)."""

    __slots__ = ("row", "task")

    def __init__(self, task: threading.Event | None, row: threading.Event) -> None:
        self.task, self.row = task, row

    def is_set(self) -> bool:
        return self.row.is_set() or (self.task is not None and self.task.is_set())

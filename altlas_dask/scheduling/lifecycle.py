"""The task lifecycle: which status may move to which (the statuses themselves: altlas_dask.protocol)."""

from __future__ import annotations

from altlas_dask.protocol import FINAL, TaskStatus

_ENDINGS = {TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}

#: status -> statuses it may move to. Final statuses move nowhere.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.PLACED, TaskStatus.REJECTED, *_ENDINGS}),
    TaskStatus.PLACED: frozenset({TaskStatus.RUNNING, TaskStatus.RETRYING, TaskStatus.COMPLETED, *_ENDINGS}),
    TaskStatus.RUNNING: frozenset({TaskStatus.RETRYING, TaskStatus.COMPLETED, *_ENDINGS}),
    TaskStatus.RETRYING: frozenset({TaskStatus.PLACED, *_ENDINGS}),
    **{status: frozenset() for status in FINAL},
}


def allowed(start: TaskStatus, finish: TaskStatus) -> bool:
    return finish in TRANSITIONS[start]

"""The task lifecycle: one status vocabulary, its allowed transitions, and its API spelling.

Every surface (router, REST, console, CLI, metrics) speaks these statuses; the
REST API's coarser seed-004 statuses come from :func:`api_status` only.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where a GPU task is in its life."""

    QUEUED = "queued"  # held on the scheduler: dependencies, quota concurrency, or no GPU free now
    PLACED = "placed"  # pinned to a GPU worker, not yet started there
    RUNNING = "running"  # executing on its GPU
    RETRYING = "retrying"  # an attempt ended on a GPU error, a lost or unresponsive GPU: waiting to be placed again
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # refused at submission (bad options, hard quota)

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED, TaskStatus.REJECTED}
)
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


#: status -> the REST API's status (seed 004: queued, running, completed, failed, cancelled).
API_STATUS: dict[TaskStatus, str] = {
    TaskStatus.QUEUED: "queued",
    TaskStatus.RETRYING: "queued",
    TaskStatus.PLACED: "running",
    TaskStatus.RUNNING: "running",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.TIMED_OUT: "failed",
    TaskStatus.CANCELLED: "cancelled",
    TaskStatus.REJECTED: "rejected",
}
#: API status filter -> the statuses it selects; seed 004 spells "canceled", both are accepted.
STATUSES_FOR_API: dict[str, tuple[TaskStatus, ...]] = {
    "queued": (TaskStatus.QUEUED, TaskStatus.RETRYING),
    "running": (TaskStatus.PLACED, TaskStatus.RUNNING),
    "completed": (TaskStatus.COMPLETED,),
    "failed": (TaskStatus.FAILED, TaskStatus.TIMED_OUT),
    "cancelled": (TaskStatus.CANCELLED,),
    "canceled": (TaskStatus.CANCELLED,),
    "rejected": (TaskStatus.REJECTED,),
}


def api_status(status: str) -> str:
    """The REST API's spelling of a router status; raises ``ValueError`` for an unknown one."""
    return API_STATUS[TaskStatus(status)]

"""The router's protocol: the RPC names, the task status vocabulary, and the shapes of requests and replies.

Both sides import it: ``scheduler_plugins/router_api.py`` serves exactly the names of :class:`Rpc`, and
:class:`altlas_dask.client.router_client.RouterClient` is the one caller. Messages travel as msgpack maps, so
the shapes are ``TypedDict``\\ s: plain dicts at run time, nothing to convert. ``tests/test_rpc_names.py`` holds
every request shape equal to its handler's parameters. No Dask, no I/O (a vocabulary module). No
``from __future__ import annotations`` here: ``TypedDict`` reads ``Required`` only from evaluated annotations.
"""

from enum import StrEnum
from typing import Any, NotRequired, Required, TypedDict


class TaskStatus(StrEnum):
    """Where a GPU task is in its life (its allowed moves: altlas_dask.scheduling.lifecycle)."""

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


# -- requests ------------------------------------------------------------------------------------------------
class Acting(TypedDict, total=False):
    """Whom a call acts as (filled in by RouterClient, never by its callers): see docs/security.md."""

    as_user: str | None
    admin: bool  # a delegate vouching that ``as_user`` is an admin it authenticated


class NoArguments(TypedDict):
    pass


class SpeedsRequest(TypedDict, total=False):
    task_type: str


class DrainRequest(Acting, total=False):
    gpu: Required[int]
    reason: str


class EnableRequest(Acting, total=False):
    gpu: Required[int]


class ExplainRequest(Acting, total=False):
    keys: Required[list[str]]


class TasksRequest(Acting, total=False):
    user: str | None
    status: str | list[str] | None
    limit: int
    offset: int
    order: str  # submitted | priority | queue


class CancelRequest(Acting, total=False):
    key: Required[str]
    reason: str


class QuotaRequest(Acting, total=False):
    user: str | None


class SetQuotaRequest(Acting, total=False):
    user: Required[str]
    limits: Required[dict[str, Any]]


class UsageRequest(Acting, total=False):
    user: str | None
    since: str | None  # a UTC day, "2026-11-23"


class FinishedRequest(Acting, total=False):
    window_s: float  # seconds back from now


class RecordsRequest(Acting, total=False):
    user: str | None
    status: str | None
    since: float | None  # Unix seconds
    limit: int
    offset: int


# -- replies -------------------------------------------------------------------------------------------------
class ErrorReply(TypedDict):
    """Any call's refusal; ``code`` is HTTP-like (400 bad value, 401/403 identity, 404 unknown, 409 too late)."""

    error: str
    code: int
    field: NotRequired[str]  # the request field at fault, where the router names one
    value: NotRequired[str]  # its value, as short text


class GpusReply(TypedDict):
    gpus: list[dict[str, Any]]  # GpuState.to_dict() per GPU
    queued: int


class SpeedsReply(TypedDict):
    task_type: str
    speeds: dict[int, float]  # GPU id -> relative speed (1 = the fastest); empty until the type ran


class DrainReply(TypedDict):
    gpu: int
    draining: bool
    running: int


class StatusReply(TypedDict):
    counters: dict[str, int]
    tracked: dict[str, int]  # status -> live tasks
    recent: list[dict[str, Any]]  # the latest placements


class TasksReply(TypedDict):
    tasks: list[dict[str, Any]]
    total: int
    counts: dict[str, int]  # status -> true total
    order: str
    finished_window: int


class CancelReply(TypedDict):
    key: str
    status: str


class SetQuotaReply(TypedDict):
    user_id: str
    limits: dict[str, Any]
    by: str


class UsageReply(TypedDict):
    user_id: str
    since: str | None
    days: list[dict[str, Any]]


class RecordsReply(TypedDict):
    records: list[dict[str, Any]]


class FinishedReply(TypedDict):
    """Aggregates of the task records finished in a window (``GET /metrics``; rows are lists, msgpack's tuples)."""

    status: dict[str, int]  # final status -> tasks
    durations: list[float]  # sorted response times (submission to completion) of the newest completed tasks
    gpus: list[list[Any]]  # [gpu, completed, mean response s]
    models: list[list[Any]]  # [task type, total, completed, mean response s, mean memory MB]
    users: list[list[Any]]  # [user, total, GPU seconds, mean response s]: other users' for admins only


PolicyReply = dict[str, Any]  # RoutingPolicy.model_dump()
ExplainReply = dict[str, dict[str, Any]]  # task key -> its decision (keys the caller may not see are left out)
QuotaReply = dict[str, Any]  # the quota report: limits, used, remaining, reset times


# -- the calls -----------------------------------------------------------------------------------------------
class Rpc(StrEnum):
    """Every router RPC: the scheduler handler's name (``await client.scheduler.altlas_<name>(...)``)."""

    GPUS = "altlas_gpus"
    SPEEDS = "altlas_speeds"
    POLICY = "altlas_policy"
    DRAIN = "altlas_drain"
    ENABLE = "altlas_enable"
    STATUS = "altlas_status"
    EXPLAIN = "altlas_explain"
    TASKS = "altlas_tasks"
    CANCEL = "altlas_cancel"
    QUOTA = "altlas_quota"
    SET_QUOTA = "altlas_set_quota"
    USAGE = "altlas_usage"
    RECORDS = "altlas_records"
    FINISHED = "altlas_finished"

    @property
    def method(self) -> str:
        """The ``RouterApi`` method that serves it."""
        return self.value.removeprefix("altlas_")

    @property
    def fields(self) -> frozenset[str]:
        """The request's field names (exactly the handler's parameters, ``comm`` aside)."""
        shape = REQUESTS[self]
        return frozenset(shape.__required_keys__ | shape.__optional_keys__)

    @property
    def required(self) -> frozenset[str]:
        return frozenset(REQUESTS[self].__required_keys__)

    @property
    def acts_as_user(self) -> bool:
        """Whether the call acts as a user (``as_user``/``admin``); the others read public cluster facts."""
        return "as_user" in self.fields

    @property
    def retried(self) -> bool:
        """Safe to send again after a lost connection: all but cancel (a second cancel answers 409)."""
        return self is not Rpc.CANCEL


REQUESTS: dict[Rpc, type] = {
    Rpc.GPUS: NoArguments,
    Rpc.SPEEDS: SpeedsRequest,
    Rpc.POLICY: NoArguments,
    Rpc.DRAIN: DrainRequest,
    Rpc.ENABLE: EnableRequest,
    Rpc.STATUS: Acting,
    Rpc.EXPLAIN: ExplainRequest,
    Rpc.TASKS: TasksRequest,
    Rpc.CANCEL: CancelRequest,
    Rpc.QUOTA: QuotaRequest,
    Rpc.SET_QUOTA: SetQuotaRequest,
    Rpc.USAGE: UsageRequest,
    Rpc.RECORDS: RecordsRequest,
    Rpc.FINISHED: FinishedRequest,
}

"""What the gateway remembers about its requests: its tasks (by task id = Dask key) and batches, and the router's
latest record of each task, pushed by the router's task feed (:mod:`altlas_dask.scheduling.feed`).

The gateway holds no queue. It keeps at most ``max_tasks`` finished tasks (least recently submitted dropped first,
which releases their results on the workers; running ones are never dropped) and ``max_batches`` batches (a batch
id -> its chunk task ids: a grouping, not a queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed import Future

from altlas_dask.api.errors import ApiError
from altlas_dask.api.settings import ApiSettings
from altlas_dask.client.dask_internals import settled as dask_settled
from altlas_dask.errors import TaskCancelledError
from altlas_dask.protocol import TaskStatus
from altlas_dask.scheduling.feed import TOPIC
from altlas_dask.scheduling.quotas import QuotaExceededError

#: Why a task the gateway submitted has no outcome: its future was dropped when the scheduler connection broke.
LOST = "lost with the scheduler: the connection to the scheduler broke before the task finished; submit it again"
Outcome = tuple[TaskStatus, str | None, Any]


async def future_outcome(future: Future | None) -> Outcome | None:
    """``(status, error, exception)`` of a finished future, ``None`` while it runs.

    A future that is ``cancelled`` on this client was dropped by Dask when the scheduler connection broke
    (users cancel through the router, which fails the task with ``TaskCancelledError``): it ``failed``.
    """
    if future is None or not future.done():
        return None
    if future.status == "finished":
        return TaskStatus.COMPLETED, None, None
    if future.status == "cancelled":
        return TaskStatus.FAILED, LOST, None
    try:
        exc = await future.exception()
    except Exception as err:  # the exception could not be fetched (e.g. lost with its worker)
        exc = err
    if isinstance(exc, TaskCancelledError):
        return TaskStatus.CANCELLED, str(exc), exc
    if isinstance(exc, QuotaExceededError):
        return TaskStatus.REJECTED, str(exc), exc
    return TaskStatus.FAILED, f"{type(exc).__name__}: {exc}"[:1000], exc


async def settled(future: Future) -> None:
    """Until ``future`` is finished, erred or cancelled, without fetching its result: ``await future`` would
    fetch it for every waiter, and a batch task's requests all wait on one future."""
    with contextlib.suppress(Exception):
        await dask_settled(future)


@dataclass
class TaskEntry:
    task_id: str
    user: str
    kind: str  # predict | batch | route
    workload: str
    future: Future | None
    submitted: float
    batch_id: str | None = None
    items: tuple[int, int] | None = None  # batch chunk: (first item, count)
    gpu: int | None = None  # where the router placed it, once known
    meta: dict[str, Any] = field(default_factory=dict)
    outcome: Outcome | None = None  # final once known: see :meth:`outcome_of`
    router: dict[str, Any] | None = None  # the router's latest record of it (pushed by the task feed)
    seen: asyncio.Event = field(default_factory=asyncio.Event)  # set once the router's first record came

    async def outcome_of(self) -> Outcome | None:
        """The task's outcome (None while it runs), kept once known: what the gateway answered never changes,
        though a scheduler outage later cancels every future of its client, finished ones too."""
        if self.outcome is None:
            self.outcome = await future_outcome(self.future)
        return self.outcome

    @property
    def completed(self) -> bool:
        return self.outcome is not None and self.outcome[0] is TaskStatus.COMPLETED

    @property
    def running(self) -> bool:
        return self.future is not None and not self.future.done()


@dataclass
class BatchEntry:
    batch_id: str
    user: str
    task_ids: list[str]
    sizes: list[int]
    submitted: float


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def route_key(request_id: str, user: str) -> str:
    """The task key of ``POST /route`` with a client-chosen ``request_id``: per user, so one user's ids
    neither clash with nor reveal another's."""
    return f"{request_id}@{user}"


def item_id(chunk_id: str, index: int) -> str:
    """The task id of item ``index`` of a batch chunk: resolvable with ``GET /task/{id}`` like any task."""
    return f"{chunk_id}.{index}"


def ascii_digits(text: str) -> bool:
    """``0``-``9`` only: ``str.isdigit`` also takes ``²`` and other digits that ``int`` refuses."""
    return text.isascii() and text.isdigit()


class TaskRegistry:
    """The gateway's tasks and batches, and the router's pushed records of its tasks."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.tasks: OrderedDict[str, TaskEntry] = OrderedDict()
        self.batches: OrderedDict[str, BatchEntry] = OrderedDict()
        self.pushed = 0  # router records received for this gateway's tasks

    # -- the router's feed ------------------------------------------------------------------------------
    def subscribe(self, client: Any) -> None:
        """Listen to the router's task feed on ``client`` (again after every reconnection)."""
        client.subscribe_topic(TOPIC, self.receive)

    def receive(self, event: tuple[float, Mapping[str, dict[str, Any]]]) -> None:
        """One message of the feed: the records of the tasks that changed in one scheduler turn (every user's:
        only this gateway's own tasks are kept)."""
        _, records = event
        for key, record in records.items():
            entry = self.tasks.get(key)
            if entry is not None:
                entry.router = record
                if record.get("gpu") is not None:
                    entry.gpu = record["gpu"]
                entry.seen.set()
                self.pushed += 1

    async def seen(self, entries: list[TaskEntry], timeout: float) -> None:
        """Until the router's first record of every entry came, or ``timeout`` seconds (then they read "queued")."""
        waiting = [asyncio.ensure_future(e.seen.wait()) for e in entries if not e.seen.is_set()]
        if waiting:
            try:
                await asyncio.wait(waiting, timeout=timeout)
            finally:
                for w in waiting:
                    w.cancel()

    # -- what is kept ---------------------------------------------------------------------------------
    def remember(self, entry: TaskEntry) -> None:
        """Keep ``entry``; over ``max_tasks``, drop the oldest finished entries (their results are released on
        the workers). Amortised O(1): a still-running oldest entry moves to the back instead of being scanned past."""
        self.tasks[entry.task_id] = entry
        for _ in range(8):
            if len(self.tasks) <= self.settings.max_tasks:
                break
            key, oldest = next(iter(self.tasks.items()))
            if oldest.running:
                self.tasks.move_to_end(key)
            else:
                del self.tasks[key]

    def remember_batch(self, batch: BatchEntry) -> None:
        self.batches[batch.batch_id] = batch
        while len(self.batches) > self.settings.max_batches:
            self.batches.popitem(last=False)

    def forget(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            entry = self.tasks.pop(task_id, None)
            if entry is not None and entry.running:
                entry.future.cancel()

    # -- look-ups ---------------------------------------------------------------------------------------
    def entry(self, task_id: str, user: str, is_admin: bool) -> TaskEntry | None:
        entry = self.tasks.get(task_id)
        if entry is not None and (is_admin or entry.user == user):
            return entry
        return None

    def item(self, task_id: str) -> tuple[TaskEntry, int] | None:
        """``(chunk, index)`` for a batch item's id (``<chunk id>.<index>``, see :func:`item_id`)."""
        chunk_id, dot, index = task_id.rpartition(".")
        entry = self.tasks.get(chunk_id) if dot and ascii_digits(index) else None
        if entry is None or entry.items is None or int(index) >= entry.items[1]:
            return None
        return entry, int(index)

    def batch(self, batch_id: str, user: str, is_admin: bool) -> BatchEntry:
        batch = self.batches.get(batch_id)
        if batch is None or not (is_admin or batch.user == user):
            raise ApiError(404, f"unknown batch {batch_id!r}")
        return batch

    async def settle(self, entries: list[TaskEntry], timeout: float) -> None:
        """Long poll: return as soon as every entry's future is done, or after ``timeout`` seconds (events, no
        polling). A scheduler outage ends it at once: Dask drops the futures with the connection."""
        pending = [e.future for e in entries if e.running]
        if pending and timeout > 0:
            waiters = [asyncio.ensure_future(settled(f)) for f in pending]
            try:
                await asyncio.wait(waiters, timeout=timeout)
            finally:
                for w in waiters:
                    w.cancel()

"""The router's task feed (:mod:`altlas_dask.scheduling.feed`): a scheduler plugin beside the router that publishes
the record of every GPU task that changed, once per event-loop turn, with ``Scheduler.log_event``.

It runs after the router's own hooks (the router adds it), so a record read at the end of the turn already says
where the router placed the task, or why it holds or refused it. Nothing is published while nobody subscribes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from distributed import SchedulerPlugin
from distributed.scheduler import Scheduler

from altlas_dask.scheduling.feed import TOPIC, feed_record
from altlas_dask.scheduling.view import CoreView
from scheduler_plugins import dask_internals as dx

NAME = "altlas-task-feed"


class TaskFeed(SchedulerPlugin):
    """Collects the keys of the router's tasks that changed in this turn; publishes their records at its end."""

    name = NAME

    def __init__(self, scheduler: Scheduler, view: CoreView) -> None:
        self.scheduler, self.view = scheduler, view
        self.changed: set[str] = set()
        self.published = 0  # messages sent (each with the records of one turn)

    def update_graph(self, scheduler: Scheduler, *, tasks: Iterable = (), **kwargs: Any) -> None:
        self._mark(tasks)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        self._mark((key,))

    def _mark(self, keys: Iterable[Any]) -> None:
        if not dx.has_subscribers(self.scheduler, TOPIC):
            return
        first = not self.changed
        self.changed.update(str(k) for k in keys if self.view.status_of(str(k)) is not None)
        if first and self.changed:
            self.scheduler.loop.add_callback(self.flush)

    def flush(self) -> None:
        """Publish the records of the keys that changed since the last flush (those the router still knows)."""
        keys, self.changed = self.changed, set()
        records = {key: feed_record(row) for key, row in self.view.explain(keys, now=time.time()).items()}
        if records:
            self.scheduler.log_event(TOPIC, records)
            self.published += 1


def install(scheduler: Scheduler, view: CoreView) -> None:
    """Add the feed to ``scheduler`` once (the router calls it when it attaches)."""
    if NAME not in scheduler.plugins:
        scheduler.add_plugin(TaskFeed(scheduler, view), name=NAME)

"""Submission coalescing: ``Client.submit`` calls made in quick succession reach the scheduler as one graph update.

Every ``distributed.Client.submit`` sends its own ``update-graph`` message, and the scheduler handles each
one separately (a deserialisation hand-off to a thread pool, one ``Scheduler.update_graph``): for many
small GPU tasks that, not the router, is most of the scheduler's time. Here ``submit`` creates its
future at once (same key, same refcounting, so the caller sees no difference) and keeps the task; the
pending tasks go out together on the next turn of the client's event loop (or ``coalesce_ms`` later),
as one update per run of consecutive submissions with the same annotations and options: the way
``Client.map`` sends many tasks, and the way the REST gateway's ``Coalescer`` groups requests. A submission
that finds the client idle (nothing held, none in the last ``IDLE_S`` or ``coalesce_ms``) is not held: it
goes at once, as Dask sends it, so a lone ``submit`` + ``result()`` pays nothing; the ones that follow it in
a burst are grouped.

Order is kept: pending submissions are sent before any other message of this client (a cancel, a
release, a gather through the scheduler, a router call), in submission order and with increasing
internal priority, so a task may depend on one submitted just before it in the same update. A task
that cannot be serialised makes its own future fail (the others of its update are sent without it).

The message is built as ``distributed.Client._graph_to_futures`` builds it, by
``altlas_dask.client.dask_internals`` (the client side's one module of Dask internals);
``tests/test_coalesce.py`` checks it against the installed version.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import dask
import distributed
from dask.core import validate_key
from distributed import Future

from altlas_dask.client import dask_internals as dci

MAX_PENDING = 10_000  # submissions held at most; the next one sends them at once


#: A submission that comes more than this after the previous one finds the client idle and goes at once.
IDLE_S = 0.001

@dataclass
class _Pending:
    envelope: Hashable
    tasks: dict[Any, Any]
    keys: list[Any]
    annotations: dict[str, Any]
    options: dict[str, Any]  # fifo_timeout, span_metadata, submitting_task
    code: Any


class SubmitCoalescer:
    """Holds single-task graph updates of ``client`` and sends them in groups."""

    def __init__(self, client: distributed.Client, delay_s: float = 0.0) -> None:
        self.client, self.delay_s = client, delay_s
        self.lock = threading.RLock()
        self.pending: list[_Pending] = []
        self.updates = 0  # graph updates sent
        self.submissions = 0  # tasks sent through them
        self.idle_s = max(IDLE_S, delay_s)
        self._last_submit = -math.inf

    @staticmethod
    def eligible(expr: Any, keys: Any, actors: Any) -> bool:
        return dci.is_single_task_graph(expr, keys, actors)

    def holds(self, expr: Any, keys: Any, actors: Any) -> bool:
        """Whether this submission is held for the next group: it is eligible (one task, no actors) and the
        client is busy submitting (something is held already, or the previous submission was less than
        ``idle_s`` ago). A submission that finds the client idle goes at once, the way Dask sends it: a lone
        ``submit`` + ``result()`` (a notebook's, one request's) pays nothing for coalescing, and the submissions
        that follow it in a burst are grouped."""
        if not self.eligible(expr, keys, actors):
            return False
        now = time.monotonic()
        with self.lock:
            busy = bool(self.pending) or now - self._last_submit < self.idle_s
            self._last_submit = now
        return busy

    def add(
        self,
        expr: Any,
        keys: list[Any],
        span_metadata: Any,
        workers: Any = None,
        allow_other_workers: Any = None,
        user_priority: int = 0,
        resources: Any = None,
        retries: Any = None,
        fifo_timeout: Any = 0,
    ) -> dict[Any, Future]:
        """Hold one submission; its futures now, its graph on the next flush."""
        client = self.client
        annotations: dict[str, Any] = {}
        if user_priority:
            annotations["priority"] = user_priority
        if workers:
            annotations["workers"] = workers if isinstance(workers, list | tuple | set) else [workers]
        if retries:
            annotations["retries"] = retries
        if allow_other_workers not in (True, False, None):
            raise TypeError("allow_other_workers= must be True, False, or None")
        if allow_other_workers:
            annotations["allow_other_workers"] = allow_other_workers
        if resources:
            annotations["resources"] = resources
        annotations = {**dask.get_annotations(), **annotations}
        for key in keys:
            validate_key(key)
        submitting = getattr(distributed.worker.thread_state, "key", None)
        envelope = (repr(sorted(annotations.items(), key=lambda kv: kv[0])), repr(fifo_timeout), submitting)
        # lock order: the client's refcount lock, then ours (a release sent under the refcount lock flushes)
        with dci.refcount_lock(client), self.lock:
            futures = {key: Future(key, client) for key in keys}
            first = not self.pending
            new_group = first or self.pending[-1].envelope != envelope
            code = dci.computation_code(client) if new_group else None
            options = {"fifo_timeout": fifo_timeout, "span_metadata": span_metadata, "submitting_task": submitting}
            self.pending.append(_Pending(envelope, dci.graph_tasks(expr), list(keys), annotations, options, code))
            if len(self.pending) >= MAX_PENDING:
                self.flush()
            elif first:
                client.loop.add_callback(self._later)
        return futures

    def _later(self) -> None:
        if self.delay_s > 0:
            self.client.loop.call_later(self.delay_s, self.flush)
        else:
            self.flush()

    def flush(self) -> None:
        """Send everything held, in order: one update per run of submissions with the same envelope."""
        with self.lock:
            pending, self.pending = self.pending, []
            run: list[_Pending] = []
            for item in pending:
                if run and item.envelope != run[0].envelope:
                    self._send(run)
                    run = []
                run.append(item)
            if run:
                self._send(run)

    def _send(self, run: list[_Pending]) -> None:
        tasks = {k: v for item in run for k, v in item.tasks.items()}
        keys = [k for item in run for k in item.keys]
        try:
            expr_ser = dci.serialize_tasks(tasks)
        except Exception:
            if len(run) == 1:
                self._fail(run[0], *sys.exc_info()[1:])
                return
            for item in run:  # find the one that cannot be sent; the others go alone
                self._send([item])
            return
        first = run[0]
        code = next((item.code for item in run if item.code is not None), ())
        self.client._send_now(
            dci.update_graph_message(
                expr_ser,
                keys,
                submitting_task=first.options["submitting_task"],
                fifo_timeout=first.options["fifo_timeout"],
                code=code,
                annotations=first.annotations,
                span_metadata=first.options["span_metadata"],
            )
        )
        self.updates += 1
        self.submissions += len(run)

    def _fail(self, item: _Pending, exc: BaseException | None, tb: Any) -> None:
        for key in item.keys:
            state = self.client.futures.get(key)
            if state is not None:
                state.set_error(exc, tb)


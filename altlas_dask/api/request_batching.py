"""Dynamic batching at the gateway: ``POST /predict`` requests that arrive together run as one GPU task.

Every request is otherwise one Dask task: one submission, one scheduler decision, one worker task and one
model call each, and on a small machine that per-request overhead, not the model, caps the rate. Here the
requests of one user with the same ``gpu_options`` and ``max_length`` are grouped and sent as one
``generate_batch`` task (one forward pass of the whole batch per generated character). Each request keeps
its own task id (``<batch task id>.<index>``, resolvable with ``GET /task/{id}``), result or error, and
cancellation; the batch task is charged one request per item against the user's quotas.

When a group is sent (the rule of Triton's dynamic batcher and of Ray Serve's ``@serve.batch``, made
load-adaptive):

- at once (the next event-loop turn, so the requests of one turn share it) while fewer of this gateway's
  batches are in flight than there are active GPUs: no request waits for company while a GPU idles;
- when it holds ``max_batch_size`` requests;
- when one of the in-flight batches finishes (a GPU frees up);
- ``max_wait_ms`` after its first request at the latest.

So at a low rate every request goes alone and at once, and under load the batches grow with the backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

#: Sends one batch: its items and the group's context -> the batch task's entry.
Send = Callable[[list[dict[str, Any]], Any], Awaitable[Any]]
#: Returns once a batch task's entry has finished (whatever its outcome).
Settled = Callable[[Any], Awaitable[None]]


@dataclass(eq=False)
class _Group:
    context: Any  # what the batch is submitted with (options, user): the same for every request of the group
    items: list[dict[str, Any]] = field(default_factory=list)
    waiters: list[asyncio.Future] = field(default_factory=list)
    timer: asyncio.Handle | None = None


class RequestBatcher:
    """Groups requests by key and sends each group as one batch task (see the module docstring)."""

    def __init__(
        self, send: Send, settled: Settled, capacity: Callable[[], int], max_batch_size: int, max_wait_s: float
    ) -> None:
        self.send, self.settled, self.capacity = send, settled, capacity
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.groups: dict[Hashable, _Group] = {}
        self.in_flight = 0
        self.batches = 0
        self.items = 0
        self._running: set[asyncio.Task] = set()  # the event loop keeps only weak references to tasks

    async def submit(self, key: Hashable, item: dict[str, Any], context: Any) -> tuple[Any, int]:
        """``(the batch task's entry, this request's index in it)`` once its batch was submitted."""
        loop = asyncio.get_running_loop()
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(context)
        waiter = loop.create_future()
        group.items.append(item)
        group.waiters.append(waiter)
        if len(group.items) >= self.max_batch_size:
            self._flush(key)
        elif group.timer is None:
            if self.in_flight < self.capacity():
                group.timer = loop.call_soon(self._flush, key)
            else:
                group.timer = loop.call_later(self.max_wait_s, self._flush, key)
        return await waiter

    def _flush(self, key: Hashable) -> None:
        group = self.groups.pop(key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        self.in_flight += 1
        task = asyncio.ensure_future(self._run(group))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _flush_all(self) -> None:
        for key in list(self.groups):
            self._flush(key)

    async def _run(self, group: _Group) -> None:
        try:
            try:
                entry = await self.send(group.items, group.context)
            except BaseException as exc:
                for waiter in group.waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                return
            self.batches += 1
            self.items += len(group.items)
            for index, waiter in enumerate(group.waiters):
                if not waiter.done():
                    waiter.set_result((entry, index))
            await self.settled(entry)
        finally:
            self.in_flight -= 1
            self._flush_all()  # a GPU freed up: the held groups go now

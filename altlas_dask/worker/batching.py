"""Dynamic batching on a GPU worker: concurrent calls that arrive within ``max_wait_ms`` run as one batch call.

Every request stays its own Dask task (its own key, router record, quota charge, timeout and
cancellation); the tasks that a GPU worker runs at the same moment (the router places up to
``max_concurrent_tasks_per_gpu`` per GPU, one worker thread each) meet in a :class:`Batcher`, and one
of them, the leader, runs the whole batch: one model forward pass per step for all of them, as
Triton's dynamic batcher or Ray Serve's ``@serve.batch`` do. Each caller gets its own result back, or
its own error: a batch function may return an exception for one item, and if it raises for the whole
batch, each item is run again alone, so a failing item fails only itself.

``Batched`` makes a user function that takes a list into a per-item task function
(``Client.submit(fn, x, batched=True)`` or the :func:`batched` decorator).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_WAIT_MS = 2.0


@dataclass(eq=False)
class _Slot:
    item: Any
    done: threading.Event = field(default_factory=threading.Event)
    taken: bool = False
    result: Any = None
    error: BaseException | None = None
    batch_size: int = 0
    share_s: float = 0.0  # the batch call's seconds / its size: this item's share of the GPU time


class Batcher:
    """Calls of ``run(items) -> results`` (one result, or an exception instance, per item, in order) from many
    threads, grouped: a call waits at most ``max_wait_s`` for others, a batch holds at most ``max_batch_size``."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], max_batch_size: int, max_wait_s: float) -> None:
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and max_wait >= 0 (got {max_batch_size}, {max_wait_s})")
        self.run, self.max_batch_size, self.max_wait_s = run, max_batch_size, max_wait_s
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._leading = False
        self.batches = 0
        self.items = 0

    def __call__(self, item: Any) -> Any:
        """``item``'s result (raises its error); the batch's size is in :meth:`call`'s answer."""
        return self.call(item)[0]

    def call(self, item: Any) -> tuple[Any, int]:
        """``(result, size of the batch it ran in)``; raises the item's own error."""
        slot = _Slot(item)
        with self._cond:
            self._pending.append(slot)
            self._cond.notify_all()
            while not slot.taken and self._leading:
                self._cond.wait()
            lead = not slot.taken
            if lead:
                self._leading = True
        if lead:
            self._lead(slot)
        slot.done.wait()
        _report(slot)
        if slot.error is not None:
            raise slot.error
        return slot.result, slot.batch_size

    def _lead(self, mine: _Slot) -> None:
        """Take batches (waiting up to ``max_wait_s`` for each to fill) until the one holding ``mine`` ran."""
        while True:
            with self._cond:
                deadline = time.monotonic() + self.max_wait_s
                while len(self._pending) < self.max_batch_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._pending[: self.max_batch_size]
                del self._pending[: self.max_batch_size]
                for slot in batch:
                    slot.taken = True
                own = mine.taken
                if own:
                    self._leading = False  # a caller still pending leads the next batch
                self._cond.notify_all()
            self._execute(batch)
            if own:
                return

    def _execute(self, batch: list[_Slot]) -> None:
        start = time.perf_counter()
        try:
            results = list(self.run([slot.item for slot in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"a batch function returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:
            if len(batch) > 1:  # find the item that fails: each alone
                for slot in batch:
                    self._execute([slot])
                return
            results = [exc]
        self.batches += 1
        self.items += len(batch)
        share = (time.perf_counter() - start) / len(batch)
        for slot, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                slot.error = result
            else:
                slot.result = result
            slot.batch_size, slot.share_s = len(batch), share
            slot.done.set()


BATCH_METADATA = "altlas_batch"


def _report(slot: _Slot) -> None:
    """On a Dask worker, tell the router the batch this task ran in: ``{"size", "share_s"}`` in the task's
    metadata (Dask sends it with the result), so it charges the task its share of the batch call's time,
    not the whole call, and its explanation shows ``batch_size``. Nothing outside a worker."""
    from altlas_dask.gpus.dask_worker_internals import annotate_current_task

    annotate_current_task(BATCH_METADATA, {"size": slot.batch_size, "share_s": slot.share_s})


_BATCHERS: dict[Hashable, Batcher] = {}
_BATCHERS_LOCK = threading.Lock()


def batcher(
    key: Hashable, run: Callable[[list[Any]], Sequence[Any]], max_batch_size: int, max_wait_s: float
) -> Batcher:
    """This process's batcher for ``key`` (calls with the same key may share a batch), made on first use."""
    found = _BATCHERS.get(key)
    if found is None:
        with _BATCHERS_LOCK:
            found = _BATCHERS.get(key)
            if found is None:
                found = _BATCHERS[key] = Batcher(run, max_batch_size, max_wait_s)
    return found


class Batched:
    """A function of a list, called per item: concurrent calls on one worker run as one ``fn(items)`` call.

    ``fn(items) -> results`` must return one result per item, in order. Calls share a batch only with calls
    of the very same function (same code and captured values), with the same limits.
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"batched: expected a function of a list, got {type(fn).__name__}")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or not 1 <= max_batch_size <= 4096:
            raise ValueError(f"batched: max_batch_size must be an integer in 1..4096 (got {max_batch_size!r})")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, int | float) or not 0 <= max_wait_ms <= 10_000:
            raise ValueError(f"batched: max_wait_ms must be a number in 0..10000 (got {max_wait_ms!r})")
        self.fn, self.max_batch_size, self.max_wait_ms = fn, max_batch_size, float(max_wait_ms)
        self.__name__ = getattr(fn, "__name__", "batched")
        self.__doc__ = getattr(fn, "__doc__", None)
        self._key: str | None = None

    def __call__(self, item: Any) -> Any:
        return batcher(self.key, self.fn, self.max_batch_size, self.max_wait_ms / 1000)(item)

    @property
    def key(self) -> str:
        """The function by value (its pickled bytes) and the limits: equal keys compute the same thing."""
        if self._key is None:
            import cloudpickle

            digest = hashlib.sha1(cloudpickle.dumps(self.fn), usedforsecurity=False).hexdigest()
            self._key = f"batched-{digest}-{self.max_batch_size}-{self.max_wait_ms}"
        return self._key

    def __reduce__(self) -> tuple[Any, ...]:
        return (Batched, (self.fn, self.max_batch_size, self.max_wait_ms))

    def __repr__(self) -> str:
        return f"batched({self.__name__}, max_batch_size={self.max_batch_size}, max_wait_ms={self.max_wait_ms:g})"


def batched(
    fn: Callable[[list[Any]], Sequence[Any]] | None = None,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
) -> Any:
    """Decorator: ``@batched`` or ``@batched(max_batch_size=32)`` on a function of a list; submit it per item."""
    if fn is None:
        return lambda f: Batched(f, max_batch_size, max_wait_ms)
    return Batched(fn, max_batch_size, max_wait_ms)

"""Everything the scheduling core knows, in one place: its parts (admission, dispatch, health) share it.

Fields marked :func:`live` describe live tasks only; a scheduler restart finishes those tasks and starts the
live fields over (:meth:`CoreState.clear_live`), while the GPUs, the quota book, the learned run times, the
finished records and the counters stay.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from altlas_dask.config import Quotas, RoutingPolicy
from altlas_dask.scheduling.actions import Decided
from altlas_dask.scheduling.affinity import AffinityBook
from altlas_dask.scheduling.custom import checked_registry
from altlas_dask.scheduling.estimates import Estimates
from altlas_dask.scheduling.fairqueue import FairQueue
from altlas_dask.scheduling.gpus import GpuBook
from altlas_dask.scheduling.quotas import QuotaBook
from altlas_dask.scheduling.strategies import Strategy, capacity
from altlas_dask.scheduling.tasks import TaskRecord

COUNTERS = ("placed", "held", "retried", "released", "failed", "timed_out", "rejected", "cancelled", "completed")


def live(factory: Callable[[], Any]) -> Any:
    """A field about live tasks: a restart starts it over."""
    return field(default_factory=factory, metadata={"live": True})


@dataclass(eq=False)
class CoreState:
    """The core's state. ``now`` is the time of the latest event; ``timer`` measures a decision's duration."""

    policy: RoutingPolicy
    book: QuotaBook
    queue: FairQueue
    gpus: GpuBook
    registry: dict[str, Strategy]
    timer: Callable[[], float]
    rng: random.Random
    recent_size: int  # finished tasks kept for explanations (0: none, the replay simulator)
    now: float = 0.0
    wants_dispatch: bool = False  # held work may be placeable: a dispatch pass is due
    # live tasks
    tasks: dict[str, TaskRecord] = live(dict)
    deadlines: list[tuple[float, str]] = live(list)  # a heap of (deadline, key); stale entries skipped
    waiting: dict[str, dict[str, None]] = live(dict)  # user -> keys over the priority 4-5 limit, oldest first
    queue_seq: dict[str, int] = live(dict)  # key -> the fair-queue entry that is current
    held: dict[str, tuple] = live(dict)  # ready tasks in the queue -> their wait shape
    shapes: dict[tuple, tuple] = live(dict)  # the wait shapes seen, each kept once
    held_memory: Counter[int] = live(Counter)  # memory_mb -> ready tasks in the queue that need it
    # what outlives a restart
    estimates: Estimates = field(default_factory=Estimates)
    affinity: AffinityBook = field(default_factory=AffinityBook)
    recent: OrderedDict[str, TaskRecord] = field(default_factory=OrderedDict)  # finished tasks, newest last
    explained_in_full: deque[TaskRecord] = field(default_factory=deque)  # the newest finished, not compacted
    recent_memory: Counter[int] = field(default_factory=Counter)  # memory_mb -> tasks among recent submissions
    recent_window: deque[int] = field(default_factory=deque)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    placements: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))  # the latest ones
    decision_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    decision_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    decided: list[Decided] = field(default_factory=list)  # decisions of the event being handled (for metrics)
    rr_last: int | None = None  # round_robin's last GPU
    placement_numbers: itertools.count = field(default_factory=itertools.count)  # a worker's start order
    last_health_check: float = float("-inf")

    @classmethod
    def new(
        cls, policy: RoutingPolicy, quotas: Quotas, timer: Callable[[], float], seed: int, recent_size: int
    ) -> CoreState:
        state = cls(
            policy,
            QuotaBook(quotas, clock=lambda: state.now),
            FairQueue(quotas.fair_share),
            GpuBook(policy.health, policy.max_temperature, capacity(policy)),
            checked_registry(policy.custom_strategies),
            timer,
            random.Random(seed),
            recent_size,
        )
        return state

    def clear_live(self) -> None:
        """A scheduler restart, once every live task is finished: the live fields and the queue start over."""
        for f in fields(self):
            if f.metadata.get("live"):
                setattr(self, f.name, f.default_factory())
        self.queue = FairQueue(self.queue.fair_share)

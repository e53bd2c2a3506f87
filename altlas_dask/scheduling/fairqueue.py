"""The queue of held tasks: priority first, then weighted fair share of GPU time between users.

Start-time fair queuing (Goyal et al., 1996), one virtual clock per priority level:
a user's next task starts at ``max(virtual[p], user's last finish at p)`` and
finishes ``cost / weight`` later, where ``cost`` is the task's estimated GPU
seconds. The queue serves the smallest start first, so a user who floods 10,000
tasks takes turns with a user who sends one, in proportion to their weights and
by GPU time, not task count. Serving a priority-5 task moves only priority 5's
clock, so a flood at one priority never pushes a newcomer at another level
back. When a task ends, :meth:`charge` corrects its user's finish by the
measured minus the estimated cost (usage is charged, as Kueue does). With fair
share off, each priority is plain FIFO.

Entries wait in one heap per (bucket, user): the core's bucket is a task's wait
shape (what decides whether it can be placed at all: memory, strategy, GPU,
...). A dispatch pass that finds a bucket's head must wait closes the bucket,
and the rest of that bucket is not touched: a pass costs the buckets and users
held plus the tasks placed, never the number queued (issue 24).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    key: str
    user: str
    priority: int
    seq: int
    cost: float = 1.0
    weight: float = 1.0
    start: float = 0.0  # the virtual start it was yielded with
    bucket: Hashable = None

    def __lt__(self, other: Entry) -> bool:  # within one user: priority, then arrival
        return (-self.priority, self.seq) < (-other.priority, other.seq)


class FairQueue:
    """Per-(bucket, user) heaps merged by (priority, virtual start, arrival)."""

    def __init__(self, fair_share: bool = True) -> None:
        self.fair_share = fair_share
        self.heaps: dict[tuple[Hashable, str], list[Entry]] = {}
        self.virtual: dict[int, float] = {}
        self.finish: dict[tuple[str, int], float] = {}
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(
        self, key: str, user: str, priority: int, weight: float = 1.0, cost: float = 1.0, bucket: Hashable = None
    ) -> Entry:
        entry = Entry(key, user, priority, next(self._seq), max(cost, 1e-9), weight, bucket=bucket)
        self.requeue(entry)
        return entry

    def requeue(self, entry: Entry) -> None:
        """Put back an entry taken by :meth:`in_order` but not served (it keeps its arrival order)."""
        heapq.heappush(self.heaps.setdefault((entry.bucket, entry.user), []), entry)
        self._size += 1

    def _start(self, entry: Entry) -> float:
        if not self.fair_share:
            return float(entry.seq)
        p = entry.priority
        return max(self.virtual.get(p, 0.0), self.finish.get((entry.user, p), 0.0))

    def served(self, entry: Entry) -> None:
        """The entry was placed: advance its priority's clock and its user's finish."""
        if self.fair_share:
            p = entry.priority
            self.virtual[p] = max(self.virtual.get(p, 0.0), entry.start)
            self.finish[(entry.user, p)] = entry.start + entry.cost / entry.weight

    def charge(self, user: str, priority: int, weight: float, correction: float) -> None:
        """Correct a user's finish by measured minus estimated cost of a task that ended."""
        if self.fair_share and (user, priority) in self.finish:
            self.finish[(user, priority)] += correction / weight

    def in_order(
        self, user_may_start: Callable[[str], bool], bucket_open: Callable[[Hashable], bool] = lambda bucket: True
    ) -> Iterator[Entry]:
        """Take entries best-first, skipping users for whom ``user_may_start`` is false and buckets for which
        ``bucket_open`` is false (both are asked again before a heap's next entry).

        Each yielded entry is removed; hand back the ones not served with :meth:`requeue` after the loop.
        A head's start is computed when it joins the merge; serving an entry only moves starts later, so a
        head found stale when it comes out is put back with its new start (lazily, as the old per-user merge
        recomputed it eagerly).
        """
        heads = [
            self._head(hk, q[0]) for hk, q in self.heaps.items() if q and user_may_start(hk[1]) and bucket_open(hk[0])
        ]
        heapq.heapify(heads)
        while heads:
            head = heapq.heappop(heads)
            hk = head[-1]
            queue = self.heaps.get(hk)
            if not queue or not bucket_open(hk[0]) or not user_may_start(hk[1]):
                continue
            fresh = self._head(hk, queue[0])
            if fresh[:3] != head[:3]:
                heapq.heappush(heads, fresh)
                continue
            entry = heapq.heappop(queue)
            entry.start = fresh[1]
            self._size -= 1
            if not queue:
                del self.heaps[hk]
            yield entry
            queue = self.heaps.get(hk)
            if queue and bucket_open(hk[0]) and user_may_start(hk[1]):
                heapq.heappush(heads, self._head(hk, queue[0]))

    def _head(self, hk: tuple[Hashable, str], entry: Entry) -> tuple[int, float, int, tuple[Hashable, str]]:
        return (-entry.priority, self._start(entry), entry.seq, hk)

    def order(self) -> list[str]:
        """Every queued key in the order the queue would serve them if each could be placed (positions)."""
        virtual, finish = dict(self.virtual), dict(self.finish)
        by_user: dict[str, list[Entry]] = {}
        for (_, user), q in self.heaps.items():
            by_user.setdefault(user, []).extend(q)
        queues = {user: sorted(q) for user, q in by_user.items()}

        def head(user: str, i: int) -> tuple[int, float, int, str, int]:
            e = queues[user][i]
            start = max(virtual.get(e.priority, 0.0), finish.get((user, e.priority), 0.0)) if self.fair_share else e.seq
            return (-e.priority, start, e.seq, user, i)

        heads = [head(user, 0) for user in queues]
        heapq.heapify(heads)
        out: list[str] = []
        while heads:
            _, start, _, user, i = heapq.heappop(heads)
            e = queues[user][i]
            out.append(e.key)
            if self.fair_share:
                virtual[e.priority] = max(virtual.get(e.priority, 0.0), start)
                finish[(user, e.priority)] = start + e.cost / e.weight
            if i + 1 < len(queues[user]):
                heapq.heappush(heads, head(user, i + 1))
        return out

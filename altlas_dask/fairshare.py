"""The router's queue of held tasks: priority first, then weighted fair share between users.

Within one priority, each user's tasks get virtual finish tags
(start-time fair queuing: ``tag = max(virtual_now, user's last tag) + 1/weight``),
so a user who floods 10,000 tasks is served in turn with a user who sends
one, in proportion to their weights. With fair share off the tag is the
arrival order: plain FIFO within a priority.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(order=True, frozen=True, slots=True)
class Entry:
    sort_key: tuple[int, float, int]
    key: str = field(compare=False)
    user: str = field(compare=False)


class FairQueue:
    """Per-user heaps merged in (priority, fair tag, arrival) order."""

    def __init__(self, fair_share: bool = True) -> None:
        self.fair_share = fair_share
        self.by_user: dict[str, list[Entry]] = {}
        self.virtual = 0.0
        self.last_tag: dict[tuple[str, int], float] = {}
        self._seq = itertools.count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, key: str, user: str, priority: int, weight: float = 1.0) -> Entry:
        seq = next(self._seq)
        if self.fair_share:
            start = max(self.virtual, self.last_tag.get((user, priority), 0.0))
            tag = start + 1.0 / weight
            self.last_tag[(user, priority)] = tag
        else:
            tag = float(seq)
        entry = Entry((-priority, tag, seq), key, user)
        self.requeue(entry)
        return entry

    def requeue(self, entry: Entry) -> None:
        """Put back an entry taken by :meth:`in_order` but not served (keeps its place)."""
        heapq.heappush(self.by_user.setdefault(entry.user, []), entry)
        self._size += 1

    def served(self, entry: Entry) -> None:
        """Advance virtual time to the served entry's tag."""
        if self.fair_share:
            self.virtual = max(self.virtual, entry.sort_key[1])

    def in_order(self, user_may_start: Callable[[str], bool]) -> Iterator[Entry]:
        """Take entries best-first, skipping users for whom ``user_may_start`` is false.

        Each yielded entry is removed; hand back the ones not served with :meth:`requeue`
        after the loop. ``user_may_start`` is asked again before a user's next entry.
        """
        heads = [(q[0], user) for user, q in self.by_user.items() if q and user_may_start(user)]
        heapq.heapify(heads)
        while heads:
            _, user = heapq.heappop(heads)
            queue = self.by_user[user]
            entry = heapq.heappop(queue)
            self._size -= 1
            if not queue:
                del self.by_user[user]
            yield entry
            queue = self.by_user.get(user)
            if queue and user_may_start(user):
                heapq.heappush(heads, (queue[0], user))

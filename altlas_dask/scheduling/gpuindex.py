"""GPUs indexed by what a placement asks of them, so that a decision on a large pool looks at a bounded number.

A *class* is one GPU model as the pool reports it (name, memory, compute capability): whether a request can
ever run on a GPU (memory under ``memory_threshold``, compute capability) is the same for every GPU of its
class, so the GPUs that fit a request are whole classes. Within a class, the GPUs that can take work now
(*open*: status active, health not critical, below ``max_temperature``, a free slot) are kept by the tasks in
flight there (level 0: idle), each level in the order its GPUs reached it; a GPU looked at and passed over
goes to the back of its level, so the next decision looks at others. Updating one GPU is O(1), plus a C-level
move in the sorted list of open ids (round_robin's "next after").
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from altlas_dask.config import meets_compute_capability
from altlas_dask.gpus.state import GpuState

ClassKey = tuple[str, int, str]  # (name, memory_total_mb, compute_capability)


@dataclass(slots=True, eq=False)
class GpuClass:
    """The GPUs of one model."""

    name: str
    memory_total_mb: int
    compute_capability: str
    members: set[int] = field(default_factory=set)
    levels: list[dict[int, None]] = field(default_factory=list)  # tasks in flight -> open GPUs, oldest first
    critical: set[int] = field(default_factory=set)  # status active and health critical
    usable: set[int] = field(default_factory=set)  # status not error

    @property
    def open(self) -> int:
        return sum(map(len, self.levels))


class GpuIndex:
    """Classes of GPUs, and in each the open GPUs by tasks in flight (see the module docstring)."""

    def __init__(self, capacity: int, max_temperature: float) -> None:
        self.capacity = capacity
        self.max_temperature = max_temperature
        self.classes: dict[ClassKey, GpuClass] = {}
        self.ids: list[int] = []  # every GPU, sorted
        self.open_ids: list[int] = []  # the open ones, sorted
        self.free_slot: set[int] = set()  # status active with a slot free (open or not)
        self._where: dict[int, tuple[GpuClass, int | None]] = {}  # GPU -> its class, its level (None: not open)
        self._fits: dict[tuple[int, float | None, float], list[GpuClass]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def update(self, view: GpuState) -> None:
        """``view`` is the GPU's state as strategies see it now."""
        g = view.id
        key = (view.name, view.memory_total_mb, view.compute_capability)
        cls = self.classes.get(key)
        if cls is None:
            cls = self.classes[key] = GpuClass(*key, levels=[{} for _ in range(self.capacity)])
            self._fits.clear()
        where = self._where.get(g)
        if where is not None and where[0] is not cls:
            self.remove(g)
            where = None
        if where is None:
            bisect.insort(self.ids, g)
        level = view.active_requests if self._is_open(view) else None
        if where is not None and where[1] == level:
            self._mark(cls, view)
            return
        if where is not None and where[1] is not None:
            del cls.levels[where[1]][g]
        if level is None:
            if where is not None and where[1] is not None:
                del self.open_ids[bisect.bisect_left(self.open_ids, g)]
        else:
            cls.levels[level][g] = None
            if where is None or where[1] is None:
                bisect.insort(self.open_ids, g)
        cls.members.add(g)
        self._where[g] = (cls, level)
        self._mark(cls, view)

    def _is_open(self, view: GpuState) -> bool:
        return (
            view.status == "active"
            and view.health_status != "critical"
            and view.temperature_c < self.max_temperature
            and view.active_requests < self.capacity
        )

    def _mark(self, cls: GpuClass, view: GpuState) -> None:
        g = view.id
        for bucket, member in (
            (self.free_slot, view.status == "active" and view.active_requests < self.capacity),
            (cls.critical, view.status == "active" and view.health_status == "critical"),
            (cls.usable, view.status != "error"),
        ):
            if member:
                bucket.add(g)
            else:
                bucket.discard(g)

    def remove(self, g: int) -> None:
        where = self._where.pop(g, None)
        if where is None:
            return
        cls, level = where
        del self.ids[bisect.bisect_left(self.ids, g)]
        if level is not None:
            del cls.levels[level][g]
            del self.open_ids[bisect.bisect_left(self.open_ids, g)]
        for bucket in (cls.members, cls.critical, cls.usable, self.free_slot):
            bucket.discard(g)
        if not cls.members:
            del self.classes[(cls.name, cls.memory_total_mb, cls.compute_capability)]
            self._fits.clear()

    def passed_over(self, g: int) -> None:
        """``g`` was looked at and not chosen: it goes to the back of its level."""
        where = self._where.get(g)
        if where is not None and where[1] is not None:
            level = where[0].levels[where[1]]
            del level[g]
            level[g] = None

    def is_open(self, g: int) -> bool:
        where = self._where.get(g)
        return where is not None and where[1] is not None

    def class_of(self, g: int) -> GpuClass | None:
        where = self._where.get(g)
        return where[0] if where is not None else None

    # -- queries ---------------------------------------------------------------------------------
    def fitting(self, memory_mb: int, min_cc: float | None, memory_threshold: float) -> list[GpuClass]:
        """The classes whose GPUs can ever hold a task of ``memory_mb`` that needs compute capability ``min_cc``."""
        key = (memory_mb, min_cc, memory_threshold)
        fits = self._fits.get(key)
        if fits is None:
            fits = self._fits[key] = [
                c
                for c in self.classes.values()
                if memory_mb <= c.memory_total_mb * memory_threshold
                and meets_compute_capability(c.compute_capability, min_cc)
            ]
        return fits

    def emptiest(self, classes: list[GpuClass], n: int) -> list[int]:
        """Up to ``n`` open GPUs of ``classes``, fewest tasks in flight first, the classes taking turns."""
        return self._by_level(classes, n, range(self.capacity))

    def fullest(self, classes: list[GpuClass], n: int) -> list[int]:
        """Up to ``n`` open GPUs of ``classes``, most tasks in flight first (best fit)."""
        return self._by_level(classes, n, range(self.capacity - 1, -1, -1))

    def _by_level(self, classes: list[GpuClass], n: int, levels: Iterable[int]) -> list[int]:
        out: list[int] = []
        for level in levels:
            turns = [iter(c.levels[level]) for c in classes if c.levels[level]]
            for g in _round_robin(turns):
                out.append(g)
                if len(out) >= n:
                    return out
        return out

    def after(self, classes: list[GpuClass], cursor: int | None, n: int, steps: int) -> list[int]:
        """Up to ``n`` open GPUs of ``classes`` in id order after ``cursor`` (wrapping), within ``steps`` open ids."""
        return self._in_id_order(self.open_ids, classes, cursor, n, steps)

    def first(self, classes: list[GpuClass], n: int, steps: int) -> list[int]:
        """Up to ``n`` GPUs of ``classes``, open or not, lowest ids first (single-GPU mode's primary)."""
        return self._in_id_order(self.ids, classes, None, n, steps)

    def _in_id_order(self, ids: list[int], classes: list[GpuClass], cursor: int | None, n: int, steps: int):
        if not ids:
            return []
        start = 0 if cursor is None else bisect.bisect_right(ids, cursor)
        wanted = {id(c) for c in classes}
        out = []
        for i in range(min(steps, len(ids))):
            g = ids[(start + i) % len(ids)]
            if id(self._where[g][0]) in wanted:
                out.append(g)
                if len(out) >= n:
                    break
        return out

    def sample(self, classes: list[GpuClass], n: int, rng: random.Random, steps: int) -> list[int]:
        """Up to ``n`` open GPUs of ``classes`` drawn uniformly from the open ones (``steps`` draws at most)."""
        ids, wanted, out = self.open_ids, {id(c) for c in classes}, dict.fromkeys(())
        for _ in range(min(steps, len(ids) * 2)):
            g = ids[rng.randrange(len(ids))]
            if id(self._where[g][0]) in wanted:
                out[g] = None
                if len(out) >= n:
                    break
        return list(out)


def _round_robin(iterators: list[Iterator[int]]) -> Iterator[int]:
    while iterators:
        alive = []
        for it in iterators:
            g = next(it, None)
            if g is not None:
                yield g
                alive.append(it)
        iterators = alive

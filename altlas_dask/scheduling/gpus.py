"""The core's bookkeeping of GPUs: identity, in-flight work, memory as counted, drain, health, liveness."""

from __future__ import annotations

from dataclasses import dataclass, field

from altlas_dask.config import Health
from altlas_dask.gpus.state import GpuState
from altlas_dask.scheduling.gpuindex import GpuIndex
from altlas_dask.scheduling.health import HealthWindow
from altlas_dask.scheduling.sharing import ShareClock
from altlas_dask.scheduling.strategies import matches

MAX_VIEWS = 64  # views kept per GPU between heartbeats (one per in-flight count and memory total, mostly)


@dataclass
class GpuSlot:
    """One connected GPU: its last report plus what the core placed there."""

    gpu_id: int
    worker: str
    base: GpuState
    health: HealthWindow
    last_report: float
    assigned: dict[str, int] = field(default_factory=dict)  # key -> memory_mb counted
    expected_s: dict[str, float] = field(default_factory=dict)  # key -> its expected seconds alone here
    running: set[str] = field(default_factory=set)  # keys holding one of its worker's slots (threads)
    next_up: dict[str, tuple[int, int]] = field(default_factory=dict)  # on its worker, waiting for a slot -> rank
    share: ShareClock = field(default_factory=ShareClock)  # processor sharing among ``running`` (GPU seconds)
    draining: bool = False
    drain_reason: str = ""
    unresponsive: str = ""  # why it is considered unresponsive ("" while it answers)
    hung_since: float | None = None  # marked unresponsive for a hung task (not silence) at this time
    last_busy: float = 0.0  # when the core's last task here ended
    _view: GpuState | None = None
    _views: dict[tuple, GpuState] = field(default_factory=dict, repr=False)  # views of ``_views_of``, by what varies
    _views_of: GpuState | None = field(default=None, repr=False)

    def view(self, max_temperature: float) -> GpuState:
        """The state strategies see: heartbeat + in-flight work + drain + health as the core judges it.

        Views are kept per combination of what changes between heartbeats (tasks in flight, counted memory,
        health, drain, liveness): a task placed and finished brings the GPU back to a view it had, which is
        reused instead of copying the heartbeat's 24 fields again at every decision.
        """
        if self._view is None:
            base = self.base
            health, why = self.health.status(base, max_temperature)
            status = base.status
            if self.unresponsive:
                status, why = "unresponsive", self.unresponsive
            elif self.draining and status == "active":
                status = "maintenance"
            assigned = self.assigned
            memory = max(base.memory_used_mb, sum(assigned.values()))
            drain_reason = self.drain_reason if self.draining else ""
            error_rate = round(self.health.error_rate, 4)
            key = (self.gpu_id, self.worker, status, len(assigned), memory, error_rate, health, why, drain_reason)
            if self._views_of is not base:
                self._views.clear()
                self._views_of = base
            view = self._views.get(key)
            if view is None:
                if len(self._views) >= MAX_VIEWS:
                    self._views.clear()
                view = self._views[key] = base.with_(
                    id=self.gpu_id,
                    worker=self.worker,
                    status=status,
                    active_requests=len(assigned),
                    memory_used_mb=memory,
                    error_rate=error_rate,
                    health_status=health,
                    health_reason=why,
                    drain_reason=drain_reason,
                )
            self._view = view
        return self._view

    def changed(self) -> None:
        self._view = None

    @property
    def backlog_s(self) -> float:
        """Expected seconds of the work placed here and not finished (kernels take the device in turn)."""
        return sum(self.expected_s.values())

    @property
    def counted_memory_mb(self) -> int:
        return sum(self.assigned.values())


class GpuBook:
    """Connected GPUs by id and worker, with identities and drains that survive a worker's restart."""

    def __init__(self, health: Health, max_temperature: float, capacity: int = 1) -> None:
        self.health_policy = health
        self.max_temperature = max_temperature
        self.slots: dict[int, GpuSlot] = {}
        self.by_worker: dict[str, int] = {}
        self.ids: dict[str, int] = {}  # GPU UUID -> id, for the cluster's life
        self.drains: dict[int, str] = {}  # id -> reason, kept while the GPU is away
        self.windows: dict[int, HealthWindow] = {}
        self.seen: dict[int, GpuState] = {}  # the last state of every GPU ever connected
        self._snapshot: tuple[GpuState, ...] | None = None
        self._order: dict[int, int] = {}  # GPU id -> its position in the snapshot
        self._stale: set[int] = set()  # GPUs whose view in the snapshot is out of date
        self._taken: set[int] = set()  # every id given (the values of ``ids``)
        self._index = GpuIndex(capacity, max_temperature)
        self._index_stale: set[int] = set()  # GPUs whose place in the index is out of date

    def __len__(self) -> int:
        return len(self.slots)

    def index(self) -> GpuIndex:
        """The GPUs by class and tasks in flight (gpuindex.py), up to date."""
        if self._index_stale:
            for g in self._index_stale:
                slot = self.slots.get(g)
                if slot is None:
                    self._index.remove(g)
                else:
                    self._index.update(slot.view(self.max_temperature))
            self._index_stale.clear()
        return self._index

    def view(self, gpu: int) -> GpuState:
        return self.slots[gpu].view(self.max_temperature)

    def __contains__(self, gpu: int) -> bool:
        return gpu in self.slots

    @property
    def known(self) -> set[int]:
        """Every id this cluster has given a GPU (connected or not)."""
        return set(self.ids.values())

    def join(self, worker: str, state: GpuState, now: float) -> GpuSlot:
        gpu_id = self._id_for(state)
        previous = self.slots.get(gpu_id)
        if previous is not None:  # its restarted worker registered before the old one was removed
            self.by_worker.pop(previous.worker, None)
        window = self.windows.setdefault(gpu_id, HealthWindow(self.health_policy))
        slot = GpuSlot(gpu_id, worker, state, window, last_report=now)
        if gpu_id in self.drains:
            slot.draining, slot.drain_reason = True, self.drains[gpu_id]
        self.slots[gpu_id] = slot
        self.by_worker[worker] = gpu_id
        self.seen[gpu_id] = state.with_(id=gpu_id)
        self.changed()
        self._index_stale.add(gpu_id)
        return slot

    def _id_for(self, state: GpuState) -> int:
        uuid = state.uuid or f"index-{state.id}"
        if uuid in self.ids:
            return self.ids[uuid]
        taken = self._taken
        gpu_id = state.id if state.id not in taken else max(taken) + 1
        self.ids[uuid] = gpu_id
        taken.add(gpu_id)
        return gpu_id

    def ever_matched(self, ref: int | str) -> bool:
        """Whether ``ref`` (an id, UUID or name pattern) names a GPU this cluster has had."""
        return any(matches(g, ref) for g in self.seen.values())

    def describe_known(self) -> str:
        return ", ".join(f"{g.id} ({g.name}, {g.uuid})" for _, g in sorted(self.seen.items()))

    def leave(self, worker: str) -> GpuSlot | None:
        gpu_id = self.by_worker.pop(worker, None)
        if gpu_id is None or self.slots[gpu_id].worker != worker:
            return None
        self.changed()
        self._index_stale.add(gpu_id)
        return self.slots.pop(gpu_id)

    def slot_of(self, worker: str | None) -> GpuSlot | None:
        gpu_id = self.by_worker.get(worker or "")
        return None if gpu_id is None else self.slots.get(gpu_id)

    def drain(self, gpu: int, draining: bool, reason: str) -> None:
        slot = self.slots[gpu]
        slot.draining, slot.drain_reason = draining, reason if draining else ""
        if draining:
            self.drains[gpu] = reason
        else:
            self.drains.pop(gpu, None)
        self.changed(slot)

    def changed(self, slot: GpuSlot | None = None) -> None:
        """``slot``'s view is stale (only it is rebuilt); with no slot, the set of GPUs changed."""
        if slot is not None:
            slot.changed()
            self._index_stale.add(slot.gpu_id)
            if self._snapshot is not None and self._order.get(slot.gpu_id) is not None:
                self._stale.add(slot.gpu_id)
                return
        self._snapshot = None

    def snapshot(self) -> tuple[GpuState, ...]:
        if self._snapshot is None:
            ids = sorted(self.slots)
            self._order = {g: i for i, g in enumerate(ids)}
            self._stale.clear()
            self._snapshot = tuple(self.slots[g].view(self.max_temperature) for g in ids)
        elif self._stale:
            views = list(self._snapshot)
            for g in self._stale:
                views[self._order[g]] = self.slots[g].view(self.max_temperature)
            self._stale.clear()
            self._snapshot = tuple(views)
        return self._snapshot

"""The discrete-event replay: a trace's tasks through the real :class:`SchedulingCore`, GPUs modelled.

Events wait in a heap ordered by virtual time. Each is what the Dask adapter
(``scheduler_plugins/gpu_router.py``) would feed the core at that moment, and
the core's actions are carried out the way the adapter and Dask carry them
out: ``Place`` pins the task to its GPU's worker, which gets it a moment later
(:class:`Timing`) and runs it on one of its ``max_concurrent_tasks_per_gpu``
threads, or, when all are busy (tasks pre-placed there, ``prefetch_depth``),
as soon as one frees, best ``Place.rank`` first (Dask's worker starts ready
tasks in priority order); the modelled GPU runs it (:mod:`.model`) and the
worker's report reaches the scheduler as ``Finished`` or ``Erred``; ``Release``
takes it back (``Released`` then ``Ready``), ``Retry`` makes it ready again,
``Fail`` ends it wherever it is. Heartbeats reach the core on the adapter's
poll, every ``queue_processing_interval``, followed by a tick; a tick also
follows any event after which the core wants to dispatch (the adapter's
``_schedule_tick``). No policy is copied here: every decision is the core's.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from altlas_dask.config import AltlasConfig, SimLatency
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import Action, DispatchSoon, Fail, Place, Record, Release, Retry
from altlas_dask.scheduling.core import SchedulingCore
from altlas_dask.simulation.model import Kernel, ModelGpu
from altlas_dask.simulation.trace import TraceEvent, TraceLine, TraceTask

EPOCH = 1_000_000.0  # virtual Unix time of the trace's t = 0 (the core reads time only from events)
# event kinds, in the order they run when they fall at the same instant
ARRIVE, ON_WORKER, KERNEL_END, REPORT, HEARTBEAT, POLL, DISPATCH, FAULT, FETCHED = range(9)


def heartbeat_interval(n: int) -> float:
    """Dask's worker heartbeat interval for ``n`` workers (distributed.scheduler.heartbeat_interval)."""
    if n <= 10:
        return 0.5
    if n < 50:
        return 1.0
    if n < 200:
        return 2.0
    return n / 200 + 1


_LATENCY = SimLatency()


@dataclass(frozen=True)
class Timing:
    """Latencies of the Dask path around the GPU, in seconds (defaults: ``simulation.latency``'s, measured on the
    simulated cluster; a replay takes its config's ``simulation.latency`` unless given a Timing)."""

    submit_s: float = _LATENCY.submit_s  # client submit -> the scheduler's update_graph
    dispatch_s: float = _LATENCY.dispatch_s  # the router places a task -> it starts on the worker
    report_s: float = _LATENCY.report_s  # the kernel ends -> the scheduler's transition to memory (or erred)
    notify_s: float = _LATENCY.notify_s  # the scheduler -> the client's done-callback
    heartbeat_s: float | None = None  # None: Dask's own interval for the pool's size
    transfer_bytes_per_s: float = 1e9  # a worker fetching a dependency's result from another worker

    @classmethod
    def from_config(cls, config: AltlasConfig) -> Timing:
        return cls(**config.simulation.latency.model_dump())


@dataclass(slots=True)
class Outcome:
    """One trace task as the replay saw it."""

    task: TraceTask
    status: str = "pending"
    gpu: int | None = None
    started: float | None = None  # on the worker (last attempt), trace seconds
    ended: float | None = None  # kernel end (last attempt)
    done: float | None = None  # the client's callback
    device_s: float = 0.0  # device seconds over every attempt
    attempts: int = 0
    error: str | None = None
    waiting_deps: int = 0
    attempt: int = 0  # current placement; stale worker reports carry an older one
    rank: tuple[int, int] = (0, 0)  # its place in its worker's queue (the core's Place.rank)


@dataclass
class ReplayResult:
    strategy: str
    outcomes: list[Outcome]
    gpus: list[ModelGpu]
    end: float  # trace seconds when the last task ended
    events: int
    counters: dict[str, int] = field(default_factory=dict)
    bytes_moved: float = 0.0  # dependency results fetched from another worker


class Replay:
    """One replay of a trace on the modelled pool of ``config.simulation`` with one strategy."""

    def __init__(
        self,
        config: AltlasConfig,
        lines: Sequence[TraceLine],
        *,
        strategy: str | None = None,
        seed: int = 0,
        timing: Timing | None = None,
    ) -> None:
        self.timing = timing = timing or Timing.from_config(config)
        policy = config.routing()
        if strategy is not None:
            allowed = policy.allowed_strategies
            allowed = allowed if strategy in allowed else (*allowed, strategy)
            policy = policy.model_copy(update={"default_strategy": strategy, "allowed_strategies": allowed})
        self.strategy = policy.default_strategy
        self.core = SchedulingCore(policy, config.quotas, seed=seed, recent_size=0, timer=_zero)
        sim = config.simulation
        max_t = config.gpu.detection.max_temperature
        self.gpus = [
            ModelGpu(i, spec, tuple(f for f in sim.faults if f.gpu == i), sim.seed, max_t)
            for i, spec in enumerate(sim.expanded())
        ]
        self.by_worker = {g.worker: g for g in self.gpus}
        self.affinity_keys = sim.affinity_cache_keys
        self.affinity_hits = 0  # tasks that found their affinity state on their GPU
        self.threads = policy.max_concurrent_tasks_per_gpu  # per worker, as the launcher sets them
        self.next_up: list[list[tuple[tuple[int, int], str, int]]] = [[] for _ in self.gpus]  # waiting for a thread
        self.tick_s = config.gpu.workload.queue_processing_interval
        self.heartbeat_s = timing.heartbeat_s or heartbeat_interval(len(self.gpus))
        self.tasks = [line for line in lines if isinstance(line, TraceTask)]
        self.outcomes: dict[str, Outcome] = {t.id: Outcome(t) for t in self.tasks}
        self.children: dict[str, list[str]] = {}
        for t in self.tasks:
            for dep in t.deps:
                self.children.setdefault(dep, []).append(t.id)
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._open = 0  # tasks arrived and not final
        self._arrivals_left = len(self.tasks)
        self._dispatch_pending = False
        self._reports: dict[int, object] = {}
        self.results: dict[str, tuple[float, set[str]]] = {}  # key -> (bytes of its result, workers holding it)
        self.bytes_moved = 0.0
        self.now = 0.0
        self.events = 0
        for t in self.tasks:
            self._at(t.t + timing.submit_s, ARRIVE, t)
        for line in lines:
            if isinstance(line, TraceEvent):
                self._at(line.t, FAULT, line)
        for g in self.gpus:
            self.core.handle(ev.GpuJoined(g.worker, g.state(0.0), EPOCH))
        self._at(self.heartbeat_s, HEARTBEAT, None)
        self._at(self.tick_s, POLL, None)

    def _at(self, when: float, kind: int, payload: object) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, payload))

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> ReplayResult:
        heap, pop = self._heap, heapq.heappop
        handlers = (
            self._arrive, self._on_worker, self._kernel_end, self._report,
            self._heartbeat, self._poll, self._dispatch, self._fault, self._fetched,
        )  # fmt: skip
        while heap:
            when, _, kind, payload = pop(heap)
            self.now = when
            self.events += 1
            handlers[kind](payload)
        ended = [o.done for o in self.outcomes.values() if o.done is not None]
        return ReplayResult(
            self.strategy,
            list(self.outcomes.values()),
            self.gpus,
            max(ended, default=0.0),
            self.events,
            {**self.core.counters, "affinity_hits": self.affinity_hits},
            self.bytes_moved,
        )

    def _busy(self) -> bool:
        return self._open > 0 or self._arrivals_left > 0

    def _feed(self, event: ev.Event) -> None:
        self._apply(self.core.handle(event))

    # -- events ------------------------------------------------------------------------------------
    def _arrive(self, task: TraceTask) -> None:
        self._arrivals_left -= 1
        self._open += 1
        o = self.outcomes[task.id]
        o.waiting_deps = sum(1 for d in task.deps if self.outcomes[d].status != "completed")
        failed = [d for d in task.deps if self.outcomes[d].status in FINAL_BAD]
        ready = o.waiting_deps == 0
        inputs = self._inputs(task) if ready and task.deps else None
        self._feed(ev.Submitted(task.id, task.options(), EPOCH + self.now, ready=ready, inputs=inputs))
        if failed and o.status == "pending":
            self._dependency_failed(o, failed[0])

    def _on_worker(self, payload: tuple[str, int]) -> None:
        key, attempt = payload
        o = self.outcomes[key]
        if o.attempt != attempt or o.status != "pending":
            return
        worker = self.gpus[o.gpu].worker
        missing = 0.0
        for dep in o.task.deps:
            size, holders = self.results.get(dep, (0.0, set()))
            if worker not in holders:
                missing += size
                holders.add(worker)  # Dask keeps the fetched copy there (who_has grows)
        if missing:
            self.bytes_moved += missing
            self._at(self.now + missing / self.timing.transfer_bytes_per_s, FETCHED, payload)
            return
        self._fetched(payload)

    def _inputs(self, task: TraceTask) -> dict[str, int]:
        """Where the task's inputs are: worker -> bytes (what the adapter reads from who_has / nbytes)."""
        out: dict[str, int] = {}
        for dep in task.deps:
            size, holders = self.results.get(dep, (0.0, set()))
            for worker in holders:
                out[worker] = out.get(worker, 0) + int(size)
        return out

    def _fetched(self, payload: tuple[str, int]) -> None:
        """The task's inputs are on its worker: it runs there if a thread is free, else it waits for one."""
        key, attempt = payload
        o = self.outcomes[key]
        if o.attempt != attempt or o.status != "pending":
            return
        gpu = self.gpus[o.gpu]
        if _executing(gpu) < self.threads:
            self._execute(gpu, key, attempt)
        else:
            heapq.heappush(self.next_up[gpu.index], (o.rank, key, attempt))

    def _execute(self, gpu: ModelGpu, key: str, attempt: int) -> None:
        """A worker thread runs the task: it takes memory and waits for the device."""
        o = self.outcomes[key]
        o.started = self.now
        task = o.task
        work = task.work_gflop
        # the state it reuses (a prompt prefix's KV cache) may be there already
        if task.affinity is not None and gpu.warm(task.affinity, self.affinity_keys):
            self.affinity_hits += 1
            work = max(work - task.affinity_gflop, 0.0)
        error = gpu.arrive(Kernel(key, work, task.memory_mb, self.now), self.now)
        if error is not None:
            self._at(self.now + self.timing.report_s, REPORT, (key, attempt, error, 0.0))
            self._next_on_worker(gpu)
            return
        self._start_kernel(gpu)

    def _next_on_worker(self, gpu: ModelGpu) -> None:
        """Threads freed on ``gpu``'s worker: its waiting tasks start, best rank first."""
        waiting = self.next_up[gpu.index]
        while waiting and _executing(gpu) < self.threads:
            _, key, attempt = heapq.heappop(waiting)
            o = self.outcomes[key]
            if o.attempt == attempt and o.status == "pending":
                self._execute(gpu, key, attempt)

    def _start_kernel(self, gpu: ModelGpu) -> None:
        took = gpu.take_device(self.now)
        if took is not None:
            kernel, end = took
            self._at(end, KERNEL_END, (gpu, kernel))

    def _kernel_end(self, payload: tuple[ModelGpu, Kernel]) -> None:
        gpu, kernel = payload
        if gpu.running is not kernel:
            return  # cancelled meanwhile
        error = gpu.end(kernel, self.now)
        o = self.outcomes[kernel.key]
        o.device_s += kernel.seconds
        o.ended = self.now
        self._at(self.now + self.timing.report_s, REPORT, (kernel.key, o.attempt, error, self.now - kernel.arrived))
        self._start_kernel(gpu)
        self._next_on_worker(gpu)

    def _report(self, payload: tuple[str, int, str | None, float]) -> None:
        key, attempt, error, seconds = payload
        o = self.outcomes[key]
        if o.attempt != attempt or o.status != "pending":
            return  # the task was taken back from that worker meanwhile: Dask ignores the late report
        worker = self.gpus[o.gpu].worker
        now = EPOCH + self.now
        if error is None:
            self.results[key] = (o.task.output_mb * 1e6, {worker})
            self._feed(ev.Finished(key, now, worker, seconds))
        else:
            o.error = error
            self._feed(ev.Erred(key, now, error, worker, seconds))

    def _heartbeat(self, _: object) -> None:
        for g in self.gpus:
            self._reports[g.index] = g.state(self.now)
        if self._busy():
            self._at(self.now + self.heartbeat_s, HEARTBEAT, None)

    def _poll(self, _: object) -> None:
        """The adapter's periodic callback: fresh heartbeats, then a tick."""
        reports, self._reports = self._reports, {}
        now = EPOCH + self.now
        for index, state in reports.items():
            self._feed(ev.GpuReported(self.gpus[index].worker, state, now))
        self._dispatch(None)
        if self._busy():
            self._at(self.now + self.tick_s, POLL, None)

    def _dispatch(self, _: object) -> None:
        self._dispatch_pending = False
        self._feed(ev.Tick(EPOCH + self.now))

    def _fault(self, event: TraceEvent) -> None:
        if event.gpu < len(self.gpus):
            g = self.gpus[event.gpu]
            g.lost_at = self.now if g.lost_at is None else min(g.lost_at, self.now)

    # -- actions -----------------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        follow: list[ev.Event] = []
        now = EPOCH + self.now
        dispatch = False
        for action in actions:
            kind = type(action)
            if kind is DispatchSoon:
                dispatch = True
            elif kind is Place:
                o = self.outcomes[action.key]
                o.attempt += 1
                o.attempts += 1
                o.gpu, o.rank = action.gpu, action.rank
                self._at(self.now + self.timing.dispatch_s, ON_WORKER, (action.key, o.attempt))
                follow.append(ev.Started(action.key, now))
            elif kind is Record:
                self._final(action.row)
            elif kind is Release:
                self._take_back(action.key)
                follow += (ev.Released(action.key, now), ev.Ready(action.key, now))
            elif kind is Retry:
                self.outcomes[action.key].attempt += 1
                follow.append(ev.Ready(action.key, now))
            elif kind is Fail:
                o = self.outcomes[action.key]
                o.error = o.error or repr(action.error)
        for event in follow:
            self._feed(event)
        if dispatch and not self._dispatch_pending:
            self._dispatch_pending = True
            self._at(self.now, DISPATCH, None)

    def _take_back(self, key: str) -> None:
        o = self.outcomes[key]
        o.attempt += 1
        if o.gpu is not None:
            gpu = self.gpus[o.gpu]
            if gpu.cancel(key, self.now):
                self._start_kernel(gpu)
            self._next_on_worker(gpu)

    def _final(self, row: dict) -> None:
        key = row["key"]
        o = self.outcomes.get(key)
        if o is None or o.status != "pending":
            return
        if row["status"] != "completed":
            self._take_back(key)
            o.error = o.error or row.get("error")
        o.status = row["status"]
        o.done = self.now + self.timing.notify_s
        self._open -= 1
        for child in self.children.get(key, ()):
            c = self.outcomes[child]
            if c.status != "pending" or child not in self.core.tasks:
                continue
            if o.status == "completed":
                c.waiting_deps -= 1
                if c.waiting_deps == 0:
                    self._feed(ev.Ready(child, EPOCH + self.now, inputs=self._inputs(c.task)))
            else:
                self._dependency_failed(c, key)

    def _dependency_failed(self, o: Outcome, dep: str) -> None:
        """As Dask does: the task errs without running; its client lets it go."""
        o.error = f"dependency {dep} did not complete"
        now = EPOCH + self.now
        self._feed(ev.Erred(o.task.id, now, o.error))
        self._feed(ev.Forgotten(o.task.id, now))


FINAL_BAD = ("failed", "timed_out", "cancelled", "rejected")


def _executing(gpu: ModelGpu) -> int:
    """Tasks holding a thread of ``gpu``'s worker: on the device or waiting for it."""
    return len(gpu.waiting) + (gpu.running is not None)


def _zero() -> float:
    return 0.0


def replay(config: AltlasConfig, lines: Sequence[TraceLine], strategy: str | None = None, seed: int = 0,
           timing: Timing | None = None) -> ReplayResult:  # fmt: skip
    """Replay ``lines`` on ``config``'s modelled pool with ``strategy`` (default: the config's); ``timing``
    defaults to the config's ``simulation.latency``."""
    return Replay(config, lines, strategy=strategy, seed=seed, timing=timing).run()

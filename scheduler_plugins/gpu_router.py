"""The GPU router: a Dask ``SchedulerPlugin`` that turns scheduler hooks into events for the scheduling core
(:mod:`altlas_dask.scheduling`) and the core's actions into Dask calls (:mod:`scheduler_plugins.dask_internals`).

A task is a GPU task when it carries a ``gpu_options`` annotation (what
:class:`altlas_dask.Client` sends; ``dask.annotate(gpu_options={...})`` works
too) or a ``GPU`` resource restriction. Every policy (placement, holding,
priorities, quotas, fair share, retries, timeouts, health, drain) is the core's;
this module only translates.

Load it the Dask way: ``Scheduler(plugins=[GpuRouter(config)])`` (what
:func:`altlas_dask.start_cluster` does), ``client.register_plugin(GpuRouter())``,
or ``dask scheduler --preload scheduler_plugins.gpu_router``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import click
from distributed import SchedulerPlugin
from distributed.scheduler import Scheduler, TaskState
from tornado.ioloop import PeriodicCallback

from altlas_dask.accounting.store import AccountingStore
from altlas_dask.config import AltlasConfig, load_config
from altlas_dask.errors import IdentityError
from altlas_dask.gpus.state import GpuState
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import Action, Fail, Hold, KeepError, Place, Record, Release, Retry, Usage
from altlas_dask.scheduling.core import SchedulingCore
from altlas_dask.scheduling.quotas import utc_day
from altlas_dask.scheduling.strategies import Decision
from altlas_dask.scheduling.view import CoreView
from altlas_dask.worker.binding import fatal_preload
from scheduler_plugins import dask_internals as dx
from scheduler_plugins.dashboard import PLUGIN_NAME, register_page
from scheduler_plugins.gate import install_scheduler_gate
from scheduler_plugins.identity import Identities, guard_force_cancel
from scheduler_plugins.metrics import LabelPolicy, RouterMetrics, publish, unpublish
from scheduler_plugins.router_api import handlers
from scheduler_plugins.task_feed import install as install_task_feed

logger = logging.getLogger(__name__)
register_page()  # the dashboard's "GPUs" page (/altlas-gpus): before any scheduler here starts its HTTP server


def compute_seconds(startstops: Any) -> float:
    """Seconds of compute in a transition's ``startstops``."""
    return sum(s["stop"] - s["start"] for s in startstops or () if s.get("action") == "compute")


class GpuRouter(SchedulerPlugin):
    """Dask hooks -> core events; core actions -> Dask calls. See the module docstring."""

    name = PLUGIN_NAME

    def __init__(self, config: AltlasConfig | None = None) -> None:
        self.config = config or load_config()
        self.metrics = RouterMetrics()
        self.core = SchedulingCore.from_config(self.config, on_decision=self._observe_decision)
        self.labels = LabelPolicy(self.config, self.core.book.overrides)  # bounded Prometheus label values
        self.view = CoreView(self.core)
        self.identities = Identities(self.config.security)  # who each client is (security.identity)
        self.store: AccountingStore | None = None
        self.scheduler: Scheduler | None = None
        self._reports: dict[str, Any] = {}  # worker -> the last heartbeat payload passed to the core
        self._heard: set[str] = set()  # workers whose heartbeat came since the last poll
        self._pending_fail: dict[str, BaseException] = {}  # Fail actions Dask could not apply yet
        self._in_update_graph = False
        self._tick_pending = False
        self._poller: PeriodicCallback | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, scheduler: Scheduler) -> None:
        self._attach(scheduler)

    def _attach(self, scheduler: Scheduler) -> None:
        """Idempotent set-up, so ``Scheduler.add_plugin`` (which skips ``start``) works too."""
        if self.scheduler is scheduler:
            return
        self.scheduler = scheduler
        self._open_store()
        api = handlers(self)
        dx.add_rpc_handlers(scheduler, api)
        install_scheduler_gate(scheduler, self.identities, self.view.is_admin, api)
        guard_force_cancel(scheduler, self.identities, self.view.is_admin)
        dx.intercept_task_erred(scheduler, self._before_task_erred)
        dx.on_heartbeat(scheduler, self._heard.add)
        install_task_feed(scheduler, self.view)  # pushes task records to the gateway (Dask's event topics)
        for address in scheduler.workers:
            self.add_worker(scheduler, address)
        interval_ms = self.config.gpu.workload.queue_processing_interval * 1000
        self._poller = PeriodicCallback(self._poll, interval_ms)
        self._poller.start()
        publish(self)

    def _open_store(self) -> None:
        acc = self.config.accounting
        self.store = AccountingStore(acc.database, acc.flush_interval)
        book = self.core.book
        for user, limits in self.store.overrides().items():
            book.overrides[user] = {**book.overrides.get(user, {}), **limits}
        self.core.now = time.time()
        today = utc_day(self.core.now)
        for user, (tasks, gpu_seconds) in self.store.usage_on(today).items():
            book.restore(user, today, tasks, gpu_seconds)
        logger.info("accounting database %s: restored usage of %d user(s)", acc.database, len(book.usage))

    async def close(self) -> None:
        unpublish(self)
        if self._poller is not None:
            self._poller.stop()
        if self.store is not None:
            self.store.close()

    def restart(self, scheduler: Scheduler) -> None:
        self._apply(self.core.reset(time.time()))

    # -- events in -------------------------------------------------------------------------------------
    def handle(self, event: ev.Event) -> None:
        """Give the core one event and carry out what it answers."""
        self._apply(self.core.handle(event))

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self._attach(scheduler)
        reported = dx.gpu_report(scheduler, worker)
        if reported is not None:  # a GPU worker
            self._reports[worker] = reported
            self.handle(ev.GpuJoined(worker, GpuState.from_dict(reported), time.time()))

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        if self._reports.pop(worker, None) is not None:
            self.handle(ev.GpuLeft(worker, time.time()))

    def _poll(self) -> None:
        """The heartbeats that came since the last poll to the core, then a tick (deadlines, health, held work)."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        now = time.time()
        heard = list(self._heard)  # also workers whose first report came after they registered
        self._heard.clear()
        for worker in heard:
            reported = dx.gpu_report(scheduler, worker)
            if reported is not None and reported is not self._reports.get(worker):
                joined = worker in self._reports
                self._reports[worker] = reported
                state = GpuState.from_dict(reported)
                self.handle(ev.GpuReported(worker, state, now) if joined else ev.GpuJoined(worker, state, now))
        self._tick()

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        self.identities.forget(client)

    def update_graph(
        self, scheduler: Scheduler, *, tasks: Iterable = (), client: str | None = None, **kwargs: Any
    ) -> None:
        self._attach(scheduler)
        now = time.time()
        identities = self.identities
        verified = identities.client(scheduler, client) if identities.required else None
        self._in_update_graph = True  # placements pin (Dask's own transitions follow this hook)
        try:
            for key in tasks:
                ts = scheduler.tasks.get(key)
                # With identity on every task is routed: GPU workers run only work the router placed.
                if ts is None or not (identities.required or dx.is_gpu_task(ts)):
                    continue
                try:
                    options = identities.task_options(dx.gpu_options(ts), verified, client)
                except IdentityError as exc:
                    self._refuse(ts, exc)
                    continue
                if identities.required:
                    dx.set_gpu_options(ts, options)
                ready = dx.dependencies_done(ts)
                inputs = dx.input_locations(ts) if ready and ts.dependencies else None
                self.handle(ev.Submitted(str(key), options, now, ready=ready, inputs=inputs))
                task = self.core.tasks.get(key)
                if task is not None and task.placed_at is None:  # a placed one has its rank as priority
                    dx.set_priority(ts, task.request.priority)
        finally:
            self._in_update_graph = False
        if self._pending_fail:
            self._schedule_tick()

    def _refuse(self, ts: TaskState, error: IdentityError) -> None:
        """A task that may not run as the user it names: it never reaches the core; it errs after this update."""
        logger.warning("refused task %s: %s", ts.key, error)
        dx.hold(ts)
        self._pending_fail[ts.key] = error

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        core = self.core
        if key not in core.tasks:
            if finish != "no-worker" or key in self._pending_fail or self.scheduler is None:
                return
            ts = self.scheduler.tasks.get(key)
            if ts is None or not (self.identities.required or dx.is_gpu_task(ts)):
                return
            # A finished GPU task being recomputed (its result was on a worker that died), or one
            # submitted before the router started: track it again, without charging its user twice.
            self.handle(ev.Submitted(str(key), dx.gpu_options(ts), time.time(), ready=True, charge=False))
            return
        # (most frequent first; released -> waiting, the first transition of every task, is none of these)
        if finish == "processing":
            self.handle(ev.Started(key, time.time()))
        elif start == "processing" and finish == "memory":
            worker, seconds = kwargs.get("worker"), compute_seconds(kwargs.get("startstops"))
            self.handle(ev.Finished(key, time.time(), worker, seconds, *dx.measured(kwargs)))
        elif finish == "no-worker":
            ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
            inputs = dx.input_locations(ts) if ts is not None and ts.dependencies else None
            self.handle(ev.Ready(key, time.time(), inputs=inputs))
        elif start == "processing" and finish == "released":
            self.handle(ev.Released(key, time.time()))
        elif finish == "forgotten":
            self.handle(ev.Forgotten(key, time.time()))
        elif finish == "erred":  # not from a worker (those come through _before_task_erred): a dependency failed
            self.handle(ev.Erred(key, time.time(), str(kwargs.get("exception_text") or "a dependency failed")))

    def _before_task_erred(self, ts: TaskState, msg: dict[str, Any]) -> None:
        """A worker reported an error: the core decides between a retry on another GPU and failing."""
        if ts.key not in self.core.tasks:
            return
        event = ev.Erred(
            ts.key,
            time.time(),
            str(msg.get("exception_text") or ""),
            msg.get("worker"),
            compute_seconds(msg.get("startstops")),
        )
        actions = self.core.handle(event)
        for action in actions:
            if isinstance(action, Retry):
                dx.retry_elsewhere(ts)
                self.metrics.retries.labels(str(self.core.tasks[ts.key].attempts[-1]["gpu"])).inc()
            elif isinstance(action, KeepError):
                dx.give_up(ts, msg, action.replacement)
        self._apply(actions)

    def cancel(self, key: str, by: str, reason: str = "") -> None:
        self.handle(ev.Cancel(key, time.time(), by, reason))

    def set_draining(self, gpu: int, draining: bool, reason: str) -> dict[str, Any]:
        known = self.view.known_gpus()
        if gpu not in known:
            return {"error": f"unknown GPU {gpu}; known GPUs: {sorted(known)}", "code": 404}
        self.handle(ev.Drain(gpu, time.time(), reason) if draining else ev.Enable(gpu, time.time()))
        running = next((g.active_requests for g in self.view.gpus() if g.id == gpu), 0)
        return {"gpu": gpu, "draining": draining, "running": running}

    # -- actions out -----------------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        if not actions:
            if self.core.wants_dispatch:
                self._schedule_tick()
            return
        scheduler = self.scheduler
        tasks = scheduler.tasks if scheduler is not None else {}
        placements: list[tuple[TaskState, str, int, tuple[int, int]]] = []
        releases: list[str] = []
        for action in actions:
            kind = type(action)  # (the action classes are final: no subclass of them exists)
            if kind is Record:
                self._record(action.row)
            elif kind is Usage:
                if action.limit:
                    self.metrics.quota_rejections.labels(self.labels.user(action.user), action.limit).inc()
                self.store.add_usage(
                    action.user,
                    action.day,
                    tasks=action.tasks,
                    gpu_seconds=action.gpu_seconds,
                    rejected=action.rejected,
                )
            elif kind is Place:
                ts = tasks.get(action.key)
                if ts is None:
                    continue
                if self._in_update_graph:
                    dx.pin(ts, action.worker, action.memory_mb, action.rank)
                else:
                    placements.append((ts, action.worker, action.memory_mb, action.rank))
                self._observe_placement(action.key)
            elif kind is Hold:
                if (ts := tasks.get(action.key)) is not None:
                    dx.hold(ts)
            elif kind is Fail:
                if self._in_update_graph and (ts := tasks.get(action.key)) is not None:
                    dx.hold(ts)  # it must not start; it errs right after this graph update
                self._pending_fail[action.key] = action.error
            elif kind is Release:
                releases.append(action.key)
        if placements or releases or (self._pending_fail and not self._in_update_graph):
            stimulus = f"altlas-{time.time()}"  # (only built when it is used: most actions need no transition)
            if placements:
                dx.place(scheduler, placements, stimulus)
            if releases:
                dx.release_from(scheduler, releases, stimulus)
            if self._pending_fail and not self._in_update_graph:
                self._fail_pending(stimulus)
        if self.core.wants_dispatch:
            self._schedule_tick()

    def _fail_pending(self, stimulus: str) -> None:
        scheduler = self.scheduler
        for key, error in list(self._pending_fail.items()):
            ts = scheduler.tasks.get(key) if scheduler is not None else None
            if ts is None or dx.fail(scheduler, ts, error, stimulus):
                self._pending_fail.pop(key, None)

    def _record(self, row: dict[str, Any]) -> None:
        self.store.record_task(row)
        gpu = "none" if row["gpu"] is None else str(row["gpu"])
        strategy = self.labels.strategy(row["strategy"] or "none")
        user, model = self.labels.user(row["user"]), self.labels.model(row["task_type"])
        metrics = self.metrics
        metrics.child(metrics.tasks, row["status"], user, model, strategy, gpu).inc()
        if row["status"] == "completed":
            metrics.child(metrics.duration, gpu, model).observe(row["gpu_seconds"])

    def _observe_decision(self, decision: Decision, seconds: float) -> None:
        metrics = self.metrics
        metrics.decision_seconds.observe(seconds)
        metrics.child(metrics.decisions, self.labels.strategy(decision.strategy), decision.outcome).inc()

    def _observe_placement(self, key: str) -> None:
        task = self.core.tasks.get(key)
        if task is not None and task.decision is not None and task.placed_at is not None:
            labels = self.labels.user(task.user), self.labels.model(task.request.task_type)
            self.metrics.child(self.metrics.queue_wait, *labels).observe(task.placed_at - task.submitted)

    def _schedule_tick(self) -> None:
        if not self._tick_pending and self.scheduler is not None:
            self._tick_pending = True
            self.scheduler.loop.add_callback(self._tick)

    def _tick(self) -> None:
        self._tick_pending = False
        self.handle(ev.Tick(time.time()))
        if self._pending_fail:
            self._fail_pending(f"altlas-fail-{time.time()}")


@click.command()
@click.option("--altlas-config", type=click.Path(), default=None, help="cluster.yaml (default $ALTLAS_CONFIG).")
async def dask_setup(scheduler: Scheduler, altlas_config: str | None) -> None:
    """``dask scheduler --preload scheduler_plugins.gpu_router [--altlas-config cluster.yaml]``."""
    # ``idempotent`` is keyword-only with no default in distributed 2026.x: without it this raised TypeError,
    # which PreloadManager.start only logs, leaving a scheduler with no router (and no altlas_* handlers).
    # tests/test_multinode.py starts `dask scheduler --preload scheduler_plugins.gpu_router` and guards this.
    try:
        router = GpuRouter(load_config(altlas_config))
        await scheduler.register_scheduler_plugin(router, name=PLUGIN_NAME, idempotent=True)
    except Exception as exc:
        fatal_preload("GPU router set-up failed", exc)

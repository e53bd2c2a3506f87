"""The GPU router: a Dask ``SchedulerPlugin`` that turns scheduler hooks into events for the scheduling core
(:mod:`altlas_dask.scheduling`) and the core's actions into Dask calls (:mod:`scheduler_plugins.dask_internals`).

A task is a GPU task when it carries a ``gpu_options`` annotation (what :class:`altlas_dask.Client` sends;
``dask.annotate(gpu_options={...})`` works too) or a ``GPU`` resource restriction. Every policy (placement, holding,
priorities, quotas, fair share, retries, timeouts, health, drain) is the core's; this module only translates: it
reads the core through its :class:`CoreView` and changes it only with events.

Load it the Dask way: ``Scheduler(plugins=[GpuRouter(config)])`` (what :func:`altlas_dask.start_cluster` does),
``client.register_plugin(GpuRouter())``, or ``dask scheduler --preload scheduler_plugins.gpu_router``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import click
from distributed import SchedulerPlugin
from distributed.metrics import monotonic
from distributed.metrics import time as clock
from distributed.scheduler import Scheduler, TaskState
from tornado.ioloop import PeriodicCallback

from altlas_dask.accounting.store import AccountingStore
from altlas_dask.config import AltlasConfig, load_config
from altlas_dask.errors import IdentityError
from altlas_dask.gpus.state import GpuState
from altlas_dask.scheduling import actions as act
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.core import SchedulingCore
from altlas_dask.scheduling.quotas import utc_day
from altlas_dask.scheduling.view import CoreView
from altlas_dask.worker.binding import fatal_preload
from scheduler_plugins import dask_internals as dx
from scheduler_plugins.dashboard import PLUGIN_NAME, register_page
from scheduler_plugins.gate import install_scheduler_gate
from scheduler_plugins.identity import Identities, guard_force_cancel
from scheduler_plugins.metrics import OBSERVED, LabelPolicy, RouterMetrics, publish, unpublish
from scheduler_plugins.router_api import handlers
from scheduler_plugins.task_feed import install as install_task_feed

logger = logging.getLogger(__name__)
register_page()  # the dashboard's "GPUs" page (/altlas-gpus): before any scheduler here starts its HTTP server


class GpuRouter(SchedulerPlugin):
    """Dask hooks -> core events; core actions -> Dask calls. See the module docstring."""

    name = PLUGIN_NAME

    def __init__(self, config: AltlasConfig | None = None) -> None:
        self.config = config or load_config()
        self.core = SchedulingCore.from_config(self.config, timer=monotonic)  # the scheduler's own clocks
        self.view = CoreView(self.core)
        self.metrics = RouterMetrics(LabelPolicy(self.config, self.view.overridden_users()))
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
        """The accounting database; its quota overrides and today's usage go to the core."""
        acc = self.config.accounting
        self.store = AccountingStore(acc.database, acc.flush_interval)
        now = clock()
        usage = self.store.usage_on(utc_day(now))
        self.handle(ev.Restored(now, utc_day(now), self.store.overrides(), usage))
        logger.info("accounting database %s: restored usage of %d user(s)", acc.database, len(usage))

    async def close(self) -> None:
        unpublish(self)
        if self._poller is not None:
            self._poller.stop()
        if self.store is not None:
            self.store.close()

    def restart(self, scheduler: Scheduler) -> None:
        self._apply(self.core.reset(clock()))

    # -- events in -------------------------------------------------------------------------------------
    def handle(self, event: ev.Event) -> None:
        """Give the core one event and carry out what it answers."""
        self._apply(self.core.handle(event))

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self._attach(scheduler)
        reported = dx.gpu_report(scheduler, worker)
        if reported is not None:  # a GPU worker
            self._reports[worker] = reported
            self.handle(ev.GpuJoined(worker, GpuState.from_dict(reported), clock()))

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        if self._reports.pop(worker, None) is not None:
            self.handle(ev.GpuLeft(worker, clock()))

    def _poll(self) -> None:
        """The heartbeats that came since the last poll to the core, then a tick (deadlines, health, held work)."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        now = clock()
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

    def _routed(self, key: Any) -> TaskState | None:
        """The task if routed: every task with identity on (GPU workers run only what it placed), else GPU tasks."""
        ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
        return ts if ts is not None and (self.identities.required or dx.is_gpu_task(ts)) else None

    def update_graph(
        self, scheduler: Scheduler, *, tasks: Iterable = (), client: str | None = None, **kwargs: Any
    ) -> None:
        self._attach(scheduler)
        now = clock()
        identities = self.identities
        verified = identities.client(scheduler, client) if identities.required else None
        self._in_update_graph = True  # placements pin (Dask's own transitions follow this hook)
        try:
            for key in tasks:
                if (ts := self._routed(key)) is None:
                    continue
                try:
                    options = identities.task_options(dx.gpu_options(ts), verified, client)
                except IdentityError as exc:
                    self._refuse(ts, exc)
                    continue
                if identities.required:
                    dx.set_gpu_options(ts, options)
                ready = dx.dependencies_done(ts)
                inputs = self._inputs(ts) if ready else None
                self.handle(ev.Submitted(str(key), options, now, ready=ready, inputs=inputs))
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
        if not self.view.tracks(key):  # only one may concern the core: a routed task it does not know is ready
            if finish == "no-worker" and key not in self._pending_fail and (ts := self._routed(key)) is not None:
                self.handle(ev.Ready(str(key), clock(), self._inputs(ts), dx.gpu_options(ts)))
            return
        # (most frequent first; released -> waiting, the first transition of every task, is none of these)
        if finish == "processing":
            self.handle(ev.Started(key, clock()))
        elif start == "processing" and finish == "memory":
            worker, seconds = kwargs.get("worker"), dx.compute_seconds(kwargs.get("startstops"))
            self.handle(ev.Finished(key, clock(), worker, seconds, *dx.measured(kwargs)))
        elif finish == "no-worker":
            ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
            self.handle(ev.Ready(key, clock(), self._inputs(ts)))
        elif start == "processing" and finish == "released":
            self.handle(ev.Released(key, clock()))
        elif finish == "forgotten":
            self.handle(ev.Forgotten(key, clock()))
        elif finish == "erred":  # not from a worker (those come through _before_task_erred): a dependency failed
            self.handle(ev.Erred(key, clock(), str(kwargs.get("exception_text") or "a dependency failed")))

    @staticmethod
    def _inputs(ts: TaskState | None) -> dict[str, int] | None:
        return dx.input_locations(ts) if ts is not None and ts.dependencies else None

    def _before_task_erred(self, ts: TaskState, msg: dict[str, Any]) -> None:
        """A worker reported an error: the core decides between a retry on another GPU and failing."""
        if not self.view.tracks(ts.key):
            return
        text, seconds = str(msg.get("exception_text") or ""), dx.compute_seconds(msg.get("startstops"))
        actions = self.core.handle(ev.Erred(ts.key, clock(), text, msg.get("worker"), seconds))
        for action in actions:
            if isinstance(action, act.Retry):
                dx.retry_elsewhere(ts)
            elif isinstance(action, act.KeepError):
                dx.give_up(ts, msg, action.replacement)
        self._apply(actions)

    # -- actions out -----------------------------------------------------------------------------------
    def _apply(self, actions: list[act.Action]) -> None:
        scheduler = self.scheduler
        tasks = scheduler.tasks if scheduler is not None else {}
        placements: list[tuple[TaskState, str, int, tuple[int, int]]] = []
        releases: list[str] = []
        fails: list[str] = []
        for action in actions:
            kind = type(action)  # (the action classes are final: no subclass of them exists)
            if kind in OBSERVED:
                self.metrics.observe(action)
            if kind is act.Record:
                self.store.record_task(action.row)
            elif kind is act.Usage:
                a = action
                self.store.add_usage(a.user, a.day, tasks=a.tasks, gpu_seconds=a.gpu_seconds, rejected=a.rejected)
            elif kind is act.Place and (ts := tasks.get(action.key)) is not None:
                if self._in_update_graph:
                    dx.pin(ts, action.worker, action.memory_mb, action.rank)
                else:
                    placements.append((ts, action.worker, action.memory_mb, action.rank))
            elif kind is act.Hold and (ts := tasks.get(action.key)) is not None:
                dx.hold(ts)
                if self._in_update_graph:  # Dask orders its waiting tasks by priority (a placed one: by rank)
                    dx.set_priority(ts, action.priority)
            elif kind is act.Fail:
                if self._in_update_graph and (ts := tasks.get(action.key)) is not None:
                    dx.hold(ts)  # it must not start; it errs right after this graph update
                self._pending_fail[action.key] = action.error
                fails.append(action.key)
            elif kind is act.Release:
                releases.append(action.key)
            elif kind is act.QuotaChanged:
                self.store.set_override(action.user, action.limits)
            elif kind is act.DispatchSoon:
                self._schedule_tick()
        if self._in_update_graph:
            fails.clear()  # they err right after this graph update (the tick)
        if placements or releases or fails:
            stimulus = f"altlas-{clock()}"  # (only built when it is used: most actions need no transition)
            if placements:
                dx.place(scheduler, placements, stimulus)
            if releases:
                dx.release_from(scheduler, releases, stimulus)
            if fails:  # only this event's: a graph's refused tasks may not have reached no-worker yet
                self._fail_pending(stimulus, fails)

    def _fail_pending(self, stimulus: str, keys: list[str] | None = None) -> None:
        scheduler = self.scheduler
        for key in list(self._pending_fail) if keys is None else keys:
            ts = scheduler.tasks.get(key) if scheduler is not None else None
            if ts is None or dx.fail(scheduler, ts, self._pending_fail[key], stimulus):
                self._pending_fail.pop(key, None)

    def _schedule_tick(self) -> None:
        if not self._tick_pending and self.scheduler is not None:
            self._tick_pending = True
            self.scheduler.loop.add_callback(self._tick)

    def _tick(self) -> None:
        self._tick_pending = False
        self.handle(ev.Tick(clock()))
        if self._pending_fail:
            self._fail_pending(f"altlas-fail-{clock()}")


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

"""The scheduling core: every placement policy of the router, with no Dask and no I/O.

``core.handle(event)`` takes one event (a task submitted, ready, started, finished,
erred, released or forgotten; a GPU joined, left, reported, drained or enabled; a
cancel; the accounting store's state; an admin's quota change; a tick of the clock)
and returns the actions the Dask adapter must carry out (place on a GPU, hold, fail
with an error, release from a GPU, retry or keep an error), the final records and
usage to store, the decisions taken (for metrics), and whether a dispatch pass is due.
Time comes in with the events and the decision timer is injected; nothing here reads
a clock, so the same code runs in the scheduler, in tests and in a simulator.

This module is the facade: the work is done by three parts sharing one
:class:`~altlas_dask.scheduling.state.CoreState`: :class:`~altlas_dask.scheduling.admission.Admission`
(tasks in and out, quotas, the fair queue), :class:`~altlas_dask.scheduling.dispatch.Dispatch`
(decisions, placements, each attempt on a GPU) and :class:`~altlas_dask.scheduling.gpu_health.GpuHealth`
(GPUs joining, reporting, leaving, drained; the health check).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from typing import Any

from altlas_dask.config import AltlasConfig, Quotas, RoutingPolicy
from altlas_dask.protocol import TaskStatus
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import DISPATCH_SOON, Action
from altlas_dask.scheduling.admission import Admission
from altlas_dask.scheduling.dispatch import Dispatch
from altlas_dask.scheduling.gpu_health import GpuHealth
from altlas_dask.scheduling.state import CoreState

HELD = (TaskStatus.QUEUED, TaskStatus.RETRYING)


class SchedulingCore:
    """One event in, actions out. The state's fields read through it (``core.tasks``, ``core.gpus``, ...: one
    read-only property each); only the parts write them (a bench that must, writes ``core.state.x``)."""

    __slots__ = ("admission", "dispatch", "event_handlers", "health", "state")

    def __init__(
        self,
        policy: RoutingPolicy,
        quotas: Quotas,
        *,
        timer: Callable[[], float],
        seed: int = 0,
        recent_size: int = 1000,
    ) -> None:
        """``timer``: the clock a decision's duration is measured on (the adapter passes the scheduler's; tests and
        the simulator a fake). Nothing else here reads a clock: an event's time is its ``now``."""
        self.state = state = CoreState.new(policy, quotas, timer, seed, recent_size)
        self.dispatch = dispatch = Dispatch(state)
        self.admission = admission = Admission(state, dispatch)
        self.health = health = GpuHealth(state, dispatch)
        dispatch.admission = admission
        self.event_handlers: dict[type, Callable[[Any, list[Action]], None]] = {
            ev.Submitted: admission.submitted,
            ev.Ready: admission.ready,
            ev.Started: dispatch.started,
            ev.Finished: dispatch.finished,
            ev.Erred: dispatch.erred,
            ev.Released: admission.released,
            ev.Forgotten: admission.forgotten,
            ev.Cancel: admission.cancel,
            ev.GpuJoined: health.joined,
            ev.GpuLeft: health.left,
            ev.GpuReported: health.reported,
            ev.Drain: health.drain,
            ev.Enable: health.enable,
            ev.Restored: admission.restored,
            ev.QuotaSet: admission.quota_set,
            ev.Tick: self._tick,
        }

    @classmethod
    def from_config(cls, config: AltlasConfig, *, timer: Callable[[], float], **kwargs: Any) -> SchedulingCore:
        kwargs.setdefault("seed", config.simulation.seed)
        kwargs.setdefault("recent_size", config.accounting.recent_records)
        return cls(config.routing(), config.quotas, timer=timer, **kwargs)

    def handle(self, event: ev.Event) -> list[Action]:
        """Apply one event; return what the adapter must do, in order (then the decisions taken, for metrics,
        and :data:`DISPATCH_SOON` while held work may be placeable)."""
        state = self.state
        state.now = max(state.now, event.now)
        out: list[Action] = []
        self.event_handlers[type(event)](event, out)
        if state.decided:
            out += state.decided
            state.decided.clear()
        if state.wants_dispatch:
            out.append(DISPATCH_SOON)
        return out

    def _tick(self, e: ev.Tick, out: list[Action]) -> None:
        """Time passes: deadlines, waiting admissions, health, then held work."""
        self.admission.expire(out)
        self.admission.admit_waiting()
        self.health.check(out)
        if self.state.wants_dispatch or self.state.queue:
            self.dispatch.run_pass(out)

    def reset(self, now: float) -> list[Action]:
        """The scheduler restarted: every live task is cancelled, and the live state starts over."""
        state = self.state
        state.now = max(state.now, now)
        out: list[Action] = []
        for task in list(state.tasks.values()):
            task.cancelled_by = "a scheduler restart"
            self.admission.finish(task, TaskStatus.CANCELLED, out)
        state.clear_live()
        return out


for _field in fields(CoreState):  # each state field reads through the facade (``core.tasks``), read-only
    setattr(SchedulingCore, _field.name, property(attrgetter(f"state.{_field.name}"), doc=f"``state.{_field.name}``"))

"""GPU health, the core's part that watches the GPUs: they join, report, leave, are drained and enabled; a
periodic check marks silent or hung GPUs unresponsive and takes their work back, and lets a critical GPU try
again after its rest (each GPU's error window is :class:`~altlas_dask.scheduling.health.HealthWindow`)."""

from __future__ import annotations

import logging

from altlas_dask.protocol import TaskStatus
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import Action, Release
from altlas_dask.scheduling.dispatch import ON_GPU, Dispatch
from altlas_dask.scheduling.gpus import GpuSlot
from altlas_dask.scheduling.state import CoreState

logger = logging.getLogger(__name__)

HEALTH_CHECK_EVERY_S = 1.0
Out = list[Action]


class GpuHealth:
    """GPUs in and out, drains, and the health check; work on a failed GPU goes back through ``dispatch``."""

    def __init__(self, state: CoreState, dispatch: Dispatch) -> None:
        self.state, self.dispatch = state, dispatch

    def joined(self, e: ev.GpuJoined, out: Out) -> None:
        s = self.state
        if s.gpus.slot_of(e.worker) is not None:
            self.reported(ev.GpuReported(e.worker, e.state, e.now), out)
            return
        slot = s.gpus.join(e.worker, e.state, s.now)
        if slot.gpu_id != e.state.id:
            logger.info("GPU %s of %s registered as GPU %d", e.state.uuid or e.state.id, e.worker, slot.gpu_id)
        s.wants_dispatch = True

    def left(self, e: ev.GpuLeft, out: Out) -> None:
        slot = self.state.gpus.leave(e.worker)
        if slot is not None:
            log = logger.warning if slot.assigned else logger.info
            log("GPU %d (%s) left; %d task(s) will be placed again", slot.gpu_id, e.worker, len(slot.assigned))

    def reported(self, e: ev.GpuReported, out: Out) -> None:
        s = self.state
        slot = s.gpus.slot_of(e.worker)
        if slot is None:
            self.joined(ev.GpuJoined(e.worker, e.state, e.now), out)
            return
        failed_now = slot.base.status != "error" and e.state.status == "error"
        slot.base, slot.last_report = e.state, s.now
        if slot.unresponsive and (not slot.hung_since or s.now - slot.hung_since >= s.policy.unresponsive_after):
            logger.info("GPU %d reports again; re-admitted", slot.gpu_id)
            slot.unresponsive, slot.hung_since = "", None
        s.gpus.changed(slot)
        if failed_now and slot.assigned:
            logger.warning(
                "GPU %d failed (%s): re-placing its %d task(s)", slot.gpu_id, e.state.name, len(slot.assigned)
            )
            self._take_back(slot, f"GPU {slot.gpu_id} reported a device error", out)
        if s.queue:
            s.wants_dispatch = True

    def _take_back(self, slot: GpuSlot, why: str, out: Out) -> None:
        slot.next_up.clear()  # taken back too: none of them starts there
        for key in list(slot.assigned):
            task = self.state.tasks.get(key)
            if task is not None and task.status in ON_GPU:
                self.dispatch.end_attempt(task, f"{why}; waiting for another GPU")
                self.state.counters["released"] += 1
                out.append(Release(key))

    def drain(self, e: ev.Drain, out: Out) -> None:
        self._set_draining(e.gpu, True, e.reason)

    def enable(self, e: ev.Enable, out: Out) -> None:
        self._set_draining(e.gpu, False, "")

    def _set_draining(self, gpu: int, draining: bool, reason: str) -> None:
        gpus = self.state.gpus
        if gpu in gpus:
            gpus.drain(gpu, draining, reason)
        elif draining:
            gpus.drains[gpu] = reason
        else:
            gpus.drains.pop(gpu, None)
        logger.info("GPU %d %s", gpu, f"draining ({reason})" if draining else "enabled")
        self.state.wants_dispatch = True

    def check(self, out: Out) -> None:
        """At most every ``HEALTH_CHECK_EVERY_S``: recoveries, silent GPUs, hung GPUs."""
        s = self.state
        if s.now - s.last_health_check < HEALTH_CHECK_EVERY_S:
            return
        s.last_health_check = s.now
        for slot in list(s.gpus.slots.values()):
            if slot.health.recover(s.now):
                logger.info(
                    "GPU %d rested %gs after going critical; trying it again",
                    slot.gpu_id,
                    s.policy.health.recovery_seconds,
                )
                s.gpus.changed(slot)
                s.wants_dispatch = True
            if slot.unresponsive:
                continue
            silent = s.now - slot.last_report
            if silent >= s.policy.unresponsive_after:
                why = f"no report for {silent:.0f}s (health_check_interval {s.policy.unresponsive_after:g}s)"
                self._mark_unresponsive(slot, why, out)
            elif (why := self._hung_task(slot)) is not None:
                slot.hung_since = s.now
                self._mark_unresponsive(slot, why, out)

    def _hung_task(self, slot: GpuSlot) -> str | None:
        """Why the GPU looks hung: nothing finished on it for ``hung_task_min_seconds`` and every task running
        there is far past its learned time (one long task beside others that finish is not a hung GPU)."""
        s = self.state
        h = s.policy.health
        if slot.last_busy > s.now - h.hung_task_min_seconds:
            return None
        overdue = []
        for key in slot.assigned:
            if key in slot.next_up:
                continue  # waiting for a slot there, not running
            task = s.tasks.get(key)
            if task is None or task.status != TaskStatus.RUNNING or task.started_at is None:
                return None
            expected = s.estimates.expected(slot.gpu_id, task.request.task_type, task.request.cost)
            running = s.now - task.started_at
            if not expected or running <= max(h.hung_task_min_seconds, h.hung_task_factor * expected * task.sharing):
                return None
            overdue.append(
                f"task {key} has run {running:.0f}s, over {h.hung_task_factor:g}x its expected {expected:.2f}s"
            )
        return "; ".join(overdue) if overdue else None

    def _mark_unresponsive(self, slot: GpuSlot, why: str, out: Out) -> None:
        logger.warning("GPU %d is unresponsive (%s): re-placing its %d task(s)", slot.gpu_id, why, len(slot.assigned))
        slot.unresponsive = why
        self.state.gpus.changed(slot)
        self._take_back(slot, f"GPU {slot.gpu_id} unresponsive: {why}", out)
        self.state.wants_dispatch = True

"""Issue 24: a decision's work, a dispatch pass's work and the core's memory per task do not grow with the pool
or the backlog. Counted (GPUs a decision checks, queue entries a pass takes) and measured with tracemalloc,
never timed."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections import Counter, deque

import pytest
from conftest import local_config
from distributed import Scheduler, Worker

from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling import strategies
from altlas_dask.scheduling.actions import Place
from altlas_dask.scheduling.candidates import FULL_SCAN_AT_MOST, LOOK_AT
from altlas_dask.scheduling.fairqueue import FairQueue
from altlas_dask.worker.binding import METRIC_NAME, GpuWorkerPlugin
from scheduler_plugins import dask_internals as dx
from scheduler_plugins.gpu_router import GpuRouter
from tests.core_helpers import gpu, make_core

NOW = 1_000.0
SIZES = (512, 4096, 20480)  # 20 GB fits only the 80 GB model under memory_threshold
ONE_SLOT = {"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 1}}}  # a pool fills with one task per GPU


class Counted:
    """A core on ``n`` GPUs (half 80 GB, half 16 GB), every slot taken, ``backlog`` tasks queued; counts, per
    decision, the GPUs checked (calls of strategies.rejection), and per dispatch pass, the queue entries taken."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int, backlog: int, **config) -> None:
        self.core = make_core(config)
        self.running: deque[str] = deque()
        self.checked = 0
        self.taken = 0
        real_rejection, real_in_order = strategies.rejection, FairQueue.in_order

        def rejection(*args, **kwargs):
            self.checked += 1
            return real_rejection(*args, **kwargs)

        def in_order(queue, *args, **kwargs):
            for entry in real_in_order(queue, *args, **kwargs):
                self.taken += 1
                yield entry

        monkeypatch.setattr(strategies, "rejection", rejection)
        monkeypatch.setattr(FairQueue, "in_order", in_order)
        for i in range(n):
            self.core.handle(ev.GpuJoined(f"tcp://gpu-{i}", gpu(i, memory_mb=81920 if i % 2 else 16384), NOW))
        self.submitted = 0
        while len(self.core.queue) < backlog:
            self.submit()

    def submit(self) -> None:
        i = self.submitted
        self.submitted += 1
        options = {"user": f"u{i % 8}", "priority": 1 + i % 3, "memory_mb": SIZES[i % 3]}
        self.feed(ev.Submitted(f"t{i}", options, NOW))

    def feed(self, event) -> list:
        actions = self.core.handle(event)
        for a in actions:
            if isinstance(a, Place):
                self.running.append(a.key)
                self.core.handle(ev.Started(a.key, NOW))
        return actions

    def steady(self, rounds: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Per decision: GPUs checked; per pass: (entries taken, tasks placed). The backlog is kept level."""
        per_decision, per_pass = [], []
        real_decide = self.core.dispatch.decide

        def decide(task, kept=None):
            before = self.checked
            decision = real_decide(task, kept)
            per_decision.append(self.checked - before)
            return decision

        self.core.dispatch.decide = decide
        backlog = len(self.core.queue)
        for _ in range(rounds):
            key = self.running.popleft()
            task = self.core.tasks[key]
            self.feed(ev.Finished(key, NOW, f"tcp://gpu-{task.gpu}", 0.5))
            self.taken = 0
            placed = sum(isinstance(a, Place) for a in self.feed(ev.Tick(NOW)))
            per_pass.append((self.taken, placed))
            while len(self.core.queue) < backlog:
                self.submit()
        return per_decision, per_pass


@pytest.mark.parametrize("backlog", [100, 3_000])
def test_a_decision_checks_a_bounded_number_of_gpus_whatever_the_pool_and_backlog(monkeypatch, backlog):
    worst = {}
    for n in (256, 4096):
        per_decision, per_pass = Counted(monkeypatch, n, backlog, **ONE_SLOT).steady(30)
        assert per_decision, "no decision was made"
        worst[n] = max(per_decision)
        # a pass takes at most one entry per wait shape that must wait (3 sizes here) beyond those it places
        assert all(taken <= placed + len(SIZES) for taken, placed in per_pass), per_pass
    assert all(w <= LOOK_AT for w in worst.values()), worst
    # a full scan checks every GPU: 256 GPUs would have cost 256 checks per decision
    assert worst[4096] <= worst[256], worst


def test_a_small_pool_is_still_looked_at_whole(monkeypatch):
    per_decision, _ = Counted(monkeypatch, FULL_SCAN_AT_MOST, 100).steady(20)
    assert max(per_decision) == FULL_SCAN_AT_MOST


def test_a_sampled_placement_says_so_and_picks_among_the_least_loaded(monkeypatch):
    c = Counted(monkeypatch, 256, 0)
    actions = c.feed(ev.Submitted("lone", {"memory_mb": 512}, NOW))
    # every GPU is idle: the choice is among LOOK_AT of them
    place = next(a for a in actions if isinstance(a, Place))
    decision = c.core.tasks["lone"].decision
    assert decision.gpu == place.gpu and len(decision.scores) == LOOK_AT
    assert f"(sampled {LOOK_AT} of 256 GPUs with room, emptiest first)" in decision.reason


def test_the_index_finds_the_only_gpus_a_large_task_fits_and_says_when_it_never_fits(monkeypatch):
    c = Counted(monkeypatch, 256, 0)
    c.feed(ev.Submitted("big", {"memory_mb": 60_000}, NOW))
    assert c.core.gpus.slots[c.core.tasks["big"].gpu].base.memory_total_mb == 81920
    actions = c.feed(ev.Submitted("huge", {"memory_mb": 100_000}, NOW))
    assert any(type(a).__name__ == "Fail" for a in actions)
    assert "no GPU can ever take this task" in c.core.recent["huge"].decision.reason


def test_round_robin_on_a_large_pool_goes_in_turn(monkeypatch):
    c = Counted(monkeypatch, 128, 0)
    for key in ("a", "b", "c"):
        c.feed(ev.Submitted(key, {"strategy": "round_robin"}, NOW))
    assert [c.core.tasks[k].gpu for k in ("a", "b", "c")] == [0, 1, 2]


def _bytes_per(n: int, build) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        build()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return grown / n


def test_a_queued_task_costs_at_most_2_kb_and_a_finished_record_1_kb(monkeypatch):
    n = 2_000
    c = Counted(monkeypatch, 128, 100, **ONE_SLOT)  # every slot taken: what is submitted now waits in the queue
    keys = [f"q{i}" for i in range(n)]
    options = [{"user": f"u{i % 8}", "priority": 1 + i % 3, "memory_mb": SIZES[i % 3]} for i in range(n)]
    events = [ev.Submitted(k, o, NOW) for k, o in zip(keys, options, strict=True)]

    def queue() -> None:
        for e in events:
            c.core.handle(e)

    queued = _bytes_per(n, queue)
    assert len(c.core.queue) >= n
    assert queued <= 2048, f"{queued:.0f} bytes per queued task"

    done = make_core({"accounting": {"recent_records": n}})
    for i in range(128):
        done.handle(ev.GpuJoined(f"tcp://gpu-{i}", gpu(i, memory_mb=81920 if i % 2 else 16384), NOW))
    warm = [ev.Submitted(f"w{i}", o, NOW) for i, o in enumerate(options[:300])]  # fills the bounded logs
    later = [ev.Submitted(f"d{i}", o, NOW) for i, o in enumerate(options)]

    def run(submitted: list) -> None:
        for e in submitted:
            place = next(a for a in done.handle(e) if isinstance(a, Place))
            done.handle(ev.Finished(e.key, NOW, f"tcp://gpu-{place.gpu}", 0.5))

    run(warm)
    finished = _bytes_per(n, lambda: run(later))
    assert len(done.recent) == n and Counter(str(t.status) for t in done.recent.values()) == {"completed": n}
    assert finished <= 1024, f"{finished:.0f} bytes per finished record"


def test_the_newest_finished_records_keep_every_gpu_s_score_older_ones_are_compacted():
    """``explain`` of a task that just finished shows each GPU's score (the notebook and README promise it);
    only records older than the newest ``EXPLAINED_IN_FULL`` shed them, so memory per record stays flat."""
    from altlas_dask.scheduling.admission import EXPLAINED_IN_FULL

    n = EXPLAINED_IN_FULL + 10
    core = make_core({"accounting": {"recent_records": n}})
    for i in range(4):
        core.handle(ev.GpuJoined(f"tcp://gpu-{i}", gpu(i), NOW))
    for i in range(n):
        actions = core.handle(ev.Submitted(f"t{i}", {"strategy": "least_loaded"}, NOW))
        place = next(a for a in actions if isinstance(a, Place))
        core.handle(ev.Finished(f"t{i}", NOW, f"tcp://gpu-{place.gpu}", 0.5))
    scored = [key for key, task in core.recent.items() if task.explain()["scores"]]
    assert scored == [f"t{i}" for i in range(10, n)]  # the newest EXPLAINED_IN_FULL, each with the 4 GPUs' scores
    assert all(len(core.recent[k].explain()["scores"]) == 4 for k in scored)
    assert core.recent["t0"].explain()["reason"]  # a compacted record still says why it went where it went


def test_a_named_gpu_on_a_large_pool_by_id_uuid_or_model(monkeypatch):
    c = Counted(monkeypatch, 128, 0)
    c.feed(ev.Submitted("by-id", {"specific_gpu_id": 77}, NOW))
    c.feed(ev.Submitted("by-uuid", {"specific_gpu_id": "GPU-test-90"}, NOW))
    assert (c.core.tasks["by-id"].gpu, c.core.tasks["by-uuid"].gpu) == (77, 90)
    c.core.handle(ev.GpuLeft("tcp://gpu-5", NOW))
    c.feed(ev.Submitted("gone", {"specific_gpu_id": 5}, NOW))
    assert "GPU 5 is not connected" in c.core.tasks["gone"].decision.reason
    c.core.handle(ev.GpuJoined("tcp://gpu-200", gpu(200, memory_mb=40960, name="Other 40GB"), NOW))
    c.feed(ev.Submitted("by-model", {"specific_gpu_id": "other*"}, NOW))
    c.feed(ev.Tick(NOW))  # (it was held: the task waiting for GPU 5 is queued ahead of it)
    assert c.core.tasks["by-model"].gpu == 200


def test_the_router_s_poll_looks_only_at_the_workers_whose_heartbeat_came_since_the_last_poll(monkeypatch):
    """Through the adapter (a real Scheduler with the GpuRouter, two in-process workers with the simulated GPU
    plugin): a poll with no heartbeat since the last one reads no worker's report, and one after a single
    worker's heartbeat reads that worker's only and hands its new report to the core (before: every worker's,
    every 0.1 s)."""
    read: list[str] = []
    real_report = dx.gpu_report

    def gpu_report(scheduler, worker):
        read.append(worker)
        return real_report(scheduler, worker)

    async def main() -> None:
        config = local_config()
        router = GpuRouter(config)
        async with Scheduler(host="127.0.0.1", dashboard_address=":0", plugins=[router]) as scheduler:
            plugins = [GpuWorkerPlugin(config, simulated_index=i, simulate_count=2) for i in range(2)]
            workers = [Worker(scheduler.address, nthreads=1, plugins={p}) for p in plugins]
            await asyncio.gather(*workers)
            try:
                router._poller.stop()  # the test polls
                for w in workers:
                    w.periodic_callbacks["heartbeat"].stop()
                    await w.heartbeat()  # the GPU reports come with heartbeats
                router._poll()
                assert len(router.view.known_gpus()) == 2
                monkeypatch.setattr(dx, "gpu_report", gpu_report)
                router._poll()
                assert read == []
                await workers[1].heartbeat()
                router._poll()
                address = workers[1].address
                assert read == [address]
                assert router._reports[address] is scheduler.workers[address].metrics[METRIC_NAME]
            finally:
                await asyncio.gather(*(w.close() for w in workers))

    asyncio.run(asyncio.wait_for(main(), 60))

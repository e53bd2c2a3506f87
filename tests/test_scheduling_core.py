"""The scheduling core, event by event with the test's own clock: each defect of issue 10, and the lifecycle."""

from __future__ import annotations

import subprocess
import sys

import pytest
from core_helpers import Driver, failed, gpu, make_core, placed

from altlas_dask.errors import GpuRoutingError, GpuTaskTimeoutError
from altlas_dask.gpus.state import lost_gpu
from altlas_dask.protocol import TaskStatus, api_status
from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import (
    DISPATCH_SOON,
    Decided,
    Hold,
    Place,
    QuotaChanged,
    Record,
    Release,
    Retry,
    Usage,
)
from altlas_dask.scheduling.fairqueue import FairQueue
from altlas_dask.scheduling.lifecycle import TRANSITIONS
from altlas_dask.scheduling.quotas import utc_day
from altlas_dask.scheduling.strategies import TaskRequest, rejection
from altlas_dask.scheduling.view import CoreView

OOM = "GpuOutOfMemoryError('CUDA out of memory')"


def test_the_core_imports_nothing_from_dask():
    code = (
        "import sys\n"
        "import altlas_dask.scheduling.core, altlas_dask.scheduling.view\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed', 'tornado', 'torch'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def take(queue: FairQueue, n: int) -> list[str]:
    out = []
    for entry in queue.in_order(lambda user: True):
        queue.served(entry)
        out.append(entry.key)
        if len(out) == n:
            break
    return out


# -- fair share ------------------------------------------------------------------------------------


def test_service_at_one_priority_does_not_push_back_a_newcomer_at_another():
    """One virtual clock per priority: 500 priority-5 tasks served leave priority 3's clock where it was."""
    queue = FairQueue()
    for i in range(1000):
        queue.push(f"flood-{i}", "flood", 3)
    for i in range(500):
        queue.push(f"urgent-{i}", "boss", 5)
    assert all(k.startswith("urgent") for k in take(queue, 500))
    queue.push("lone", "newcomer", 3)
    assert "lone" in take(queue, 2)


def test_fair_share_divides_gpu_time_not_task_count():
    """A user of 20 s tasks and a user of 1 s tasks, both backlogged on one GPU, get equal GPU time."""
    core = make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 1}}})
    d = Driver(core, gpus=1)
    seconds = {"heavy": 20.0, "light": 1.0}
    for i in range(400):
        for user in seconds:
            d.submit(f"{user}-{i}", user=user, task_type=user, timeout=600_000)
    served = dict.fromkeys(seconds, 0.0)
    running = next(iter(core.gpus.slots[0].assigned))
    while min(served.values()) < 200:
        user = running.split("-")[0]
        d.now += seconds[user]
        served[user] += seconds[user]
        d.finish(running, seconds[user])
        d.report(0)
        (running,) = placed(d.tick())
    assert abs(served["heavy"] - served["light"]) <= seconds["heavy"], served


# -- deadlines --------------------------------------------------------------------------------------


def test_a_deadline_fires_while_the_task_waits_for_its_dependencies():
    d = Driver(make_core())
    d.submit("child", ready=False, timeout=5)
    assert not failed(d.tick(4.9))
    (error,) = failed(d.tick(0.2)).values()
    assert isinstance(error, GpuTaskTimeoutError) and "waiting for its dependencies" in str(error)


def test_a_deadline_fires_while_the_task_waits_for_a_retry():
    d = Driver(make_core())
    assert placed(d.submit("t", timeout=10))
    d.start("t")
    assert any(isinstance(a, Retry) for a in d.err("t", OOM))
    assert core_status(d, "t") == TaskStatus.RETRYING
    (error,) = failed(d.tick(11)).values()
    assert "waiting to be retried after 1 attempt(s)" in str(error)
    assert CoreView(d.core).status_of("t") == TaskStatus.TIMED_OUT


def core_status(d: Driver, key: str) -> TaskStatus:
    return d.core.tasks[key].status


# -- health -------------------------------------------------------------------------------------------


def test_a_few_errors_do_not_make_a_gpu_critical_and_a_critical_gpu_recovers():
    core = make_core({"gpu": {"health": {"min_samples": 10, "recovery_seconds": 60}}})
    d = Driver(core, gpus=1)

    def attempt(key: str, error: str | None) -> None:
        d.submit(key, retries=0)
        d.err(key, error) if error else d.finish(key)

    for i in range(4):  # 4 errors in 8 attempts: 50 %, but under min_samples
        attempt(f"ok{i}", None)
        attempt(f"bad{i}", OOM)
    assert CoreView(core).gpus()[0].health_status == "warning"
    attempt("bad4", OOM)
    attempt("bad5", OOM)  # 6 of 10
    view = CoreView(core).gpus()[0]
    assert view.health_status == "critical" and "60% GPU errors in its last 10 attempts" in view.health_reason
    d.report(0)
    d.tick(59)
    assert CoreView(core).gpus()[0].health_status == "critical"
    d.report(0)
    d.tick(2)
    assert CoreView(core).gpus()[0].health_status == "healthy"
    assert placed(d.submit("after"))


def test_when_every_gpu_is_critical_a_task_fails_at_once_saying_so():
    core = make_core({"gpu": {"health": {"min_samples": 2}}})
    d = Driver(core, gpus=2)
    for g in range(2):
        for i in range(2):
            key = f"g{g}-{i}"
            d.submit(key, specific_gpu_id=g, retries=0)
            d.err(key, OOM)
    (error,) = failed(d.submit("new")).values()
    assert isinstance(error, GpuRoutingError)
    assert "every GPU that fits this task is unhealthy" in str(error) and "GPU 1: health critical" in str(error)


def test_a_silent_gpu_is_unresponsive_its_work_moves_and_it_comes_back():
    core = make_core({"gpu": {"detection": {"health_check_interval": 10}}})
    d = Driver(core, gpus=2)
    d.submit("t", specific_gpu_id=None, strategy="round_robin")
    victim = core.tasks["t"].gpu
    d.start("t")
    d.tick(5)
    d.report(1 - victim)
    actions = d.tick(6)  # 11 s without a report from the victim
    assert [a.key for a in actions if isinstance(a, Release)] == ["t"]
    gpus = {g.id: g for g in CoreView(core).gpus()}
    assert gpus[victim].status == "unresponsive" and "no report for 11s" in gpus[victim].health_reason
    assert core.handle(ev.Finished("t", d.now, d.worker(victim), 1.0)) == []  # a late result: ignored
    d.core.handle(ev.Released("t", d.now))
    core.handle(ev.Ready("t", d.now))
    assert placed(d.tick()) == {"t": 1 - victim}
    records = [a for a in d.finish("t") if isinstance(a, Record)]
    assert len(records) == 1 and records[0].row["status"] == "completed"
    d.report(victim)
    assert {g.id: g.status for g in CoreView(core).gpus()}[victim] == "active"


def test_a_task_running_far_past_its_expected_time_marks_its_gpu_unresponsive():
    d = Driver(make_core({"gpu": {"health": {"hung_task_factor": 10, "hung_task_min_seconds": 30}}}), gpus=1)
    d.submit("learn")
    d.start("learn")
    d.finish("learn", 2.0)  # this GPU runs the type in about 2 s
    d.submit("stuck")
    d.start("stuck")
    for _ in range(10):  # 20 s: under the 30 s minimum
        d.report(0)
        assert not any(isinstance(a, Release) for a in d.tick(2))
    for _ in range(6):  # 32 s: over 30 s and 10x 2 s
        d.report(0)
        actions = d.tick(2)
    assert [a.key for a in actions if isinstance(a, Release)] == ["stuck"]
    assert CoreView(d.core).gpus()[0].status == "unresponsive"


# -- lifecycle, views, memory --------------------------------------------------------------------------


def test_final_records_in_memory_are_bounded():
    d = Driver(make_core(recent_size=5), gpus=1)
    for i in range(20):
        d.submit(f"t{i}")
        d.finish(f"t{i}")
    assert list(d.core.recent) == [f"t{i}" for i in range(15, 20)]
    assert CoreView(d.core).explain(["t0", "t19"]).keys() == {"t19"}


def test_every_status_has_an_api_spelling_and_final_ones_go_nowhere():
    for status in TaskStatus:
        assert api_status(status) in {"queued", "running", "completed", "failed", "cancelled", "rejected"}
        assert (TRANSITIONS[status] == frozenset()) == status.final
    with pytest.raises(ValueError):
        api_status("released")


def test_queued_tasks_explain_their_position_and_why_they_wait():
    core = make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 1, "prefetch_depth": 0}}})
    d = Driver(core, gpus=1)
    d.submit("running")
    d.submit("low", priority=1)
    d.submit("high", priority=5)
    d.tick()
    rows = {r["key"]: r for r in CoreView(core).tasks(order="queue")["tasks"]}
    assert rows["high"]["queue_position"] == 1 and rows["low"]["queue_position"] == 2
    assert "behind 1 higher-priority task(s)" in rows["low"]["waiting_reason"]
    assert "max_concurrent_tasks_per_gpu" in rows["high"]["waiting_reason"]
    assert CoreView(core).tasks()["counts"] == {"placed": 1, "queued": 2}


def test_a_restarted_worker_registering_before_the_old_one_leaves_keeps_its_gpu():
    """The new worker of a GPU (same UUID) may register before Dask removes the old one."""
    d = Driver(make_core(), gpus=2)
    d.core.handle(ev.GpuJoined("tcp://gpu-1-new", d.core.gpus.slots[1].base, d.now))
    d.core.handle(ev.GpuLeft(d.worker(1), d.now))
    gpus = {g.id: g.worker for g in CoreView(d.core).gpus()}
    assert gpus == {0: d.worker(0), 1: "tcp://gpu-1-new"}


def test_a_drained_gpu_stays_drained_across_its_worker_restart():
    d = Driver(make_core(), gpus=2)
    d.core.handle(ev.Drain(1, d.now, "firmware"))
    state = d.core.gpus.slots[1].base
    d.core.handle(ev.GpuLeft(d.worker(1), d.now))
    d.core.handle(ev.GpuJoined("tcp://gpu-1-new", state, d.now))
    (gpu1,) = [g for g in CoreView(d.core).gpus() if g.id == 1]
    assert gpu1.status == "maintenance" and gpu1.drain_reason == "firmware"


def test_a_gpu_is_named_by_id_uuid_or_name_pattern():
    core = make_core({"gpu": {"multi_gpu": {"task_specific_mappings": {"embedding": "T4*"}}}})
    d = Driver(core, gpus=0)
    for index, name in enumerate(("A100 80GB", "A100 80GB", "T4 16GB")):
        d.join(index, name=name)
    assert placed(d.submit("by-uuid", specific_gpu_id="GPU-test-1")) == {"by-uuid": 1}
    assert placed(d.submit("by-id", specific_gpu_id="gpu_2")) == {"by-id": 2}
    assert set(placed(d.submit("by-name", specific_gpu_id="a100*")).values()) <= {0, 1}
    assert placed(d.submit("mapped", task_type="embedding", strategy="task_specific")) == {"mapped": 2}
    (error,) = failed(d.submit("nowhere", specific_gpu_id="H100*")).values()
    assert "unknown GPU H100*" in str(error) and "2 (T4 16GB, GPU-test-2)" in str(error)


def test_a_cluster_names_its_own_strategy_by_import_path():
    names = ["least_loaded", "highest"]
    multi = {
        "custom_strategies": {"highest": "core_helpers:HighestId"},
        "strategies": names,
        "default_strategy": names[0],
    }
    d = Driver(make_core({"gpu": {"multi_gpu": multi}}), gpus=3)
    assert placed(d.submit("a", strategy="highest")) == {"a": 2}
    assert d.core.tasks["a"].decision.reason == "highest id 2"
    with pytest.raises(ValueError, match="custom strategy 'core_helpers:Nope' cannot be imported"):
        make_core({"gpu": {"multi_gpu": {**multi, "custom_strategies": {"highest": "core_helpers:Nope"}}}})


@pytest.mark.parametrize(
    ("strategy", "problem"),
    [
        ("PickRaises", "raised ZeroDivisionError: a bug in the strategy"),
        ("PicksAGpuThatDoesNotFit", "picked GPU 2, not an eligible candidate (0, 1)"),
        ("ReturnsNonsense", "returned 42, not (GpuState, reason, scores)"),
    ],
)
def test_a_custom_strategys_bad_pick_is_logged_and_least_loaded_places_the_task(strategy, problem, caplog):
    """As distributed's active memory manager checks its policies' suggestions: the task is placed on a GPU that
    fits (GPU 2 has 1 GB; the task needs 4 GB), by least_loaded (idle identical GPUs: the lowest id)."""
    multi = {"custom_strategies": {"mine": f"core_helpers:{strategy}"}, "strategies": ["mine"]}
    d = Driver(make_core({"gpu": {"multi_gpu": {**multi, "default_strategy": "mine"}}}), gpus=2)
    d.join(2, memory_mb=1024)
    assert placed(d.submit("k", memory_mb=4096)) == {"k": 0}
    reason = d.core.tasks["k"].decision.reason
    assert reason.startswith(f"custom strategy 'mine' {problem}; least_loaded instead: lowest load"), reason
    assert f"custom strategy 'mine' {problem}" in caplog.text


def test_a_custom_strategys_scope_that_raises_is_logged_and_the_whole_pool_looked_at(caplog):
    multi = {"custom_strategies": {"mine": "core_helpers:ScopeRaises"}, "strategies": ["mine"]}
    d = Driver(make_core({"gpu": {"multi_gpu": {**multi, "default_strategy": "mine"}}}), gpus=3)
    assert placed(d.submit("k")) == {"k": 2}
    assert "scope() raised" in caplog.text


def test_finished_tasks_leave_no_deadline_behind():
    """Deadlines of finished tasks are dropped, not kept until they would have fired (memory in a soak)."""
    d = Driver(make_core(), gpus=1)
    for i in range(5000):
        d.submit(f"t{i}")
        d.finish(f"t{i}", 0.001)
    assert len(d.core.deadlines) <= 1024 + 2


def test_one_long_task_beside_tasks_that_finish_is_not_a_hung_gpu():
    d = Driver(make_core({"gpu": {"health": {"hung_task_factor": 10, "hung_task_min_seconds": 30}}}), gpus=1)
    d.submit("learn")
    d.start("learn")
    d.finish("learn", 2.0)
    d.submit("long")
    d.start("long")
    for i in range(12):  # 120 s: far past 10 x 2 s, but a short task finishes on the GPU every 10 s
        d.submit(f"short{i}")
        d.start(f"short{i}")
        d.now += 10
        d.finish(f"short{i}", 2.0)
        d.report(0)
        assert not any(isinstance(a, Release) for a in d.tick())
    assert CoreView(d.core).gpus()[0].status == "active"


def test_a_freed_slot_asks_for_a_dispatch_pass_only_when_work_is_held():
    """The adapter runs one extra event-loop callback per dispatch request: none when nothing waits."""
    d = Driver(make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 1}}}), gpus=1)
    d.tick()  # the join's own pass
    d.submit("a")
    d.start("a")
    d.finish("a")
    assert not d.core.wants_dispatch  # nothing held: a finish costs no dispatch pass
    d.submit("b")
    d.submit("c")  # the only slot is taken: held
    d.start("b")
    assert DISPATCH_SOON in d.finish("b")  # what the adapter reads: an action, not the core's field
    assert d.core.wants_dispatch
    assert placed(d.tick()) == {"c": 0}


# -- pre-placement (gpu.multi_gpu.prefetch_depth) ---------------------------------------------------------


def preplacing(slots: int = 1, depth: int = 1, gpus: int = 1, **multi_gpu) -> Driver:
    options = {"max_concurrent_tasks_per_gpu": slots, "prefetch_depth": depth, **multi_gpu}
    return Driver(make_core({"gpu": {"multi_gpu": options}}), gpus=gpus)


def statuses(d: Driver, *keys: str) -> list[str]:
    return [str(d.core.tasks[k].status) for k in keys]


def test_a_freed_slot_starts_a_pre_placed_task_without_a_new_decision():
    """One slot, depth 1: the second task waits on the worker (placed, not running) and starts when the first
    ends, in the same event, before any scheduler pass; the third waits on the scheduler."""
    d = preplacing()
    assert placed(d.submit("a")) == {"a": 0}
    assert placed(d.submit("b")) == {"b": 0}
    assert not placed(d.submit("c"))
    d.start("a")
    d.start("b")
    assert statuses(d, "a", "b", "c") == ["running", "placed", "queued"]
    decisions = sum(d.core.decision_counts.values())
    d.finish("a")
    assert statuses(d, "b", "c") == ["running", "queued"]
    assert sum(d.core.decision_counts.values()) == decisions
    assert placed(d.tick()) == {"c": 0}  # the scheduler refills the worker's queue afterwards


def test_running_tasks_never_exceed_the_slots_whatever_order_workers_report_in():
    d = preplacing(slots=2, depth=2)
    keys = [f"t{i}" for i in range(6)]
    for key in keys:
        d.submit(key)
    on_gpu = [k for k in keys if k in d.core.tasks and d.core.tasks[k].gpu == 0]
    assert len(on_gpu) == 4
    for key in reversed(on_gpu):
        d.start(key)
    assert statuses(d, *on_gpu).count("running") == 2
    d.finish(next(k for k in on_gpu if d.core.tasks[k].status == "running"))
    assert [str(t.status) for t in d.core.tasks.values()].count("running") == 2


def test_a_high_priority_arrival_waits_behind_at_most_the_depth_of_lower_priority_work():
    """Depth 2 on one slot: a priority-5 task arriving behind a priority-1 flood is placed at the next free
    place and, ranked first on the worker, starts before the priority-1 tasks placed before it but not started."""
    d = preplacing(depth=2)
    flood = [f"low{i}" for i in range(6)]
    for key in flood:
        d.submit(key, priority=1)
        if key in placed_keys(d):
            d.start(key)
    assert statuses(d, "low0", "low1", "low2") == ["running", "placed", "placed"]
    assert not placed(d.submit("urgent", priority=5))
    started_before = []
    for _ in range(4):
        running = next(k for k, t in d.core.tasks.items() if t.status == "running")
        if running == "urgent":
            break
        started_before.append(running)
        d.finish(running)
        for key in placed(d.tick()):
            d.start(key)
    assert d.core.tasks["urgent"].status == "running"
    assert started_before[0] == "low0" and len(started_before) - 1 <= 2, started_before


def placed_keys(d: Driver) -> set[str]:
    return {k for k, t in d.core.tasks.items() if t.status == "placed"}


def test_pre_placed_tasks_start_in_the_cores_order_not_their_arrival_on_the_worker():
    """Ranks follow priority, then placement order; a freed slot starts the best-ranked task that is on the
    worker, even if its Started report came last."""
    d = preplacing(depth=3)
    d.submit("first", priority=3)
    d.start("first")
    ranks = {}
    for key, priority in (("p3", 3), ("p4", 4), ("p3b", 3)):
        (action,) = [a for a in d.submit(key, priority=priority) if isinstance(a, Place)]
        ranks[key] = action.rank
    assert ranks["p4"] < ranks["p3"] < ranks["p3b"]
    for key in ("p3b", "p3", "p4"):
        d.start(key)
    order = []
    for _ in range(3):
        d.finish(next(k for k, t in d.core.tasks.items() if t.status == "running"))
        order.append(next(k for k, t in d.core.tasks.items() if t.status == "running"))
    assert order == ["p4", "p3", "p3b"]


def test_pre_placed_tasks_count_against_the_gpus_memory():
    """16,384 MB at memory_threshold 0.9: a running 8,000 MB task leaves no room to pre-place another."""
    d = preplacing()
    assert placed(d.submit("big", memory_mb=8000))
    d.start("big")
    assert not placed(d.submit("big2", memory_mb=8000))
    assert "memory_threshold" in d.core.tasks["big2"].waiting_reason
    d.submit("small", memory_mb=1000)
    assert placed(d.tick()) == {"small": 0}  # it fits beside it: pre-placed


def test_a_failed_gpu_takes_back_its_pre_placed_tasks_without_starting_them():
    d = preplacing(depth=2, gpus=2, default_strategy="round_robin")
    for key in ("a", "b", "c", "d"):
        d.submit(key)
        d.start(key)
    on_zero = [k for k, t in d.core.tasks.items() if t.gpu == 0]
    d.core.handle(ev.GpuReported(d.worker(0), gpu(0, status="error"), d.now))
    assert all(d.core.tasks[k].status == "retrying" for k in on_zero)
    assert not d.core.gpus.slots[0].running and not d.core.gpus.slots[0].next_up


def test_explain_says_a_pre_placed_task_is_next_on_its_gpu():
    d = preplacing()
    d.submit("a")
    d.start("a")
    d.submit("b")
    d.start("b")
    assert d.core.tasks["b"].where() == "placed on GPU 0, next to run there"
    assert CoreView(d.core).gpus()[0].active_requests == 2


def test_explain_estimates_start_and_completion_from_the_queue_ahead_and_learned_durations():
    """The definition (CoreView.estimate), computed by hand: GPU 0 learned 4 s alone, GPU 1 learned 2 s."""
    core = make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 2, "prefetch_depth": 0}}})
    d = Driver(core, gpus=2)
    for key, gpu_id, seconds in (("learn-0", 0, 4.0), ("learn-1", 1, 2.0)):
        assert placed(d.submit(key, task_type="infer", specific_gpu_id=gpu_id)) == {key: gpu_id}
        d.start(key)
        d.finish(key, seconds)
    cost = (4.0 + 2.0) / 2  # the median of the type's learned seconds over every GPU: what a task ahead costs
    assert core.estimates.cost("infer") == pytest.approx(cost)
    for key, gpu_id in (("r0a", 0), ("r0b", 0), ("r1a", 1), ("r1b", 1)):  # backlog: 8 s on GPU 0, 4 s on GPU 1
        assert placed(d.submit(key, task_type="infer", specific_gpu_id=gpu_id)) == {key: gpu_id}
        d.start(key)
    d.tick(1.0)
    for key, options in (("q1", {}), ("q2", {}), ("q3", {"specific_gpu_id": 0})):
        assert not placed(d.submit(key, task_type="infer", **options))
    d.tick()
    now = d.now + 0.5  # the RPC's own clock, a moment after the core's last event
    rows = CoreView(core).explain(["q1", "q2", "q3", "r0a", "r0b", "r1b", "learn-0"], now=now)
    assert [rows[k]["queue_position"] for k in ("q1", "q2", "q3")] == [1, 2, 3]
    frees_any, frees_gpu0 = min(8.0, 4.0) / 2, 8.0 / 2  # min over the fitting GPUs of backlog / slots
    expected = {
        "q1": (now + frees_any, now + frees_any + 2.0),  # nothing ahead; 2 s alone on GPU 1, the fastest
        "q2": (now + frees_any + cost / 2, now + frees_any + cost / 2 + 2.0),  # q1 ahead, spread over 2 GPUs
        "q3": (now + frees_gpu0 + 2 * cost, now + frees_gpu0 + 2 * cost + 4.0),  # only GPU 0 fits
        "r0a": (d.now - 1.0, d.now - 1.0 + 4.0),  # started 1 s before the tick, alone when placed: 4 s x 1
        "r0b": (d.now - 1.0, d.now - 1.0 + 4.0 * 2),  # placed beside r0a: 4 s alone x 2
        "r1b": (d.now - 1.0, d.now - 1.0 + 2.0 * 2),
    }
    for key, (start, completion) in expected.items():
        assert rows[key]["estimated_start"] == pytest.approx(start), key
        assert rows[key]["estimated_completion"] == pytest.approx(completion), key
    assert "estimated_start" not in rows["learn-0"]  # finished: its record says when it ran
    overdue = CoreView(core).explain(["r0a"], now=d.now + 10)["r0a"]
    assert overdue["estimated_completion"] == d.now + 10  # past its estimate: not before now
    d.core.handle(ev.Drain(1, d.now, "maintenance"))
    later = CoreView(core).explain(["q1"], now=now)["q1"]
    assert later["estimated_start"] == pytest.approx(now + frees_gpu0)  # only GPU 0 is left to free a slot


def test_a_task_that_ran_in_a_batch_is_charged_its_share_and_explains_the_batch_size():
    d = Driver(make_core({"quotas": {"defaults": {"gpu_time_minutes": 1000}}}), gpus=1)
    d.submit("alone", user="u")
    d.start("alone")
    d.tick(2.5)
    d.finish("alone", 2.0)  # alone on its GPU: charged its compute time
    d.submit("batched", user="u")
    d.start("batched")
    d.tick(2.5)
    d.core.handle(ev.Finished("batched", d.now, d.worker(0), 2.0, batch=(4, 0.5)))
    rows = CoreView(d.core).explain(["alone", "batched"])
    assert rows["batched"]["gpu_seconds"] == 0.5 and rows["batched"]["batch_size"] == 4
    assert rows["alone"]["gpu_seconds"] == 2.0 and "batch_size" not in rows["alone"]
    assert d.core.book.usage["u"].day_gpu_seconds == 2.5  # the quota is charged the share, too


def test_a_task_serving_several_requests_is_charged_each_against_the_quotas_and_in_the_usage():
    """gpu_options.requests = N (a gateway batch of N requests): admission counts N requests, and the durable
    usage row counts N when it ends; a task whose N would exceed the limit is rejected whole."""
    d = Driver(make_core({"quotas": {"defaults": {"requests_per_minute": 5}}}), gpus=1)
    d.submit("batch-of-3", user="u", requests=3)
    rejected = failed(d.submit("batch-of-3-more", user="u", requests=3))
    assert "requests_per_minute" in str(rejected["batch-of-3-more"])
    assert not failed(d.submit("batch-of-2", user="u", requests=2))
    d.start("batch-of-3")
    usage = [a for a in d.finish("batch-of-3") if isinstance(a, Usage) and a.tasks]
    assert [(u.user, u.tasks) for u in usage] == [("u", 3)]


LARGE = {"task_type": "text_generation", "memory_mb": 24576}  # fits only the 80 GB GPU 0 of two


def running_a_large_task_on_gpu_0(core) -> tuple[Driver, dict]:
    """GPU 0 (80 GB) and GPU 1 (16 GB); GPU 0 learned 0.2 s for a large task (a solo sample) and runs another."""
    d = Driver(core, gpus=0)
    d.join(0, memory_mb=81920)
    d.join(1, memory_mb=16384)
    assert placed(d.submit("learn", **LARGE)) == {"learn": 0}
    d.start("learn")
    d.finish("learn", seconds=0.2)
    assert placed(d.submit("running", **LARGE)) == {"running": 0}
    return d, LARGE


def test_a_gpu_a_higher_priority_task_waits_to_drain_is_kept_from_lower_priority_work():
    """earliest_finish's late binding: a priority-5 24 GB task that only GPU 0 (80 GB) fits waits while GPU 0
    runs a 0.2 s task of its type (more than 30% of its own 0.2 s queued). In the same dispatch pass, a
    priority-1 task that would take GPU 0 (least_loaded: 1 task there, 3 on GPU 1) is kept off it; a priority-5
    one may take it. The waiting task gets GPU 0 once the work there drains."""
    core = make_core()
    d, large = running_a_large_task_on_gpu_0(core)
    for i in range(3):
        assert placed(d.submit(f"busy{i}", specific_gpu_id=1)) == {f"busy{i}": 1}
    assert placed(d.submit("big", priority=5, **large)) == {}
    assert core.tasks["big"].waiting_reason.startswith("late binding: it fits 1 of the 2 GPUs")
    assert placed(d.submit("low", priority=1, strategy="least_loaded") + d.tick()) == {"low": 1}
    assert core.tasks["low"].decision.rejected == {0: "kept for a priority-5 task waiting for it to drain"}
    assert placed(d.submit("peer", priority=5, strategy="least_loaded") + d.tick()) == {"peer": 0}
    for key in ("running", "peer"):  # "peer" is expected to take 0.2 s too (the mean of the types learned)
        assert placed(d.tick()) == {} and core.tasks["big"].waiting_reason.startswith("late binding")
        d.start(key)
        d.finish(key, seconds=0.2)
    assert placed(d.tick()) == {"big": 0}


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_task_held_by_late_binding_takes_the_gpu_it_waits_for_once_its_hold_runs_out(factor):
    """gpu.multi_gpu.max_hold_factor bounds late binding too (the gpu_failure x earliest_finish replay changed
    by this, bench/RESULTS.md "Scale"): a 24 GB task that only GPU 0 fits waits while 0.2 s of its type is
    queued there (its own learned 0.2 s, 30% of it at most), for ``factor`` x 0.2 s at most; at the first pass
    after that it joins GPU 0's queue, although the queue there has not drained."""
    core = make_core({"gpu": {"multi_gpu": {"max_hold_factor": factor}}})
    d, large = running_a_large_task_on_gpu_0(core)
    assert placed(d.submit("big", **large)) == {}
    bound = factor * 0.2
    reason = core.tasks["big"].waiting_reason
    assert reason.startswith("late binding: it fits 1 of the 2 GPUs"), reason
    assert f"reserved: it waits at most {bound:.3f}s more (max_hold_factor {factor:g})" in reason, reason
    assert placed(d.tick(bound * 0.99)) == {}  # within its bound: still held
    assert placed(d.tick(bound * 0.02)) == {"big": 0}  # past it: queued behind "running" on GPU 0
    assert core.tasks["big"].decision.reason.startswith("expected finish in 0.400s (0.200s queued"), core.tasks[
        "big"
    ].decision.reason


def test_a_lost_gpu_counts_as_unknown_not_as_too_small_for_late_binding():
    """A lost GPU reports placeholder figures (compute capability 0.0, 0 MB: NVML cannot read it). They are
    its unknowns, not its capacity: a 4 GB task that fits every GPU still up is not held by late binding as if
    it fitted "2 of the 3" (the gpu_failure replay held 640 such tasks after the loss, bench/RESULTS.md)."""
    core = make_core()
    d = Driver(core, gpus=3)
    lost = lost_gpu(0, "GPU-test-0", "GPU is lost", simulated=True, worker=d.worker(0))
    core.handle(ev.GpuReported(d.worker(0), lost, d.now))
    task = {"memory_mb": 4096, "task_type": "embed"}
    for g in (1, 2):  # each live GPU learned 0.2 s for the type and has one such task queued
        d.submit(f"learn{g}", specific_gpu_id=g, **task)
        d.start(f"learn{g}")
        d.finish(f"learn{g}", seconds=0.2)
        assert placed(d.submit(f"queued{g}", specific_gpu_id=g, **task)) == {f"queued{g}": g}
    assert placed(d.submit("next", **task)) in ({"next": 1}, {"next": 2}), core.tasks["next"].waiting_reason
    why, permanent = rejection(lost, TaskRequest(memory_mb=4096), core.state.policy)
    assert not permanent and "unknown" in why, why  # it may come back: never "too small" for good


def test_priority_tasks_over_the_limit_wait_for_admission_in_order_unless_rejection_is_asked():
    """quotas priority_requests=2: the 3rd and 4th priority-5 tasks are held (queued, never failed) and admitted
    oldest first as earlier ones finish; ``over_limit: reject`` keeps the old rejection; a cancelled waiting
    task frees nothing it did not hold."""
    d = Driver(make_core({"quotas": {"defaults": {"priority_requests": 2}}}), gpus=4)
    high = {"user": "vip", "priority": 5}
    first = {**placed(d.submit("a", **high)), **placed(d.submit("b", **high))}
    assert set(first) == {"a", "b"}
    for key in ("c", "d", "e"):
        actions = d.submit(key, **high)
        assert not placed(actions) and not failed(actions), actions
    view = CoreView(d.core)
    rows = {row["key"]: row for row in view.tasks()["tasks"]}
    assert [rows[k]["status"] for k in "cde"] == ["queued"] * 3 and view.queued() == 3
    assert "waiting for admission" in rows["c"]["waiting_reason"] and "priority_requests" in rows["c"]["waiting_reason"]
    rejected = d.submit("f", over_limit="reject", **high)
    assert failed(rejected)["f"].limit_name == "priority_requests"
    d.core.handle(ev.Cancel("d", d.now, "vip"))  # waiting: holds no outstanding slot
    d.start("a")
    admitted = placed([*d.finish("a"), *d.tick()])
    assert list(admitted) == ["c"] and core_status(d, "c") == TaskStatus.PLACED
    assert d.core.tasks["e"].awaiting_admission  # one slot freed: the oldest waiting task only
    assert d.core.book.report("vip")["quotas"]["priority_requests"]["used"] == 2
    d.start("b")
    assert list(placed([*d.finish("b"), *d.tick()])) == ["e"]
    assert d.core.book.report("vip")["quotas"]["priority_requests"]["used"] == 2


# -- what the adapter did by hand before issue 25: events and actions now --------------------------------------


def test_restored_overrides_and_todays_usage_count_as_if_the_scheduler_never_stopped():
    core = make_core({"quotas": {"defaults": {"requests_per_day": 3}, "users": {"ana": {"weight": 2}}}})
    d = Driver(core, gpus=1)
    today = utc_day(d.now)
    overrides = {"ana": {"requests_per_day": 5}}
    core.handle(ev.Restored(d.now, today, overrides, {"ana": (4, 10.0), "bob": (3, 0.0)}))
    core.handle(ev.Restored(d.now, "2000-01-01", {}, {"carl": (3, 0.0)}))  # another day's usage counts for nothing
    assert core.book.limits("ana").requests_per_day == 5 and core.book.limits("ana").weight == 2
    assert placed(d.submit("a1", user="ana")) == {"a1": 0}
    assert failed(d.submit("a2", user="ana"))["a2"].limit_name == "requests_per_day"  # 4 restored + 1 = 5
    assert failed(d.submit("b1", user="bob"))["b1"].limit_name == "requests_per_day"
    assert not failed(d.submit("c1", user="carl"))


def test_an_admins_quota_change_is_kept_merged_and_asks_for_a_dispatch_pass():
    d = Driver(make_core({"quotas": {"users": {"ana": {"weight": 2}}}}), gpus=1)
    actions = d.core.handle(ev.QuotaSet("ana", {"concurrent_requests": 3}, d.now))
    assert QuotaChanged("ana", {"weight": 2, "concurrent_requests": 3}) in actions
    assert actions[-1] is DISPATCH_SOON
    assert CoreView(d.core).limits("ana")["concurrent_requests"] == 3


def test_a_held_task_carries_its_priority_for_the_scheduler():
    d = Driver(make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 1}}}), gpus=1)
    d.submit("running")
    assert Hold("waiting", 5) in d.submit("waiting", priority=5)
    assert Hold("not-ready", 2) in d.submit("not-ready", ready=False, priority=2)


def test_an_unknown_task_that_becomes_ready_with_its_options_is_tracked_without_charging_again():
    """A finished task recomputed because its result was lost with a worker: the core places it again and its
    user's quota does not count it twice."""
    d = Driver(make_core({"quotas": {"defaults": {"requests_per_day": 1}}}), gpus=1)
    d.submit("t", user="ana")
    d.start("t")
    d.finish("t")
    d.core.handle(ev.Ready("unknown", d.now))  # no options: not the core's task
    assert not CoreView(d.core).tracks("unknown")
    assert placed(d.core.handle(ev.Ready("t", d.now, options={"user": "ana"}))) == {"t": 0}
    assert not d.core.tasks["t"].charged
    assert failed(d.submit("u", user="ana"))["u"].limit_name == "requests_per_day"


def test_every_decision_and_placement_carries_what_the_metrics_need():
    d = Driver(make_core(), gpus=1)
    d.now += 1.5
    d.submit("a", ready=False, user="ana", task_type="embedding")
    d.now += 2.0
    actions = d.core.handle(ev.Ready("a", d.now))
    actions += d.tick()
    [place] = [a for a in actions if isinstance(a, Place)]
    assert (place.user, place.task_type, place.waited) == ("ana", "embedding", 2.0)
    assert [(a.strategy, a.outcome) for a in actions if isinstance(a, Decided)] == [("earliest_finish", "placed")]

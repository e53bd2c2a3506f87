"""Each strategy's choice (and its explanation) on crafted GPU states: pure functions, no Dask."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from core_helpers import gpu as core_gpu
from hypothesis import given
from hypothesis import strategies as st

from altlas_dask.config import build_config
from altlas_dask.gpus.state import GpuState, health_score
from altlas_dask.scheduling.strategies import (
    HYBRID_WEIGHTS,
    LATE_BINDING_SHARE,
    RoutingContext,
    TaskRequest,
    capacity,
    choose,
    hybrid_breakdown,
    rejection,
)

POLICY = build_config(
    {"gpu": {"multi_gpu": {"task_specific_mappings": {"text_generation": "gpu_1", "image_segmentation": "gpu_0"}}}}
).routing()


def gpu(i: int, **changes) -> GpuState:
    return core_gpu(i, memory_mb=16000, **{"performance_index": 1.0, **changes})


def ctx(**kw) -> RoutingContext:
    return RoutingContext(POLICY, **kw)


def pick(gpus, strategy, **request) -> int | None:
    return choose(gpus, TaskRequest(strategy=strategy, **request), ctx()).gpu


# -- filtering --------------------------------------------------------------------------------------


def test_every_strategy_skips_gpus_that_cannot_take_the_task():
    gpus = [
        gpu(0, status="maintenance"),
        gpu(1, health_status="critical"),
        gpu(2, temperature_c=90.0),
        gpu(3, compute_capability="6.1"),
        gpu(4, active_requests=capacity(POLICY)),
        gpu(5, memory_used_mb=15000),
        gpu(6, utilization_gpu=99.0),
        gpu(7, memory_used_mb=8000, utilization_gpu=50.0),
    ]
    for strategy in ("round_robin", "least_loaded", "memory_optimized", "task_specific", "random", "hybrid"):
        decision = choose(gpus, TaskRequest(strategy=strategy, memory_mb=2000), ctx(rng=random.Random(1)))
        assert decision.gpu == 7, strategy
        assert set(decision.rejected) == {0, 1, 2, 3, 4, 5, 6}
    reasons = choose(gpus, TaskRequest(strategy="least_loaded", memory_mb=2000), ctx()).rejected
    assert "maintenance" in reasons[0]
    assert "critical" in reasons[1]
    assert "temperature" in reasons[2]
    assert "compute capability 6.1" in reasons[3]
    assert "max_concurrent_tasks_per_gpu" in reasons[4]
    assert "MB free" in reasons[5]
    assert "utilization" in reasons[6]


def test_utilization_threshold_only_guards_against_load_the_router_did_not_place():
    busy = gpu(0, utilization_gpu=99.0)
    assert pick([busy], "least_loaded") is None, "idle as far as the router knows, yet 99% busy: external load"
    ours = busy.with_(active_requests=1)
    assert pick([ours], "least_loaded") == 0, "the router's own tasks: the concurrency limit governs"
    just_finished = choose([busy], TaskRequest(), ctx(recently_used=frozenset({0})))
    assert just_finished.gpu == 0, "utilization from the router's tasks that just finished"


def test_memory_that_never_fits_is_impossible_but_memory_in_use_means_wait():
    gpus = [gpu(0, memory_total_mb=16000), gpu(1, memory_total_mb=16000, memory_used_mb=10000)]
    never = choose(gpus, TaskRequest(memory_mb=15000), ctx())
    assert never.outcome == "impossible" and never.gpu is None
    assert "needs 15000 MB > 90% of its 16000 MB" in never.reason
    busy = choose([gpus[1]], TaskRequest(memory_mb=6000), ctx())
    assert busy.outcome == "wait" and "6000 MB" in busy.reason


def test_no_connected_gpu_means_wait_not_failure():
    decision = choose([], TaskRequest(), ctx())
    assert decision.outcome == "wait" and "no GPU worker" in decision.reason


def test_a_gpu_the_task_already_failed_on_is_excluded():
    gpus = [gpu(0), gpu(1, utilization_gpu=80.0)]
    assert pick(gpus, "least_loaded", exclude=frozenset({0})) == 1
    all_failed = choose(gpus, TaskRequest(exclude=frozenset({0, 1})), ctx())
    assert all_failed.outcome == "impossible"


def test_compute_capability_minimum_comes_from_the_request_or_the_policy():
    gpus = [gpu(0, compute_capability="7.5"), gpu(1, compute_capability="9.0", utilization_gpu=90.0)]
    assert pick(gpus, "least_loaded") == 0
    assert pick(gpus, "least_loaded", min_compute_capability=8.0) == 1


def test_disabled_strategy_is_refused():
    multi = {"strategies": ["least_loaded"], "default_strategy": "least_loaded"}
    policy = build_config({"gpu": {"multi_gpu": multi}}).routing()
    decision = choose([gpu(0)], TaskRequest(strategy="random"), RoutingContext(policy))
    assert decision.outcome == "impossible" and "not enabled" in decision.reason


# -- the strategies ------------------------------------------------------------------------------------


def test_round_robin_takes_the_next_eligible_gpu_after_the_last():
    gpus = [gpu(0), gpu(1), gpu(2, status="maintenance"), gpu(3)]
    chosen, last = [], None
    for _ in range(6):
        decision = choose(gpus, TaskRequest(strategy="round_robin"), ctx(last_gpu=last))
        chosen.append(decision.gpu)
        last = decision.gpu
    assert chosen == [0, 1, 3, 0, 1, 3]
    assert "after GPU 1" in choose(gpus, TaskRequest(strategy="round_robin"), ctx(last_gpu=1)).reason


def test_least_loaded_picks_the_fewest_tasks_in_flight_on_identical_gpus():
    gpus = [gpu(0, active_requests=3), gpu(1, active_requests=1, utilization_gpu=90.0), gpu(2, active_requests=1)]
    decision = choose(gpus, TaskRequest(strategy="least_loaded"), ctx())
    assert decision.gpu == 2, "ties on in-flight work go to the lower utilization"
    slots = POLICY.max_concurrent_tasks_per_gpu
    assert decision.scores == {0: pytest.approx(4 / slots), 1: pytest.approx(2 / slots), 2: pytest.approx(2 / slots)}
    assert "1 task(s) in flight at relative speed 1.00" in decision.reason


def test_least_loaded_weighs_in_flight_work_by_learned_speed():
    fast, slow = gpu(0, active_requests=2), gpu(1, active_requests=0)
    learned = ctx(performance={0: 1.0, 1: 0.25})
    assert choose([fast, slow], TaskRequest(strategy="least_loaded"), learned).gpu == 0  # 3/1 < 1/0.25
    assert choose([fast.with_(active_requests=4), slow], TaskRequest(strategy="least_loaded"), learned).gpu == 1
    assert choose([fast, slow], TaskRequest(strategy="least_loaded"), ctx()).gpu == 1, "nothing learned yet"


def test_memory_optimized_is_best_fit():
    gpus = [gpu(0, memory_total_mb=80000), gpu(1, memory_total_mb=16000, memory_used_mb=4000), gpu(2)]
    decision = choose(gpus, TaskRequest(strategy="memory_optimized", memory_mb=6000), ctx())
    assert decision.gpu == 1
    assert decision.scores == {0: 74000.0, 1: 6000.0, 2: 10000.0}
    big = choose(gpus, TaskRequest(strategy="memory_optimized", memory_mb=20000), ctx())
    assert big.gpu == 0 and set(big.rejected) == {1, 2}


def test_task_specific_uses_the_mapping_then_falls_back_to_least_loaded():
    gpus = [gpu(0, utilization_gpu=50.0), gpu(1, utilization_gpu=70.0), gpu(2, utilization_gpu=10.0)]
    mapped = choose(gpus, TaskRequest(strategy="task_specific", task_type="text_generation"), ctx())
    assert mapped.gpu == 1 and "maps to GPU 1" in mapped.reason
    gpus[1] = gpus[1].with_(status="maintenance")
    fallback = choose(gpus, TaskRequest(strategy="task_specific", task_type="text_generation"), ctx())
    assert fallback.gpu == 2 and "mapped GPU 1 cannot take it" in fallback.reason
    unmapped = choose(gpus, TaskRequest(strategy="task_specific", task_type="training"), ctx())
    assert unmapped.gpu == 2 and "no mapping for 'training'" in unmapped.reason


def test_random_is_repeatable_with_a_seed_and_covers_every_eligible_gpu():
    gpus = [gpu(0), gpu(1), gpu(2), gpu(3, status="maintenance")]

    def run(seed):
        rng = random.Random(seed)
        return [choose(gpus, TaskRequest(strategy="random"), ctx(rng=rng)).gpu for _ in range(300)]

    assert run(7) == run(7)
    counts = Counter(run(7))
    assert set(counts) == {0, 1, 2}
    assert min(counts.values()) > 50


def test_hybrid_scores_follow_the_seed_weights():
    hot = gpu(0, temperature_c=80.0, power_usage_w=280.0, utilization_gpu=20.0)
    cool = gpu(1, memory_used_mb=4000, utilization_gpu=30.0)
    request = TaskRequest(strategy="hybrid", priority=4, task_type="text_generation")
    parts = hybrid_breakdown(cool, request, ctx())
    assert parts["usage"] == pytest.approx(0.6 * (1 - 4000 / 16000) + 0.4 * (1 - 0))  # nothing in flight
    assert parts["priority"] == pytest.approx(0.8)
    assert parts["type"] == 1.0  # text_generation maps to GPU 1
    assert parts["health"] == pytest.approx(health_score(cool))
    assert parts["total"] == pytest.approx(sum(HYBRID_WEIGHTS[k] * parts[k] for k in HYBRID_WEIGHTS))
    decision = choose([hot, cool], request, ctx())
    assert decision.gpu == 1
    assert decision.scores[1] > decision.scores[0]
    assert "usage" in decision.reason and "health" in decision.reason


def test_hybrid_prefers_the_gpu_that_performed_better():
    gpus = [gpu(0), gpu(1)]
    slow_first = ctx(performance={0: 0.3, 1: 1.0})
    assert choose(gpus, TaskRequest(strategy="hybrid"), slow_first).gpu == 1
    assert choose(gpus, TaskRequest(strategy="hybrid"), ctx(performance={0: 1.0, 1: 0.3})).gpu == 0


def test_single_gpu_keeps_everything_on_the_primary_and_fails_over_only_when_it_fails():
    gpus = [gpu(0), gpu(1)]
    assert pick(gpus, "single_gpu") == 0
    busy = [gpu(0, active_requests=capacity(POLICY)), gpu(1)]
    waiting = choose(busy, TaskRequest(strategy="single_gpu"), ctx())
    assert waiting.outcome == "wait" and "primary GPU 0 busy" in waiting.reason
    failed = [gpu(0, status="error", health_status="critical"), gpu(1)]
    assert pick(failed, "single_gpu") == 1


def test_specific_gpu_is_honoured_waits_when_busy_and_waits_when_unknown():
    gpus = [gpu(0), gpu(1, utilization_gpu=90.0)]
    decision = choose(gpus, TaskRequest(gpu=1, strategy="least_loaded"), ctx())
    assert decision.gpu == 1 and decision.strategy == "specific_gpu"
    drained = choose([gpu(0), gpu(1, status="maintenance")], TaskRequest(gpu=1), ctx())
    assert drained.outcome == "wait"
    unknown = choose(gpus, TaskRequest(gpu=9), ctx())
    assert unknown.outcome == "wait" and "GPU 9 is not connected (connected: 0, 1)" in unknown.reason


def test_decision_serialises_for_explain():
    decision = choose([gpu(0), gpu(1, status="maintenance")], TaskRequest(strategy="hybrid"), ctx())
    data = decision.to_dict()
    assert data["gpu"] == 0 and data["outcome"] == "placed" and data["strategy"] == "hybrid"
    assert set(data["scores"]) == {"0"} and data["rejected"] == {"1": "status maintenance"}


# -- properties ------------------------------------------------------------------------------------------

gpu_states = st.builds(
    lambda i, used, util, active, status, temp: gpu(
        i, memory_used_mb=used, utilization_gpu=util, active_requests=active, status=status, temperature_c=temp
    ),
    st.integers(0, 7),
    st.integers(0, 16000),
    st.floats(0, 100),
    st.integers(0, 10),
    st.sampled_from(["active", "active", "maintenance", "error"]),
    st.floats(20, 95),
)


@given(
    gpus=st.lists(gpu_states, max_size=8, unique_by=lambda g: g.id),
    memory=st.integers(0, 20000),
    strategy=st.sampled_from(
        [
            "round_robin",
            "least_loaded",
            "memory_optimized",
            "task_specific",
            "random",
            "hybrid",
            "single_gpu",
            "earliest_finish",
        ]
    ),
)
def test_a_placed_task_always_lands_on_a_gpu_that_can_take_it(gpus, memory, strategy):
    request = TaskRequest(strategy=strategy, memory_mb=memory, task_type="text_generation")
    decision = choose(gpus, request, ctx(rng=random.Random(0)))
    if decision.placed:
        chosen = next(g for g in gpus if g.id == decision.gpu)
        assert rejection(chosen, request, POLICY, own_load=chosen.active_requests > 0) is None
    else:
        assert decision.gpu is None and decision.reason
        if strategy != "single_gpu":
            assert all(rejection(g, request, POLICY, own_load=g.active_requests > 0) is not None for g in gpus)


# -- earliest_finish ----------------------------------------------------------------------------------


def ef(gpus, request=None, **kw):
    return choose(gpus, request or TaskRequest(strategy="earliest_finish"), ctx(**kw))


def test_earliest_finish_weighs_queued_work_against_learned_speed():
    gpus = [gpu(0), gpu(1)]
    learned = {0: 0.1, 1: 0.4}  # GPU 0 runs this type 4x faster
    assert ef(gpus, expected=learned).gpu == 0
    queued = {0: 0.5, 1: 0.0}
    d = ef(gpus, expected=learned, backlog=queued.get)
    assert d.gpu == 1 and d.scores == {0: pytest.approx(0.6), 1: pytest.approx(0.4)}
    assert "0.000s queued + 0.400s to run" in d.reason


def test_earliest_finish_tries_a_gpu_it_has_not_learned_as_if_it_were_the_fastest():
    d = ef([gpu(0), gpu(1)], expected={0: 0.3}, backlog={0: 0.1, 1: 0.0}.get)
    assert d.gpu == 1 and d.scores[1] == pytest.approx(0.3)


def test_earliest_finish_keeps_the_only_gpus_that_fit_large_tasks_for_them():
    """GPU 0 (80 GB) is the only fit for 24 GB tasks; a small task that would finish a little sooner there
    goes to GPU 1 when enough of them wait or keep arriving, never when none do."""
    gpus = [gpu(0, memory_total_mb=81920), gpu(1, memory_total_mb=16384)]
    small = TaskRequest(strategy="earliest_finish", memory_mb=512)
    learned = {0: 0.01, 1: 0.04}
    assert ef(gpus, small, expected=learned).gpu == 0
    assert ef(gpus, small, expected=learned, held_memory={24576: 1}).gpu == 0  # 0.01 x 2 < 0.04
    d = ef(gpus, small, expected=learned, held_memory={24576: 5})
    assert d.gpu == 1 and "kept GPU 0 for larger tasks" in d.reason
    assert ef(gpus, small, expected=learned, recent_memory={24576: 50, 512: 50}, held_memory={24576: 2}).gpu == 1
    large = TaskRequest(strategy="earliest_finish", memory_mb=24576)
    assert ef(gpus, large, expected={0: 0.2}, held_memory={24576: 9}).gpu == 0
    fits_everywhere = {4096: 9}  # waiting tasks that fit both GPUs reserve neither
    assert ef(gpus, small, expected=learned, held_memory=fits_everywhere).gpu == 0


def test_earliest_finish_runs_a_task_where_its_large_inputs_are_unless_waiting_costs_more():
    gpus = [gpu(0), gpu(1)]
    learned = {0: 0.1, 1: 0.1}
    inputs = {1: 20_000_000}  # 20 MB on GPU 1's worker: 0.2 s to move at the default 0.1 GB/s
    d = ef(gpus, expected=learned, backlog={0: 0.0, 1: 0.15}.get, inputs=inputs)
    assert d.gpu == 1 and "20 of its 20 MB of inputs already there" in d.reason
    assert ef(gpus, expected=learned, backlog={0: 0.0, 1: 0.5}.get, inputs=inputs).gpu == 0  # waiting costs more
    assert ef(gpus, expected=learned, backlog={0: 0.0, 1: 0.15}.get).gpu == 0  # no inputs: the idle GPU


# -- late binding (earliest_finish) ------------------------------------------------------------------

BIG, SMALL = 81920, 16384  # an A100 80GB and a T4 16GB: a 24 GB task fits only the big ones (memory_threshold 0.9)


def pool_of_two_big_one_small():
    return [gpu(0, memory_total_mb=BIG), gpu(1, memory_total_mb=BIG), gpu(2, memory_total_mb=SMALL)]


@given(
    queued=st.tuples(*[st.sampled_from([0.0, 0.01, 0.05, 0.06, 0.061, 0.1, 0.2, 0.4])] * 3),
    own=st.tuples(st.sampled_from([0.05, 0.2, 1.0]), st.sampled_from([0.05, 0.2, 1.0, None])),
    memory=st.sampled_from([512, 24576]),
)
def test_late_binding_holds_a_task_with_few_fits_exactly_when_every_fitting_gpu_has_a_long_queue(queued, own, memory):
    """Oracle from the definition: a task that some GPUs can never take (24 GB: only the two 80 GB GPUs) may join
    a GPU only if the work queued there is at most LATE_BINDING_SHARE of its own learned seconds there (a GPU it
    has not run counts as short); with no such GPU it waits, naming the GPUs it waits for. A task that fits every
    GPU (512 MB) is never held this way."""
    learned = {0: own[0], 2: 0.5} | ({1: own[1]} if own[1] is not None else {})
    backlog = dict(enumerate(queued))
    request = TaskRequest(strategy="earliest_finish", memory_mb=memory)
    d = ef(pool_of_two_big_one_small(), request, expected=learned, backlog=backlog.get)
    if memory == 512:
        assert d.placed
        return
    short = [g for g in (0, 1) if g not in learned or backlog[g] <= LATE_BINDING_SHARE * learned[g]]
    if not short:
        assert d.outcome == "wait" and d.waits_for == frozenset({0, 1}), d
        assert d.reason.startswith("late binding: it fits 2 of the 3 GPUs")
        return
    finish = {g: backlog[g] + learned.get(g, min(learned.values())) for g in short}
    assert d.gpu == min(short, key=lambda g: (finish[g], g)), (d, finish)


def test_late_binding_waits_for_the_first_big_gpu_to_drain_rather_than_queueing_behind_a_large_task():
    """Both 80 GB GPUs run a 0.2 s task: a second 24 GB task waits (30% of 0.2 s = 0.06 s of queue at most) until
    one of them has only a 0.05 s task left."""
    gpus = pool_of_two_big_one_small()
    large = TaskRequest(strategy="earliest_finish", memory_mb=24576)
    learned = {0: 0.2, 1: 0.2}
    d = ef(gpus, large, expected=learned, backlog={0: 0.2, 1: 0.2, 2: 0.0}.get)
    assert d.outcome == "wait" and d.gpu is None
    assert "GPU 0: 0.200s queued > 30% of its 0.200s; GPU 1: 0.200s queued > 30% of its 0.200s" in d.reason
    assert ef(gpus, large, expected=learned, backlog={0: 0.2, 1: 0.05, 2: 0.0}.get).gpu == 1
    assert ef(gpus, large, expected={}, backlog={0: 0.2, 1: 0.2, 2: 0.0}.get).gpu == 0  # nothing learned: no hold


@pytest.mark.parametrize("priority", [1, 3, 5])
def test_a_gpu_kept_for_a_waiting_task_is_closed_to_lower_priorities_only(priority):
    """RoutingContext.kept: GPU 0 is kept for a priority-3 task waiting for it to drain. A lower-priority task
    cannot take it (the reason says why); one of the same or a higher priority can."""
    gpus = [gpu(0), gpu(1, active_requests=3)]
    d = choose(gpus, TaskRequest(strategy="least_loaded", priority=priority), ctx(kept={0: 3}))
    if priority < 3:
        assert d.gpu == 1 and d.rejected == {0: "kept for a priority-3 task waiting for it to drain"}
    else:
        assert d.gpu == 0 and not d.rejected


def locality_policy(**multi_gpu):
    return build_config({"gpu": {"multi_gpu": multi_gpu}}).routing()


def ef_with(policy, gpus, **kw):
    return choose(gpus, TaskRequest(strategy="earliest_finish"), RoutingContext(policy, **kw))


@given(
    nbytes=st.integers(1, 10**10),
    wait_s=st.floats(0.0, 20.0),
    gb_per_s=st.sampled_from([0.1, 1.0, 12.5, 300.0]),
)
def test_data_locality_keeps_a_task_with_its_inputs_exactly_when_moving_them_costs_more_than_waiting(
    nbytes, wait_s, gb_per_s
):
    """Oracle from the definition: inputs on GPU 1, which has ``wait_s`` of work queued; GPU 0 is idle and
    as fast. The task stays on GPU 1 iff moving its inputs (bytes / transfer rate) takes longer than that
    wait, and then the explanation says why; ties go to the lower id, like every other earliest_finish tie."""
    policy = locality_policy(transfer_gb_per_s=gb_per_s)
    move_s = nbytes / (gb_per_s * 1e9)
    d = ef_with(
        policy, [gpu(0), gpu(1)], expected={0: 0.1, 1: 0.1}, backlog={0: 0.0, 1: wait_s}.get, inputs={1: nbytes}
    )
    if abs(move_s - wait_s) < 1e-9:
        return  # a tie within rounding: either answer is right
    assert d.gpu == (1 if move_s > wait_s else 0), (move_s, wait_s, d.reason)
    at_half = any(abs(ms % 1 - 0.5) < 1e-6 for ms in (move_s * 1e3, wait_s * 1e3))  # a rounding tie in the text
    if d.gpu == 1:
        assert at_half or d.reason.endswith(
            f"; data locality: stays with its inputs (moving them to GPU 0 would take {move_s * 1e3:.0f} ms,"
            f" more than the {wait_s * 1e3:.0f} ms longer wait here)"
        )
    else:
        assert "data locality" not in d.reason and f"0 of its {nbytes / 1e6:.0f} MB of inputs already there" in d.reason


def test_a_busy_gpu_holding_the_inputs_loses_to_an_idle_one_when_its_queue_outlasts_the_transfer():
    """30 MB on GPU 2 (0.3 s to move at the default 0.1 GB/s): a 0.25 s queue there keeps the task, a 0.35 s
    queue sends it to idle GPU 0; with data_locality off it goes to the idle GPU whatever the bytes."""
    gpus = [gpu(0), gpu(1), gpu(2)]
    queued = {0: 0.0, 1: 0.05, 2: 0.25}
    inputs = {2: 30_000_000}
    d = ef_with(locality_policy(), gpus, backlog=queued.get, inputs=inputs)
    assert d.gpu == 2 and "30 of its 30 MB of inputs already there" in d.reason
    assert "moving them to GPU 0 would take 300 ms, more than the 250 ms longer wait here" in d.reason
    assert ef_with(locality_policy(), gpus, backlog={**queued, 2: 0.35}.get, inputs=inputs).gpu == 0
    off = ef_with(locality_policy(data_locality=False), gpus, backlog=queued.get, inputs=inputs)
    assert off.gpu == 0 and "inputs" not in off.reason
    fast = ef_with(locality_policy(transfer_gb_per_s=1), gpus, backlog=queued.get, inputs=inputs)  # 30 ms to move
    assert fast.gpu == 0


def test_data_locality_config_keys_are_validated():
    from altlas_dask.config import ConfigError

    assert locality_policy().data_locality is True and locality_policy().transfer_bytes_per_s == 1e8
    assert locality_policy(transfer_gb_per_s=25).transfer_bytes_per_s == 25e9
    with pytest.raises(ConfigError, match=r"gpu.multi_gpu.transfer_gb_per_s.*got 0"):
        locality_policy(transfer_gb_per_s=0)
    with pytest.raises(ConfigError, match=r"gpu.multi_gpu.data_locality.*got 'sometimes'"):
        locality_policy(data_locality="sometimes")


def test_a_full_gpu_holding_the_inputs_is_waited_for_when_its_next_slot_beats_moving_them():
    """GPU 1 holds 50 MB (0.5 s to move at 0.1 GB/s) but every slot is taken: the task waits for it while its
    queue (0.2 s) is shorter than moving the inputs to idle GPU 0; a longer queue there (1 s), a GPU that is full
    for another reason than its slots, or data_locality off send it to GPU 0 now."""
    limit = POLICY.max_concurrent_tasks_per_gpu
    full = gpu(1, active_requests=limit)
    inputs = {1: 50_000_000}
    d = ef_with(locality_policy(), [gpu(0), full], backlog={0: 0.0, 1: 0.2}.get, inputs=inputs)
    assert d.outcome == "wait" and d.gpu is None
    assert d.reason == (
        "data locality: waits for a slot on GPU 1, which holds 50 of its 50 MB of inputs "
        "(expected finish there 1.200s; on GPU 0, moving them, 1.500s)"
    )
    assert ef_with(locality_policy(), [gpu(0), full], backlog={0: 0.0, 1: 1.0}.get, inputs=inputs).gpu == 0
    too_hot = full.with_(temperature_c=99.0)
    assert ef_with(locality_policy(), [gpu(0), too_hot], backlog={0: 0.0, 1: 0.2}.get, inputs=inputs).gpu == 0
    off = locality_policy(data_locality=False)
    assert ef_with(off, [gpu(0), full], backlog={0: 0.0, 1: 0.2}.get, inputs=inputs).gpu == 0

"""GPU time charged right (issue 22 item 6), in the pure core with a clock the test owns.

A task is charged the device time its worker measured, else its processor-sharing share of its GPU: while
``n`` tasks run there, each is charged ``dt / n``. The oracles below integrate that definition over the
intervals the test itself chose; they never ask the core's own clock.
"""

from __future__ import annotations

import pytest
from core_helpers import Driver, make_core
from hypothesis import given, settings
from hypothesis import strategies as st

from altlas_dask.scheduling import events as ev
from altlas_dask.scheduling.actions import Record, Usage

GPUS = 2
SLOTS = 64  # every task placed runs at once: the core's running set is exactly the test's intervals


def charges(actions) -> dict[str, float]:
    return {a.row["key"]: a.row["gpu_seconds"] for a in actions if isinstance(a, Record)}


def shares_by_definition(intervals: dict[str, tuple[float, float]]) -> dict[str, float]:
    """``∫ dt / n(t)`` over each interval, ``n(t)``: the intervals ``[start, end)`` holding ``t``."""
    points = sorted({t for interval in intervals.values() for t in interval})
    shares = dict.fromkeys(intervals, 0.0)
    for lo, hi in zip(points, points[1:], strict=False):
        middle = (lo + hi) / 2
        holding = [k for k, (s, e) in intervals.items() if s <= middle < e]
        for key in holding:
            shares[key] += (hi - lo) / len(holding)
    return shares


def run_schedule(tasks: list[tuple[int, float, float, float]]) -> dict[str, float]:
    """Each task ``(gpu, start, duration, compute_seconds)`` started and finished at those times in one core."""
    d = Driver(make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": SLOTS}}}), gpus=GPUS, now=0.0)
    timeline = []
    for i, (gpu, start, duration, compute) in enumerate(tasks):
        timeline.append((start, 1, f"t{i}", gpu, compute))
        timeline.append((start + duration, 0, f"t{i}", gpu, compute))
    charged: dict[str, float] = {}
    for now, starting, key, gpu, compute in sorted(timeline):  # ends before starts at the same moment
        d.now = now
        if starting:
            d.submit(key, specific_gpu_id=gpu)
            assert d.core.tasks[key].gpu == gpu
            d.start(key)
        else:
            charged |= charges(d.core.handle(ev.Finished(key, now, d.worker(gpu), compute)))
    assert set(charged) == {f"t{i}" for i in range(len(tasks))}
    return charged


schedules = st.lists(
    st.tuples(
        st.integers(0, GPUS - 1),
        st.integers(0, 40).map(lambda t: t / 4),  # start (quarter seconds: ties happen)
        st.integers(1, 40).map(lambda t: t / 4),  # wall time
        st.one_of(st.just(0.0), st.floats(0.01, 20)),  # the worker's compute seconds (0: it sent none)
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=200, deadline=None)
@given(schedules)
def test_charges_on_one_gpu_over_any_window_add_up_to_at_most_the_window(tasks):
    charged = run_schedule(tasks)
    for gpu in range(GPUS):
        mine = {f"t{i}": (s, s + w) for i, (g, s, w, _) in enumerate(tasks) if g == gpu}
        shares = shares_by_definition(mine)
        for i, (g, _, _, compute) in enumerate(tasks):  # each: its share, never more than its compute time
            if g == gpu:
                expected = min(compute, shares[f"t{i}"]) if compute > 0 else shares[f"t{i}"]
                assert charged[f"t{i}"] == pytest.approx(expected, abs=1e-9)
        edges = sorted({t for interval in mine.values() for t in interval})
        for a in edges:
            for b in (e for e in edges if e > a):
                inside = sum(charged[k] for k, (s, e) in mine.items() if a <= s and e <= b)
                assert inside <= b - a + 1e-9, (gpu, a, b, inside)


def eight_on_one_gpu(device_seconds: float | None) -> list[float]:
    """Issue 22's case: 8 tasks start together on one GPU whose kernels take 1 s each, one at a time: they end
    at 1, 2, ... 8 s (8 s of wall time, 8 s of device time); each worker timed its task's whole wait + run."""
    d = Driver(make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 8}}}), gpus=1, now=0.0)
    for i in range(8):
        d.submit(f"k{i}", specific_gpu_id=0)
        d.start(f"k{i}")
    charged = []
    for i in range(8):
        d.now = float(i + 1)
        finished = ev.Finished(f"k{i}", d.now, d.worker(0), float(i + 1), device_seconds=device_seconds)
        charged.append(charges(d.core.handle(finished))[f"k{i}"])
    return charged


def test_eight_tasks_sharing_a_gpu_for_8_s_are_charged_the_8_s_measured_not_36():
    assert eight_on_one_gpu(device_seconds=1.0) == [1.0] * 8  # the device time the worker measured


def test_eight_tasks_sharing_a_gpu_for_8_s_without_a_measurement_are_charged_their_shares():
    charged = eight_on_one_gpu(device_seconds=None)
    assert sum(charged) == pytest.approx(8.0)  # the device's time, not 1 + 2 + ... + 8 = 36
    assert charged[0] == pytest.approx(1 / 8)  # alone with 7 others for its 1 s
    assert charged[-1] == pytest.approx(sum(1 / n for n in range(1, 9)))


def test_a_task_alone_on_its_gpu_is_charged_its_compute_time():
    d = Driver(make_core(), gpus=1, now=0.0)
    d.submit("alone")
    d.start("alone")
    d.now = 3.0
    assert charges(d.core.handle(ev.Finished("alone", 3.0, d.worker(0), 2.5)))["alone"] == 2.5


def test_the_gpu_time_quota_and_the_usage_table_count_the_charged_time():
    """(Fair share is corrected by the same ``task.gpu_seconds``, in ``Admission.finish``.)"""
    d = Driver(make_core(), gpus=1, now=0.0)
    for key in ("a", "b"):
        d.submit(key, user="ana")
        d.start(key)
    d.now = 10.0
    usage = []
    for key in ("a", "b"):  # 10 s each of wall time, together on one GPU
        usage += [a for a in d.core.handle(ev.Finished(key, 10.0, d.worker(0), 10.0)) if isinstance(a, Usage)]
    assert d.core.book.usage["ana"].day_gpu_seconds == pytest.approx(10.0)  # 5 + 5, not 10 + 10
    assert sum(u.gpu_seconds for u in usage) == pytest.approx(10.0)

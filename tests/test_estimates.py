"""Per-task estimates (gpu_options.cost): a learned rate per (task type, GPU), robust to outliers."""

from __future__ import annotations

import statistics

import pytest
from core_helpers import Driver, make_core, placed

from altlas_dask.options import GpuOptions, GpuOptionsError
from altlas_dask.scheduling.estimates import WINDOW, Estimates


def test_each_task_gets_rate_times_its_own_cost_and_an_outlier_moves_nothing() -> None:
    estimates = Estimates()
    for tokens in (16, 650, 120, 300, 40):
        estimates.learn(0, "chat", 0.01 * tokens, cost=tokens)  # 10 ms a token on GPU 0
        estimates.learn(1, "chat", 0.04 * tokens, cost=tokens)  # 40 ms a token on GPU 1
    estimates.learn(0, "chat", 500.0, cost=16)  # one straggler: 31 s a token
    assert estimates.expected(0, "chat", 16) == pytest.approx(0.16)
    assert estimates.expected(0, "chat", 650) == pytest.approx(6.5)
    assert estimates.expected(1, "chat", 650) == pytest.approx(26.0)
    assert estimates.performance("chat", {0, 1}) == pytest.approx({0: 1.0, 1: 0.25})


def test_without_cost_the_estimate_is_the_median_of_the_latest_run_times() -> None:
    estimates = Estimates()
    samples = [1.0, 1.2, 0.9, 30.0, 1.1] + [2.0] * (WINDOW - 2)
    for seconds in samples:
        estimates.learn(0, "embed", seconds)
    assert estimates.expected(0, "embed") == statistics.median(samples[-WINDOW:])
    assert estimates.cost("embed") == statistics.median(samples[-WINDOW:])


def test_the_core_expects_a_long_generation_to_take_longer_than_a_short_one() -> None:
    """Learned on GPU 0 at 10 ms a token: a 650-token task queued there counts 6.5 s, a 16-token one 0.16 s."""
    core = make_core({"gpu": {"multi_gpu": {"max_concurrent_tasks_per_gpu": 4, "prefetch_depth": 0}}})
    d = Driver(core, gpus=1)
    for n, tokens in enumerate((100, 200, 300)):
        key = f"learn-{n}"
        assert placed(d.submit(key, task_type="chat", cost=tokens)) == {key: 0}
        d.start(key)
        d.finish(key, 0.01 * tokens)
    d.submit("long", task_type="chat", cost=650)
    d.submit("short", task_type="chat", cost=16)
    assert core.gpus.slots[0].expected_s == pytest.approx({"long": 6.5, "short": 0.16})
    assert core.tasks["long"].cost == pytest.approx(6.5)  # fair share charges it as much


@pytest.mark.parametrize("value", [0, -3, float("nan"), float("inf"), "many", 1e16])
def test_a_cost_that_is_no_positive_size_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(GpuOptionsError, match=r"gpu_options\.cost"):
        GpuOptions.parse({"cost": value})

"""Quota bookkeeping (pure, fake clock), the fair-share queue and the SQLite accounting store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from altlas_dask.accounting.store import AccountingStore
from altlas_dask.config import Quotas, build_config
from altlas_dask.scheduling.fairqueue import FairQueue
from altlas_dask.scheduling.quotas import QuotaBook, QuotaExceededError, QuotaValueError

NOON = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def book(clock, **defaults) -> QuotaBook:
    return QuotaBook(Quotas(defaults=defaults), clock)


def test_requests_per_minute_rejects_with_limit_usage_and_reset_then_the_window_slides():
    clock = Clock()
    quotas = book(clock, requests_per_minute=3)
    for _ in range(3):
        assert quotas.admit("ana", 3) is None
        clock.now += 1
    error = quotas.admit("ana", 3)
    assert isinstance(error, QuotaExceededError)
    assert str(error) == (
        "quota exceeded for user 'ana': requests_per_minute limit 3, used 3; resets at 2026-11-23T12:01:00Z"
    )
    assert error.retry_after(clock.now) == 58
    clock.now = NOON + 60.5  # the first request left the window
    assert quotas.admit("ana", 3) is None
    assert quotas.admit("bob", 3) is None, "limits are per user"


def test_requests_per_day_resets_at_utc_midnight():
    clock = Clock()
    quotas = book(clock, requests_per_day=2)
    assert quotas.admit("ana", 3) is None and quotas.admit("ana", 3) is None
    error = quotas.admit("ana", 3)
    assert error.limit_name == "requests_per_day" and error.reset_time == "2026-11-24T00:00:00Z"
    clock.now = datetime(2026, 11, 24, 0, 0, 1, tzinfo=UTC).timestamp()
    assert quotas.admit("ana", 3) is None


def test_a_task_serving_several_requests_is_charged_one_request_each():
    """A gateway batch task of N requests counts N against the request quotas, and is refused whole when its
    N would go over the limit (nothing counted then)."""
    clock = Clock()
    quotas = book(clock, requests_per_minute=5, requests_per_day=100)
    assert quotas.admit("ana", 3, requests=3) is None
    error = quotas.admit("ana", 3, requests=3)
    assert isinstance(error, QuotaExceededError) and error.limit_name == "requests_per_minute"
    assert quotas.admit("ana", 3, requests=2) is None  # exactly up to the limit
    assert quotas.admit("ana", 3) is not None
    report = quotas.report("ana")
    assert report["rate_limits"]["requests_per_minute"]["used"] == 5
    assert report["rate_limits"]["requests_per_day"]["used"] == 5


def test_gpu_time_is_metered_from_run_time():
    clock = Clock()
    quotas = book(clock, gpu_time_minutes=1)
    assert quotas.admit("ana", 3) is None
    quotas.finished("ana", 3, gpu_seconds=61)
    error = quotas.admit("ana", 3)
    assert error.limit_name == "gpu_time_minutes" and error.used == pytest.approx(1.02)
    assert quotas.report("ana")["quotas"]["gpu_time"]["remaining"] == 0


def test_priority_requests_count_outstanding_priority_4_and_5_tasks():
    clock = Clock()
    quotas = book(clock, priority_requests=1)
    assert quotas.admit("ana", 5) is None
    assert quotas.admit("ana", 3) is None, "normal priority is not limited"
    error = quotas.admit("ana", 4)
    assert error.limit_name == "priority_requests" and error.reset_time is None
    assert "frees when one of your priority 4-5 tasks finishes" in str(error)
    quotas.finished("ana", 5, 0.0)
    assert quotas.admit("ana", 4) is None


def test_concurrency_is_a_wait_not_a_rejection():
    quotas = book(Clock(), concurrent_requests=2)
    assert quotas.can_start("ana")
    quotas.started("ana")
    quotas.started("ana")
    assert not quotas.can_start("ana")
    assert quotas.can_start("bob")
    quotas.stopped("ana")
    assert quotas.can_start("ana")


def test_report_has_the_seed_shape():
    clock = Clock()
    quotas = book(clock)
    quotas.admit("ana", 5)
    quotas.started("ana")
    report = quotas.report("ana")
    assert report["user_id"] == "ana"
    assert set(report["quotas"]) == {"gpu_time", "concurrent_requests", "priority_requests"}
    assert set(report["rate_limits"]) == {"requests_per_minute", "requests_per_day"}
    rpm = report["rate_limits"]["requests_per_minute"]
    assert (rpm["limit"], rpm["used"], rpm["remaining"]) == (60_000, 1, 59_999)
    assert rpm["reset_time"] == "2026-11-23T12:01:00Z"
    assert report["quotas"]["concurrent_requests"]["used"] == 1


def test_overrides_from_config_and_at_run_time():
    config = build_config({"quotas": {"users": {"ana": {"concurrent_requests": 2, "weight": 3}}}})
    quotas = QuotaBook(config.quotas, Clock())
    assert quotas.limits("ana").concurrent_requests == 2 and quotas.limits("ana").weight == 3
    assert quotas.limits("bob").concurrent_requests == 1024
    assert quotas.set_override("ana", {"requests_per_day": 10}).requests_per_day == 10
    assert quotas.limits("ana").concurrent_requests == 2, "earlier overrides are kept"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"concurrent_requests": -1}, "quota.concurrent_requests"),
        ({"gpu_time_minutes": 0}, "quota.gpu_time_minutes"),
        ({"weight": "heavy"}, "quota.weight"),
        ({"bananas": 3}, "quota.bananas: unknown option"),
        ({}, "no quota value given"),
    ],
)
def test_bad_quota_values_are_rejected_clearly(changes, message):
    quotas = book(Clock())
    with pytest.raises(QuotaValueError, match=message):
        quotas.set_override("ana", changes)


def test_bad_quota_config_names_the_key():
    from altlas_dask.config import ConfigError

    with pytest.raises(ConfigError, match="quotas.users.ana.concurrent_requests"):
        build_config({"quotas": {"users": {"ana": {"concurrent_requests": 0}}}})
    with pytest.raises(ConfigError, match="user name"):
        build_config({"quotas": {"users": {"no spaces": {}}}})


def test_disabled_quotas_admit_everything():
    quotas = QuotaBook(Quotas(enabled=False, defaults={"requests_per_minute": 1}), Clock())
    assert quotas.admit("ana", 3) is None and quotas.admit("ana", 3) is None


# -- fair share -----------------------------------------------------------------------------------


def drain(queue: FairQueue, may_start=lambda user: True) -> list[str]:
    order = []
    for entry in queue.in_order(may_start):
        queue.served(entry)
        order.append(entry.key)
    return order


def test_a_flooding_user_does_not_starve_a_single_task():
    queue = FairQueue(fair_share=True)
    for i in range(100):
        queue.push(f"flood-{i}", "flood", 3)
    first = []
    for entry in queue.in_order(lambda u: True):
        queue.served(entry)
        first.append(entry.key)
        if len(first) == 10:
            break
    assert first == [f"flood-{i}" for i in range(10)]
    queue.push("single", "solo", 3)
    order = drain(queue)
    assert order.index("single") <= 1


def test_fifo_without_fair_share():
    queue = FairQueue(fair_share=False)
    for i in range(50):
        queue.push(f"flood-{i}", "flood", 3)
    queue.push("single", "solo", 3)
    assert drain(queue)[-1] == "single"


def test_weights_share_in_proportion_and_priority_comes_first():
    queue = FairQueue(fair_share=True)
    for i in range(30):
        queue.push(f"a{i}", "a", 3, weight=2.0)
        queue.push(f"b{i}", "b", 3, weight=1.0)
    queue.push("urgent", "b", 5)
    order = drain(queue)
    assert order[0] == "urgent"
    first_30 = order[1:31]
    assert sum(k.startswith("a") for k in first_30) == 20  # 2:1


def test_users_at_their_limit_are_skipped_and_kept():
    queue = FairQueue()
    for i in range(3):
        queue.push(f"a{i}", "a", 3)
        queue.push(f"b{i}", "b", 3)
    assert drain(queue, lambda user: user != "a") == ["b0", "b1", "b2"]
    assert len(queue) == 3
    assert drain(queue) == ["a0", "a1", "a2"]


def test_requeued_entries_keep_their_place():
    queue = FairQueue()
    for i in range(3):
        queue.push(f"k{i}", "a", 3)
    taken = next(queue.in_order(lambda u: True))
    queue.requeue(taken)
    assert drain(queue) == ["k0", "k1", "k2"]


# -- accounting store -----------------------------------------------------------------------------


def test_store_persists_usage_overrides_and_records_across_reopen(tmp_path):
    path = tmp_path / "acct.sqlite"
    store = AccountingStore(path, flush_interval=0.01)
    store.add_usage("ana", "2026-11-23", tasks=2, gpu_seconds=1.5)
    store.add_usage("ana", "2026-11-23", tasks=1, gpu_seconds=0.5, rejected=1)
    store.add_usage("ana", "2026-11-22", tasks=4)
    store.set_override("ana", {"concurrent_requests": 3})
    store.record_task({"key": "t1", "user": "ana", "status": "completed", "gpu": 1, "finished": 5.0})
    store.record_task({"key": "t2", "user": "bob", "status": "failed", "finished": 6.0, "error": "boom"})
    assert store.flush()
    store.close()
    again = AccountingStore(path)
    try:
        assert again.usage_on("2026-11-23") == {"ana": (3, 2.0)}
        assert again.overrides() == {"ana": {"concurrent_requests": 3}}
        assert [r["day"] for r in again.usage("ana")] == ["2026-11-22", "2026-11-23"]
        assert [r["day"] for r in again.usage("ana", since="2026-11-23")] == ["2026-11-23"]
        assert again.usage("ana")[1]["rejected"] == 1
        assert [r["key"] for r in again.tasks()] == ["t2", "t1"]
        assert again.tasks(user="bob")[0]["error"] == "boom"
        assert again.tasks(status="completed")[0]["gpu"] == 1
    finally:
        again.close()

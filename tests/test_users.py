"""Users on a real cluster: quotas enforced at submission, concurrency waits, fair share, isolation, restart."""

from __future__ import annotations

import sys
import time

import cloudpickle
import pytest
from conftest import wait_for

from altlas_dask import QuotaExceededError, RouterError, TaskCancelledError, run_on_gpu, start_cluster
from altlas_dask.config import build_config

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def timed(work_gflop):
    start = time.time()
    result = run_on_gpu(work_gflop)
    return {**result, "start": start, "end": time.time()}


def config(database: str, **quotas) -> dict:
    return {
        "cluster": {"scheduler_address": "127.0.0.1:0", "dashboard_address": "127.0.0.1:0"},
        "accounting": {"database": database, "flush_interval": 0.05},
        "gpu": {"workload": {"queue_processing_interval": 0.05}, "multi_gpu": {"max_concurrent_tasks_per_gpu": 2}},
        "simulation": {"gpus": [{"name": "Sim", "memory_mb": 16000, "speed_gflops": 1000, "count": 2}]},
        "quotas": {
            "admins": ["root"],
            "users": {
                "rate": {"requests_per_minute": 5},
                "meter": {"gpu_time_minutes": 0.002},
                "vip": {"priority_requests": 1},
                "solo": {"concurrent_requests": 1},
            },
            **quotas,
        },
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    db = tmp_path_factory.mktemp("acct") / "altlas.sqlite"
    with start_cluster(build_config(config(str(db)))) as gpu_cluster:
        yield gpu_cluster


@pytest.fixture
def as_user(cluster):
    clients = []

    def make(user):
        client = cluster.client(gpu_defaults={"user": user})
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_requests_per_minute_rejects_at_once_with_limit_usage_and_reset(as_user):
    client = as_user("rate")
    ok = [client.submit(run_on_gpu, 1, pure=False) for _ in range(5)]
    client.gather(ok)
    rejected = client.submit(run_on_gpu, 1, pure=False)
    with pytest.raises(QuotaExceededError) as info:
        rejected.result(timeout=10)
    message = str(info.value)
    assert "requests_per_minute limit 5, used 5; resets at 20" in message
    assert info.value.reset_time.endswith("Z")
    assert client.explain(rejected)["status"] == "rejected"
    report = client.quota()
    assert report["rate_limits"]["requests_per_minute"]["remaining"] == 0


def test_gpu_time_is_metered_and_enforced(as_user):
    client = as_user("meter")
    client.submit(run_on_gpu, 200, pure=False).result()  # 0.2 s of GPU time > 0.12 s allowed
    with pytest.raises(QuotaExceededError, match="gpu_time_minutes limit 0.002"):
        client.submit(run_on_gpu, 1, pure=False).result(timeout=10)
    assert client.quota()["quotas"]["gpu_time"]["used"] >= 0.002


def test_priority_requests_limit_high_priority_work_outstanding(as_user):
    client = as_user("vip")
    first = client.submit(run_on_gpu, 300, pure=False, gpu_options={"priority": 5})
    asked = {"priority": 4, "over_limit": "reject"}
    with pytest.raises(QuotaExceededError, match="priority_requests limit 1, used 1"):
        client.submit(run_on_gpu, 1, pure=False, gpu_options=asked).result(timeout=10)
    assert client.submit(run_on_gpu, 1, pure=False, gpu_options={"priority": 3}).result()["gpu"] in (0, 1)
    first.result()
    assert client.submit(run_on_gpu, 1, pure=False, gpu_options={"priority": 5}).result()["gpu"] in (0, 1)


def test_priority_tasks_over_the_limit_wait_their_turn_and_every_surface_says_queued(as_user):
    """Three priority-5 tasks with priority_requests=1: the 2nd and 3rd wait for admission (queued on the
    router's task list, counted in the GPU list's queue), then all complete; none is rejected."""
    client = as_user("vip")
    futures = [client.submit(run_on_gpu, 300, pure=False, gpu_options={"priority": 5}) for _ in range(3)]
    waiting = wait_for(
        lambda: (
            [t for t in client.tasks(status="queued") if "waiting for admission" in (t.get("waiting_reason") or "")]
            or None
        ),
        what="tasks waiting for admission",
    )
    assert {t["key"] for t in waiting} <= {f.key for f in futures[1:]}
    assert client.sync(client.router.gpus)["queued"] >= len(waiting)
    assert [r["gpu"] in (0, 1) for r in client.gather(futures)] == [True] * 3
    assert not {r["key"] for r in client.records(status="rejected")} & {f.key for f in futures}


def test_over_the_concurrency_limit_tasks_wait_then_proceed(as_user):
    client = as_user("solo")
    futures = [client.submit(timed, 100, pure=False) for _ in range(4)]
    client.gather(futures)
    infos = sorted(client.explain_many(futures).values(), key=lambda i: i["placed_at"])
    assert all(i["status"] == "completed" for i in infos)
    for earlier, later in zip(infos, infos[1:], strict=False):  # the router's own event order
        assert later["placed_at"] >= earlier["finished_at"], "one at a time for user solo"


def test_fair_share_serves_a_single_task_before_a_flood(as_user):
    flood, single = as_user("flood"), as_user("single")
    batch = [flood.submit(timed, 20, pure=False) for _ in range(200)]
    wait_for(lambda: flood.router_status()["tracked"].get("queued", 0) >= 150)  # the flood waits
    lone = single.submit(timed, 20, pure=False)
    lone.result()
    flood.gather(batch)
    lone_placed = single.explain(lone)["placed_at"]
    placed_after = sum(i["placed_at"] > lone_placed for i in flood.explain_many(batch).values())
    assert placed_after >= 150, f"only {placed_after} flood tasks were placed after the single task"


def test_a_user_sees_and_cancels_only_their_own_tasks(as_user):
    ana, bob, root = as_user("ana"), as_user("bob"), as_user("root")
    long = ana.submit(run_on_gpu, 5e6, pure=False)  # runs until cancelled
    wait_for(lambda: ana.tasks(status="running"))
    assert [t["key"] for t in ana.tasks(status="running")] == [long.key]
    assert all(t["user"] == "bob" for t in bob.tasks())
    with pytest.raises(RouterError, match="may not list the tasks of 'ana'") as listing:
        bob.tasks(user="ana")
    assert listing.value.code == 403
    with pytest.raises(RouterError, match="unknown task") as denied:  # another user's ids do not exist for bob
        bob.cancel_task(long)
    assert denied.value.code == 404
    assert long.key in {t["key"] for t in root.tasks(user="ana")}
    assert ana.cancel_task(long, reason="changed my mind")["status"] == "cancelled"
    with pytest.raises(TaskCancelledError, match="cancelled by ana: changed my mind"):
        long.result(timeout=10)
    other = ana.submit(run_on_gpu, 5e6, pure=False)
    root.cancel_task(other)
    with pytest.raises(TaskCancelledError, match="cancelled by root"):
        other.result(timeout=10)
    assert ana.explain(other)["status"] == "cancelled"
    with pytest.raises(RouterError, match="unknown task") as unknown:
        ana.cancel_task("no-such-task")
    assert unknown.value.code == 404


def test_admin_changes_quotas_and_bad_values_are_rejected(as_user):
    root, eve = as_user("root"), as_user("eve")
    with pytest.raises(RouterError, match="'eve' is not an admin") as denied:
        eve.set_quota("eve", concurrent_requests=1000)
    assert denied.value.code == 403
    with pytest.raises(ValueError, match="concurrent_requests must be in .* \\(got -3\\)"):
        root.set_quota("eve", concurrent_requests=-3)  # refused before it is sent
    with pytest.raises(RouterError, match="quota.concurrent_requests") as bad:
        root.set_quota("eve", concurrent_requests=0)  # the router's own limits
    assert bad.value.code == 400
    with pytest.raises(RouterError, match="quota.tokens: unknown option"):
        root.set_quota("eve", tokens=5)
    assert root.set_quota("eve", requests_per_minute=1)["limits"]["requests_per_minute"] == 1
    eve.submit(run_on_gpu, 1, pure=False).result()
    with pytest.raises(QuotaExceededError, match="requests_per_minute limit 1"):
        eve.submit(run_on_gpu, 1, pure=False).result(timeout=10)
    with pytest.raises(RouterError, match="may not read the quota"):
        eve.quota("root")


def test_usage_and_records_come_from_the_database(as_user):
    client = as_user("ledger")
    client.gather([client.submit(run_on_gpu, 50, pure=False) for _ in range(3)])
    (day,) = wait_for(client.usage, what="usage in the database")
    assert day["tasks"] == 3 and day["gpu_seconds"] > 0.1
    records = client.records()
    assert len(records) == 3 and {r["status"] for r in records} == {"completed"}
    assert all(r["gpu"] in (0, 1) and r["strategy"] and r["reason"] for r in records)


def test_a_scheduler_restart_keeps_usage_and_quota_overrides(tmp_path):
    db = str(tmp_path / "restart.sqlite")
    with start_cluster(build_config(config(db))) as first:
        client = first.client(gpu_defaults={"user": "root"})
        ana = first.client(gpu_defaults={"user": "ana"})
        ana.gather([ana.submit(run_on_gpu, 100, pure=False) for _ in range(4)])
        client.set_quota("ana", requests_per_day=6)
        before = ana.quota()
    with start_cluster(build_config(config(db))) as second:
        ana = second.client(gpu_defaults={"user": "ana"})
        after = ana.quota()
        assert after["rate_limits"]["requests_per_day"]["used"] == 4
        assert after["rate_limits"]["requests_per_day"]["limit"] == 6
        assert after["quotas"]["gpu_time"]["used"] == pytest.approx(before["quotas"]["gpu_time"]["used"], abs=1e-3)
        ana.gather([ana.submit(run_on_gpu, 1, pure=False) for _ in range(2)])
        with pytest.raises(QuotaExceededError, match="requests_per_day limit 6, used 6"):
            ana.submit(run_on_gpu, 1, pure=False).result(timeout=10)


def test_open_mode_has_no_trusted_caller_and_admin_calls_need_an_admin(as_user):
    """security.identity: none: names are self-declared, but every call names one and the admin rules hold."""
    bob = as_user("bob")
    for handler in ("altlas_tasks", "altlas_status", "altlas_records", "altlas_drain"):
        kwargs = {"gpu": 0} if handler == "altlas_drain" else {}
        answer = bob.sync(getattr(bob.scheduler, handler), as_user=None, **kwargs)
        assert answer["code"] == 401 and "name the user this call acts as" in answer["error"], handler
    with pytest.raises(RouterError, match="'bob' is not an admin") as denied:
        bob.drain_gpu(0)
    assert denied.value.code == 403
    assert bob.sync(bob.scheduler.altlas_set_quota, user="bob", limits={"weight": 5}, as_user="bob")["code"] == 403
    assert [g.status for g in bob.gpus()] == ["active", "active"]  # public cluster facts need no name

"""Real identity (security.identity: tls): a 2-GPU cluster on loopback with mutual TLS, certificates from
``altlas_dask.ops.certs``; every bypass of issue 12 tried as bob, through the Python client and raw RPC calls."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import distributed
import pytest
from conftest import certificate_clients, outcomes, scraped_metrics, wait_for

from altlas_dask import QuotaExceededError, RouterError, run_on_gpu, start_cluster
from altlas_dask.client.gpu_client import Client
from altlas_dask.client.router_client import RouterClient
from altlas_dask.config import build_config
from altlas_dask.errors import IdentityError, RouterAccessError
from altlas_dask.ops.certs import client_security, init_ca, issue

cloudpickle.register_pickle_by_value(sys.modules[__name__])

USERS = ("alice", "bob", "admin")
SERVICES = ("gateway",)


def tls_config(certs: Path, database: str) -> dict:
    return {
        "cluster": {"scheduler_address": "127.0.0.1:0", "dashboard_address": "127.0.0.1:0"},
        "accounting": {"database": database, "flush_interval": 0.05},
        "gpu": {"workload": {"queue_processing_interval": 0.05}},
        "simulation": {"gpus": [{"name": "Sim", "memory_mb": 16000, "speed_gflops": 1000, "count": 2}]},
        "quotas": {"admins": ["admin"], "users": {"bob": {"requests_per_minute": 3}}},
        "security": {
            "identity": "tls",
            "ca_file": str(certs / "ca.pem"),
            "node_cert": str(certs / "node-1.pem"),
            "node_key": str(certs / "node-1-key.pem"),
            "delegates": ["gateway"],
        },
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("certs")
    init_ca(root)
    issue(root, "node-1", "node")
    for user in USERS:
        issue(root, user)
    for service in SERVICES:
        issue(root, service, "service")
    return root


@pytest.fixture(scope="module")
def cluster(certs, tmp_path_factory):
    db = tmp_path_factory.mktemp("acct") / "altlas.sqlite"
    with start_cluster(build_config(tls_config(certs, str(db)))) as gpu_cluster:
        assert gpu_cluster.scheduler_address.startswith("tls://")
        yield gpu_cluster


@pytest.fixture(scope="module")
def connect(cluster, certs) -> Iterator[Callable[..., distributed.Client]]:
    with certificate_clients(cluster.scheduler_address, certs) as make:
        yield make


@pytest.fixture(scope="module")
def alice(connect):
    client = connect("alice")
    wait_for(lambda: len(client.gpus()) == 2, what="both GPUs")
    return client


@pytest.fixture(scope="module")
def bob(connect):
    return connect("bob")


@pytest.fixture(scope="module")
def admin(connect):
    return connect("admin")


def test_a_task_runs_as_the_certificate_user(alice):
    assert alice.user == "alice"
    future = alice.submit(run_on_gpu, 1.0, pure=False)
    assert "gpu" in future.result(timeout=60)
    assert alice.explain(future)["user"] == "alice"


def test_bob_cannot_submit_as_alice(bob):
    future = bob.submit(run_on_gpu, 1.0, pure=False, gpu_options={"user": "alice"})
    with pytest.raises(IdentityError, match="gpu_options.user='alice': your certificate identifies you as 'bob'"):
        future.result(timeout=60)


def test_bob_cannot_read_or_cancel_alices_tasks(alice, bob):
    slow = alice.submit(run_on_gpu, 3000.0, pure=False)  # 3 s on a simulated GPU
    wait_for(lambda: alice.explain_many([slow]), what="alice's task tracked")
    with pytest.raises(RouterError, match="'bob' may not list the tasks of 'alice'") as denied:
        bob.tasks(user="alice")
    assert denied.value.code == 403
    assert all(t["user"] == "bob" for t in bob.tasks())
    assert bob.explain_many([slow]) == {}
    with pytest.raises(RouterError, match="unknown task") as unknown:
        bob.cancel_task(slow.key)
    assert unknown.value.code == 404
    # raw RPC calls: naming alice (or admin), or naming nobody, gains bob nothing
    forged = bob.sync(bob.scheduler.altlas_tasks, as_user="alice")
    assert forged["code"] == 403 and "your certificate identifies you as 'bob'" in forged["error"]
    forged_admin = bob.sync(bob.scheduler.altlas_cancel, key=slow.key, as_user="admin")
    assert forged_admin["code"] == 403
    nobody = bob.sync(bob.scheduler.altlas_tasks)
    assert all(t["user"] == "bob" for t in nobody["tasks"])
    vouched = bob.sync(bob.scheduler.altlas_tasks, user="alice", admin=True)
    assert vouched["code"] == 403  # only delegates vouch for admin rights
    status = bob.sync(bob.scheduler.altlas_status)
    assert slow.key not in {p["key"] for p in status["recent"]}
    assert slow.result(timeout=60)["gpu"] in (0, 1)


def test_bob_cannot_drain_restart_or_change_quotas(bob, admin):
    with pytest.raises(RouterError, match="'bob' is not an admin .*: may not drain GPU 0") as denied:
        bob.drain_gpu(0)
    assert denied.value.code == 403
    assert bob.sync(bob.scheduler.altlas_drain, gpu=0, as_user="admin")["code"] == 403
    assert bob.sync(bob.scheduler.altlas_enable, gpu=0)["code"] == 403
    with pytest.raises(RouterError, match="'bob' is not an admin"):
        bob.set_quota("bob", requests_per_minute=1000)
    assert bob.sync(bob.scheduler.altlas_set_quota, user="bob", limits={"requests_per_minute": 1000})["code"] == 403
    with pytest.raises(RouterError, match="may not read the quota of 'alice'"):
        bob.quota("alice")
    with pytest.raises(PermissionError, match="'restart' needs an admin certificate: 'bob' .user. may not send it"):
        bob.restart()
    assert all(g.status == "active" for g in bob.gpus())
    # the certificate's admin can
    assert admin.drain_gpu(1, reason="maintenance")["draining"] is True
    assert admin.enable_gpu(1)["draining"] is False
    assert admin.quota("bob")["rate_limits"]["requests_per_minute"]["limit"] == 3


def test_inventing_names_gains_bob_nothing_against_his_quota(bob):
    invented = [bob.submit(run_on_gpu, 1.0, pure=False, gpu_options={"user": f"bob{i}"}) for i in range(5)]
    for future in invented:
        with pytest.raises(IdentityError):
            future.result(timeout=60)
    used_before = bob.quota()["rate_limits"]["requests_per_minute"]["used"]
    futures = [bob.submit(run_on_gpu, 1.0, pure=False) for _ in range(5)]
    found = outcomes(futures, QuotaExceededError, refused="rejected")
    assert found.count("ok") == 3 - used_before and found.count("rejected") == 2 + used_before
    assert bob.tasks(user="bob") and {t["user"] for t in bob.tasks()} == {"bob"}


def test_a_plain_dask_client_is_routed_as_its_certificate_user(connect, alice):
    plain = connect("alice", distributed.Client)
    future = plain.submit(run_on_gpu, 1.0, pure=False)  # no annotation, no GPU resource
    assert future.result(timeout=60)["gpu"] in (0, 1)
    info = alice.explain(future.key)
    assert info["user"] == "alice" and info["status"] == "completed"


def test_a_delegate_acts_for_users(connect, alice):
    gateway = connect("gateway")
    future = gateway.submit(run_on_gpu, 1.0, pure=False, gpu_options={"user": "alice"})
    future.result(timeout=60)
    assert alice.explain(future)["user"] == "alice"  # alice sees it as hers
    mine = gateway.sync(gateway.scheduler.altlas_tasks, as_user="alice")
    assert future.key in {t["key"] for t in mine["tasks"]}
    assert gateway.sync(gateway.scheduler.altlas_drain, gpu=0, as_user="alice")["code"] == 403
    vouched = gateway.sync(gateway.scheduler.altlas_drain, gpu=0, as_user="carol", admin=True)
    assert vouched["draining"] is True  # an admin the gateway authenticated (e.g. an admin API key)
    assert gateway.sync(gateway.scheduler.altlas_enable, gpu=0, as_user="carol", admin=True)["draining"] is False


def test_router_client_acting_as_is_refused_for_a_non_delegate(connect, alice, bob):
    """RouterClient.acting_as on bob's connection (a user certificate) is refused by the router, with the
    exception RouterClient decodes; on the gateway's (a delegate's) a call acts for alice."""
    with pytest.raises(RouterAccessError, match="as_user='alice': your certificate identifies you as 'bob'") as no:
        bob.sync(bob.router.acting_as("alice").tasks)
    assert no.value.code == 403
    with pytest.raises(RouterAccessError, match="'bob' is not an admin"):
        bob.sync(bob.router.acting_as("bob", admin=True).drain, 0)  # only delegates vouch for admin rights
    gateway = RouterClient(connect("gateway", distributed.Client))
    assert gateway.client.sync(gateway.acting_as("alice").usage)["user_id"] == "alice"


def test_a_node_certificate_is_not_a_user(cluster):
    with Client(cluster.cluster, timeout=30) as node:  # the cluster's own security: its node certificate
        future = node.submit(run_on_gpu, 1.0, pure=False)
        with pytest.raises(IdentityError, match="node certificate"):
            future.result(timeout=60)


def test_a_client_without_a_certificate_is_refused_clearly(cluster, certs, tmp_path, monkeypatch):
    monkeypatch.setenv("ALTLAS_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("security: {identity: tls}\n")
    with pytest.raises(IdentityError, match="uses mutual TLS and needs a client certificate"):
        Client(cluster.scheduler_address, timeout=5)
    with pytest.raises((OSError, TypeError, ValueError)):
        distributed.Client(cluster.scheduler_address, timeout=5)  # plain Dask: no TLS context at all
    init_ca(tmp_path / "rogue")
    issue(tmp_path / "rogue", "alice")
    with pytest.raises(OSError):
        Client(cluster.scheduler_address, security=client_security(tmp_path / "rogue", "alice"), timeout=5)


def test_metric_labels_stay_bounded(cluster, alice, bob):
    """Invented task types and unconfigured users are counted as `other`; configured ones by name."""
    done = [
        alice.submit(run_on_gpu, 1.0, pure=False, gpu_options={"task_type": "made-up-model-123"}),
        alice.submit(run_on_gpu, 1.0, pure=False, gpu_options={"task_type": "text_generation"}),
    ]
    alice.gather(done)
    lines = scraped_metrics(cluster, 'model="text_generation"')
    tasks = [line for line in lines if line.startswith("altlas_tasks_total{")]
    assert not any("made-up-model-123" in line or 'user="alice"' in line for line in tasks), tasks
    assert any('model="other"' in line and 'user="other"' in line for line in tasks), tasks
    assert any('user="bob"' in line for line in tasks), tasks  # bob has a configured quota (quotas.users)


def test_bob_cannot_force_cancel_alices_task_through_dask(alice, bob):
    """``Client.cancel(force=True)`` on a key bob learned: only his own interest in it goes."""
    slow = alice.submit(run_on_gpu, 2000.0, pure=False)
    wait_for(lambda: alice.explain_many([slow]), what="alice's task tracked")
    stolen = distributed.Future(slow.key, client=bob)
    bob.cancel([stolen], force=True)
    assert slow.result(timeout=60)["gpu"] in (0, 1)
    assert alice.explain(slow)["status"] == "completed"

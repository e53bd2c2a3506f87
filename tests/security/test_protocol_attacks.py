"""Issue 22's bypasses, each attacked through Dask's own protocol by a holder of a valid user certificate:
ordinary client calls, raw RPCs (``client.scheduler.<handler>(...)``, ``client.rpc(worker)``) and raw stream
messages with a forged ``client`` field. Each test fails on the code before the protocol gate (see
docs/security.md). One TLS cluster (2 simulated GPUs, certificates from ``altlas_dask.ops.certs``) serves every
attack; the attacks that would take it down come last."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import distributed
import pytest
from conftest import certificate_clients, wait_for
from distributed.comm import connect as open_comm
from test_identity import tls_config as identity_tls_config

from altlas_dask import RouterError, run_on_gpu
from altlas_dask.client.gpu_client import Client
from altlas_dask.config import build_config
from altlas_dask.errors import IdentityError
from altlas_dask.ops.certs import client_security, init_ca, issue
from altlas_dask.ops.launcher import start_cluster
from altlas_dask.scheduling.feed import TOPIC as FEED_TOPIC
from altlas_dask.worker.binding import METRIC_NAME
from scheduler_plugins.dashboard import PLUGIN_NAME

cloudpickle.register_pickle_by_value(sys.modules[__name__])

USERS = ("alice", "bob", "ops")  # ops: an admin (quotas.admins)
DELEGATES = ("gateway", "console")


def tls_config(certs: Path, database: str) -> dict:
    data = identity_tls_config(certs, database)  # 2 simulated GPUs, mutual TLS, node-1's certificate
    data["quotas"] = {"admins": ["ops", "admin"]}  # "admin": a user's name, so a service named admin is tested
    data["security"]["delegates"] = list(DELEGATES)
    return data


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("certs")
    init_ca(root)
    # "admin": a service whose name an admin user could have
    for name, kind in (("node-1", "node"), *((u, "user") for u in USERS), ("gateway", "service"), ("admin", "service")):
        issue(root, name, kind)
    # A user certificate named like a delegate, as an older `certs issue` (or another CA tool) made one:
    issue(root, "console", "user", delegates=())
    return root


@pytest.fixture(scope="module")
def connect(certs, tmp_path_factory) -> Iterator[Callable[..., distributed.Client]]:
    """The one TLS cluster of every attack; ``connect(name)``: a client acting as certificate ``name``."""
    database = str(tmp_path_factory.mktemp("acct") / "altlas.sqlite")
    with start_cluster(build_config(tls_config(certs, database))) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        with certificate_clients(cluster.scheduler_address, certs) as make:
            yield make


@pytest.fixture(scope="module")
def alice(connect) -> Client:
    client = connect("alice")
    wait_for(lambda: len(client.gpus()) == 2, what="both GPUs")
    return client


@pytest.fixture(scope="module")
def bob(connect) -> Client:
    return connect("bob")


@pytest.fixture(scope="module")
def ops(connect) -> Client:
    return connect("ops")


SLOW = 3000.0  # GFLOP: 3 s on a simulated GPU


def running(client, work: float = SLOW, **options) -> distributed.Future:
    """A task of ``client``'s user that the router has placed (or holds)."""
    future = client.submit(run_on_gpu, work, pure=False, **options)
    wait_for(lambda: client.explain_many([future]), what=f"{client.user}'s task tracked by the router")
    return future


def refused_calls(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]


# -- what the gate lets through -----------------------------------------------------------------------------


def test_ordinary_client_work_passes_the_gate(alice, caplog):
    with caplog.at_level(logging.WARNING):
        [data] = alice.scatter([list(range(10))])
        assert alice.submit(sum, data).result(timeout=60) == 45
        future = alice.submit(run_on_gpu, 1.0, pure=False)
        assert "gpu" in future.result(timeout=60)
        assert alice.gather(future)["gpu"] in (0, 1)
        assert set(alice.who_has([future])) == {future.key}
        slow = running(alice)
        slow.cancel()
        wait_for(lambda: slow.status == "cancelled", what="alice's own cancel")
        again = distributed.Future(future.key, client=alice)  # a second handle on her own key
        assert again.result(timeout=60) == future.result()
    assert refused_calls(caplog) == []


def test_an_admin_may_use_the_admin_handlers(ops):
    assert ops.run_on_scheduler(lambda dask_scheduler: PLUGIN_NAME in dask_scheduler.plugins) is True
    assert "all" in ops.get_events()
    assert ops.get_task_stream() is not None


# -- identity bound to the connection --------------------------------------------------------------------------


def test_a_forged_client_id_cannot_cancel_anothers_task(alice, bob, ops):
    slow = running(bob)
    for forged in (bob.id, ops.id):  # bob himself; an admin, forcing
        alice.scheduler_comm.send(
            {"op": "cancel-keys", "keys": [slow.key], "client": forged, "force": True, "reason": "attack", "msg": ""}
        )
    assert slow.result(timeout=60)["gpu"] in (0, 1)  # not cancelled


def test_a_forged_client_id_cannot_bill_another_user(connect, bob, ops):
    forger = connect("alice", distributed.Client)
    send = forger.scheduler_comm.send

    def forged(msg: dict) -> dict:
        return {**msg, "client": bob.id} if "forged-billing" in msg.get("keys", ()) else msg

    # alice's own stream; the update-graph of "forged-billing" names bob's client id
    forger.scheduler_comm.send = lambda *msgs: send(*map(forged, msgs))
    forger.submit(run_on_gpu, 1.0, pure=False, key="forged-billing")
    honest = forger.submit(run_on_gpu, 1.0, pure=False, key="honest-after-forged")
    honest.result(timeout=60)  # the stream is ordered: the forged submission was handled before this one
    assert ops.explain_many(["forged-billing"]) == {}  # never reached the router, billed to nobody
    assert ops.explain("honest-after-forged")["user"] == "alice"


def test_another_users_client_id_cannot_be_registered(alice, bob, certs):
    security = client_security(certs, "alice")

    async def register_as_bob() -> object:
        comm = await open_comm(alice.scheduler.address, **security.get_connection_args("client"))
        try:
            await comm.write({"op": "register-client", "client": bob.id, "reply": False, "versions": {}})
            return await comm.read()
        finally:
            comm.abort()

    [answer] = alice.sync(register_as_bob)
    assert "belongs to another connection's certificate" in answer.get("error", ""), answer
    assert bob.submit(run_on_gpu, 1.0, pure=False).result(timeout=60)["gpu"] in (0, 1)


# -- data belongs to its owner ----------------------------------------------------------------------------------


def test_gather_of_anothers_key_is_refused(alice, bob):
    done = bob.submit(run_on_gpu, 1.0, pure=False)
    done.result(timeout=60)
    with pytest.raises(PermissionError, match="belong.* to another user's client"):
        alice.sync(alice.scheduler.gather, keys=[done.key])
    with pytest.raises(PermissionError, match="belong.* to another user's client"):
        alice.sync(alice.scheduler.who_has, keys=[done.key])


def test_get_data_from_a_worker_is_refused_to_users(alice, bob):
    done = bob.submit(run_on_gpu, 1.0, pure=False)
    done.result(timeout=60)
    [worker] = bob.who_has([done])[done.key]
    with pytest.raises(PermissionError, match="'get_data' needs a node certificate"):
        alice.sync(alice.rpc(worker).get_data, keys=[done.key])


def passed_on(result: dict) -> dict:
    return result


def test_scatter_onto_anothers_key_is_refused(alice, bob):
    slow = running(bob)
    queued = bob.submit(passed_on, slow, pure=False)  # waits for slow: what alice's scatter would replace
    wait_for(lambda: bob.explain_many([queued]), what="bob's queued task known to the scheduler")
    with pytest.raises(PermissionError, match="belong.* to another user's client"):
        alice.scatter({queued.key: "forged"})
    assert queued.result(timeout=60) == slow.result(timeout=60)  # bob's own result, not alice's


# -- delegates by kind and name; admins ---------------------------------------------------------------------


def test_a_user_certificate_named_like_a_delegate_acts_for_nobody(connect):
    fake = connect("console")  # CN=console, OU=user
    future = fake.submit(run_on_gpu, 1.0, pure=False, gpu_options={"user": "bob"})
    with pytest.raises(IdentityError, match="only the delegates"):
        future.result(timeout=60)
    vouched = fake.sync(
        fake.scheduler.altlas_set_quota, user="bob", limits={"requests_per_minute": 1}, as_user="carol", admin=True
    )
    assert vouched["code"] == 403


def test_a_service_certificate_named_like_an_admin_is_no_admin(connect):
    service = connect("admin")  # CN=admin, OU=service; quotas.admins lists the *user* admin
    with pytest.raises(RouterError, match="'admin' is not an admin") as denied:
        service.drain_gpu(0)
    assert denied.value.code == 403
    with pytest.raises(PermissionError, match="needs an admin certificate"):
        service.run_on_scheduler(lambda: 1)


def test_run_on_scheduler_and_run_are_admin_only(alice):
    with pytest.raises(PermissionError, match="'run_function' needs an admin certificate: 'alice'"):
        alice.run_on_scheduler(lambda dask_scheduler: dask_scheduler.tasks)
    with pytest.raises(PermissionError, match="'broadcast' needs an admin certificate: 'alice'"):
        alice.run(lambda dask_worker: dask_worker.data)


def test_the_event_log_and_task_stream_are_admin_only(alice):
    with pytest.raises(PermissionError, match="'events' needs an admin certificate"):
        alice.get_events("all")  # where a forged client id would come from
    with pytest.raises(PermissionError, match="'get_task_stream' needs an admin certificate"):
        alice.get_task_stream()


def test_the_task_feed_reaches_delegates_and_never_a_users_client(connect, alice, bob, caplog):
    """The router pushes every user's task records to the gateway on a Dask event topic; a user who subscribes to
    it through Dask's own protocol gets nothing: the gate drops the subscription (admin-level topics only)."""
    gateway = connect("gateway")  # the REST gateway's certificate: a delegate service
    pushed: list[dict] = []
    gateway.subscribe_topic(FEED_TOPIC, lambda event: pushed.append(event[1]))
    overheard: list[dict] = []
    with caplog.at_level(logging.WARNING):
        bob.subscribe_topic(FEED_TOPIC, lambda event: overheard.append(event[1]))
        wait_for(
            lambda: any(f"subscribe-topic {FEED_TOPIC!r}" in m for m in refused_calls(caplog)),
            what="the gate's refusal of bob's subscription",
        )
    secret = alice.submit(run_on_gpu, 1.0, pure=False)
    secret.result(timeout=60)

    def finished_record() -> bool:
        return any(r.get(secret.key, {}).get("status") == "completed" for r in pushed)

    wait_for(finished_record, what="the gateway's pushed record of alice's finished task")
    assert any(r[secret.key]["user"] == "alice" and r[secret.key]["gpu"] in (0, 1) for r in pushed if secret.key in r)
    # bob's stream carries, in order, what the scheduler sends him: his own result comes after alice's record
    # would have, had his subscription passed
    bob.submit(run_on_gpu, 1.0, pure=False).result(timeout=60)
    assert overheard == []


def test_a_handler_nobody_classified_is_refused(alice, ops):
    def add_handler(dask_scheduler):
        dask_scheduler.handlers["future_dask_handler"] = lambda: "ran"

    ops.run_on_scheduler(add_handler)  # as a future distributed might add one
    for client in (alice, ops):
        with pytest.raises(PermissionError, match="'future_dask_handler' is not in the protocol allowlist"):
            client.sync(client.scheduler.future_dask_handler)


# -- the cluster's own handlers (these would take it down) ----------------------------------------------------


def test_a_forged_worker_heartbeat_is_refused(alice, ops):
    gpu = alice.gpus()[1]

    def last_heartbeat(dask_scheduler, address):
        return dict(dask_scheduler.workers[address].metrics)

    # a well-formed heartbeat: the metrics the worker last sent (asking the worker itself, get_metrics, drains
    # its span digests beside its own heartbeat, which then fails its assertion and the worker drops out)
    real = ops.run_on_scheduler(last_heartbeat, address=gpu.worker)
    critical = {**real, METRIC_NAME: {**real[METRIC_NAME], "health_status": "critical", "error_rate": 1.0}}
    with pytest.raises(PermissionError, match="'heartbeat_worker' needs a node certificate"):
        alice.sync(alice.scheduler.heartbeat_worker, address=gpu.worker, now=time.time(), metrics=critical)
    assert alice.gpus()[1].health_status != "critical"


def test_a_user_cannot_unregister_a_gpu_worker(alice):
    worker = alice.gpus()[1].worker
    with pytest.raises(PermissionError, match="'unregister' needs an admin certificate"):
        alice.sync(alice.scheduler.unregister, address=worker, stimulus_id="attack")
    assert worker in alice.scheduler_info()["workers"]


def test_a_nanny_answers_only_nodes(alice):
    worker = alice.gpus()[0].worker
    nanny = alice.scheduler_info()["workers"][worker]["nanny"]
    with pytest.raises(PermissionError, match="'kill' needs a node certificate"):
        alice.sync(alice.rpc(nanny).kill)
    assert worker in alice.scheduler_info()["workers"]


def test_a_user_cannot_unregister_the_router(alice, bob):
    with pytest.raises(PermissionError, match="'unregister_scheduler_plugin' needs an admin certificate"):
        alice.unregister_scheduler_plugin(PLUGIN_NAME)
    with pytest.raises(IdentityError):  # identity still enforced: the router is there
        bob.submit(run_on_gpu, 1.0, pure=False, gpu_options={"user": "alice"}).result(timeout=60)


def test_a_user_cannot_shut_the_cluster_down(connect, bob):
    mallory = connect("alice")
    with pytest.raises(PermissionError, match="'terminate' needs an admin certificate"):
        mallory.sync(mallory.scheduler.terminate)
    with pytest.raises(PermissionError, match="'terminate' needs an admin certificate"):
        mallory.shutdown()
    assert bob.submit(run_on_gpu, 1.0, pure=False).result(timeout=60)["gpu"] in (0, 1)

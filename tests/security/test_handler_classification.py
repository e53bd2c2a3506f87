"""Default deny needs a complete classification: every handler of the installed distributed's Scheduler and
Worker and Nanny (RPC and stream) is listed in scheduler_plugins/handler_policy.py with a level and a one-line reason.
A distributed upgrade that adds a handler fails here (until then the gate refuses it to everyone)."""

from __future__ import annotations

import asyncio

import pytest
from distributed import Nanny, Scheduler, Worker

from scheduler_plugins.handler_policy import (
    LEVELS,
    NANNY_RPC,
    SCHEDULER_RPC,
    SCHEDULER_RULES,
    SCHEDULER_STREAM,
    WORKER_RPC,
    WORKER_STREAM,
    Connection,
)
from scheduler_plugins.identity import Identity
from scheduler_plugins.router_api import RouterApi

ROUTER_RPC = {f"altlas_{name}" for name in dir(RouterApi) if not name.startswith("_")}

#: What an admin certificate must never lack, and a user certificate never have (issue 22).
ADMIN_OR_NODE_ONLY = {
    "run_function",
    "broadcast",
    "register_scheduler_plugin",
    "unregister_scheduler_plugin",
    "register_worker_plugin",
    "unregister_worker_plugin",
    "register_nanny_plugin",
    "unregister_nanny_plugin",
    "terminate",
    "restart",
    "restart_workers",
    "retire_workers",
    "unregister",
    "register-worker",
    "heartbeat_worker",
    "events",
}


@pytest.fixture(scope="module")
def handler_names() -> dict[str, set[str]]:
    async def collect() -> dict[str, set[str]]:
        async with Scheduler(dashboard_address=":0") as scheduler:
            worker = Worker(scheduler.address, dashboard=False)  # its tables exist before it starts
            nanny = Nanny(scheduler.address)
            return {
                "nanny.handlers": set(nanny.handlers),
                "nanny.stream_handlers": set(nanny.stream_handlers),
                "scheduler.handlers": set(scheduler.handlers),
                "scheduler.stream_handlers": set(scheduler.stream_handlers),
                "worker.handlers": set(worker.handlers),
                "worker.stream_handlers": set(worker.stream_handlers),
            }

    return asyncio.run(collect())


@pytest.mark.parametrize(
    ("which", "table"),
    [
        ("scheduler.handlers", SCHEDULER_RPC),
        ("scheduler.stream_handlers", SCHEDULER_STREAM),
        ("worker.handlers", WORKER_RPC),
        ("worker.stream_handlers", WORKER_STREAM),
        ("nanny.handlers", NANNY_RPC),
        ("nanny.stream_handlers", {}),
    ],
)
def test_every_handler_of_the_installed_distributed_is_classified(handler_names, which, table):
    names = handler_names[which]
    missing = names - set(table)
    assert missing == set(), f"classify these {which} in scheduler_plugins/handler_policy.py: {sorted(missing)}"
    stale = set(table) - names
    assert stale == set(), f"{which}: listed in handler_policy.py but gone from distributed: {sorted(stale)}"


def test_every_entry_has_a_level_and_a_one_line_reason():
    for table in (SCHEDULER_RPC, SCHEDULER_STREAM, WORKER_RPC, WORKER_STREAM, NANNY_RPC):
        for name, (level, reason) in table.items():
            assert level in LEVELS, name
            assert reason.strip() and "\n" not in reason, name


def test_the_powerful_handlers_are_admin_or_node_only():
    for name in ADMIN_OR_NODE_ONLY:
        assert SCHEDULER_RPC[name][0] in ("admin", "node"), name
    user_ops = {op for op, (level, _) in (WORKER_RPC | NANNY_RPC).items() if level != "node"}
    assert user_ops == set(), "users reach workers and nannies only through the scheduler"


def test_the_router_rpcs_do_not_shadow_dask_handlers():
    assert ROUTER_RPC and not ROUTER_RPC & set(SCHEDULER_RPC)


# -- one connection's gate, without a cluster ----------------------------------------------------------------

ALICE, BOB, NODE = Identity("alice", "user"), Identity("bob", "user"), Identity("node-1", "node")
OWNERS = {"client-alice": ALICE, "client-bob": BOB}


def connection(identity: Identity | None, level) -> Connection:
    return Connection(SCHEDULER_RULES, identity, level, {}, OWNERS.get)


def test_a_stream_speaks_only_for_the_client_that_registered_on_it():
    gate = connection(ALICE, "user")
    assert gate.admit({"op": "register-client", "client": "client-alice"}) is None
    assert gate.streaming and gate.client == "client-alice"
    mine = {"op": "cancel-keys", "keys": ["k"], "client": "client-alice"}
    forged = {"op": "cancel-keys", "keys": ["k"], "client": "client-bob"}
    unnamed = {"op": "heartbeat-client"}  # Dask fills in the connection's client
    assert gate.admit_batch([mine, forged, unnamed]) == [mine, unnamed]


def test_an_rpc_may_name_only_a_client_of_its_own_certificate():
    gate = connection(ALICE, "user")
    assert gate.admit({"op": "retry", "keys": [], "client": "client-alice"}) is None
    assert "not this connection's" in gate.admit({"op": "retry", "keys": [], "client": "client-bob"})


def test_levels_include_the_ones_below_and_unlisted_ops_are_refused_to_all():
    for identity, level in ((ALICE, "user"), (ALICE, "admin"), (NODE, "node"), (None, None)):
        assert "allowlist" in connection(identity, level).admit({"op": "some_future_handler"})
    assert "needs an admin certificate" in connection(ALICE, "user").admit({"op": "run_function"})
    assert connection(ALICE, "admin").admit({"op": "run_function"}) is None
    assert "needs a node certificate" in connection(ALICE, "admin").admit({"op": "heartbeat_worker"})
    assert connection(NODE, "node").admit({"op": "heartbeat_worker"}) is None
    assert "needs a user certificate" in connection(None, None).admit({"op": "identity"})

"""RouterClient on an asynchronous ``distributed.Client`` of the session's shared cluster (open mode): replies in
the protocol's shapes, refusals decoded to our exceptions with the field and value, acting-as, retries on a lost
connection. Acting-as refused for a non-delegate needs mutual TLS: tests/test_identity.py."""

from __future__ import annotations

import asyncio
from typing import Any

import distributed
import pytest
from distributed.comm.core import CommClosedError

from altlas_dask.client.router_client import RouterClient, decoded
from altlas_dask.errors import RouterAccessError, RouterError, RouterLookupError, RouterValueError
from altlas_dask.protocol import (
    DrainReply,
    GpusReply,
    RecordsReply,
    Rpc,
    SetQuotaReply,
    StatusReply,
    TasksReply,
    UsageReply,
)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def with_router(address: str, body: Any) -> Any:
    """``body(router)`` on a fresh asynchronous client of ``address``, the router acting as ``ana``."""

    async def main() -> Any:
        async with distributed.Client(address, asynchronous=True, set_as_default=False) as client:
            return await body(RouterClient(client, user="ana"))

    return run(main())


@pytest.fixture(scope="module")
def address(gpu_cluster) -> str:
    return gpu_cluster.scheduler_address


def test_replies_come_in_the_protocol_s_shapes(address):
    async def body(router: RouterClient) -> dict[type, Any]:
        admin = router.acting_as("admin")  # quotas.admins in cluster.yaml
        drained = await admin.drain(3, reason="shape check")
        enabled = await admin.enable(3)
        return {
            GpusReply: await router.gpus(),
            StatusReply: await router.status(),
            TasksReply: await router.tasks(limit=5),
            UsageReply: await router.usage(),
            RecordsReply: await router.records(limit=1),
            SetQuotaReply: await admin.set_quota("router-client-shapes", {"weight": 1}),  # a user of its own
            DrainReply: drained,
            "enabled": enabled,
            "policy": await router.policy(),
        }

    replies = with_router(address, body)
    for shape in (GpusReply, StatusReply, TasksReply, UsageReply, RecordsReply, SetQuotaReply, DrainReply):
        assert set(replies[shape]) == set(shape.__annotations__), shape
    assert len(replies[GpusReply]["gpus"]) == 4
    assert replies[DrainReply]["draining"] is True and replies["enabled"]["draining"] is False
    assert "allowed_strategies" in replies["policy"]


def test_refusals_raise_our_exceptions_with_the_field_and_value(address):
    async def body(router: RouterClient) -> list[BaseException]:
        raised = []
        for call in (
            router.call(Rpc.TASKS, limit=-1),  # past RouterClient.tasks' own check: the router's answer
            router.drain(0),  # ana is no admin (quotas.admins: [admin])
            router.cancel("no-such-task"),
        ):
            with pytest.raises(RouterError) as info:
                await call
            raised.append(info.value)
        return raised

    bad_limit, not_admin, unknown = with_router(address, body)
    assert isinstance(bad_limit, RouterValueError) and isinstance(bad_limit, ValueError)
    assert (bad_limit.code, bad_limit.field, bad_limit.value) == (400, "limit", "-1")
    assert isinstance(not_admin, RouterAccessError) and not_admin.code == 403
    assert "user 'ana' is not an admin" in str(not_admin)
    assert isinstance(unknown, RouterLookupError) and isinstance(unknown, LookupError) and unknown.code == 404


def test_no_router_is_a_503_naming_the_scheduler():
    with pytest.raises(RouterError, match="no GPU router on scheduler tcp://h:1 .no handler 'altlas_gpus'") as info:
        decoded(Rpc.GPUS, None, "tcp://h:1")
    assert info.value.code == 503


def test_a_field_the_rpc_does_not_take_or_acting_as_by_hand_is_refused_before_sending(address):
    async def body(router: RouterClient) -> list[str]:
        messages = []
        for request in ({"force": True}, {"as_user": "admin"}):
            with pytest.raises(TypeError) as info:
                await router.call(Rpc.CANCEL, key="k", **request)
            messages.append(str(info.value))
        return messages

    for message in with_router(address, body):
        assert message.startswith("altlas_cancel takes ['key', 'reason'], not") and "RouterClient.acting_as" in message


def test_acting_as_names_the_user_each_call_acts_for(address):
    async def body(router: RouterClient) -> tuple[str, str]:
        return (await router.usage())["user_id"], (await router.acting_as("bob").usage())["user_id"]

    assert with_router(address, body) == ("ana", "bob")


class DropsFirstCall:
    """``client.scheduler`` as it is, but each RPC's first attempt meets a lost connection (the exception
    distributed raises for a comm closed under a call)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler, self.attempts = scheduler, []

    def __getattr__(self, name: str) -> Any:
        handler = getattr(self.scheduler, name)

        async def call(**kwargs: Any) -> Any:
            self.attempts.append(name)
            if self.attempts.count(name) == 1:
                raise CommClosedError("in <TCP (closed)>: the connection dropped")
            return await handler(**kwargs)

        return call


def test_a_lost_connection_is_retried_except_for_cancel(address):
    async def body(router: RouterClient) -> tuple[Any, list[str]]:
        dropping = DropsFirstCall(router.client.scheduler)
        flaky = RouterClient(type("Flaky", (), {"scheduler": dropping})(), user="ana")  # type: ignore[arg-type]
        gpus = await flaky.gpus()
        with pytest.raises(CommClosedError):
            await flaky.cancel("no-such-task")  # a second cancel of a cancelled task would answer 409
        return gpus, dropping.attempts

    gpus, attempts = with_router(address, body)
    assert len(gpus["gpus"]) == 4
    assert attempts == ["altlas_gpus", "altlas_gpus", "altlas_cancel"]

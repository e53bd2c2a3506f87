"""Submission coalescing in ``altlas_dask.Client``: one graph update for a burst of ``submit`` calls, and
futures, keys, errors, cancellation and ordering exactly as without it. Real cluster (the session's 4 GPUs)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dask.base import tokenize
from dask.utils import funcname
from distributed.client import FutureCancelledError

import altlas_dask
from altlas_dask import run_on_gpu

WINDOW_MS = 200  # a burst of submits lands in one window; result() waits for the flush at most this long


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


class Recording(altlas_dask.Client):
    """Records every message this client sends to the scheduler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def _send_now(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)
        super()._send_now(msg)

    def _send_to_scheduler(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)  # Dask's own path (a submission that found the client idle, or coalescing off)
        super()._send_to_scheduler(msg)

    def updates(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("op") == "update-graph"]


@pytest.fixture
def client(gpu_cluster) -> Iterator[Recording]:
    with Recording(gpu_cluster.scheduler_address, coalesce_ms=WINDOW_MS, set_as_default=False) as client:
        yield client


def test_a_burst_is_one_graph_update_after_its_first_with_the_same_keys_and_results(client: Recording):
    """The first submit finds the client idle and goes at once (as Dask sends it); the 49 that follow it are
    one update."""
    futures = [client.submit(inc, i) for i in range(50)]
    assert [f.key for f in futures] == [f"{funcname(inc)}-{tokenize(inc, {}, i)}" for i in range(50)]
    assert client.submit(inc, 3).key == futures[3].key  # a pure duplicate is the same future, as before
    assert client.gather(futures) == [i + 1 for i in range(50)]
    updates = client.updates()
    assert [u["keys"] for u in updates] == [{futures[0].key}, {f.key for f in futures[1:]}], [
        len(u["keys"]) for u in updates
    ]


def test_a_submit_that_finds_the_client_idle_goes_at_once(client: Recording):
    """coalesce_ms=200 here: a held submission would wait for the window; a lone one must not."""
    first = client.submit(inc, 1, pure=False)
    assert [u["keys"] for u in client.updates()] == [{first.key}]  # sent before the window, not held
    assert not client._submissions.pending


def test_a_submit_may_depend_on_one_in_the_same_group(client: Recording):
    a = client.submit(inc, 1, pure=False)
    b = client.submit(inc, a, pure=False)
    c = client.submit(lambda x, y: x * y, a, b, pure=False)
    assert c.result(timeout=60) == 2 * 3
    assert [len(u["keys"]) for u in client.updates()] == [1, 2]  # b depends on a of the update before


def test_errors_and_cancellation_are_per_future(client: Recording):
    good = client.submit(inc, 10, pure=False)
    bad = client.submit(fail, 1, pure=False)
    unpicklable = client.submit(inc, threading.Lock(), pure=False)  # cannot be sent: fails alone
    cancelled = client.submit(run_on_gpu, 2000.0 * 120, pure=False)
    client.cancel([cancelled])  # held submissions go first: the cancel finds its task
    assert good.result(timeout=60) == 11
    with pytest.raises(ValueError, match="bad 1"):
        bad.result(timeout=60)
    with pytest.raises(TypeError):
        unpicklable.result(timeout=60)
    with pytest.raises(FutureCancelledError):
        cancelled.result(timeout=60)


def test_gpu_options_reach_the_router_per_group(client: Recording):
    a = [client.submit(run_on_gpu, 1.0, pure=False, gpu_options={"specific_gpu_id": 1}) for _ in range(3)]
    b = [client.submit(run_on_gpu, 1.0, pure=False, gpu_options={"specific_gpu_id": 2}) for _ in range(3)]
    assert {f.result(timeout=60)["gpu"] for f in a} == {1} and {f.result(timeout=60)["gpu"] for f in b} == {2}
    assert [len(u["keys"]) for u in client.updates()] == [1, 2, 3]  # the idle first, then a run per options


def test_the_message_is_the_one_distributed_sends(gpu_cluster):
    with Recording(gpu_cluster.scheduler_address, coalesce_ms=None, set_as_default=False) as plain:
        plain.submit(inc, 100).result(timeout=60)
        reference = plain.updates()[0]
    with Recording(gpu_cluster.scheduler_address, coalesce_ms=50, set_as_default=False) as coalescing:
        futures = [coalescing.submit(inc, 101 + i) for i in range(2)]  # the second one is held, then sent
        coalescing.gather(futures)
        ours = coalescing.updates()[1]
    assert set(ours) == set(reference)
    assert ours["annotations"].data == reference["annotations"].data

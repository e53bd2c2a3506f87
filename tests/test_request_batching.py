"""The gateway's request batcher, event by event: when a group of requests goes out as one batch task.

The batch tasks are stand-ins whose completion each test controls, so every rule is checked without a
cluster and without time: requests of one event-loop turn share a batch, a full batch goes at once, while
every GPU is busy requests wait for a batch to finish, a batch that cannot be sent fails its requests only,
and groups (users, options) never mix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from altlas_dask.api.request_batching import RequestBatcher


@dataclass
class FakeBatch:
    items: list[dict[str, Any]]
    context: Any
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Harness:
    """A batcher whose sent batches are recorded and finish when the test says so."""

    def __init__(self, capacity: int = 2, max_batch_size: int = 4, max_wait_s: float = 3600.0) -> None:
        self.sent: list[FakeBatch] = []
        self.capacity = capacity
        self.fail_next = False
        self.batcher = RequestBatcher(self.send, self.settled, lambda: self.capacity, max_batch_size, max_wait_s)

    async def send(self, items: list[dict[str, Any]], context: Any) -> FakeBatch:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the scheduler went away")
        batch = FakeBatch(list(items), context)
        self.sent.append(batch)
        return batch

    @staticmethod
    async def settled(batch: FakeBatch) -> None:
        await batch.done.wait()

    def submit(self, n: int, key: Any = "k", context: Any = "ctx") -> list[asyncio.Task]:
        return [asyncio.ensure_future(self.batcher.submit(key, {"i": i}, context)) for i in range(n)]


async def turns(n: int = 5) -> None:
    """Let the event loop run ``n`` turns (no wall-clock time involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_requests_of_one_turn_share_a_batch_and_each_learns_its_index():
    async def scenario() -> None:
        h = Harness()
        answers = await asyncio.gather(*h.submit(3))
        assert len(h.sent) == 1 and [it["i"] for it in h.sent[0].items] == [0, 1, 2]
        assert [index for _, index in answers] == [0, 1, 2]
        assert all(batch is h.sent[0] for batch, _ in answers)

    run(scenario())


def test_with_a_gpu_free_a_lone_request_goes_at_once():
    async def scenario() -> None:
        h = Harness(capacity=2)
        first = h.submit(1)
        await turns()
        assert first[0].done() and len(h.sent) == 1  # no waiting for company while a GPU is idle
        second = h.submit(1)
        await turns()
        assert second[0].done() and len(h.sent) == 2  # the second GPU was free too

    run(scenario())


def test_while_every_gpu_is_busy_requests_wait_for_a_batch_to_finish_then_go_together():
    async def scenario() -> None:
        h = Harness(capacity=1, max_batch_size=8)
        await asyncio.gather(*h.submit(1))  # the only GPU is busy with it
        held = []
        for _ in range(3):  # three requests, each in its own turn
            held += h.submit(1)
            await turns()
        assert len(h.sent) == 1 and not any(t.done() for t in held)
        h.sent[0].done.set()  # the GPU frees up
        await turns()
        assert all(t.done() for t in held)
        assert len(h.sent) == 2 and len(h.sent[1].items) == 3

    run(scenario())


def test_a_full_batch_goes_at_once_even_while_the_gpus_are_busy():
    async def scenario() -> None:
        h = Harness(capacity=1, max_batch_size=4)
        await asyncio.gather(*h.submit(1))
        full = h.submit(4)
        await turns()
        assert all(t.done() for t in full) and [len(b.items) for b in h.sent] == [1, 4]

    run(scenario())


def test_max_wait_bounds_the_wait_for_company():
    async def scenario() -> None:
        h = Harness(capacity=1, max_wait_s=0.0)  # zero: the held group goes on the loop's next timer pass
        await asyncio.gather(*h.submit(1))
        late = h.submit(1)
        await turns()
        assert late[0].done() and len(h.sent) == 2 and not h.sent[0].done.is_set()

    run(scenario())


def test_groups_never_mix_and_a_failed_send_fails_only_its_own_requests():
    async def scenario() -> None:
        h = Harness(capacity=4)
        h.fail_next = True
        ana = h.submit(2, key="ana", context="ana-options")
        bob = h.submit(2, key="bob", context="bob-options")
        await turns()
        assert all(t.done() for t in ana + bob)
        errors = [t.exception() for t in ana]
        assert all(isinstance(e, ConnectionError) for e in errors)  # the first group's send failed
        assert [b.context for b in h.sent] == ["bob-options"] and len(h.sent[0].items) == 2
        assert h.batcher.in_flight == 1  # the failed send holds no capacity

    run(scenario())


@pytest.mark.parametrize("size", [1, 5, 9])
def test_batches_never_exceed_the_maximum(size: int):
    async def scenario() -> None:
        h = Harness(capacity=100, max_batch_size=4)
        await asyncio.gather(*h.submit(size))
        assert sum(len(b.items) for b in h.sent) == size
        assert all(1 <= len(b.items) <= 4 for b in h.sent)
        assert sorted(it["i"] for b in h.sent for it in b.items) == list(range(size))

    run(scenario())

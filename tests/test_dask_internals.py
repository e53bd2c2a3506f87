"""The internal-API wrapper the router relies on, against a real in-process Scheduler and Worker.

If a Dask upgrade changes how restrictions, no-worker or erred transitions behave, these fail first.
"""

from __future__ import annotations

import asyncio

import pytest
from distributed import Client, Scheduler, Worker

from scheduler_plugins import dask_internals as dx


def slow_inc(x):
    import time

    time.sleep(0.2)
    return x + 1


async def wait_state(scheduler, key, state, timeout=10.0):
    end = asyncio.get_running_loop().time() + timeout
    while scheduler.tasks.get(key) is None or scheduler.tasks[key].state != state:
        assert asyncio.get_running_loop().time() < end, f"{key} never reached {state}"
        await asyncio.sleep(0.01)
    return scheduler.tasks[key]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _cluster():
    scheduler = await Scheduler(port=0, dashboard_address=":0")
    worker = await Worker(scheduler.address, nthreads=2, resources={"GPU": 1, "gpu-mem-mb": 1000})
    client = await Client(scheduler.address, asynchronous=True)
    return scheduler, worker, client


async def _close(scheduler, worker, client):
    await client.close()
    await worker.close()
    await scheduler.close()


def test_hold_then_place_then_fail():
    async def main():
        scheduler, worker, client = await _cluster()
        try:
            held = client.submit(slow_inc, 1, workers=[dx.HELD], key="held")
            ts = await wait_state(scheduler, "held", "no-worker")
            assert dx.is_held(ts)
            dx.place(scheduler, [(ts, worker.address, 300, None)], "test-place")
            assert ts.worker_restrictions == {worker.address}
            assert ts.resource_restrictions == {"gpu-mem-mb": 300.0}
            assert await held == 2

            doomed = client.submit(slow_inc, 1, workers=[dx.HELD], key="doomed")
            ts = await wait_state(scheduler, "doomed", "no-worker")
            dx.fail(scheduler, ts, RuntimeError("no GPU can take it"), "test-fail")
            with pytest.raises(RuntimeError, match="no GPU can take it"):
                await doomed

            running = client.submit(slow_inc, 1, key="running", pure=False)
            ts = await wait_state(scheduler, "running", "processing")
            dx.fail(scheduler, ts, TimeoutError("too slow"), "test-timeout")
            with pytest.raises(TimeoutError, match="too slow"):
                await running
        finally:
            await _close(scheduler, worker, client)

    run(main())


def test_release_from_sends_a_running_task_back_to_no_worker():
    async def main():
        scheduler, worker, client = await _cluster()
        try:
            future = client.submit(slow_inc, 5, key="moved")
            ts = await wait_state(scheduler, "moved", "processing")
            dx.release_from(scheduler, ["moved"], "test-release")
            ts = await wait_state(scheduler, "moved", "no-worker")
            dx.place(scheduler, [(ts, worker.address, 0, None)], "test-place-again")
            assert await future == 6
        finally:
            await _close(scheduler, worker, client)

    run(main())


def test_set_priority_keeps_dask_tie_breakers():
    async def main():
        scheduler, worker, client = await _cluster()
        try:
            future = client.submit(slow_inc, 1, key="prio", workers=[dx.HELD])
            ts = await wait_state(scheduler, "prio", "no-worker")
            original = ts.priority
            dx.set_priority(ts, 5)
            assert ts.priority[0] == -5 and ts.priority[1:] == original[1:]
            dx.place(scheduler, [(ts, worker.address, 0, None)], "p")
            await future
        finally:
            await _close(scheduler, worker, client)

    run(main())


def test_intercept_task_erred_can_turn_an_error_into_a_retry():
    def flaky(path):
        import os

        if not os.path.exists(path):
            open(path, "w").close()
            raise RuntimeError("first attempt fails")
        return "ok"

    async def main(path):
        scheduler, worker, client = await _cluster()
        seen = []

        def before(ts, msg):
            seen.append(msg["exception_text"])
            ts.retries = 1

        try:
            dx.intercept_task_erred(scheduler, before)
            assert await client.submit(flaky, path, key="flaky") == "ok"
            assert len(seen) == 1 and "first attempt fails" in seen[0]
        finally:
            await _close(scheduler, worker, client)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        run(main(str(Path(tmp) / "marker")))


def test_input_locations_are_who_has_and_nbytes():
    async def main():
        scheduler, worker, client = await _cluster()
        try:
            data = client.submit(bytes, 100_000, key="data")
            held = client.submit(len, data, workers=[dx.HELD], key="needs-data")
            ts = await wait_state(scheduler, "needs-data", "no-worker")
            assert dx.input_locations(ts) == {worker.address: scheduler.tasks["data"].get_nbytes()}
            assert scheduler.tasks["data"].get_nbytes() >= 100_000
            assert dx.input_locations(scheduler.tasks["data"]) == {}
            dx.place(scheduler, [(ts, worker.address, 0, None)], "test-place")
            assert await held == 100_000
        finally:
            await _close(scheduler, worker, client)

    run(main())


def started_at(name):
    import time

    return time.monotonic()


def wait_for_go(name):
    import time

    from distributed import Event

    Event(name).wait()
    return time.monotonic()


def test_tasks_placed_on_a_busy_worker_start_in_rank_order():
    """Tasks pinned to a worker whose threads are busy wait there and start, as threads free, in the order of
    the rank ``place`` gives them (Dask's priority), not in the order their graphs reached the scheduler."""

    async def main():
        scheduler = await Scheduler(port=0, dashboard_address=":0")
        worker = await Worker(scheduler.address, nthreads=1, resources={"gpu-mem-mb": 1000})
        client = await Client(scheduler.address, asynchronous=True)
        try:
            blocker = client.submit(wait_for_go, "go", key="blocker", workers=[worker.address])
            await wait_state(scheduler, "blocker", "processing")
            futures, ranks = {}, {"x": (-3, 7), "y": (-5, 9), "z": (-3, 2)}  # expected start: y, z, x
            for key in ("x", "y", "z"):  # one graph each, in this order
                futures[key] = client.submit(started_at, key, key=key, workers=[dx.HELD])
                ts = await wait_state(scheduler, key, "no-worker")
                dx.place(scheduler, [(ts, worker.address, 100 if key == "z" else 0, ranks[key])], "test-rank")
            end = asyncio.get_running_loop().time() + 10
            while not all(k in worker.state.tasks and worker.state.tasks[k].state in ("ready", "constrained")
                          for k in ranks):  # fmt: skip
                assert asyncio.get_running_loop().time() < end, "the placed tasks never reached the worker"
                await asyncio.sleep(0.01)
            from distributed import Event

            await Event("go", client=client).set()
            await blocker
            starts = {k: await f for k, f in futures.items()}
            assert sorted(starts, key=starts.get) == ["y", "z", "x"]
        finally:
            await client.close()
            await worker.close()
            await scheduler.close()

    run(main())


def test_gate_comms_sees_every_message_and_wanted_by_reads_who_wants():
    """The gate wraps ``Server._handle_comm`` and each comm's ``read``: a refused RPC raises in the caller, the
    comm stays usable; refused stream messages are dropped. ``wanted_by``: the clients of a key (and of its
    dependents)."""
    from scheduler_plugins.handler_policy import SCHEDULER_RULES, Connection

    async def main():
        scheduler = await Scheduler(port=0, dashboard_address=":0")
        worker = await Worker(scheduler.address, nthreads=1)  # registered before the gate: its comm is Dask's
        opened = []

        def open_connection(comm):
            opened.append(Connection(SCHEDULER_RULES, None, "user", {}, lambda _: None))
            return opened[-1]

        dx.gate_comms(scheduler, open_connection)
        dx.gate_comms(scheduler, open_connection)  # idempotent
        client = await Client(scheduler.address, asynchronous=True)
        try:
            x = client.submit(slow_inc, 1, key="x")
            y = client.submit(slow_inc, x, key="y")
            assert await y == 3
            assert dx.wanted_by(scheduler, "y") == {client.id}
            assert dx.wanted_by(scheduler, "nope") is None
            assert dx.wanted_by(scheduler, ["unhashable"]) == set()
            with pytest.raises(PermissionError, match="'run_function' needs an admin certificate"):
                await client.run_on_scheduler(lambda: 1)
            assert await client.gather(y) == 3  # the pooled comm reads on after a refusal
            assert any(c.streaming and c.client == client.id for c in opened)
        finally:
            await _close(scheduler, worker, client)

    run(main())

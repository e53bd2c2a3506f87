"""Dynamic batching: the worker-side Batcher, the model's batched forward pass, and both on a real cluster.

No timing is asserted: batches are made to fill (``max_batch_size`` callers arriving together, behind a
barrier or as one ``map``), so a batch runs as soon as it is full and ``max_wait_ms`` only bounds the test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import local_config, repo_config_data, wait_for

import altlas_dask
from altlas_dask.errors import TaskCancelledError
from altlas_dask.gpus.chunks import KernelCancelledError
from altlas_dask.model import char_gru
from altlas_dask.ops.launcher import GpuCluster, start_cluster
from altlas_dask.worker.batching import Batched, Batcher

LONG_WAIT_MS = 10_000  # only bounds a batch that does not fill; a full batch runs at once


def together(n: int, call: Any, items: list[Any]) -> list[Any]:
    """``call(item)`` from ``n`` threads released at the same moment; results (or exceptions) in order."""
    barrier = threading.Barrier(n)

    def one(item: Any) -> Any:
        barrier.wait()
        try:
            return call(item)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, items))


def test_concurrent_calls_run_as_one_batch():
    sizes: list[int] = []

    def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [2 * x for x in items]

    batcher = Batcher(double, max_batch_size=8, max_wait_s=LONG_WAIT_MS / 1000)
    assert together(8, batcher.call, list(range(8))) == [(2 * x, 8) for x in range(8)]
    assert sizes == [8]


def test_a_failing_item_fails_only_itself():
    def picky(items: list[int]) -> list[Any]:
        if 3 in items:
            raise ValueError("3 is not allowed")
        return [ValueError("odd") if x % 2 else x for x in items]  # per-item errors, too

    batcher = Batcher(picky, max_batch_size=4, max_wait_s=LONG_WAIT_MS / 1000)
    out = together(4, batcher, [0, 1, 2, 3])
    assert out[0] == 0 and out[2] == 2
    assert str(out[1]) == "odd" and str(out[3]) == "3 is not allowed"


def test_more_callers_than_a_batch_holds_all_get_their_result():
    sizes: list[int] = []

    def echo(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return list(items)

    batcher = Batcher(echo, max_batch_size=3, max_wait_s=0.0)
    assert together(10, batcher, list(range(10))) == list(range(10))
    assert sum(sizes) == 10 and max(sizes) <= 3


def test_predict_many_is_predict_in_one_pass_and_stops_one_row():
    model = char_gru.load_model("cpu")
    items = [
        {"text": "The ", "max_length": 40, "temperature": 0.0, "seed": 1},
        {"text": "Once upon a time", "max_length": 40, "temperature": 0.8, "seed": 5},
        {"text": "", "max_length": 40, "temperature": 1.0, "seed": 7},
    ]
    stopped = threading.Event()
    stopped.set()
    calls: list[int] = []
    original = model.gru.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    model.gru.forward = counting
    out = char_gru.predict_many(items, model=model, stops=[None, stopped, None])
    assert len(calls) == 1 + 40  # the prompts, then one pass per generated character for the whole batch
    model.gru.forward = original
    for i in (0, 2):
        single = char_gru.predict(items[i]["text"], 40, items[i]["temperature"], items[i]["seed"], model=model)
        assert out[i]["text"] == single["text"] and out[i]["batch_size"] == 3
    assert isinstance(out[1], KernelCancelledError)
    bad = char_gru.predict_many([{"text": "x", "max_length": 0}, items[0]], model=model)
    assert isinstance(bad[0], ValueError) and "max_length" in str(bad[0]) and bad[1]["text"] == out[0]["text"]


# -- on a cluster ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[GpuCluster]:
    data = repo_config_data()
    data["accounting"]["database"] = ":memory:"
    data["serving"] = {"batching": {"generate": {"max_batch_size": 4, "max_wait_ms": LONG_WAIT_MS}}}
    with start_cluster(local_config(data), simulate=1, timeout=60) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster: GpuCluster) -> Iterator[altlas_dask.Client]:
    with altlas_dask.Client(cluster.scheduler_address, set_as_default=False, timeout=30) as client:
        yield client


def test_generate_requests_on_one_gpu_share_a_forward_pass(client: altlas_dask.Client):
    from altlas_dask.model import generate

    prompts = ["The ", "And ", "When ", "We "]
    futures = client.map(generate, prompts, [24] * 4, [0.0] * 4, [0] * 4, pure=False)
    results = client.gather(futures)
    model = char_gru.load_model("cpu")
    for prompt, result in zip(prompts, results, strict=True):
        assert result["batch_size"] == 4, result
        assert result["text"] == char_gru.predict(prompt, 24, 0.0, 0, model=model)["text"]
    assert len({f.key for f in futures}) == 4  # four tasks, each with its own key and record
    assert all(client.explain(f)["status"] == "completed" for f in futures)


def test_a_batch_charges_each_request_its_share_of_the_call_and_explains_its_size(cluster: GpuCluster):
    """Four requests in one batch call: each is charged a quarter of the call (not the whole call four
    times), in its record and in its user's usage, and its explanation shows the batch size."""
    from distributed import get_task_stream

    from altlas_dask.model import generate

    user = "batch-share"
    with altlas_dask.Client(
        cluster.scheduler_address, gpu_defaults={"user": user}, set_as_default=False, timeout=30
    ) as client:
        with get_task_stream(client=client) as stream:
            futures = client.map(generate, ["The ", "And ", "When ", "We "], [48] * 4, [0.0] * 4, [0] * 4, pure=False)
            assert all(r["batch_size"] == 4 for r in client.gather(futures))
        compute = {  # Dask's own compute seconds per task: each includes the whole batch call
            r["key"]: sum(s["stop"] - s["start"] for s in r["startstops"] if s["action"] == "compute")
            for r in stream.data
        }
        rows = client.explain_many(futures)
        assert [rows[f.key]["batch_size"] for f in futures] == [4] * 4
        charged = [rows[f.key]["gpu_seconds"] for f in futures]
        assert len(set(charged)) == 1 and charged[0] > 0, charged  # the same share each
        # the call ran inside every task's compute time, so its four shares fit in any one task's time
        assert sum(charged) <= min(compute[f.key] for f in futures) + 1e-5, (charged, compute)
        used = wait_for(lambda: sum(d["gpu_seconds"] for d in client.usage()), what="the user's usage")
        assert used == pytest.approx(sum(charged), abs=1e-5)


def test_cancelling_one_request_leaves_its_batch_neighbours_running(client: altlas_dask.Client):
    from altlas_dask.model import generate

    futures = client.map(generate, ["a", "b", "c", "d"], [1024] * 4, [1.0] * 4, [1, 2, 3, 4], pure=False)
    client.cancel_task(futures[1], reason="test")
    with pytest.raises(TaskCancelledError):
        futures[1].result(timeout=120)
    for i in (0, 2, 3):
        result = futures[i].result(timeout=120)
        assert len(result["text"]) == 1024 and result["batch_size"] == 4


def test_batched_user_function_from_the_python_api(client: altlas_dask.Client):
    def square_all(xs: list[int]) -> list[int]:
        if -1 in xs:
            raise ValueError("negative")
        return [x * x for x in xs]

    limits = {"max_batch_size": 4, "max_wait_ms": LONG_WAIT_MS}
    assert client.gather(client.map(square_all, [1, 2, 3, 4], batched=limits)) == [1, 4, 9, 16]
    futures = client.map(square_all, [5, -1, 6, 7], batched=limits, pure=False)
    assert [futures[i].result(timeout=60) for i in (0, 2, 3)] == [25, 36, 49]
    with pytest.raises(ValueError, match="negative"):
        futures[1].result(timeout=60)

    @altlas_dask.batched(max_batch_size=2, max_wait_ms=LONG_WAIT_MS)
    def lengths(words: list[str]) -> list[int]:
        return [len(w) for w in words]

    assert client.gather(client.map(lengths, ["ab", "abc"])) == [2, 3]
    assert isinstance(lengths, Batched)
    with pytest.raises(ValueError, match="max_batch_size"):
        client.submit(square_all, 1, batched={"max_batch_size": 0})

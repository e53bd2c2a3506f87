"""Cancellation of GPU work between chunks (altlas_dask.gpus.chunks), with the CPU build of torch.

The checks count chunks through the guard's ``on_chunk`` hook: no timing. CUDA itself is not here;
its two calls (synchronize, empty_cache) are observed at the torch.cuda boundary.
"""

from __future__ import annotations

import threading
from unittest.mock import create_autospec

import pytest
import torch
from conftest import wait_for
from distributed import Event, get_worker

from altlas_dask import run_on_gpu
from altlas_dask.client.live import gpu_workers, live_gpus
from altlas_dask.gpus.chunks import ChunkGuard, KernelCancelledError
from altlas_dask.gpus.dask_worker_internals import still_executing
from altlas_dask.gpus.device import Cancellation
from altlas_dask.model.char_gru import CANCEL_CHECK_EVERY, get_model, predict
from altlas_dask.worker.kernels import dense_layer, matmul_chunks

STARTED, DROPPED = "altlas-test-task-started", "altlas-test-task-dropped"


def cancel_after(k: int, stop: threading.Event, seen: list[int]):
    """An ``on_chunk`` hook: record each finished chunk, set the task's stop flag after chunk ``k``."""

    def hook(n: int) -> None:
        seen.append(n)
        if n == k:
            stop.set()

    return hook


@pytest.mark.parametrize("k", [1, 3])
def test_matmul_stops_before_the_chunk_after_the_cancel(k):
    stop, seen = threading.Event(), []
    a = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    guard = ChunkGuard(stop, "cpu", "matmul", cancel_after(k, stop, seen))
    with pytest.raises(KernelCancelledError, match=f"stopped after {k} chunk"), guard:
        matmul_chunks(a, 10, guard)
    assert seen == list(range(1, k + 1))  # chunk k+1 never ran
    assert guard.chunks == k


def test_matmul_uncancelled_runs_every_chunk():
    seen: list[int] = []
    a = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    with ChunkGuard(threading.Event(), "cpu", on_chunk=seen.append) as guard:
        matmul_chunks(a, 5, guard)
    assert seen == [1, 2, 3, 4, 5]


def test_a_task_cancelled_before_it_starts_runs_no_chunk():
    stop = threading.Event()
    stop.set()
    seen: list[int] = []
    with pytest.raises(KernelCancelledError, match="after 0 chunk"), ChunkGuard(stop, "cpu", on_chunk=seen.append):
        seen.append(-1)  # never reached
    assert seen == []


class CountingModel(torch.nn.Module):
    """The shipped model, counting its forward passes (one per generated character, one for the prompt)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args):
        self.calls += 1
        return self.model(*args)


def test_text_generation_stops_before_the_chunk_after_the_cancel():
    stop, seen = threading.Event(), []
    model = CountingModel(get_model("cpu"))
    with pytest.raises(KernelCancelledError):
        predict("To be", 10 * CANCEL_CHECK_EVERY, 0.0, 1, model=model, stop=stop, on_chunk=cancel_after(2, stop, seen))
    assert seen == [1, 2]
    assert model.calls == 1 + 2 * CANCEL_CHECK_EVERY  # the prompt, then exactly two chunks of characters


def cuda_call(real, calls: list[str]):
    """``real`` (a torch.cuda function) with its signature kept and its call recorded instead of run."""
    return create_autospec(real, side_effect=lambda *args, **kwargs: calls.append(real.__name__))


def test_on_cuda_each_chunk_is_synchronised_before_the_check_and_cached_memory_freed_on_cancel(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", cuda_call(torch.cuda.synchronize, calls))
    monkeypatch.setattr(torch.cuda, "empty_cache", cuda_call(torch.cuda.empty_cache, calls))
    stop = threading.Event()
    guard = ChunkGuard(stop, "cuda", on_chunk=lambda n: calls.append(f"chunk {n}"))
    with pytest.raises(KernelCancelledError), guard as g:
        for n in range(1, 10):
            calls.append(f"launch {n}")
            if n == 2:
                stop.set()  # cancelled while chunk 2 is queued on the device
            g.chunk_done()
    assert calls == ["launch 1", "synchronize", "chunk 1", "launch 2", "synchronize", "chunk 2", "empty_cache"]


def test_failed_work_on_cuda_also_frees_cached_memory(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", cuda_call(torch.cuda.empty_cache, calls))
    with pytest.raises(RuntimeError, match="CUDA out of memory"), ChunkGuard(None, "cuda"):
        raise RuntimeError("CUDA out of memory")
    assert calls == ["empty_cache"]


def test_cancelling_a_running_dense_layer_on_the_cluster_frees_its_gpu(dask_client):
    gpu, marker_mb = 1, 777
    address = gpu_workers(dask_client)[gpu]
    future = dask_client.submit(
        dense_layer, 32, 32, 3600.0, 8, 0, marker_mb, workers=[address], allow_other_workers=False, pure=False
    )

    def state():
        return next(s for s in live_gpus(dask_client) if s.id == gpu)

    wait_for(lambda: state().memory_used_mb == marker_mb, what="the dense layer to hold its memory on GPU 1")
    future.cancel()
    freed = wait_for(
        lambda: (s := state()).memory_used_mb == 0 and s.active_requests == 0 and s,
        what="the cancelled dense layer to give GPU 1 back (it would run for an hour otherwise)",
    )
    assert freed.status == "active"


def kernel_started_after_its_cancel(gflop: float) -> dict:
    """Signals that it runs, waits until the worker has dropped it, then starts its kernel."""
    worker = get_worker()
    key = worker.get_current_task()
    Event(STARTED).set()
    wait_for(lambda: not still_executing(worker, key), timeout=60, what="the cancel to reach the worker")
    Event(DROPPED).set()
    return run_on_gpu(gflop)


def test_a_cancel_that_comes_before_the_kernel_starts_still_stops_it():
    """The lost-wakeup race behind issue 13's coalescing "hang": the cancel arrived before the kernel watched."""
    stop = Cancellation()
    stop.still_wanted = lambda key: key != "dropped"
    stop.cancel("dropped")  # nobody is watching yet
    with stop.watch("dropped") as dropped, stop.watch("kept") as kept:
        assert dropped.is_set() and not kept.is_set()


def test_a_task_cancelled_just_before_its_kernel_gives_the_gpu_back(dask_client):
    gpu = 1
    address = gpu_workers(dask_client)[gpu]
    future = dask_client.submit(
        kernel_started_after_its_cancel, 1e9, workers=[address], allow_other_workers=False, pure=False
    )
    assert Event(STARTED, client=dask_client).wait(timeout=60)
    future.cancel()
    assert Event(DROPPED, client=dask_client).wait(timeout=60)  # the worker dropped it; now it starts its kernel
    after = dask_client.submit(run_on_gpu, 1.0, workers=[address], allow_other_workers=False, pure=False)
    assert after.result(timeout=60)["gpu"] == gpu  # kernels take turns on a GPU: the cancelled one must have stopped

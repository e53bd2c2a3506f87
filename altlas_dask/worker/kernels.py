"""Workloads that run on the worker's GPU: a modelled kernel and real torch work.

Real torch work runs in chunks under a :class:`~altlas_dask.gpus.chunks.ChunkGuard`: after each chunk
the device is synchronised and the task's cancellation flag checked, and a cancelled or timed-out task
returns its cached CUDA memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from distributed import get_worker

from altlas_dask.gpus.chunks import ChunkGuard, free_cached_memory
from altlas_dask.worker.binding import current_device

if TYPE_CHECKING:
    import torch

    from altlas_dask.gpus.device import GpuDevice

MIB = 1024 * 1024


def run_on_gpu(work_gflop: float, memory_mb: int = 0) -> dict[str, Any]:
    """Hold ``memory_mb`` of GPU memory and run ``work_gflop`` of modelled compute.

    On a virtual GPU this takes ``work_gflop / speed`` seconds of device time
    (kernels time-share the device); on a real one it runs torch matmuls.
    Raises ``GpuOutOfMemoryError`` when the memory does not fit.
    """
    if work_gflop < 0 or memory_mb < 0:
        raise ValueError(f"work_gflop and memory_mb must be >= 0 (got {work_gflop}, {memory_mb})")
    device = current_device()
    start = time.perf_counter()
    with device.reserve(memory_mb):
        device_seconds = device.run(work_gflop, key=get_worker().get_current_task())
    return {
        "gpu": device.index,
        "uuid": device.uuid,
        "device_seconds": device_seconds,
        "seconds": time.perf_counter() - start,
    }


@contextmanager
def torch_work(memory_mb: int, what: str) -> Iterator[tuple[GpuDevice, ChunkGuard]]:
    """This worker's GPU with ``memory_mb`` reserved, its time metered, and a guard watching the task's cancellation."""
    device = current_device()
    key = get_worker().get_current_task()
    with (
        device.reserve(memory_mb),
        device.cancellation.watch(key) as stop,
        device.busy(),
        ChunkGuard(stop, device.torch_device, f"{what} on GPU {device.index}") as guard,
    ):
        yield device, guard


def matmul_chunks(a: torch.Tensor, repeats: int, guard: ChunkGuard) -> torch.Tensor:
    """``repeats`` chunks of ``tanh(result @ a / sqrt(n))``; the guard runs after each one."""
    import torch

    result = a
    for _ in range(repeats):
        result = torch.tanh(result @ a / a.shape[0] ** 0.5)
        guard.chunk_done()
    return result


def torch_matmul(size: int = 256, repeats: int = 4, seed: int = 0) -> dict[str, Any]:
    """Real torch work on the worker's device (CUDA on a real GPU, CPU on a virtual one)."""
    import torch

    memory_mb = max(1, 3 * size * size * 4 // MIB)
    generator = torch.Generator().manual_seed(seed)
    with torch_work(memory_mb, "torch_matmul") as (device, guard):
        a = torch.randn(size, size, generator=generator).to(device.torch_device)
        checksum = float(matmul_chunks(a, repeats, guard).sum().cpu())
    return {"gpu": device.index, "uuid": device.uuid, "device": device.torch_device, "checksum": checksum}


def dense_inputs(input_size: int, output_size: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch and weights :func:`dense_layer` multiplies (CPU tensors; the same for the same arguments)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, input_size, generator=generator)
    w = torch.randn(input_size, output_size, generator=generator) / input_size**0.5
    return x, w


def dense_memory_mb(input_size: int, output_size: int, batch: int) -> int:
    """Device memory :func:`dense_layer` allocates (float32 weights, input and output)."""
    return max(1, -(-4 * (input_size * output_size + batch * (input_size + output_size)) // MIB))


def dense_layer(
    input_size: int, output_size: int, duration: float, batch: int = 256, seed: int = 0, memory_mb: int = 0
) -> dict[str, Any]:
    """A dense layer ``[batch, input_size] @ [input_size, output_size]`` applied for ``duration`` seconds.

    Each application is one chunk (synchronised, then the cancellation flag checked). Reserves the larger of
    the tensors' memory and ``memory_mb``. Returns iterations, seconds and GFLOP done, and the first output's
    sum (to check against the same product on the CPU).
    """
    if min(input_size, output_size, batch) < 1 or duration < 0 or memory_mb < 0:
        raise ValueError(
            f"input_size, output_size, batch must be >= 1 and duration, memory_mb >= 0 "
            f"(got {input_size}, {output_size}, {batch}, {duration}, {memory_mb})"
        )
    reserve_mb = max(dense_memory_mb(input_size, output_size, batch), int(memory_mb))
    with torch_work(reserve_mb, "dense_layer") as (device, guard):
        began = time.time()
        x, w = (t.to(device.torch_device) for t in dense_inputs(input_size, output_size, batch, seed))
        start = time.perf_counter()
        y = x @ w
        guard.chunk_done()
        checksum = float(y.sum().cpu())
        iterations = 1
        while time.perf_counter() - start < duration:
            y = x @ w
            guard.chunk_done()
            iterations += 1
        seconds = time.perf_counter() - start
        del x, w, y
        free_cached_memory(device.torch_device)  # a benchmark kernel: hand its memory back at once
        ended = time.time()
    return {
        "gpu": device.index,
        "uuid": device.uuid,
        "device": device.torch_device,
        "iterations": iterations,
        "seconds": seconds,
        "gflop": 2.0 * batch * input_size * output_size * iterations / 1e9,
        "memory_mb": reserve_mb,
        "checksum": checksum,
        "started": began,  # wall clock while the memory was held (epoch seconds)
        "ended": ended,
    }

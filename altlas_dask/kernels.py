"""Workloads that run on the worker's GPU: a modelled kernel and real torch work."""

from __future__ import annotations

import time
from typing import Any

from distributed import get_worker

from altlas_dask.worker import current_device


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


def torch_matmul(size: int = 256, repeats: int = 4, seed: int = 0) -> dict[str, Any]:
    """Real torch work on the worker's device (CUDA on a real GPU, CPU on a virtual one)."""
    import torch

    device = current_device()
    memory_mb = max(1, 3 * size * size * 4 // (1024 * 1024))
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=generator).to(device.torch_device)
    with device.reserve(memory_mb), device.busy():
        result = a
        for _ in range(repeats):
            result = torch.tanh(result @ a / size**0.5)
        checksum = float(result.sum().cpu())
    return {"gpu": device.index, "uuid": device.uuid, "device": device.torch_device, "checksum": checksum}

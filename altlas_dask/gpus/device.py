"""The GPU a worker process owns: one interface over a real and a virtual device."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from altlas_dask.gpus.chunks import ChunkGuard, KernelCancelledError
from altlas_dask.gpus.nvml import NvmlInventory
from altlas_dask.gpus.state import GpuState

__all__ = ["Cancellation", "GpuDevice", "KernelCancelledError", "NvmlGpu"]

REAL_KERNEL_SIZE = 2048  # one matmul of this size is 2 * n**3 flop
DEVICE_SECONDS_METADATA = "altlas_device_s"  # a task's measured device seconds, in its Dask metadata


def report_device_seconds(seconds: float) -> None:
    """On a Dask worker, add ``seconds`` of device time to the task this thread executes: the router charges
    it instead of a share of the task's wall time. Only a device that runs one kernel at a time (so its
    kernels' times never overlap) may report. Nothing happens outside a worker's task thread."""
    from altlas_dask.gpus.dask_worker_internals import add_to_current_task

    add_to_current_task(DEVICE_SECONDS_METADATA, seconds)


class Cancellation:
    """Per-task stop flags, so a cancelled task's kernel gives the device back.

    A cancel can come before the kernel starts watching (the worker drops a task that has just begun
    executing): ``still_wanted(key)``, set by the worker plugin from the worker's own task state, is asked
    when the watch begins, under the same lock as ``cancel``, so such a kernel stops at once.
    """

    def __init__(self) -> None:
        self._events: dict[object, threading.Event] = {}
        self._lock = threading.Lock()
        self.still_wanted: Callable[[object], bool] | None = None

    @contextmanager
    def watch(self, key: object) -> Iterator[threading.Event]:
        event = threading.Event()
        with self._lock:
            self._events[key] = event
            if key is not None and self.still_wanted is not None and not self.still_wanted(key):
                event.set()
        try:
            yield event
        finally:
            with self._lock:
                self._events.pop(key, None)

    def cancel(self, key: object) -> bool:
        with self._lock:
            event = self._events.get(key)
        if event is not None:
            event.set()
        return event is not None


class GpuDevice(Protocol):
    """What a task sees of its GPU (see :mod:`altlas_dask.worker.kernels`)."""

    index: int
    uuid: str
    torch_device: str
    cancellation: Cancellation

    def state(self) -> GpuState: ...
    def reserve(self, memory_mb: int) -> contextmanager: ...
    def run(self, work_gflop: float, key: object = None) -> float: ...
    def busy(self) -> contextmanager: ...
    def cancel(self, key: object) -> bool: ...


class NvmlGpu:
    """A real GPU (or MIG slice): state from NVML, kernels as torch matmuls on CUDA.

    ``ref`` is the device's short id or UUID in ``inventory``; the process's CUDA device is the
    first of ``CUDA_VISIBLE_DEVICES``, which the cluster's worker spec sets to this device.
    """

    torch_device = "cuda"

    def __init__(self, ref: int | str, inventory: NvmlInventory) -> None:
        device = inventory.device(ref)
        self.index = device.id
        self.uuid = device.uuid
        self.inventory = inventory
        self._lock = threading.Lock()
        self._active = 0
        self.cancellation = Cancellation()
        self.cancel = self.cancellation.cancel

    def state(self) -> GpuState:
        with self._lock:
            active = self._active
        return self.inventory.state(self.index).with_(active_requests=active)

    @contextmanager
    def reserve(self, memory_mb: int) -> Iterator[None]:
        """Bookkeeping only: on real hardware CUDA itself raises out-of-memory."""
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    @contextmanager
    def busy(self) -> Iterator[None]:
        yield

    def run(self, work_gflop: float, key: object = None) -> float:
        """Matmuls on CUDA; a cancelled task stops after the step running on the device, its memory freed."""
        import torch

        n = REAL_KERNEL_SIZE
        steps = max(1, round(work_gflop * 1e9 / (2 * n**3)))
        start = time.perf_counter()
        with self.cancellation.watch(key) as stop, ChunkGuard(stop, "cuda", f"kernel on GPU {self.index}") as guard:
            a = torch.randn(n, n, device="cuda")
            for _ in range(steps):
                a = torch.tanh(a @ a)
                guard.chunk_done()
        return time.perf_counter() - start

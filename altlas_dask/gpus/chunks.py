"""Cancellation that works on CUDA: GPU work runs in chunks, and between chunks the device is synchronised
and the task's stop flag checked.

CUDA kernels launch asynchronously: a flag checked between *launches* lets queued kernels run on after
a cancel. :class:`ChunkGuard` waits for each chunk to finish on the device (``torch.cuda.synchronize``)
before it looks at the flag, and on the way out of a cancelled or failed task returns torch's cached
device memory (``torch.cuda.empty_cache``), so the GPU is free for the next task. On a CPU device
(a simulated GPU) both are no-ops and the checks behave the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType


class KernelCancelledError(RuntimeError):
    """The task owning a kernel was cancelled (timeout, user, failover); the kernel stopped early."""


def _is_cuda(torch_device: str) -> bool:
    return str(torch_device).startswith("cuda")


def synchronize(torch_device: str) -> None:
    """Wait until every kernel queued on ``torch_device`` has finished (no-op off CUDA)."""
    if _is_cuda(torch_device):
        import torch

        torch.cuda.synchronize(torch_device)


def free_cached_memory(torch_device: str) -> None:
    """Give torch's cached, unused device memory back to the GPU (no-op off CUDA)."""
    if _is_cuda(torch_device):
        import torch

        torch.cuda.empty_cache()


class ChunkGuard:
    """Call :meth:`chunk_done` after each chunk of work; use as a context manager around the work.

    ``stop`` is the task's cancellation flag (``None``: never cancelled); ``on_chunk(n)`` is called
    after chunk ``n`` finished (1-based), before the flag is checked.
    """

    def __init__(
        self,
        stop: threading.Event | None,
        torch_device: str,
        what: str = "GPU work",
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.stop, self.torch_device, self.what, self.on_chunk = stop, str(torch_device), what, on_chunk
        self.chunks = 0

    def check(self) -> None:
        """Raise :class:`KernelCancelledError` if the task was cancelled."""
        if self.stop is not None and self.stop.is_set():
            raise KernelCancelledError(f"{self.what} stopped after {self.chunks} chunk(s): its task was cancelled")

    def chunk_done(self) -> None:
        """The chunk just launched: wait for it on the device, count it, then stop if cancelled."""
        synchronize(self.torch_device)
        self.chunks += 1
        if self.on_chunk is not None:
            self.on_chunk(self.chunks)
        self.check()

    def __enter__(self) -> ChunkGuard:
        self.check()  # cancelled before it started
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:  # cancelled, timed out or failed: don't leave cached memory on the GPU
            free_cached_memory(self.torch_device)

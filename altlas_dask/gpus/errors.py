"""Errors a GPU raises, shaped like the ones CUDA/torch and NVML raise."""

from __future__ import annotations


class GpuUnavailableError(RuntimeError):
    """No usable NVIDIA GPU: NVML library/driver missing, or no device passes the filters."""


class GpuOutOfMemoryError(RuntimeError):
    """Device memory exhausted (the message follows ``torch.cuda.OutOfMemoryError``)."""

    def __init__(self, gpu: int, requested_mb: int, total_mb: int, used_mb: int) -> None:
        self.gpu, self.requested_mb, self.total_mb, self.used_mb = gpu, requested_mb, total_mb, used_mb
        super().__init__(
            f"CUDA out of memory. Tried to allocate {requested_mb} MiB (GPU {gpu}; {total_mb} MiB total "
            f"capacity; {used_mb} MiB already allocated; {max(total_mb - used_mb, 0)} MiB free)"
        )

    def __reduce__(self):  # keep the fields across pickling to the client
        return type(self), (self.gpu, self.requested_mb, self.total_mb, self.used_mb)


class GpuFaultError(RuntimeError):
    """A kernel failed because the device faulted (lost GPU, ECC error, ...)."""

    def __init__(self, gpu: int, reason: str) -> None:
        self.gpu, self.reason = gpu, reason
        super().__init__(f"CUDA error on GPU {gpu}: {reason}")

    def __reduce__(self):
        return type(self), (self.gpu, self.reason)

"""Modelled GPUs in virtual time, behaving the way :class:`altlas_dask.gpus.simulated.SimulatedGpu` does.

A GPU runs one kernel at a time: the tasks placed on it (its Dask worker has a thread per slot) wait
for the device in arrival order, and a kernel of ``W`` GFLOP holds it ``W / speed`` seconds. Memory is
reserved from the task's start on the worker to its end, and a task that does not fit fails with
CUDA's out-of-memory error. Faults as ``simulation.faults`` describes them: ``lost`` (kernels that
reach the device after ``at_s`` fail, the heartbeat reports a device error), ``error_rate`` (a
kernel fails with that probability), ``thermal_throttle`` (half speed and too hot from ``at_s``).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass

from altlas_dask.config import FaultSpec, SimulatedGpuSpec
from altlas_dask.gpus.simulated import THROTTLED_SPEED_FACTOR, simulated_uuid
from altlas_dask.gpus.state import GpuState, lost_gpu

LOST_ERROR = "GpuFaultError('unspecified launch failure (GPU is lost)')"
ECC_ERROR = "GpuFaultError('uncorrectable ECC error encountered')"


@dataclass(slots=True)
class Kernel:
    key: str
    work_gflop: float
    memory_mb: int
    arrived: float  # when the task started on the worker (it may wait for the device)
    started: float = -1.0  # when it took the device
    seconds: float = 0.0  # device seconds


class ModelGpu:
    """One GPU of the modelled pool, with its worker's address."""

    def __init__(
        self, index: int, spec: SimulatedGpuSpec, faults: tuple[FaultSpec, ...], seed: int, max_temperature: float
    ) -> None:
        self.index, self.spec, self.max_temperature = index, spec, max_temperature
        self.worker = f"sim://gpu-{index}"
        self.uuid = simulated_uuid(index, seed)
        self.reserved_mb = 0
        self.waiting: deque[Kernel] = deque()
        self.running: Kernel | None = None
        self.busy_s = 0.0  # device seconds of finished kernels
        self.lost_at = min((f.at_s for f in faults if f.kind == "lost"), default=None)
        self.throttled_at = min((f.at_s for f in faults if f.kind == "thermal_throttle"), default=None)
        self.error_rate = max((f.error_rate for f in faults if f.kind == "error_rate"), default=0.0)
        self._rng = random.Random(f"{seed}-{index}")
        self._last_busy = (0.0, 0.0)  # (time, busy seconds) at the last heartbeat
        self.warm_keys: OrderedDict[str, None] = OrderedDict()  # affinity state held, least recent first

    def warm(self, key: str, capacity: int) -> bool:
        """Whether the GPU holds ``key``'s state (a hit); it holds it from now on, the least recent of
        ``capacity`` keys dropped."""
        hit = key in self.warm_keys
        self.warm_keys[key] = None
        self.warm_keys.move_to_end(key)
        while len(self.warm_keys) > capacity:
            self.warm_keys.popitem(last=False)
        return hit

    def lost(self, now: float) -> bool:
        return self.lost_at is not None and now >= self.lost_at

    def speed(self, now: float) -> float:
        throttled = self.throttled_at is not None and now >= self.throttled_at
        return self.spec.speed_gflops * (THROTTLED_SPEED_FACTOR if throttled else 1.0)

    def arrive(self, kernel: Kernel, now: float) -> str | None:
        """A task starts on the worker; the error text if it fails at once (lost GPU, out of memory)."""
        if self.lost(now):
            return LOST_ERROR
        if self.reserved_mb + kernel.memory_mb > self.spec.memory_mb:
            return (
                f"GpuOutOfMemoryError('GPU {self.index}: CUDA out of memory: {kernel.memory_mb} MB requested, "
                f"{self.spec.memory_mb - self.reserved_mb} MB free')"
            )
        self.reserved_mb += kernel.memory_mb
        self.waiting.append(kernel)
        return None

    def take_device(self, now: float) -> tuple[Kernel, float] | None:
        """If the device is free, the next kernel takes it: (kernel, its end time); None otherwise."""
        if self.running is not None or not self.waiting:
            return None
        kernel = self.waiting.popleft()
        kernel.started = now
        kernel.seconds = 0.0 if self.lost(now) else kernel.work_gflop / self.speed(now)
        self.running = kernel
        return kernel, now + kernel.seconds

    def end(self, kernel: Kernel, now: float) -> str | None:
        """The running kernel ends; the error text if it failed."""
        self.running = None
        self.reserved_mb -= kernel.memory_mb
        self.busy_s += kernel.seconds
        if self.lost(kernel.started):
            return LOST_ERROR
        if self.error_rate > 0 and self._rng.random() < self.error_rate:
            return ECC_ERROR
        return None

    def cancel(self, key: str, now: float) -> bool:
        """Drop a task that has not reached the device, or stop the running one (True if it was running)."""
        for kernel in self.waiting:
            if kernel.key == key:
                self.waiting.remove(kernel)
                self.reserved_mb -= kernel.memory_mb
                return False
        kernel = self.running
        if kernel is not None and kernel.key == key:
            kernel.seconds = now - kernel.started
            self.running = None
            self.reserved_mb -= kernel.memory_mb
            self.busy_s += kernel.seconds
            return True
        return False

    def busy_until(self, now: float) -> float:
        """Device seconds used up to ``now``."""
        k = self.running
        return self.busy_s + (min(now - k.started, k.seconds) if k is not None else 0.0)

    def state(self, now: float) -> GpuState:
        """The heartbeat: what NVML would report now."""
        spec = self.spec
        if self.lost(now):
            return lost_gpu(self.index, self.uuid, "GPU is lost", simulated=True, worker=self.worker)
        then, busy_then = self._last_busy
        busy = self.busy_until(now)
        util = min((busy - busy_then) / (now - then), 1.0) if now > then else 0.0
        self._last_busy = (now, busy)
        temperature = spec.idle_temperature_c + (spec.max_load_temperature_c - spec.idle_temperature_c) * util
        if self.throttled_at is not None and now >= self.throttled_at:
            temperature = max(temperature, self.max_temperature + 5.0)  # as SimulatedGpu reports it
        return GpuState(
            id=self.index,
            uuid=self.uuid,
            name=spec.name,
            compute_capability=spec.compute_capability,
            status="active",
            memory_total_mb=spec.memory_mb,
            memory_used_mb=self.reserved_mb,
            utilization_gpu=round(100.0 * util, 1),
            utilization_memory=round(100.0 * self.reserved_mb / spec.memory_mb, 1),
            temperature_c=round(temperature, 1),
            power_usage_w=round(spec.idle_power_w + (spec.power_limit_w - spec.idle_power_w) * util, 1),
            power_limit_w=spec.power_limit_w,
            performance_index=round(self.speed(now) / spec.speed_gflops, 3),
            active_requests=len(self.waiting) + (self.running is not None),
            queued_requests=len(self.waiting),
            simulated=True,
            worker=self.worker,
        )

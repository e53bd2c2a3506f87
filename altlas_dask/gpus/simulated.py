"""Virtual GPUs that stand in for NVML devices on machines without one.

A :class:`SimulatedGpu` lives inside its Dask worker process. It models
memory (reserved and released by running tasks, OOM like CUDA's), compute
(kernels take ``work_gflop / speed`` seconds and time-share the device, so
scaling across virtual GPUs is real wall-clock scaling even on 2 cores),
utilization from busy time, temperature and power that follow utilization,
and injectable faults that look the way real failures look through NVML.
"""

from __future__ import annotations

import random
import threading
import time
import uuid as uuid_mod
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import pynvml

from altlas_dask.config import AltlasConfig, FaultSpec, SimulatedGpuSpec, meets_compute_capability
from altlas_dask.gpus.device import Cancellation, KernelCancelledError, report_device_seconds
from altlas_dask.gpus.errors import GpuFaultError, GpuOutOfMemoryError
from altlas_dask.gpus.state import GpuState, classify_health

UTILIZATION_WINDOW_S = 1.0
THERMAL_WINDOW_S = 10.0
ERROR_HISTORY = 100
THROTTLED_SPEED_FACTOR = 0.5


def simulated_uuid(index: int, seed: int = 0) -> str:
    """Stable NVML-style UUID for virtual GPU ``index``."""
    return "GPU-" + str(uuid_mod.UUID(int=random.Random(f"altlas-{seed}-{index}").getrandbits(128)))


class SimulatedGpu:
    """One virtual GPU. Thread-safe: a worker runs several tasks at once."""

    torch_device = "cpu"

    def __init__(
        self,
        index: int,
        spec: SimulatedGpuSpec,
        *,
        seed: int = 0,
        max_temperature: float = 85.0,
        faults: tuple[FaultSpec, ...] = (),
    ) -> None:
        self.index = index
        self.spec = spec
        self.uuid = simulated_uuid(index, seed)
        self.max_temperature = max_temperature
        self._rng = random.Random(f"{seed}-{index}")
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._kernel = threading.Lock()
        self._reserved_mb = 0
        self._busy: deque[tuple[float, float]] = deque()
        self._kernel_started: float | None = None
        self._active = 0
        self._waiting = 0
        self._outcomes: deque[bool] = deque(maxlen=ERROR_HISTORY)
        self._faults = [f for f in faults if f.gpu == index]
        self.cancellation = Cancellation()
        self.cancel = self.cancellation.cancel

    # -- faults -------------------------------------------------------------
    def inject(self, kind: str, *, error_rate: float = 0.0, at_s: float | None = None) -> None:
        """Inject a fault now (or ``at_s`` seconds after the GPU started)."""
        when = self.uptime() if at_s is None else at_s
        with self._lock:
            self._faults.append(FaultSpec(gpu=self.index, kind=kind, at_s=when, error_rate=error_rate))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._outcomes.clear()

    def _active_faults(self) -> dict[str, FaultSpec]:
        now = self.uptime()
        return {f.kind: f for f in self._faults if f.at_s <= now}

    @property
    def lost(self) -> bool:
        return "lost" in self._active_faults()

    def _check_alive(self) -> None:
        if self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    # -- compute and memory -----------------------------------------------------
    def uptime(self) -> float:
        return time.monotonic() - self._started

    def speed_gflops(self) -> float:
        throttled = "thermal_throttle" in self._active_faults()
        return self.spec.speed_gflops * (THROTTLED_SPEED_FACTOR if throttled else 1.0)

    @contextmanager
    def reserve(self, memory_mb: int) -> Iterator[None]:
        """Hold ``memory_mb`` of device memory; raise :class:`GpuOutOfMemoryError` if it doesn't fit."""
        if self.lost:
            raise GpuFaultError(self.index, "GPU is lost (NVML_ERROR_GPU_IS_LOST)")
        memory_mb = int(memory_mb)
        with self._lock:
            if self._reserved_mb + memory_mb > self.spec.memory_mb:
                raise GpuOutOfMemoryError(self.index, memory_mb, self.spec.memory_mb, self._reserved_mb)
            self._reserved_mb += memory_mb
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._reserved_mb -= memory_mb
                self._active -= 1

    @contextmanager
    def _device(self) -> Iterator[None]:
        """Take the device (kernels time-share it), counting the wait as queued."""
        with self._lock:
            self._waiting += 1
        try:
            self._kernel.acquire()
        finally:
            with self._lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self._kernel.release()

    def run(self, work_gflop: float, key: object = None) -> float:
        """Execute a modelled kernel; return the seconds it occupied the device.

        ``cancel(key)`` stops it early (raising ``KernelCancelledError``) so the device is free again.
        """
        with self.cancellation.watch(key) as stop, self._device():
            return self._execute(work_gflop, stop)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count the enclosed real work (e.g. a torch call) as device busy time."""
        with self._device():
            start = time.monotonic()
            self._kernel_started = start
            try:
                yield
            finally:
                self._record_busy(start, time.monotonic())

    def _execute(self, work_gflop: float, stop: threading.Event) -> float:
        faults = self._active_faults()
        if "lost" in faults:
            self._outcomes.append(False)
            raise GpuFaultError(self.index, "unspecified launch failure (GPU is lost)")
        start = time.monotonic()
        self._kernel_started = start
        duration = max(float(work_gflop), 0.0) / self.speed_gflops()
        try:
            if duration and stop.wait(duration):
                raise KernelCancelledError(f"kernel on GPU {self.index} stopped: its task was cancelled")
        finally:
            self._record_busy(start, time.monotonic())
        rate = faults["error_rate"].error_rate if "error_rate" in faults else 0.0
        failed = rate > 0 and self._rng.random() < rate
        self._outcomes.append(not failed)
        if failed:
            raise GpuFaultError(self.index, "uncorrectable ECC error encountered")
        return duration

    def _record_busy(self, start: float, end: float) -> None:
        """Kernels take the device one at a time (``_device``): their times are the task's device time."""
        report_device_seconds(end - start)
        with self._lock:
            self._kernel_started = None
            self._busy.append((start, end))
            horizon = end - THERMAL_WINDOW_S
            while self._busy and self._busy[0][1] < horizon:
                self._busy.popleft()

    def _busy_fraction(self, window: float, now: float) -> float:
        lo = now - window
        busy = sum(max(0.0, min(e, now) - max(s, lo)) for s, e in list(self._busy))
        running = self._kernel_started
        if running is not None:
            busy += now - max(running, lo)
        return min(busy / window, 1.0)

    # -- NVML view --------------------------------------------------------------
    def state(self) -> GpuState:
        """What NVML would report; raises ``NVMLError_GpuIsLost`` after a 'lost' fault."""
        self._check_alive()
        spec = self.spec
        now = time.monotonic()
        faults = self._active_faults()
        util = self._busy_fraction(UTILIZATION_WINDOW_S, now)
        heat = self._busy_fraction(THERMAL_WINDOW_S, now)
        temperature = spec.idle_temperature_c + (spec.max_load_temperature_c - spec.idle_temperature_c) * heat
        if "thermal_throttle" in faults:
            temperature = max(temperature, self.max_temperature + 5.0)
        outcomes = list(self._outcomes)
        error_rate = outcomes.count(False) / len(outcomes) if outcomes else 0.0
        with self._lock:
            used = self._reserved_mb
            active, waiting = self._active, self._waiting
        return GpuState(
            id=self.index,
            uuid=self.uuid,
            name=spec.name,
            compute_capability=spec.compute_capability,
            status="active",
            memory_total_mb=spec.memory_mb,
            memory_used_mb=used,
            utilization_gpu=round(100.0 * util, 1),
            utilization_memory=round(100.0 * used / spec.memory_mb, 1),
            temperature_c=round(temperature, 1),
            power_usage_w=round(spec.idle_power_w + (spec.power_limit_w - spec.idle_power_w) * util, 1),
            power_limit_w=spec.power_limit_w,
            performance_index=round(self.speed_gflops() / spec.speed_gflops, 3),
            error_rate=round(error_rate, 3),
            active_requests=active,
            queued_requests=waiting,
            uptime_s=round(self.uptime(), 1),
            health_status=classify_health(
                status="active",
                temperature_c=temperature,
                error_rate=error_rate,
                max_temperature=self.max_temperature,
            ),
            simulated=True,
            speed_gflops=spec.speed_gflops,
        )


class SimulatedInventory:
    """The virtual GPU pool described by ``cluster.yaml``'s ``simulation:`` section."""

    def __init__(self, config: AltlasConfig, count: int | None = None) -> None:
        specs = config.simulation.expanded()
        if count is not None:  # --simulate N: N GPUs, cycling through the configured models
            specs = [specs[i % len(specs)] for i in range(count)]
        self.config = config
        self.specs = specs
        self.devices = [self.device(i) for i in range(len(specs))]

    def device(self, index: int) -> SimulatedGpu:
        sim = self.config.simulation
        return SimulatedGpu(
            index,
            self.specs[index],
            seed=sim.seed,
            max_temperature=self.config.gpu.detection.max_temperature,
            faults=sim.faults,
        )

    def gpus(self) -> list[GpuState]:
        min_cc = self.config.gpu.detection.min_compute_capability
        return [d.state() for d in self.devices if meets_compute_capability(d.spec.compute_capability, min_cc)]

"""Real GPUs through NVML (the ``pynvml`` module of nvidia-ml-py)."""

from __future__ import annotations

import logging
import time
from types import ModuleType

import pynvml

from altlas_dask.config import meets_compute_capability
from altlas_dask.gpus.errors import GpuUnavailableError
from altlas_dask.gpus.state import GpuState, classify_health

logger = logging.getLogger(__name__)
MIB = 1024 * 1024


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlInventory:
    """Reads every NVIDIA GPU through NVML and translates it into :class:`GpuState`.

    Raises :class:`GpuUnavailableError` (one type, whatever NVML said) when the
    library or driver is missing or no device passes ``min_compute_capability``.
    """

    def __init__(
        self, *, min_compute_capability: float = 0.0, max_temperature: float = 85.0, nvml: ModuleType = pynvml
    ) -> None:
        self.nvml = nvml
        self.min_compute_capability = min_compute_capability
        self.max_temperature = max_temperature
        self._started = time.monotonic()
        try:
            nvml.nvmlInit()
            self.count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise GpuUnavailableError(f"NVML is not usable here ({exc})") from exc
        if self.count == 0:
            raise GpuUnavailableError("NVML found no GPU")

    def indices(self) -> list[int]:
        """Device indices whose compute capability meets the minimum."""
        keep = [i for i in range(self.count) if meets_compute_capability(self._cc(i), self.min_compute_capability)]
        if not keep:
            raise GpuUnavailableError(
                f"no GPU has compute capability >= {self.min_compute_capability} (gpu.detection.min_compute_capability)"
            )
        return keep

    def gpus(self) -> list[GpuState]:
        return [self.state(i) for i in self.indices()]

    def _cc(self, index: int) -> str:
        major, minor = self.nvml.nvmlDeviceGetCudaComputeCapability(self.nvml.nvmlDeviceGetHandleByIndex(index))
        return f"{major}.{minor}"

    def state(self, index: int) -> GpuState:
        """One device's fields, NVML units translated (bytes -> MB, mW -> W)."""
        nv = self.nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        rates = nv.nvmlDeviceGetUtilizationRates(handle)
        temperature = float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        power = self._optional(nv.nvmlDeviceGetPowerUsage, handle) / 1000.0
        limit = self._optional(nv.nvmlDeviceGetEnforcedPowerManagementLimit, handle) / 1000.0
        return GpuState(
            id=index,
            uuid=_text(nv.nvmlDeviceGetUUID(handle)),
            name=_text(nv.nvmlDeviceGetName(handle)),
            compute_capability=self._cc(index),
            status="active",
            memory_total_mb=int(memory.total // MIB),
            memory_used_mb=int(memory.used // MIB),
            utilization_gpu=float(rates.gpu),
            utilization_memory=float(rates.memory),
            temperature_c=temperature,
            power_usage_w=power,
            power_limit_w=limit,
            uptime_s=round(time.monotonic() - self._started, 1),
            health_status=classify_health(
                status="active", temperature_c=temperature, error_rate=0.0, max_temperature=self.max_temperature
            ),
        )

    def _optional(self, query, handle) -> float:
        """Power readings are 'not supported' on some boards: report 0 rather than fail."""
        try:
            return float(query(handle))
        except self.nvml.NVMLError_NotSupported:
            return 0.0

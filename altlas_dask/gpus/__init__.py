"""GPU inventory: real devices through NVML, or the simulated pool."""

from altlas_dask.gpus.errors import GpuFaultError, GpuOutOfMemoryError, GpuUnavailableError
from altlas_dask.gpus.nvml import NvmlInventory
from altlas_dask.gpus.simulated import SimulatedGpu, SimulatedInventory
from altlas_dask.gpus.state import GpuState, classify_health, health_score

__all__ = [
    "GpuFaultError",
    "GpuOutOfMemoryError",
    "GpuState",
    "GpuUnavailableError",
    "NvmlInventory",
    "SimulatedGpu",
    "SimulatedInventory",
    "classify_health",
    "health_score",
]

"""Names of the Dask resources a GPU worker advertises."""

GPU_RESOURCE = "GPU"
GPU_MEMORY_RESOURCE = "gpu-mem-mb"


def gpu_resources(memory_total_mb: int) -> dict[str, float]:
    """``{"GPU": 1, "gpu-mem-mb": <total>}`` for one GPU."""
    return {GPU_RESOURCE: 1.0, GPU_MEMORY_RESOURCE: float(memory_total_mb)}

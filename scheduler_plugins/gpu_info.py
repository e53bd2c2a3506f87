"""``altlas_gpu_info``: which GPU UUID (and model, and worker host) each router GPU id is.

The router's ``altlas_gpu_*`` series are labelled with its GPU id (``gpu``); NVIDIA's dcgm-exporter labels
its ``DCGM_FI_*`` series with the GPU's ``UUID`` (and a node-local ``gpu`` index that is not the router's).
This info gauge (value 1) joins them, as the Grafana dashboard and deploy/README.md show::

    DCGM_FI_DEV_GPU_UTIL * on(UUID) group_left(router_gpu)
      max by (UUID, router_gpu) (label_replace(label_replace(altlas_gpu_info, "UUID", "$1", "uuid", "(.+)"),
                                               "router_gpu", "$1", "gpu", "(.+)"))

Served by the scheduler's ``/metrics`` once ``scheduler_plugins.metrics.gpu_gauges`` yields
``gpu_info_family(snapshot)`` beside the other per-GPU families.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from prometheus_client.core import GaugeMetricFamily

from altlas_dask.gpus.state import GpuState

NAME = "altlas_gpu_info"
LABELS = ["gpu", "uuid", "name", "host"]


def worker_host(address: str | None) -> str:
    """``tcp://10.0.3.7:40123`` -> ``10.0.3.7`` ('' when the GPU has no worker)."""
    return (urlsplit(address).hostname or "") if address else ""


def gpu_info_family(gpus: Iterable[GpuState]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        NAME, "GPU identity: router GPU id, UUID (dcgm-exporter's UUID), model, host", labels=LABELS
    )
    for g in gpus:
        family.add_metric([str(g.id), g.uuid, g.name, worker_host(g.worker)], 1.0)
    return family

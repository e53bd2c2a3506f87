"""GPU health from NVIDIA dcgm-exporter's ``/metrics`` text instead of NVML.

dcgm-exporter (a DaemonSet of the GPU Operator, or a container beside the workers) publishes DCGM
fields as Prometheus series labelled with the GPU's ``UUID``. :func:`parse` reads that text with
``prometheus_client``'s parser into one :class:`DcgmGpu` per UUID; :func:`fetch` GETs it. A worker bound
to a GPU can take its health fields from here (``DcgmGpu.health_fields()`` has GpuState's names).

Trade-off: NVML (``gpus/nvml.py``) is read in-process at every heartbeat, exact and immediate, with no
extra service. DCGM is what the cluster's operators already run and alert on (one source of truth for
Grafana, the alerts and the router), adds XID errors and throttling counters NVML does not summarise,
and needs no NVML access in the worker's container; but it is as old as dcgm-exporter's collection
interval (30 s by default; set ``-c 1000`` for 1 s), costs an HTTP request, and is a dependency that
can be down (then :func:`fetch` raises :class:`DcgmUnavailableError` and the caller keeps NVML).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: DCGM field -> DcgmGpu attribute
FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL": "utilization_gpu",
    "DCGM_FI_DEV_FB_USED": "memory_used_mb",
    "DCGM_FI_DEV_FB_FREE": "memory_free_mb",
    "DCGM_FI_DEV_GPU_TEMP": "temperature_c",
    "DCGM_FI_DEV_POWER_USAGE": "power_usage_w",
    "DCGM_FI_DEV_XID_ERRORS": "xid",
    "DCGM_FI_DEV_THERMAL_VIOLATION": "thermal_violation_us",
}
REQUIRED = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE")


class DcgmError(ValueError):
    """The metrics text is not usable dcgm-exporter output (the message says what is missing)."""


class DcgmUnavailableError(DcgmError):
    """dcgm-exporter could not be reached."""


@dataclass
class DcgmGpu:
    """One GPU as dcgm-exporter reports it (MiB, %, °C, W; ``xid`` = last XID error, 0 for none)."""

    uuid: str
    index: int
    model: str = ""
    hostname: str = ""
    utilization_gpu: float = 0.0
    memory_used_mb: int = 0
    memory_free_mb: int | None = None
    temperature_c: float = 0.0
    power_usage_w: float = 0.0
    xid: int = 0
    thermal_violation_us: float = 0.0
    seen: set[str] = field(default_factory=set, repr=False)

    def health_fields(self) -> dict[str, Any]:
        """The GpuState fields DCGM can supply (the rest, e.g. the power limit, stay NVML's or the config's)."""
        out: dict[str, Any] = {
            "utilization_gpu": self.utilization_gpu,
            "memory_used_mb": self.memory_used_mb,
            "temperature_c": self.temperature_c,
            "power_usage_w": self.power_usage_w,
        }
        if self.memory_free_mb is not None:
            out["memory_total_mb"] = self.memory_used_mb + self.memory_free_mb
        return out


def parse(text: str, *, hostname: str | None = None) -> dict[str, DcgmGpu]:
    """UUID -> DcgmGpu from one scrape; ``hostname`` keeps only that node's GPUs (a Prometheus federation)."""
    gpus: dict[str, DcgmGpu] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise DcgmError(f"not Prometheus text format: {exc}") from None
    for family in families:
        attribute = FIELDS.get(family.name)
        if attribute is None:
            continue
        for sample in family.samples:
            labels = sample.labels
            if "UUID" not in labels or "gpu" not in labels:
                raise DcgmError(f"{sample.name} has no UUID/gpu label: {labels}")
            if hostname is not None and labels.get("Hostname") != hostname:
                continue
            gpu = gpus.setdefault(
                labels["UUID"],
                DcgmGpu(labels["UUID"], int(labels["gpu"]), labels.get("modelName", ""), labels.get("Hostname", "")),
            )
            value = sample.value
            setattr(gpu, attribute, int(value) if attribute in ("memory_used_mb", "memory_free_mb", "xid") else value)
            gpu.seen.add(family.name)
    for gpu in gpus.values():
        missing = [name for name in REQUIRED if name not in gpu.seen]
        if missing:
            raise DcgmError(f"GPU {gpu.uuid} has no {', '.join(missing)}: add them to dcgm-exporter's counters CSV")
    return gpus


def fetch(url: str, timeout: float = 2.0) -> str:
    """GET dcgm-exporter's ``/metrics`` (e.g. ``http://127.0.0.1:9400/metrics``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (the operator's URL)
            return response.read().decode("utf-8", "replace")
    except OSError as exc:
        raise DcgmUnavailableError(f"dcgm-exporter at {url} is unavailable: {exc}") from None


def read_gpu(url: str, uuid: str, timeout: float = 2.0) -> DcgmGpu:
    """The one GPU ``uuid`` (what a worker bound to it reads at each heartbeat)."""
    gpus = parse(fetch(url, timeout))
    if uuid not in gpus:
        raise DcgmError(f"dcgm-exporter at {url} does not report GPU {uuid} (it reports {sorted(gpus)})")
    return gpus[uuid]

"""The immutable snapshot of one GPU that inventories produce and strategies read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

GpuStatus = Literal["active", "inactive", "maintenance", "unresponsive", "error"]
HealthStatus = Literal["healthy", "warning", "critical"]

#: Degrees below ``max_temperature`` at which a GPU is flagged ``warning``.
TEMPERATURE_WARNING_MARGIN_C = 10.0
ERROR_RATE_WARNING = 0.05
ERROR_RATE_CRITICAL = 0.5
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GpuState:
    """One GPU as seed 001 section 6.3.3 describes it (memory in MB, utilization 0-100)."""

    id: int
    uuid: str
    name: str
    compute_capability: str
    status: GpuStatus
    memory_total_mb: int
    memory_used_mb: int
    utilization_gpu: float
    utilization_memory: float
    temperature_c: float
    power_usage_w: float
    power_limit_w: float
    performance_index: float = 0.5
    error_rate: float = 0.0
    active_requests: int = 0
    queued_requests: int = 0
    uptime_s: float = 0.0
    health_status: HealthStatus = "healthy"
    simulated: bool = False
    worker: str | None = None
    speed_gflops: float | None = None  # nominal compute speed where known (simulated GPUs: their spec)
    drain_reason: str = ""  # why it is in maintenance (set by the router)
    health_reason: str = ""  # why it is not healthy, or not responding (set by the router)
    #: Fields NVML answered 'not supported' for: their value is unknown (the number is a neutral placeholder).
    unknown: tuple[str, ...] = ()

    @property
    def memory_free_mb(self) -> int:
        return max(self.memory_total_mb - self.memory_used_mb, 0)

    @property
    def memory_used_ratio(self) -> float:
        return self.memory_used_mb / self.memory_total_mb if self.memory_total_mb else 1.0

    def with_(self, **changes: Any) -> GpuState:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Flat, msgpack-friendly form (the worker heartbeat payload)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuState:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "unknown" in fields:  # msgpack turns the tuple into a list
            fields["unknown"] = tuple(fields["unknown"])
        return cls(**fields)

    def to_api(self) -> dict[str, Any]:
        """The one JSON shape of a GPU (CLI ``gpus --json``, every REST answer about a GPU, Python): the fields
        of seed 001 section 6.3.3 (memory in MB) and of seed 004 section 3.5.4 (``id``, ``memory_used`` and
        ``memory_total`` in bytes, ``task_count``), with ``utilization`` the GPU's % as seed 004's client
        reads it (seed 001's nested ``utilization.memory`` is ``memory_utilization``), plus
        ``unknown_fields`` when NVML could not report some field (their numbers are placeholders then)."""
        api = {
            "id": self.id,
            "gpu_id": f"gpu_{self.id}",
            "uuid": self.uuid,
            "name": self.name,
            "compute_capability": self.compute_capability,
            "status": self.status,
            "health_status": self.health_status,
            "utilization": self.utilization_gpu,
            "memory_utilization": self.utilization_memory,
            "memory": {"total": self.memory_total_mb, "used": self.memory_used_mb, "free": self.memory_free_mb},
            "memory_used": self.memory_used_mb * MB,
            "memory_total": self.memory_total_mb * MB,
            "task_count": self.active_requests,
            "active_requests": self.active_requests,
            "queued_requests": self.queued_requests,
            "temperature": self.temperature_c,
            "power": {"usage": self.power_usage_w, "limit": self.power_limit_w},
            "performance_index": self.performance_index,
            "error_rate": self.error_rate,
            "uptime": int(self.uptime_s),
            "simulated": self.simulated,
            "worker": self.worker,
        }
        if self.unknown:
            api["unknown_fields"] = list(self.unknown)
        return api


def classify_health(
    *, status: GpuStatus, temperature_c: float, error_rate: float, max_temperature: float = 85.0
) -> HealthStatus:
    """healthy / warning / critical from status, temperature and error rate."""
    if status == "error" or temperature_c >= max_temperature or error_rate >= ERROR_RATE_CRITICAL:
        return "critical"
    if temperature_c >= max_temperature - TEMPERATURE_WARNING_MARGIN_C or error_rate >= ERROR_RATE_WARNING:
        return "warning"
    return "healthy"


def health_score(state: GpuState) -> float:
    """Seed 001 section 4.1 ``calculate_health_score``: 0 (bad) .. 1 (good)."""
    temp = state.temperature_c
    temp_score = 1.0 if temp < 50 else (1.0 - (temp - 50) / 50 if temp < 100 else 0.0)
    power_score = 1.0 - state.power_usage_w / state.power_limit_w if state.power_limit_w > 0 else 0.5
    error_score = 1.0 - state.error_rate
    return 0.4 * temp_score + 0.3 * max(power_score, 0.0) + 0.3 * error_score


#: What NVML cannot tell of a lost GPU (its queries fail): these numbers are placeholders, not its capacity.
LOST_FIELDS = (
    "compute_capability",
    "memory_total_mb",
    "memory_used_mb",
    "utilization_gpu",
    "utilization_memory",
    "temperature_c",
    "power_usage_w",
    "power_limit_w",
)


def lost_gpu(index: int, uuid: str, reason: str, *, simulated: bool, worker: str | None) -> GpuState:
    """The state of a GPU whose NVML queries fail (``NVMLError_GpuIsLost`` and friends): in error, critical,
    and its capacity unknown (so a strategy never reads "0 MB" as a GPU too small for a task, for good)."""
    return GpuState(
        id=index, uuid=uuid, name=f"unreachable: {reason}", compute_capability="0.0", status="error",
        memory_total_mb=0, memory_used_mb=0, utilization_gpu=0.0, utilization_memory=0.0, temperature_c=0.0,
        power_usage_w=0.0, power_limit_w=0.0, error_rate=1.0, health_status="critical", simulated=simulated,
        worker=worker, unknown=LOST_FIELDS,
    )  # fmt: skip

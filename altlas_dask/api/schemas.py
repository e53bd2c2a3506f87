"""Request bodies (strict: wrong JSON types are 400, unknown fields are 400) and per-workload payload checks."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from altlas_dask.model import MAX_LENGTH, MAX_PROMPT_CHARS, MAX_SEED, MAX_TEMPERATURE
from altlas_dask.options import MAX_MEMORY_MB, describe
from altlas_dask.ranges import MAX_QUOTA_VALUE

MAX_BATCH_ITEMS = 1024
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateParams(_Body):
    """One text-generation input (``seed`` makes the sampling reproducible)."""

    text: str = Field(max_length=MAX_PROMPT_CHARS, description="the prompt to continue")
    max_length: int = Field(128, ge=1, le=MAX_LENGTH, description="characters to generate")
    temperature: float = Field(0.7, ge=0.0, le=MAX_TEMPERATURE, description="0 = greedy; higher = more random")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="sampling seed; null = random (reported back)")


class PredictRequest(GenerateParams):
    gpu_options: dict[str, Any] | None = Field(
        None,
        description="strategy, specific_gpu_id, priority (1-5), memory_mb, timeout, retries, cost, affinity (a key: "
        "the request goes to a GPU that holds its state while that GPU's load stays within the bound), ...",
    )
    wait: float = Field(
        0.0, ge=0.0, le=60.0, description="seconds to wait for the result before answering (0 = answer at once)"
    )


WAIT_DESCRIPTION = "seconds to wait for the result before answering (0 = answer at once, the seed's default)"


class BatchPredictRequest(_Body):
    batch: list[GenerateParams] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)
    gpu_options: dict[str, Any] | None = Field(None, description="as for /predict, plus batch_split (true/false)")
    wait: float = Field(0.0, ge=0.0, le=60.0, description=WAIT_DESCRIPTION)


class ResourceRequirements(_Body):
    """``memory`` (MB) is what the router places by; the rest is informational."""

    memory: int | None = Field(None, ge=0, le=MAX_MEMORY_MB)
    compute_units: int | None = Field(None, ge=0, le=1_000_000)
    max_batch_size: int | None = Field(None, ge=1, le=1_000_000)
    expected_duration: int | None = Field(None, ge=0, le=7 * 24 * 3600 * 1000, description="milliseconds")


class RouteRequest(_Body):
    """A generic routed job: ``model_id`` names a workload, ``payload`` its arguments."""

    request_id: str | None = Field(None, pattern=ID_PATTERN, description="your id for the job; default: generated")
    user_id: str | None = Field(None, min_length=1, max_length=128)
    model_id: str = Field(min_length=1, max_length=128, description="workload: modelled, torch_matmul, generate")
    priority: int = Field(3, ge=1, le=5)
    type: str | None = Field(None, min_length=1, max_length=128, description="task type; default: the workload's")
    resource_requirements: ResourceRequirements | None = None
    timeout: int | None = Field(None, ge=1, le=7 * 24 * 3600 * 1000, description="milliseconds")
    callback_url: str | None = Field(None, max_length=2048)
    payload: dict[str, Any] = Field(default_factory=dict)
    gpu_options: dict[str, Any] | None = Field(None, description="strategy, specific_gpu_id, retries, ...")
    wait: float = Field(0.0, ge=0.0, le=60.0, description=WAIT_DESCRIPTION)


class MaintenanceRequest(_Body):
    reason: str = Field("", max_length=500)
    estimated_duration: int | None = Field(None, ge=0, le=7 * 24 * 60, description="minutes")


class RestartRequest(_Body):
    force: bool = False


class CancelRequest(_Body):
    reason: str = Field("", max_length=500)


class QuotaUpdate(_Body):
    """The quota names of the original REST design (``*_limit``) or the router's own; only the given keys change."""

    gpu_time_limit: float | None = Field(None, le=MAX_QUOTA_VALUE, gt=0, description="minutes of GPU time per UTC day")
    concurrent_requests_limit: int | None = Field(None, ge=1, le=100_000)
    priority_requests_limit: int | None = Field(None, ge=0, le=100_000)
    requests_per_minute_limit: int | None = Field(None, le=MAX_QUOTA_VALUE, ge=1)
    requests_per_day_limit: int | None = Field(None, le=MAX_QUOTA_VALUE, ge=1)
    gpu_time_minutes: float | None = Field(None, le=MAX_QUOTA_VALUE, gt=0)
    concurrent_requests: int | None = Field(None, ge=1, le=100_000)
    priority_requests: int | None = Field(None, ge=0, le=100_000)
    requests_per_minute: int | None = Field(None, le=MAX_QUOTA_VALUE, ge=1)
    requests_per_day: int | None = Field(None, le=MAX_QUOTA_VALUE, ge=1)
    weight: float | None = Field(None, gt=0, le=1000)

    ALIASES: ClassVar[dict[str, str]] = {
        "gpu_time_limit": "gpu_time_minutes",
        "concurrent_requests_limit": "concurrent_requests",
        "priority_requests_limit": "priority_requests",
        "requests_per_minute_limit": "requests_per_minute",
        "requests_per_day_limit": "requests_per_day",
    }

    def limits(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            out[self.ALIASES.get(name, name)] = value
        return out


# -- workload payloads: checked here so a bad argument is a 400, not a failed task -----------------------


class ModelledPayload(_Body):
    work_gflop: float = Field(100.0, ge=0, le=1e7)
    memory_mb: int = Field(512, ge=0, le=MAX_MEMORY_MB)


class TorchMatmulPayload(_Body):
    size: int = Field(256, ge=1, le=4096)
    repeats: int = Field(4, ge=1, le=64)
    seed: int = Field(0, ge=0, le=MAX_SEED)


PAYLOADS: dict[str, type[_Body]] = {
    "modelled": ModelledPayload,
    "torch_matmul": TorchMatmulPayload,
    "generate": GenerateParams,
}


class PayloadError(ValueError):
    pass


def check_payload(workload: str, defaults: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The workload's keyword arguments, validated; raises :class:`PayloadError` naming ``payload.<field>``."""
    model = PAYLOADS.get(workload)
    if model is not None:
        try:
            return model.model_validate(payload).model_dump()
        except ValidationError as exc:
            raise PayloadError(describe(exc, "payload")) from None
    unknown = sorted(set(payload) - set(defaults))
    if unknown:
        raise PayloadError(f"invalid payload.{unknown[0]}: unknown argument; {workload!r} takes {sorted(defaults)}")
    for name, value in payload.items():  # a workload without a schema: at least the JSON type of its default
        default = defaults[name]
        if default is None:
            continue
        expected = (int, float) if type(default) in (int, float) else (type(default),)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
            raise PayloadError(f"invalid payload.{name}: expected {type(default).__name__} (got {value!r})")
    return {**defaults, **payload}

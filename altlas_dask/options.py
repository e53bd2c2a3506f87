"""``gpu_options``: validated per-task routing options and their wire format (an annotation)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from altlas_dask.config import STRATEGIES, parse_compute_capability, parse_gpu_selector

#: The annotation key that carries gpu_options: ``dask.annotate(gpu_options={...})``.
ANNOTATION = "gpu_options"
MAX_MEMORY_MB = 16 * 1024 * 1024  # 16 TB: anything above is a unit mistake
MAX_COST = 1e15  # units of work of one task (a petaFLOP-scale job in GFLOP): anything above is a mistake


class GpuOptionsError(ValueError):
    """A gpu_options value is invalid; the message names the field and the value."""


class GpuOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str | None = None
    specific_gpu_id: int | str | None = None  # an id, a UUID or a name pattern ("A100*")
    task_type: str = Field("inference", min_length=1, max_length=128)
    memory_mb: int = Field(0, ge=0, le=MAX_MEMORY_MB)
    priority: int = Field(3, ge=1, le=5)
    user: str = Field("anonymous", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@-]+$")
    timeout: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    retries: int | None = Field(None, ge=0, le=100)
    min_compute_capability: float | None = Field(None, ge=0, le=20)
    batch_split: bool | None = None
    requests: int = Field(1, ge=1, le=4096)  # client requests the task serves (a gateway batch); quotas count each
    # its size in its task type's own unit (tokens, images, GFLOP): the router learns seconds per unit per GPU
    cost: float | None = Field(None, gt=0, le=MAX_COST, allow_inf_nan=False)
    # state the task reuses on a GPU that served it lately (a model name, a prompt-prefix id, a data shard)
    affinity: str | None = Field(None, min_length=1, max_length=256)
    over_limit: Literal["wait", "reject"] = "wait"  # over the priority 4-5 limit: wait for admission, or be rejected

    @field_validator("strategy")
    @classmethod
    def _strategy_name(cls, value: str | None) -> str | None:
        """A well-formed name; whether the cluster enables it (built in or custom) is the router's answer."""
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", value):
            raise ValueError(f"not a strategy name (built in: {', '.join(STRATEGIES)})")
        return value

    @field_validator("specific_gpu_id", mode="before")
    @classmethod
    def _gpu_ref(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("must be a GPU id like 0 or 'gpu_0', a UUID or a name pattern like 'A100*'")
        return parse_gpu_selector(value, where="specific_gpu_id")

    @field_validator("min_compute_capability", mode="before")
    @classmethod
    def _cc(cls, value: Any) -> Any:
        if isinstance(value, str):
            major, minor = parse_compute_capability(value)
            return major + minor / 10
        return value

    @classmethod
    def parse(cls, value: GpuOptions | Mapping[str, Any] | None) -> GpuOptions:
        """Validate user input; raise :class:`GpuOptionsError` naming each bad field."""
        if value is None:
            return cls()
        if isinstance(value, GpuOptions):
            return value
        if not isinstance(value, Mapping):
            raise GpuOptionsError(f"gpu_options must be a dict, got {type(value).__name__}")
        try:
            return cls.model_validate(dict(value), strict=False)
        except ValidationError as exc:
            raise GpuOptionsError(describe(exc, "gpu_options")) from None

    def wire(self) -> dict[str, Any]:
        """The annotation payload: only the fields that were set."""
        return self.model_dump(exclude_defaults=True)


def describe(error: ValidationError, prefix: str) -> str:
    """One line per bad field: ``gpu_options.priority: must be <= 5 (got 9)``."""
    parts = []
    for item in error.errors():
        field_name = ".".join(str(p) for p in (prefix, *item["loc"]))
        if item["type"] == "extra_forbidden":
            parts.append(f"{field_name}: unknown option")
        else:
            parts.append(f"{field_name}: {item['msg'].removeprefix('Value error, ')} (got {item.get('input')!r})")
    return "invalid " + "; ".join(parts)


def check_strategy(
    name: str | None,
    enabled: Sequence[str],
    field: str = "gpu_options.strategy",
    known_as: str = "enabled in this cluster",
) -> None:
    """Raise :class:`GpuOptionsError` when ``name`` is not one of ``enabled``, naming the closest one (difflib)."""
    if name is None or name in enabled:
        return
    close = difflib.get_close_matches(name, enabled, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise GpuOptionsError(f"{field}: {name!r} is not {known_as} (choose from {', '.join(enabled)}){hint}")

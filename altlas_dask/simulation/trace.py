"""The trace format: one JSON object per line (JSONL), described in docs/replay.md.

A task line::

    {"t": 0.25, "id": "t17", "user": "alice", "priority": 3, "task_type": "embedding",
     "memory_mb": 512, "work_gflop": 20, "cost": 700, "deps": ["t3"]}

An event line (a fault at a moment of the trace)::

    {"t": 30, "event": "gpu_lost", "gpu": 1}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from altlas_dask.config import USER_NAME_PATTERN


class TraceError(ValueError):
    """A trace line is invalid; the message names the line, the field and the value."""


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TraceTask(_Line):
    """One GPU task: when it arrives, who sends it, what it needs and how much work it is."""

    t: float = Field(ge=0)  # arrival, seconds from the start of the trace
    id: str = Field(min_length=1, max_length=256)
    user: str = Field("anonymous", pattern=USER_NAME_PATTERN)
    priority: int = Field(3, ge=1, le=5)
    task_type: str = Field("inference", min_length=1, max_length=128)
    memory_mb: int = Field(0, ge=0)
    work_gflop: float = Field(ge=0)  # the simulator's ground truth: the router never sees it
    cost: float | None = Field(None, gt=0)  # gpu_options.cost: its size as its client states it (e.g. tokens)
    affinity: str | None = Field(None, min_length=1, max_length=256)  # gpu_options.affinity: state it reuses
    affinity_gflop: float = Field(0.0, ge=0)  # of work_gflop, what a GPU that served its affinity lately skips
    deps: tuple[str, ...] = ()  # ids of earlier tasks whose results it needs
    output_mb: float = Field(0.0, ge=0)  # size of its result (moved when a dependent runs on another worker)
    strategy: str | None = None  # gpu_options.strategy (default: the config's)
    timeout: float | None = Field(None, gt=0)

    def options(self) -> dict[str, object]:
        """The task's ``gpu_options``, as altlas_dask.Client would send them."""
        out: dict[str, object] = {
            "user": self.user,
            "priority": self.priority,
            "task_type": self.task_type,
            "memory_mb": self.memory_mb,
        }
        for name in ("strategy", "cost", "affinity"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


class TraceEvent(_Line):
    """Something that happens to the cluster at ``t``: ``gpu_lost`` (the GPU fails for good)."""

    t: float = Field(ge=0)
    event: Literal["gpu_lost"]
    gpu: int = Field(ge=0)


TraceLine = TraceTask | TraceEvent


def parse_line(text: str, where: str = "line") -> TraceLine:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a JSON object, got {type(data).__name__}")
    model = TraceEvent if "event" in data else TraceTask
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "line"
        value = data.get(str(err["loc"][0])) if err["loc"] else data
        raise TraceError(f"{where}: field {field!r} = {value!r}: {err['msg']}") from None


def check(lines: list[TraceLine], where: str = "trace") -> None:
    """Ids unique; dependencies name earlier tasks."""
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not isinstance(line, TraceTask):
            continue
        if line.id in seen:
            raise TraceError(f"{where} task {n}: duplicate id {line.id!r}")
        for dep in line.deps:
            if dep not in seen:
                raise TraceError(f"{where} task {n} ({line.id!r}): dependency {dep!r} is not an earlier task")
        seen.add(line.id)


def read_trace(path: str | Path) -> list[TraceLine]:
    """Every line of a JSONL trace (blank lines and lines starting with ``#`` skipped), sorted by time."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    lines = [
        parse_line(raw, f"{path.name} line {n}")
        for n, raw in enumerate(text.splitlines(), 1)
        if raw.strip() and not raw.lstrip().startswith("#")
    ]
    lines.sort(key=lambda line: line.t)  # stable: equal times keep file order
    check(lines, path.name)
    return lines


def dumps(lines: Iterable[TraceLine]) -> str:
    return "".join(json.dumps(line.model_dump(exclude_defaults=True), separators=(",", ":")) + "\n" for line in lines)


def write_trace(path: str | Path, lines: Iterable[TraceLine]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(lines))
    return path

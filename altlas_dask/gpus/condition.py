"""One word, a colour and a reason for a GPU's condition, shared by the console, the CLI, the dashboard
and notebook tables, so a drained or failing GPU looks the same (and different from a healthy one) everywhere.

Works on a :class:`~altlas_dask.gpus.state.GpuState` or on the router's GPU dicts (``altlas_gpus``);
``draining``, ``drain_reason`` and ``health_reason`` are read when present.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from altlas_dask.config import meets_compute_capability


@dataclass(frozen=True)
class Condition:
    label: str  # healthy, warning, critical, drained, error, inactive
    reason: str  # why, when not healthy ("" otherwise)
    hex: str  # dashboard / HTML colour
    badge: str  # Streamlit badge colour
    style: str  # rich style


_LOOK = {
    "healthy": ("#2ca02c", "green", "green"),
    "warning": ("#ff7f0e", "orange", "yellow"),
    "critical": ("#d62728", "red", "red"),
    "error": ("#d62728", "red", "bold red"),
    "drained": ("#9467bd", "violet", "magenta"),
    "inactive": ("#9e9e9e", "gray", "dim"),
}


def field(gpu: Any, name: str, default: Any = None) -> Any:
    """``gpu[name]`` for a dict, ``gpu.name`` for a state object."""
    if isinstance(gpu, Mapping):
        return gpu.get(name, default)
    return getattr(gpu, name, default)


def condition(gpu: Any) -> Condition:
    """What to show for one GPU: drained and failed GPUs never read as healthy."""
    status, health = field(gpu, "status", "active"), field(gpu, "health_status", "healthy")
    health_reason = field(gpu, "health_reason") or ""
    if field(gpu, "draining") or status == "maintenance":
        reason = field(gpu, "drain_reason") or "drained: takes no new work"
        if health != "healthy" and health_reason:
            reason = f"{reason}; {health}: {health_reason}"
        label = "drained"
    elif status in ("error", "inactive"):
        label, reason = status, health_reason or ("GPU error" if status == "error" else "not responding")
    elif health in ("warning", "critical"):
        label, reason = health, health_reason or health
    else:
        label, reason = "healthy", ""
    hex_colour, badge, style = _LOOK.get(label, _LOOK["inactive"])
    return Condition(label, reason, hex_colour, badge, style)


def why_nothing_fits(
    gpus: list[Any], memory_mb: int, memory_threshold: float, min_compute_capability: float | None = None
) -> str | None:
    """Why no GPU can ever take a task needing ``memory_mb`` (and a compute capability), or None if one can.

    A GPU can hold at most ``memory_threshold`` x its total memory; drained GPUs count (they come back).
    """
    if not gpus:
        return "the cluster has no GPU"
    capable = [
        g
        for g in gpus
        if min_compute_capability is None
        or meets_compute_capability(str(field(g, "compute_capability")), min_compute_capability)
    ]
    if not capable:
        best = max(str(field(g, "compute_capability")) for g in gpus)
        return f"no GPU has compute capability {min_compute_capability} or more (the best is {best})"
    room = max(int(field(g, "memory_total_mb", 0) * memory_threshold) for g in capable)
    if memory_mb > room:
        return (
            f"the task needs {memory_mb} MB but the most any GPU may hold is {room} MB "
            f"({memory_threshold:.0%} of its memory): lower memory_mb or add a larger GPU"
        )
    return None

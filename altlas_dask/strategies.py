"""GPU selection strategies: pure functions over an immutable snapshot of GPU states.

``choose(gpus, request, context)`` first filters the GPUs that can take the
task (compute capability, memory fit under ``memory_threshold``,
``utilization_threshold``, ``max_temperature``, health, drain, concurrency),
then lets the strategy pick among them. The :class:`Decision` carries the
chosen GPU and why, with every GPU's score or rejection reason, or the reason
no GPU can take the task now (``wait``) or ever (``impossible``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from altlas_dask.config import RoutingPolicy, meets_compute_capability
from altlas_dask.gpus.state import GpuState, health_score

Outcome = Literal["placed", "wait", "impossible"]

#: Seed 001 section 4.1 weights.
HYBRID_WEIGHTS = {"usage": 0.35, "priority": 0.25, "type": 0.15, "performance": 0.15, "health": 0.10}
USAGE_MEMORY_WEIGHT, USAGE_COMPUTE_WEIGHT = 0.6, 0.4


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What the router knows about one task (from its ``gpu_options`` annotation)."""

    key: str = ""
    user: str = "anonymous"
    priority: int = 3
    task_type: str = "inference"
    memory_mb: int = 0
    strategy: str | None = None
    gpu: int | None = None
    min_compute_capability: float | None = None
    exclude: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """Everything besides GPU states a strategy may read."""

    policy: RoutingPolicy
    last_gpu: int | None = None  # round_robin's cursor: the GPU it chose last
    rng: random.Random | None = None  # random's source (seed it for repeatable runs)
    performance: Mapping[int, float] = field(default_factory=dict)  # observed, 0..1, by GPU id
    recently_used: frozenset[int] = frozenset()  # GPUs whose utilization is (partly) the router's own work


@dataclass(frozen=True, slots=True)
class Decision:
    strategy: str
    outcome: Outcome
    gpu: int | None
    reason: str
    scores: Mapping[int, float] = field(default_factory=dict)
    rejected: Mapping[int, str] = field(default_factory=dict)

    @property
    def placed(self) -> bool:
        return self.outcome == "placed"

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "outcome": self.outcome,
            "gpu": self.gpu,
            "reason": self.reason,
            "scores": {str(k): round(v, 4) for k, v in self.scores.items()},
            "rejected": {str(k): v for k, v in self.rejected.items()},
        }


# -- eligibility ---------------------------------------------------------------------


def rejection(
    gpu: GpuState, request: TaskRequest, policy: RoutingPolicy, *, own_load: bool = False
) -> tuple[str, bool] | None:
    """Why ``gpu`` cannot take ``request`` now, and whether that is permanent; None if it can.

    ``utilization_threshold`` guards against load the router did not place: with ``own_load``
    (the router has, or just had, tasks there) the concurrency limit governs instead.
    """
    if gpu.id in request.exclude:
        return "already failed this task", True
    minimum = request.min_compute_capability or policy.min_compute_capability
    if not meets_compute_capability(gpu.compute_capability, minimum):
        return f"compute capability {gpu.compute_capability} < {minimum}", True
    if request.memory_mb > gpu.memory_total_mb * policy.memory_threshold:
        return (f"needs {request.memory_mb} MB > {policy.memory_threshold:.0%} of its {gpu.memory_total_mb} MB"), True
    if gpu.status != "active":
        return f"status {gpu.status}", False
    if gpu.health_status == "critical":
        return "health critical", False
    if gpu.temperature_c >= policy.max_temperature:
        return f"temperature {gpu.temperature_c:.0f}°C >= {policy.max_temperature:.0f}°C", False
    if gpu.active_requests >= policy.max_concurrent_tasks_per_gpu:
        return f"{gpu.active_requests} tasks running = max_concurrent_tasks_per_gpu", False
    if gpu.memory_used_mb + request.memory_mb > gpu.memory_total_mb * policy.memory_threshold:
        return (
            f"needs {request.memory_mb} MB, {gpu.memory_free_mb} MB free "
            f"(memory_threshold {policy.memory_threshold:.0%})"
        ), False
    if gpu.utilization_gpu > policy.utilization_threshold * 100 and not own_load:
        return f"utilization {gpu.utilization_gpu:.0f}% > {policy.utilization_threshold:.0%}", False
    return None


def load(gpu: GpuState, policy: RoutingPolicy) -> float:
    """0..1: the router's in-flight share of the GPU's slots.

    Fresh at every decision, unlike NVML utilization, which averages the last second and
    reaches the scheduler with the next heartbeat (utilization only screens out GPUs loaded
    by work the router did not place; see :func:`rejection`).
    """
    return gpu.active_requests / policy.max_concurrent_tasks_per_gpu


def relative_speed(gpu: GpuState, ctx: RoutingContext) -> float:
    """How fast this GPU ran this task type so far, 0..1 (1 = the fastest); 1 until the router has learned."""
    return max(ctx.performance.get(gpu.id, 1.0), 1e-3)


# -- the strategies: each picks among eligible GPUs (non-empty) -----------------------

Pick = tuple[GpuState, str, dict[int, float]]
Strategy = Callable[[Sequence[GpuState], TaskRequest, RoutingContext], Pick]


def round_robin(gpus: Sequence[GpuState], request: TaskRequest, ctx: RoutingContext) -> Pick:
    after = [g for g in gpus if ctx.last_gpu is None or g.id > ctx.last_gpu]
    chosen = min(after or gpus, key=lambda g: g.id)
    return chosen, f"next in turn after GPU {ctx.last_gpu}", {}


def least_loaded(gpus: Sequence[GpuState], request: TaskRequest, ctx: RoutingContext) -> Pick:
    """The GPU that finishes the task soonest: (tasks in flight + this one) / relative speed.

    Kernels time-share a GPU, so a task's run time grows with the tasks beside it and shrinks
    with the GPU's speed; on identical GPUs this is simply the fewest tasks in flight.
    """
    slots = ctx.policy.max_concurrent_tasks_per_gpu
    scores = {g.id: (g.active_requests + 1) / (slots * relative_speed(g, ctx)) for g in gpus}
    chosen = min(gpus, key=lambda g: (scores[g.id], g.utilization_gpu, g.memory_used_ratio, g.id))
    return (
        chosen,
        (
            f"lowest load {scores[chosen.id]:.2f}: {chosen.active_requests} task(s) in flight at relative speed "
            f"{relative_speed(chosen, ctx):.2f}"
        ),
        scores,
    )


def memory_optimized(gpus: Sequence[GpuState], request: TaskRequest, ctx: RoutingContext) -> Pick:
    """Best fit: the GPU left with the least free memory, keeping big GPUs free for big tasks."""
    scores = {g.id: float(g.memory_free_mb - request.memory_mb) for g in gpus}
    chosen = min(gpus, key=lambda g: (scores[g.id], load(g, ctx.policy), g.id))
    return chosen, f"best fit: {scores[chosen.id]:.0f} MB left free after placing {request.memory_mb} MB", scores


def random_choice(gpus: Sequence[GpuState], request: TaskRequest, ctx: RoutingContext) -> Pick:
    rng = ctx.rng or random.Random()
    return rng.choice(sorted(gpus, key=lambda g: g.id)), "uniform random among eligible GPUs", {}


def task_specific(gpus: Sequence[GpuState], request: TaskRequest, ctx: RoutingContext) -> Pick:
    mapped = ctx.policy.task_specific_mappings.get(request.task_type)
    for g in gpus:
        if g.id == mapped:
            return g, f"task type {request.task_type!r} maps to GPU {mapped}", {}
    chosen, reason, scores = least_loaded(gpus, request, ctx)
    why = f"no mapping for {request.task_type!r}" if mapped is None else f"mapped GPU {mapped} cannot take it"
    return chosen, f"{why}; fell back to least_loaded: {reason}", scores


def type_fit(gpu: GpuState, request: TaskRequest, policy: RoutingPolicy) -> float:
    """1 on the GPU mapped to the task type, 0.5 with no mapping, 0.25 elsewhere."""
    mapped = policy.task_specific_mappings.get(request.task_type)
    if mapped is None:
        return 0.5
    return 1.0 if gpu.id == mapped else 0.25


def hybrid_breakdown(gpu: GpuState, request: TaskRequest, ctx: RoutingContext) -> dict[str, float]:
    """Seed 001 section 4.1 factors for one GPU, each 0..1, plus the weighted total."""
    usage = USAGE_MEMORY_WEIGHT * (1 - gpu.memory_used_ratio) + USAGE_COMPUTE_WEIGHT * (1 - load(gpu, ctx.policy))
    parts = {
        "usage": usage,
        "priority": request.priority / 5,
        "type": type_fit(gpu, request, ctx.policy),
        "performance": ctx.performance.get(gpu.id, gpu.performance_index),
        "health": health_score(gpu),
    }
    parts["total"] = sum(HYBRID_WEIGHTS[k] * v for k, v in parts.items())
    return parts


def hybrid(gpus: Sequence[GpuState], request: TaskRequest, ctx: RoutingContext) -> Pick:
    breakdown = {g.id: hybrid_breakdown(g, request, ctx) for g in gpus}
    chosen = max(gpus, key=lambda g: (breakdown[g.id]["total"], -g.id))
    parts = ", ".join(f"{k} {v:.2f}" for k, v in breakdown[chosen.id].items() if k != "total")
    return (
        chosen,
        f"highest weighted score {breakdown[chosen.id]['total']:.3f} ({parts})",
        {g: b["total"] for g, b in breakdown.items()},
    )


STRATEGIES: dict[str, Strategy] = {
    "round_robin": round_robin,
    "least_loaded": least_loaded,
    "memory_optimized": memory_optimized,
    "task_specific": task_specific,
    "random": random_choice,
    "hybrid": hybrid,
}


# -- the entry point -------------------------------------------------------------------


def choose(gpus: Sequence[GpuState], request: TaskRequest, ctx: RoutingContext) -> Decision:
    """Pick a GPU for ``request`` with its strategy (or the policy's default)."""
    policy = ctx.policy
    name = request.strategy or policy.default_strategy
    if name not in policy.allowed_strategies and name != "single_gpu":
        return Decision(
            name,
            "impossible",
            None,
            f"strategy {name!r} is not enabled in this cluster's config "
            f"(enabled: {', '.join(policy.allowed_strategies)})",
        )
    if request.gpu is not None:
        wanted = [g for g in gpus if g.id == request.gpu]
        if not wanted:
            known = ", ".join(str(g.id) for g in sorted(gpus, key=lambda g: g.id)) or "none"
            return Decision(name, "wait", None, f"GPU {request.gpu} is not connected (connected: {known})")
        gpus, name = wanted, "specific_gpu"
    rejected: dict[int, str] = {}
    permanent: set[int] = set()
    eligible: list[GpuState] = []
    for g in gpus:
        why = rejection(g, request, policy, own_load=g.active_requests > 0 or g.id in ctx.recently_used)
        if why is None:
            eligible.append(g)
        else:
            rejected[g.id] = why[0]
            if why[1]:
                permanent.add(g.id)
    if name == "single_gpu":
        return _single_gpu(gpus, eligible, rejected, permanent)
    if not eligible:
        return _no_gpu(name, gpus, rejected, permanent)
    if name == "specific_gpu":
        return Decision(name, "placed", eligible[0].id, f"gpu_options asked for GPU {request.gpu}", rejected=rejected)
    chosen, reason, scores = STRATEGIES[name](eligible, request, ctx)
    return Decision(name, "placed", chosen.id, reason, scores, rejected)


def _single_gpu(gpus, eligible, rejected, permanent) -> Decision:
    """Everything on the first usable GPU (seed 003's default); the next one only if it has failed."""
    usable = sorted((g for g in gpus if g.id not in permanent and g.status != "error"), key=lambda g: g.id)
    if not usable:
        return _no_gpu("single_gpu", gpus, rejected, permanent)
    primary = usable[0]
    if primary in eligible:
        return Decision(
            "single_gpu", "placed", primary.id, f"single-GPU mode: GPU {primary.id} is the primary", rejected=rejected
        )
    return Decision(
        "single_gpu",
        "wait",
        None,
        f"single-GPU mode: primary GPU {primary.id} busy: {rejected[primary.id]}",
        rejected=rejected,
    )


def _no_gpu(name: str, gpus, rejected, permanent) -> Decision:
    details = "; ".join(f"GPU {k}: {v}" for k, v in sorted(rejected.items()))
    if not gpus:
        return Decision(name, "wait", None, "no GPU worker is connected yet")
    if len(permanent) == len(gpus):
        return Decision(name, "impossible", None, f"no GPU can ever take this task ({details})", rejected=rejected)
    return Decision(name, "wait", None, f"no GPU can take it now ({details})", rejected=rejected)

"""GPU selection strategies: pure functions over an immutable snapshot of GPU states.

``choose(gpus, request, context)`` first filters the GPUs that can take the
task (compute capability, memory fit under ``memory_threshold``,
``utilization_threshold``, ``max_temperature``, health, drain, concurrency),
then lets the strategy pick among them. The :class:`Decision` carries the
chosen GPU and why, with every GPU's score or rejection reason, or the reason
no GPU can take the task now (``wait``) or ever (``impossible``).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import math
import random
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from altlas_dask.config import RoutingPolicy, meets_compute_capability
from altlas_dask.gpus.state import GpuState, health_score
from altlas_dask.options import GpuOptions
from altlas_dask.scheduling.estimates import OwnRates, Scaled

#: placed; wait (no GPU can take it now); unhealthy (every GPU that could take it is critical);
#: impossible (no GPU ever can).
Outcome = Literal["placed", "wait", "unhealthy", "impossible"]

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
    gpu: int | str | None = None  # specific_gpu_id: an id, a UUID or a name pattern
    min_compute_capability: float | None = None
    exclude: frozenset[int] = frozenset()
    requests: int = 1  # client requests this task serves (a gateway batch): each counts against the quotas
    cost: float | None = None  # gpu_options.cost: its size in its type's own unit (tokens, images, GFLOP)
    affinity: str | None = None  # gpu_options.affinity: state it reuses where it ran lately (a prefix, a model)

    @classmethod
    def from_options(cls, options: GpuOptions, key: str = "", exclude: frozenset[int] = frozenset()) -> TaskRequest:
        """The request of a task annotated with ``options`` (validated ``gpu_options``)."""
        return cls(
            key=key,
            user=options.user,
            priority=options.priority,
            task_type=options.task_type,
            memory_mb=options.memory_mb,
            strategy=options.strategy,
            gpu=options.specific_gpu_id,
            min_compute_capability=options.min_compute_capability,
            exclude=exclude,
            requests=options.requests,
            cost=options.cost,
            affinity=options.affinity,
        )


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """Everything besides GPU states a strategy may read."""

    policy: RoutingPolicy
    last_gpu: int | None = None  # round_robin's cursor: the GPU it chose last
    rng: random.Random | None = None  # random's source (seed it for repeatable runs)
    performance: Mapping[int, float] = field(default_factory=dict)  # observed, 0..1, by GPU id
    recently_used: Container[int] = frozenset()  # GPUs whose utilization is (partly) the router's own work
    registry: Mapping[str, Strategy] | None = None  # strategies by name (default: the built-in ones)
    expected: Mapping[int, float] = field(default_factory=dict)  # this task type's learned seconds alone, by GPU
    backlog: Callable[[int], float] | None = None  # GPU id -> expected seconds of the work placed there, unfinished
    held_memory: Mapping[int, int] = field(default_factory=dict)  # memory MB -> ready tasks waiting for a GPU
    recent_memory: Mapping[int, int] = field(default_factory=dict)  # memory MB -> tasks among recent submissions
    inputs: Mapping[int, int] = field(default_factory=dict)  # GPU id -> bytes of the task's inputs on its worker
    # GPU id -> the priority of a task waiting for it to drain (Wait.gpus): lower-priority tasks keep off it
    kept: Mapping[int, int] = field(default_factory=dict)
    may_hold: bool = True  # False once the task was held as long as the policy allows: no more Wait
    affinity: frozenset[int] = frozenset()  # GPUs that served the task's gpu_options.affinity lately


@dataclass(frozen=True, slots=True)
class Wait:
    """A strategy's answer that the task waits although ``gpus`` could take it now: it waits for one of them to
    drain. Until it is placed, the core keeps those GPUs from lower-priority tasks (RoutingContext.kept)."""

    reason: str
    gpus: frozenset[int]


@dataclass(frozen=True, slots=True)
class Decision:
    strategy: str
    outcome: Outcome
    gpu: int | None
    reason: str
    scores: Mapping[int, float] = field(default_factory=dict)
    rejected: Mapping[int, str] = field(default_factory=dict)
    waits_for: frozenset[int] = frozenset()  # GPUs it could take now but waits for to drain (see Wait)

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
    if unknown := [f for f in ("compute_capability", "memory_total_mb") if f in gpu.unknown]:
        return f"status {gpu.status}: its {' and '.join(unknown)} unknown", False  # a lost GPU may come back
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
    if gpu.active_requests >= capacity(policy):
        if policy.prefetch_depth:
            return (
                f"{gpu.active_requests} tasks running or next there = max_concurrent_tasks_per_gpu "
                f"{policy.max_concurrent_tasks_per_gpu} + prefetch_depth {policy.prefetch_depth}"
            ), False
        return f"{gpu.active_requests} tasks running = max_concurrent_tasks_per_gpu", False
    if gpu.memory_used_mb + request.memory_mb > gpu.memory_total_mb * policy.memory_threshold:
        return (
            f"needs {request.memory_mb} MB, {gpu.memory_free_mb} MB free "
            f"(memory_threshold {policy.memory_threshold:.0%})"
        ), False
    if gpu.utilization_gpu > policy.utilization_threshold * 100 and not own_load:
        return f"utilization {gpu.utilization_gpu:.0f}% > {policy.utilization_threshold:.0%}", False
    return None


def matches(gpu: GpuState, ref: int | str | None) -> bool:
    """Whether ``gpu`` is the one ``ref`` names: an id, a UUID, or a name pattern (``"A100*"``)."""
    if ref is None:
        return False
    if isinstance(ref, int):
        return gpu.id == ref
    return ref == gpu.uuid or fnmatch.fnmatchcase(gpu.name.lower(), ref.lower())


def capacity(policy: RoutingPolicy) -> int:
    """Tasks the router may have on one GPU at once: ``max_concurrent_tasks_per_gpu`` running there plus
    ``prefetch_depth`` placed on its worker to start as soon as a slot frees."""
    return policy.max_concurrent_tasks_per_gpu + policy.prefetch_depth


def load(gpu: GpuState, policy: RoutingPolicy) -> float:
    """0..1: the router's in-flight share of the GPU's capacity (running and pre-placed tasks).

    Fresh at every decision, unlike NVML utilization, which averages the last second and
    reaches the scheduler with the next heartbeat (utilization only screens out GPUs loaded
    by work the router did not place; see :func:`rejection`).
    """
    return gpu.active_requests / capacity(policy)


def relative_speed(gpu: GpuState, ctx: RoutingContext) -> float:
    """How fast this GPU ran this task type so far, 0..1 (1 = the fastest); 1 until the router has learned."""
    return max(ctx.performance.get(gpu.id, 1.0), 1e-3)


# -- the strategies: each picks among eligible GPUs (non-empty) -----------------------

Pick = tuple[GpuState, str, dict[int, float]]
StrategyFn = Callable[[Sequence[GpuState], TaskRequest, RoutingContext], Pick]


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
    targets = [g for g in gpus if matches(g, mapped)]
    if targets:
        chosen, _, scores = least_loaded(targets, request, ctx)
        return chosen, f"task type {request.task_type!r} maps to GPU {mapped}", scores
    chosen, reason, scores = least_loaded(gpus, request, ctx)
    why = f"no mapping for {request.task_type!r}" if mapped is None else f"mapped GPU {mapped} cannot take it"
    return chosen, f"{why}; fell back to least_loaded: {reason}", scores


def type_fit(gpu: GpuState, request: TaskRequest, policy: RoutingPolicy) -> float:
    """1 on the GPU mapped to the task type, 0.5 with no mapping, 0.25 elsewhere."""
    mapped = policy.task_specific_mappings.get(request.task_type)
    if mapped is None:
        return 0.5
    return 1.0 if matches(gpu, mapped) else 0.25


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


STRATEGIES: dict[str, StrategyFn] = {
    "round_robin": round_robin,
    "least_loaded": least_loaded,
    "memory_optimized": memory_optimized,
    "task_specific": task_specific,
    "random": random_choice,
    "hybrid": hybrid,
}

#: What each built-in strategy needs to see of a large pool (see :class:`Strategy`).
CANDIDATES = {
    "round_robin": "after",
    "least_loaded": "emptiest",
    "memory_optimized": "fullest",
    "task_specific": "mapped",
    "random": "sample",
    "hybrid": "emptiest",
}


#: How many of the tasks that only fit the larger GPUs a placement there is charged for, per share of
#: recent submissions that are such tasks (plus one per such task waiting now).
EXPECTED_LARGE_WEIGHT = 4.0
#: Late binding: a task that only some GPUs of the pool can ever take joins one of them only while the work
#: queued there is at most this share of its own learned run time there; otherwise it waits on the scheduler
#: for the first of them to drain (docs/design.md "earliest_finish": the sweep that chose it).
LATE_BINDING_SHARE = 0.3


def fit_sets(gpus: Sequence[GpuState], sizes: Iterable[int], policy: RoutingPolicy) -> dict[int, frozenset[int]]:
    """memory MB -> the GPUs that can ever hold a task that needs it (under ``memory_threshold``)."""
    return {
        m: frozenset(g.id for g in gpus if m <= g.memory_total_mb * policy.memory_threshold and g.status != "error")
        for m in sizes
    }


def late_binding(
    c: Candidates, expected: Mapping[int, float], backlog: Callable[[int], float], may_hold: bool = True
) -> tuple[list[GpuState], str]:
    """The eligible GPUs whose queue is short enough for a task that only some of the pool can take, and why
    the others are not (``''`` when the task fits every GPU, or nothing has been learned to judge by).

    Queue = ``backlog`` (expected seconds of the work placed there); short = at most ``LATE_BINDING_SHARE`` of
    the task's learned seconds there. A GPU it has not run yet counts as short (it must be tried to be learned).
    """
    if c.fitting == c.size or not may_hold:
        return list(c.eligible), ""
    short, long = [], []
    for g in c.eligible:
        own = expected.get(g.id)
        if own is None or backlog(g.id) <= LATE_BINDING_SHARE * own:
            short.append(g)
        else:
            long.append(f"GPU {g.id}: {backlog(g.id):.3f}s queued > {LATE_BINDING_SHARE:.0%} of its {own:.3f}s")
    return short, "; ".join(long)


def reserved_weight(gpus: Sequence[GpuState], request: TaskRequest, ctx: RoutingContext) -> dict[int, float]:
    """GPU id -> how many larger tasks, waiting or expected, have it among their only fits (and the request
    fits elsewhere too): placing the request there delays them by its run time."""
    held, recent = ctx.held_memory, ctx.recent_memory
    larger = {m for m in (*held, *recent) if m > request.memory_mb}
    if not larger:
        return {}
    fits = fit_sets(gpus, (*larger, request.memory_mb), ctx.policy)
    mine = fits[request.memory_mb]
    total_recent = sum(recent.values()) or 1
    weights: dict[int, float] = {}
    for m in larger:
        only = fits[m]
        if not only or only >= mine:
            continue  # fits wherever the request does (or nowhere): no GPU is theirs alone
        weight = held.get(m, 0) + EXPECTED_LARGE_WEIGHT * recent.get(m, 0) / total_recent
        for g in only:
            weights[g] = weights.get(g, 0.0) + weight
    return weights


class EarliestFinish:
    """The GPU where the task is expected to finish first, keeping large tasks' only GPUs for them.

    A GPU runs its kernels in turn, so a task placed on GPU g finishes after the work already placed
    there (``backlog``: the learned seconds of each task there) plus its own learned seconds on g
    (``expected``, from runs that started on an idle GPU where there are some; a GPU that has not run
    this task type yet is assumed as fast as the fastest that has, so it gets tried). On a heterogeneous
    pool a small task may finish soonest on a big GPU, but it then delays the large tasks that fit
    nowhere else: each GPU that is the only fit for larger tasks waiting now, or seen among recent
    submissions, is charged the task's run time once per such task (recent ones weighted by their
    share of submissions x EXPECTED_LARGE_WEIGHT). Inputs that sit on another worker add the time to
    move them (``inputs``: bytes per GPU, from Dask's ``who_has``/``nbytes``, at the policy's
    ``transfer_bytes_per_s``), so a pipeline's next step stays where its input is unless waiting there
    costs more than moving it. A GPU holding inputs that is full for now (every slot taken) is waited for
    when it is expected to finish the task sooner than the best GPU with room, moving included.
    ``policy.data_locality`` false ignores where the inputs are.
    """

    candidates = "emptiest"

    def scope(self, gpus: Sequence[GpuState], request: TaskRequest) -> Sequence[GpuState]:
        return gpus

    def pick(self, c: Candidates, request: TaskRequest, ctx: RoutingContext) -> Pick | str | Wait:
        expected = ctx.expected
        fastest = fastest_of(expected)
        backlog = ctx.backlog or _no_backlog
        reserved = reserved_weight(c.gpus, request, ctx)
        inputs = ctx.inputs if ctx.policy.data_locality else {}
        total_in = sum(inputs.values())
        rate = ctx.policy.transfer_bytes_per_s

        def unmoved_and_fetch(gpu: int) -> tuple[float, float]:
            """The expected finish on ``gpu`` if the inputs were everywhere, and the time to move them there."""
            own = expected.get(gpu, fastest)
            fetch = (total_in - inputs.get(gpu, 0)) / rate if total_in else 0.0
            return backlog(gpu) + own * (1.0 + reserved.get(gpu, 0.0)), fetch

        ready, queued = late_binding(c, expected, backlog, ctx.may_hold)
        if not ready:
            return Wait(
                f"late binding: it fits {c.fitting} of the {c.size} GPUs and each of them"
                f" that has room has a long queue ({queued}); it waits on the scheduler for the first to drain",
                frozenset(g.id for g in c.eligible),
            )
        fetch: dict[int, float] = {}
        unmoved: dict[int, float] = {}
        scores: dict[int, float] = {}
        for g in ready:
            unmoved[g.id], fetch[g.id] = unmoved_and_fetch(g.id)
            scores[g.id] = unmoved[g.id] + fetch[g.id]
        chosen = min(ready, key=lambda g: (scores[g.id], g.id))
        if total_in and ctx.may_hold:  # a GPU holding inputs may be full: waiting for it can beat moving them
            eligible = {g.id for g in c.eligible}
            for g in c.gpus:
                if g.id in eligible or not inputs.get(g.id) or not frees_up(g, request, ctx.policy):
                    continue
                there = sum(unmoved_and_fetch(g.id))
                if there < scores[chosen.id]:
                    return Wait(
                        f"data locality: waits for a slot on GPU {g.id}, which holds {inputs[g.id] / 1e6:.0f} of its"
                        f" {total_in / 1e6:.0f} MB of inputs (expected finish there {there:.3f}s; on GPU {chosen.id},"
                        f" moving them, {scores[chosen.id]:.3f}s)",
                        frozenset({g.id}),
                    )
        own = expected.get(chosen.id, fastest)
        why = f"expected finish in {scores[chosen.id]:.3f}s ({backlog(chosen.id):.3f}s queued + {own:.3f}s to run"
        if total_in:
            why += f", {inputs.get(chosen.id, 0) / 1e6:.0f} of its {total_in / 1e6:.0f} MB of inputs already there"
        if reserved.get(chosen.id):
            why += f", charged for {reserved[chosen.id]:.1f} larger task(s) that only fit here"
        skipped = sorted(g for g in scores if reserved.get(g) and scores[g] > scores[chosen.id])
        if skipped:
            why += f"; kept GPU {', '.join(map(str, skipped))} for larger tasks"
        return chosen, why + ")" + locality_note(chosen.id, unmoved, fetch), scores


def fastest_of(expected: Mapping[int, float]) -> float:
    """The fewest learned seconds in ``expected`` (1 when nothing is learned); O(1) on the core's own table."""
    if isinstance(expected, OwnRates | Scaled):
        fastest = expected.fastest()
        return 1.0 if fastest is None else fastest
    return min(expected.values()) if expected else 1.0


def _no_backlog(gpu: int) -> float:
    return 0.0


def frees_up(gpu: GpuState, request: TaskRequest, policy: RoutingPolicy) -> bool:
    """Whether ``gpu`` is only full for now: it takes ``request`` as soon as one of its tasks finishes."""
    limit = capacity(policy)
    if gpu.active_requests < limit:
        return False
    return rejection(gpu.with_(active_requests=limit - 1), request, policy, own_load=True) is None


def locality_note(chosen: int, unmoved: Mapping[int, float], fetch: Mapping[int, float]) -> str:
    """Why the task stays with its inputs: the GPU it would have gone to if moving them were free, or ''."""
    other = min(unmoved, key=lambda g: (unmoved[g], g))
    if other == chosen or fetch[other] <= fetch[chosen]:
        return ""
    return (
        f"; data locality: stays with its inputs (moving them to GPU {other} would take"
        f" {(fetch[other] - fetch[chosen]) * 1e3:.0f} ms, more than the"
        f" {(unmoved[chosen] - unmoved[other]) * 1e3:.0f} ms longer wait here)"
    )


# -- the protocol and the registry ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidates:
    """The GPUs a strategy chooses among: those in its scope, which of them can take the task now, and why not."""

    gpus: Sequence[GpuState]
    eligible: Sequence[GpuState]
    rejected: Mapping[int, str]
    permanent: frozenset[int]  # rejected for good (too small, too old, already failed this task)
    pool_size: int | None = None  # GPUs in the pool, when ``gpus`` is a sample of it (None: all of them)
    fit_count: int | None = None  # GPUs of the pool that can ever take the task, when ``gpus`` is a sample

    @property
    def size(self) -> int:
        return len(self.gpus) if self.pool_size is None else self.pool_size

    @property
    def fitting(self) -> int:
        return len(self.gpus) - len(self.permanent) if self.fit_count is None else self.fit_count


class Strategy(Protocol):
    """A placement policy. ``pick`` returns a pick, or a string saying why the task must wait (a :class:`Wait`
    when it could start now but waits for some GPUs to drain).

    Custom strategies implement this and are named in ``gpu.multi_gpu.custom_strategies``
    (``{name: "package.module:Class"}``); the class is called with no arguments.

    ``candidates`` (optional, default ``"all"``) declares which GPUs of a large pool (over
    ``FULL_SCAN_AT_MOST``) the strategy needs to see; anything but ``"all"`` lets the core hand it a bounded
    set from its index (altlas_dask/scheduling/gpuindex.py) instead of every GPU: ``"emptiest"`` (fewest
    tasks in flight first, each model in turn), ``"mapped"`` (the same, plus the GPUs its task type maps
    to), ``"fullest"`` (most in flight first), ``"after"`` (open GPUs in id order after the last chosen),
    ``"sample"`` (open GPUs drawn at random), ``"first"`` (lowest ids, open or not). Pools up to
    ``FULL_SCAN_AT_MOST`` GPUs are always looked at whole.
    """

    def scope(self, gpus: Sequence[GpuState], request: TaskRequest) -> Sequence[GpuState]: ...

    def pick(self, c: Candidates, request: TaskRequest, ctx: RoutingContext) -> Pick | str | Wait: ...


class EligibleStrategy:
    """A strategy that chooses among the eligible GPUs of the whole pool with a function."""

    def __init__(self, fn: StrategyFn, candidates: str = "all") -> None:
        self.fn = fn
        self.candidates = candidates

    def scope(self, gpus: Sequence[GpuState], request: TaskRequest) -> Sequence[GpuState]:
        return gpus

    def pick(self, c: Candidates, request: TaskRequest, ctx: RoutingContext) -> Pick | str:
        return self.fn(c.eligible, request, ctx)


class SingleGpu(EligibleStrategy):
    """Seed 003's default: everything on the first usable GPU; the next one only if it has failed."""

    def __init__(self) -> None:
        super().__init__(round_robin, "first")

    def pick(self, c: Candidates, request: TaskRequest, ctx: RoutingContext) -> Pick | str:
        usable = sorted((g for g in c.gpus if g.id not in c.permanent and g.status != "error"), key=lambda g: g.id)
        if not usable:
            return "no usable GPU"
        primary = usable[0]
        if primary in c.eligible:
            return primary, f"single-GPU mode: GPU {primary.id} is the primary", {}
        return f"single-GPU mode: primary GPU {primary.id} busy: {c.rejected[primary.id]}"


class SpecificGpu(EligibleStrategy):
    """``gpu_options.specific_gpu_id``: that GPU and no other."""

    def __init__(self) -> None:
        super().__init__(round_robin, "emptiest")

    def scope(self, gpus: Sequence[GpuState], request: TaskRequest) -> Sequence[GpuState]:
        return [g for g in gpus if matches(g, request.gpu)]

    def pick(self, c: Candidates, request: TaskRequest, ctx: RoutingContext) -> Pick | str:
        chosen, _, scores = least_loaded(c.eligible, request, ctx)
        return chosen, f"gpu_options asked for GPU {request.gpu}", scores


def load_strategy(path: str) -> Strategy:
    """Instantiate ``package.module:Class`` (or ``package.module.Class``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"custom strategy {path!r} cannot be imported: {exc}") from None
    strategy = cls()
    if not (callable(getattr(strategy, "pick", None)) and callable(getattr(strategy, "scope", None))):
        raise ValueError(f"custom strategy {path!r} has no scope()/pick() methods (see Strategy)")
    return strategy


def build_registry(custom: Mapping[str, str] | None = None) -> dict[str, Strategy]:
    """Every strategy by name: the built-in ones, ``single_gpu``, ``specific_gpu`` and the config's own."""
    registry: dict[str, Strategy] = {name: EligibleStrategy(fn, CANDIDATES[name]) for name, fn in STRATEGIES.items()}
    registry["single_gpu"] = SingleGpu()
    registry["earliest_finish"] = EarliestFinish()
    registry["specific_gpu"] = SpecificGpu()
    for name, path in (custom or {}).items():
        registry[name] = load_strategy(path)
    return registry


# -- the entry point -------------------------------------------------------------------


def choose(gpus: Sequence[GpuState], request: TaskRequest, ctx: RoutingContext) -> Decision:
    """Pick a GPU for ``request`` with its strategy (or the policy's default), looking at every GPU."""
    resolved = resolve(request, ctx)
    if isinstance(resolved, Decision):
        return resolved
    name, strategy = resolved
    scoped = strategy.scope(gpus, request)
    if request.gpu is not None and not scoped:
        known = ", ".join(str(g.id) for g in sorted(gpus, key=lambda g: g.id)) or "none"
        return Decision(name, "wait", None, f"GPU {request.gpu} is not connected (connected: {known})")
    eligible, rejected, permanent = evaluate(scoped, request, ctx)
    if not eligible and name != "single_gpu":
        return _no_gpu(name, scoped, rejected, permanent)
    return finish(name, strategy, Candidates(scoped, eligible, rejected, frozenset(permanent)), request, ctx)


def resolve(request: TaskRequest, ctx: RoutingContext) -> tuple[str, Strategy] | Decision:
    """The strategy that decides for ``request`` (its own, the policy's default, or specific_gpu), or why none may."""
    policy = ctx.policy
    registry = ctx.registry if ctx.registry is not None else _builtin()
    name = request.strategy or policy.default_strategy
    if name not in policy.allowed_strategies and name != "single_gpu" or name not in registry:
        return Decision(
            name,
            "impossible",
            None,
            f"strategy {name!r} is not enabled in this cluster's config "
            f"(enabled: {', '.join(policy.allowed_strategies)})",
        )
    if request.gpu is not None:
        name = "specific_gpu"
    return name, registry[name]


def evaluate(
    gpus: Iterable[GpuState], request: TaskRequest, ctx: RoutingContext
) -> tuple[list[GpuState], dict[int, str], set[int]]:
    """Which of ``gpus`` can take ``request`` now; why the others cannot, and which of those never can."""
    policy = ctx.policy
    rejected: dict[int, str] = {}
    permanent: set[int] = set()
    eligible: list[GpuState] = []
    for g in gpus:
        why = rejection(g, request, policy, own_load=g.active_requests > 0 or g.id in ctx.recently_used)
        if why is None and ctx.kept.get(g.id, request.priority) > request.priority:
            why = f"kept for a priority-{ctx.kept[g.id]} task waiting for it to drain", False
        if why is None:
            eligible.append(g)
        else:
            rejected[g.id] = why[0]
            if why[1]:
                permanent.add(g.id)
    return eligible, rejected, permanent


def finish(name: str, strategy: Strategy, c: Candidates, request: TaskRequest, ctx: RoutingContext) -> Decision:
    """The strategy's pick among the candidates, as a decision: among the GPUs that served the task's affinity
    key lately, if one of them is within the load bound and the strategy places it there, else among all."""
    warm, why = affine(c, request, ctx)
    if warm is not None:
        picked = strategy.pick(warm, request, ctx)
        if not isinstance(picked, str | Wait):
            chosen, reason, scores = picked
            return Decision(name, "placed", chosen.id, f"{why}; {reason}", scores, c.rejected)
    picked = strategy.pick(c, request, ctx)
    if isinstance(picked, str | Wait):
        if not c.eligible:
            return _no_gpu(name, c.gpus, c.rejected, c.permanent)
        if isinstance(picked, Wait):
            return Decision(name, "wait", None, picked.reason, rejected=c.rejected, waits_for=picked.gpus)
        return Decision(name, "wait", None, picked, rejected=c.rejected)
    chosen, reason, scores = picked
    return Decision(name, "placed", chosen.id, reason, scores, c.rejected)


def affine(c: Candidates, request: TaskRequest, ctx: RoutingContext) -> tuple[Candidates | None, str]:
    """The candidates narrowed to the GPUs with room that served ``request.affinity`` lately and would hold at
    most ``affinity_load_factor`` x the mean tasks per GPU with room (this one counted: Mirrokni et al.'s
    consistent hashing with bounded loads), and why; (None, '') when none is, or all of them are."""
    factor = ctx.policy.affinity_load_factor
    if not request.affinity or not ctx.affinity or not factor or not c.eligible:
        return None, ""
    bound = math.ceil(factor * (sum(g.active_requests for g in c.eligible) + 1) / len(c.eligible))
    warm = [g for g in c.eligible if g.id in ctx.affinity and g.active_requests + 1 <= bound]
    if not warm or len(warm) == len(c.eligible):
        return None, ""
    ids = ", ".join(str(g.id) for g in warm)
    why = f"affinity: GPU {ids} served {request.affinity!r} lately, within the load bound ({bound} tasks a GPU)"
    return replace(c, eligible=warm), why


@functools.cache
def _builtin() -> dict[str, Strategy]:
    return build_registry()


def _no_gpu(name: str, gpus, rejected, permanent) -> Decision:
    details = "; ".join(f"GPU {k}: {v}" for k, v in sorted(rejected.items()))
    if not gpus:
        return Decision(name, "wait", None, "no GPU worker is connected yet")
    if len(permanent) == len(gpus):
        return Decision(name, "impossible", None, f"no GPU can ever take this task ({details})", rejected=rejected)
    if all(why.startswith("health critical") for g, why in rejected.items() if g not in permanent):
        return Decision(
            name, "unhealthy", None, f"every GPU that fits this task is unhealthy ({details})", rejected=rejected
        )
    return Decision(name, "wait", None, f"no GPU can take it now ({details})", rejected=rejected)

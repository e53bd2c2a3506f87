"""A decision on a large pool: the strategy sees the GPUs it declared it needs (``Strategy.candidates``), taken
from the pool's index, not every GPU, so its cost does not grow with the pool (issue 24).

Pools of up to ``FULL_SCAN_AT_MOST`` GPUs, and strategies that declare nothing (custom ones), are decided over
every GPU as before. Otherwise at most ``LOOK_AT`` GPUs that can take work now are looked at (plus the GPUs
holding the task's inputs, and for ``specific_gpu_id`` / a task type's mapping the GPUs it names), each
checked by :func:`strategies.rejection` as in a full scan; the decision's reason says when it sampled. Whether
the task can ever run, or every GPU that fits it is unhealthy, comes from the index's per-model counts.
"""

from __future__ import annotations

import fnmatch

from altlas_dask.scheduling.gpuindex import GpuClass, GpuIndex
from altlas_dask.scheduling.gpus import GpuBook
from altlas_dask.scheduling.strategies import (
    Candidates,
    Decision,
    RoutingContext,
    Strategy,
    TaskRequest,
    choose,
    evaluate,
    finish,
    resolve,
)

FULL_SCAN_AT_MOST = 64  # pools up to this size are looked at whole (and decide exactly as before issue 24)
LOOK_AT = 16  # GPUs that can take work now a decision on a larger pool looks at
STEPS = 8 * LOOK_AT  # ids walked at most by the id-ordered and random orders to find LOOK_AT of them


def decide(book: GpuBook, request: TaskRequest, ctx: RoutingContext) -> Decision:
    """``strategies.choose`` over ``book``'s GPUs, from its index when the pool is large (see the module)."""
    if len(book) <= FULL_SCAN_AT_MOST:
        return choose(book.snapshot(), request, ctx)
    resolved = resolve(request, ctx)
    if isinstance(resolved, Decision):
        return resolved
    name, strategy = resolved
    order = getattr(strategy, "candidates", "all")
    if order == "all":
        return choose(book.snapshot(), request, ctx)
    return _from_index(book, name, strategy, order, request, ctx)


def _from_index(
    book: GpuBook, name: str, strategy: Strategy, order: str, request: TaskRequest, ctx: RoutingContext
) -> Decision:
    index, policy = book.index(), ctx.policy
    minimum = request.min_compute_capability or policy.min_compute_capability
    fits = index.fitting(request.memory_mb, minimum, policy.memory_threshold)
    named = _named(book, index, request.gpu) if request.gpu is not None else None
    if named is not None:
        if not named[0] and not named[1]:
            return Decision(name, "wait", None, f"GPU {request.gpu} is not connected ({len(book)} GPUs connected)")
        fits = fits if named[0] else [c for c in fits if c in named[1]]
    excluded = sum(1 for g in request.exclude if index.class_of(g) in fits)
    fit_count = sum(len(c.members) for c in fits) - excluded
    if named is not None and named[0]:  # one GPU by id or UUID: that one, whatever its state
        ids = named[0]
        fit_count = sum(1 for g in ids if index.class_of(g) in fits and g not in request.exclude)
    else:
        ids = _look_at(book, fits, order, request, ctx)
    ids += [g for g in ctx.inputs if g >= 0 and g in book and g not in ids]  # where its inputs are
    views = [book.view(g) for g in ids]
    eligible, rejected, permanent = evaluate(views, request, ctx)
    for g in rejected:
        index.passed_over(g)
    if fit_count <= 0 and not eligible:
        return _never(name, request, minimum, index, rejected)
    open_count = sum(c.open for c in fits)
    if not eligible and order != "first":
        return _none_now(name, fits, fit_count, open_count, len(views), request, rejected)
    c = Candidates(views, eligible, rejected, frozenset(permanent), pool_size=len(book), fit_count=fit_count)
    decision = finish(name, strategy, c, request, ctx)
    if decision.placed and open_count > len(views):
        note = f" (sampled {len(views)} of {open_count} GPUs with room, {order} first)"
        decision = Decision(name, "placed", decision.gpu, decision.reason + note, decision.scores, decision.rejected)
    return decision


def _look_at(book: GpuBook, fits: list[GpuClass], order: str, request: TaskRequest, ctx: RoutingContext):
    index = book.index()
    if order == "fullest":
        return index.fullest(fits, LOOK_AT)
    if order == "after":
        return index.after(fits, ctx.last_gpu, LOOK_AT, STEPS)
    if order == "sample" and ctx.rng is not None:
        return index.sample(fits, LOOK_AT, ctx.rng, STEPS)
    if order == "first":
        return index.first(fits, LOOK_AT, STEPS)
    ids = index.emptiest(fits, LOOK_AT)
    mapped = ctx.policy.task_specific_mappings.get(request.task_type) if order == "mapped" else None
    if mapped is not None:  # the GPUs its task type maps to come first
        on, classes = _named(book, index, mapped)
        wanted = on or index.emptiest([c for c in fits if c in classes], LOOK_AT)
        ids = [*wanted, *(g for g in ids if g not in wanted)]
    return ids


def _named(book: GpuBook, index: GpuIndex, ref: int | str) -> tuple[list[int], list[GpuClass]]:
    """The GPUs ``ref`` names: by id or UUID (ids), or by a name pattern (classes)."""
    if isinstance(ref, str) and ref in book.ids:
        gpu = book.ids[ref]
        return ([gpu] if gpu in book else []), []
    return _named_in(index, ref)


def _named_in(index: GpuIndex, ref: int | str) -> tuple[list[int], list[GpuClass]]:
    if isinstance(ref, int):
        return ([ref], []) if index.class_of(ref) is not None else ([], [])
    pattern = ref.lower()
    return [], [c for c in index.classes.values() if fnmatch.fnmatchcase(c.name.lower(), pattern)]


def _never(name: str, request: TaskRequest, minimum, index: GpuIndex, rejected) -> Decision:
    models = ", ".join(
        f"{c.name} ({len(c.members)}: {c.memory_total_mb} MB, compute capability {c.compute_capability})"
        for c in index.classes.values()
    )
    failed = f"; already failed it on GPU {', '.join(map(str, sorted(request.exclude)))}" if request.exclude else ""
    return Decision(
        name,
        "impossible",
        None,
        f"no GPU can ever take this task (needs {request.memory_mb} MB and compute capability {minimum};"
        f" the pool: {models}{failed})",
        rejected=rejected,
    )


def _none_now(name, fits, fit_count, open_count, looked, request, rejected) -> Decision:
    critical = sum(len(c.critical - request.exclude) for c in fits)
    details = "; ".join(f"GPU {k}: {v}" for k, v in sorted(rejected.items()))
    if critical >= fit_count:
        return Decision(
            name, "unhealthy", None, f"every GPU that fits this task ({fit_count}) is unhealthy", rejected=rejected
        )
    if not open_count:
        why = f"none of the {fit_count} GPUs that fit it is active, healthy and cool with a free slot"
    else:
        why = f"looked at {looked} of the {open_count} GPUs that fit it and have room"
    return Decision(name, "wait", None, f"no GPU can take it now ({why}{'; ' + details if details else ''})",
                    rejected=rejected)  # fmt: skip

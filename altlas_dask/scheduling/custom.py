"""Custom strategies (``gpu.multi_gpu.custom_strategies``) are other people's code: their picks are checked the
way distributed's active memory manager checks its policies' suggestions before it acts on them. A pick that
raises, has the wrong shape, or names a GPU that is not an eligible candidate (one that would not fit, is
unhealthy, full or not in this decision) is logged, and ``least_loaded`` picks among the candidates instead;
the decision's reason says so. A ``scope`` that raises is logged and the whole pool is looked at."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from altlas_dask.gpus.state import GpuState
from altlas_dask.scheduling.strategies import (
    Candidates,
    Pick,
    RoutingContext,
    Strategy,
    TaskRequest,
    Wait,
    build_registry,
    least_loaded,
)

logger = logging.getLogger(__name__)


def checked_registry(custom: Mapping[str, str] | None = None) -> dict[str, Strategy]:
    """:func:`strategies.build_registry`, with each custom strategy behind a :class:`CheckedStrategy`."""
    registry = build_registry(custom)
    for name in custom or ():
        registry[name] = CheckedStrategy(name, registry[name])
    return registry


class CheckedStrategy:
    """A custom strategy whose every answer is checked (see the module)."""

    def __init__(self, name: str, strategy: Strategy) -> None:
        self.name, self.strategy = name, strategy
        self.candidates = getattr(strategy, "candidates", "all")

    def scope(self, gpus: Sequence[GpuState], request: TaskRequest) -> Sequence[GpuState]:
        try:
            return self.strategy.scope(gpus, request)
        except Exception:
            logger.exception("custom strategy %r: scope() raised on task %s; every GPU is looked at", self.name,
                             request.key)  # fmt: skip
            return gpus

    def pick(self, c: Candidates, request: TaskRequest, ctx: RoutingContext) -> Pick | str | Wait:
        try:
            picked = self.strategy.pick(c, request, ctx)
        except Exception as exc:
            logger.exception("custom strategy %r: pick() raised on task %s", self.name, request.key)
            return self._instead(c, request, ctx, f"raised {type(exc).__name__}: {exc}")
        if isinstance(picked, str | Wait):
            return picked
        if not (isinstance(picked, tuple) and len(picked) == 3 and isinstance(picked[0], GpuState)):
            return self._instead(c, request, ctx, f"returned {picked!r:.200}, not (GpuState, reason, scores)")
        chosen = picked[0]
        if not any(g.id == chosen.id for g in c.eligible):
            eligible = ", ".join(str(g.id) for g in c.eligible) or "none"
            return self._instead(c, request, ctx, f"picked GPU {chosen.id}, not an eligible candidate ({eligible})")
        return picked

    def _instead(self, c: Candidates, request: TaskRequest, ctx: RoutingContext, problem: str) -> Pick | str:
        logger.warning("custom strategy %r %s for task %s; least_loaded picks instead", self.name, problem, request.key)
        if not c.eligible:
            return f"custom strategy {self.name!r} {problem}; no eligible GPU"
        chosen, reason, scores = least_loaded(c.eligible, request, ctx)
        return chosen, f"custom strategy {self.name!r} {problem}; least_loaded instead: {reason}", scores

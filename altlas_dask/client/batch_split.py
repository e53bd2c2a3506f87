"""The speed-weighted batch split ``Client.submit_batch`` uses: how many items each GPU's chunks take.

Pure (no Dask): below the client and the notebook views, which both read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from altlas_dask.gpus.condition import field


def speed_weights(gpus: Sequence[Any], learned: Mapping[int, float] | None = None) -> dict[int, float]:
    """Relative speed of each active GPU: learned speeds when known for all of them, else ``speed_gflops``
    from the GPU info, else equal."""
    active = [int(field(g, "id")) for g in gpus if field(g, "status", "active") == "active"]
    if learned and all(learned.get(g, 0) > 0 for g in active):
        return {g: float(learned[g]) for g in active}
    nominal = {int(field(g, "id")): field(g, "speed_gflops") for g in gpus}
    if active and all(isinstance(nominal[g], int | float) and nominal[g] > 0 for g in active):
        return {g: float(nominal[g]) for g in active}
    return dict.fromkeys(active, 1.0)


def split_plan(count: int, weights: Mapping[int, float], minimum: int, chunks_per_gpu: int) -> list[tuple[int, int]]:
    """``(gpu, chunk size)`` pairs covering ``count`` items, each GPU's share in proportion to its weight.

    A GPU whose share would be under ``minimum`` items gets none (its share goes to the others); each
    share is cut into up to ``chunks_per_gpu`` chunks of at least ``minimum`` items.
    """
    gpus = sorted(weights, key=lambda g: (-weights[g], g))  # fastest first
    while gpus:
        total = sum(weights[g] for g in gpus)
        exact = {g: count * weights[g] / total for g in gpus}
        shares = {g: math.floor(v) for g, v in exact.items()}
        for g in sorted(gpus, key=lambda g: exact[g] - shares[g], reverse=True)[: count - sum(shares.values())]:
            shares[g] += 1  # largest remainders: the shares add up to count
        small = [g for g in gpus if shares[g] < minimum]
        if not small or len(gpus) == 1:
            break
        gpus.remove(max(small, key=gpus.index))  # the slowest (the last) of those left short
    plan = []
    for g in gpus:
        share = shares[g]
        pieces = max(1, min(chunks_per_gpu, share // minimum))
        base, extra = divmod(share, pieces)
        plan += [(g, base + (1 if i < extra else 0)) for i in range(pieces) if share]
    return plan


def plan_chunks(
    count: int,
    gpus: Sequence[Any],
    learned: Mapping[int, float] | None,
    minimum: int,
    chunks_per_gpu: int,
) -> list[tuple[int | None, int]]:
    """``(gpu or None, chunk size)`` of a split batch: :func:`split_plan` over :func:`speed_weights`; with unequal
    speeds each chunk is pinned to the GPU whose share it is, with equal ones the router places every chunk."""
    weights = speed_weights(gpus, learned)
    pinned = len(set(weights.values())) > 1
    return [(g if pinned else None, n) for g, n in split_plan(count, weights, minimum, chunks_per_gpu)]

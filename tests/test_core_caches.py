"""What the core keeps to save work per task never differs from what it stands for: a GPU's reused view equals
the view built afresh from its heartbeat and bookkeeping, a health window's running error count equals the
errors among its last attempts, and a lazily computed performance map equals the eager one."""

from __future__ import annotations

import random

import pytest
from core_helpers import gpu

from altlas_dask.config import Health
from altlas_dask.scheduling.estimates import Estimates, LazyPerformance
from altlas_dask.scheduling.gpus import GpuSlot
from altlas_dask.scheduling.health import HealthWindow

MAX_TEMPERATURE = 85.0


def fresh_view(slot: GpuSlot):
    """The view by its definition (GpuSlot.view's docstring), built from nothing cached."""
    base = slot.base
    health, why = slot.health.status(base, MAX_TEMPERATURE)
    status = base.status
    if slot.unresponsive:
        status, why = "unresponsive", slot.unresponsive
    elif slot.draining and status == "active":
        status = "maintenance"
    return base.with_(
        id=slot.gpu_id,
        worker=slot.worker,
        status=status,
        active_requests=len(slot.assigned),
        memory_used_mb=max(base.memory_used_mb, sum(slot.assigned.values())),
        error_rate=round(slot.health.error_rate, 4),
        health_status=health,
        health_reason=why,
        drain_reason=slot.drain_reason if slot.draining else "",
    )


@pytest.mark.parametrize("seed", range(5))
def test_a_reused_gpu_view_equals_a_fresh_one(seed: int) -> None:
    rng = random.Random(seed)
    policy = Health(window=8, min_samples=3)
    slot = GpuSlot(0, "tcp://gpu-0", gpu(0), HealthWindow(policy), last_report=0.0)
    keys = 0
    for step in range(3000):
        move = rng.randrange(8)
        if move == 0 or (move == 1 and not slot.assigned):
            keys += 1
            slot.assigned[f"k{keys}"] = rng.choice((0, 0, 512, 2048))
        elif move == 1:
            slot.assigned.pop(rng.choice(list(slot.assigned)))
        elif move == 2:
            slot.health.record(rng.random() < 0.3, float(step))
        elif move == 3:
            slot.health.recover(float(step) + 1e6 * rng.random())
        elif move == 4:
            slot.draining = rng.random() < 0.5
            slot.drain_reason = rng.choice(("", "maintenance", "driver update")) if slot.draining else ""
        elif move == 5:
            slot.unresponsive = rng.choice(("", "", "no report for 30s"))
        elif move == 6:  # a heartbeat: a new base object (sometimes equal to the last one)
            slot.base = gpu(
                0,
                memory_used_mb=rng.choice((0, 1000)),
                temperature_c=rng.choice((40.0, 80.0, 90.0)),
                status=rng.choice(("active", "active", "error")),
            )
        slot.changed()
        if rng.random() < 0.7:  # (not every change is followed by a decision)
            assert slot.view(MAX_TEMPERATURE) == fresh_view(slot), f"seed {seed}, step {step}"


@pytest.mark.parametrize("seed", range(5))
def test_health_window_error_count_matches_its_last_attempts(seed: int) -> None:
    rng = random.Random(seed)
    policy = Health(window=rng.choice((1, 5, 20)), min_samples=3)
    window = HealthWindow(policy)
    attempts: list[bool] = []  # every attempt since the last recovery, oldest first
    for step in range(2000):
        if rng.random() < 0.02:
            if window.recover(float(step) + rng.choice((0.0, 1e9))):
                attempts = []
        else:
            outcome = rng.random() < 0.4
            window.record(outcome, float(step))
            attempts.append(outcome)
        last = attempts[-policy.window :]
        expected = sum(last) / len(last) if last else 0.0
        assert window.error_rate == expected
        assert list(window.outcomes) == last


def test_lazy_performance_equals_the_eager_map() -> None:
    estimates = Estimates()
    for gpu_id, seconds in ((0, 2.0), (1, 1.0), (2, 4.0), (5, 0.5)):
        estimates.learn(gpu_id, "embedding", seconds)
    connected = {0: "slot", 1: "slot", 2: "slot"}
    lazy = LazyPerformance(estimates, "embedding", connected)
    eager = estimates.performance("embedding", connected)
    assert dict(lazy) == eager and len(lazy) == len(eager) and lazy.get(1) == eager[1] and lazy[2] == eager[2]
    assert lazy.get(5, 1.0) == 1.0 and 5 not in lazy
    assert dict(LazyPerformance(estimates, "unknown", connected)) == {}

"""What every surface shows for a GPU's condition, and the "no GPU can ever take it" check."""

from __future__ import annotations

from altlas_dask.gpus.condition import condition, why_nothing_fits
from altlas_dask.gpus.state import GpuState


def gpu(**changes) -> GpuState:
    base = GpuState(0, "u0", "T4", "7.5", "active", 16384, 0, 0.0, 0.0, 35.0, 10.0, 70.0)
    return base.with_(**changes)


def test_each_condition_has_its_own_label_and_colour() -> None:
    healthy = condition(gpu())
    drained = condition({"status": "maintenance", "health_status": "healthy", "drain_reason": "firmware"})
    draining_flag = condition({"status": "active", "draining": True, "health_status": "healthy"})
    error = condition(gpu(status="error", health_reason="lost its worker"))
    hot = condition(gpu(health_status="warning", health_reason="82 °C"))
    assert (healthy.label, healthy.reason) == ("healthy", "")
    assert (drained.label, drained.reason) == ("drained", "firmware")
    assert draining_flag.label == "drained" and "no new work" in draining_flag.reason
    assert (error.label, error.reason) == ("error", "lost its worker")
    assert (hot.label, hot.reason) == ("warning", "82 °C")
    assert len({c.hex for c in (healthy, drained, error, hot)}) == 4
    assert len({c.badge for c in (healthy, drained, error, hot)}) == 4


def test_drained_and_unhealthy_says_both() -> None:
    both = condition({"status": "maintenance", "health_status": "critical", "health_reason": "ECC errors"})
    assert both.label == "drained" and "critical: ECC errors" in both.reason


def test_why_nothing_fits() -> None:
    pool = [gpu(), gpu(id=1, memory_total_mb=40960, compute_capability="8.0")]
    assert why_nothing_fits(pool, 30000, 0.9) is None
    why = why_nothing_fits(pool, 40000, 0.9)
    assert why is not None and "40000 MB" in why and "36864 MB" in why
    assert "compute capability 9.0" in why_nothing_fits(pool, 1, 0.9, 9.0)
    assert why_nothing_fits([], 1, 0.9) == "the cluster has no GPU"

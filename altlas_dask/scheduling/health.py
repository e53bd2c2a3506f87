"""A GPU's health as the router judges it: a sliding window of its task attempts, a circuit breaker.

The worker's own counters are cumulative, so one bad minute would mark a GPU
critical for the rest of its life (and a GPU that takes no work never gets
better). Here the last ``window`` attempts count; a GPU becomes critical only
after ``min_samples`` attempts, and a critical GPU is tried again after
``recovery_seconds`` with a fresh window (half-open: the next failures close it
again). Temperature and a reported device error come from the heartbeat.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from altlas_dask.config import Health
from altlas_dask.gpus.state import TEMPERATURE_WARNING_MARGIN_C, GpuState, HealthStatus


@dataclass
class HealthWindow:
    """Outcomes of the last attempts on one GPU and when it went critical."""

    policy: Health
    outcomes: deque[bool] = field(default_factory=deque)  # True = the attempt hit a GPU error
    critical_since: float | None = None
    errors: int = 0  # True values in ``outcomes`` (kept as they enter and leave: error_rate is read per view)

    def record(self, gpu_error: bool, now: float) -> None:
        self.outcomes.append(gpu_error)
        self.errors += gpu_error
        while len(self.outcomes) > self.policy.window:
            self.errors -= self.outcomes.popleft()
        if self.critical_since is None and self._too_many_errors():
            self.critical_since = now

    @property
    def error_rate(self) -> float:
        return self.errors / len(self.outcomes) if self.outcomes else 0.0

    def _too_many_errors(self) -> bool:
        return len(self.outcomes) >= self.policy.min_samples and self.error_rate >= self.policy.critical_error_rate

    def recover(self, now: float) -> bool:
        """Start over with an empty window once a critical GPU has rested ``recovery_seconds``."""
        if self.critical_since is not None and now - self.critical_since >= self.policy.recovery_seconds:
            self.outcomes.clear()
            self.errors = 0
            self.critical_since = None
            return True
        return False

    @property
    def recovers_at(self) -> float | None:
        return None if self.critical_since is None else self.critical_since + self.policy.recovery_seconds

    def status(self, reported: GpuState, max_temperature: float) -> tuple[HealthStatus, str]:
        """healthy / warning / critical, and why."""
        if reported.status == "error":
            return "critical", "the device reported an error"
        if reported.temperature_c >= max_temperature:
            return "critical", f"temperature {reported.temperature_c:.0f}°C >= {max_temperature:.0f}°C"
        rate, n = self.error_rate, len(self.outcomes)
        if self.critical_since is not None:
            return "critical", f"{rate:.0%} GPU errors in its last {n} attempts"
        if n and rate >= self.policy.warning_error_rate:
            return "warning", f"{rate:.0%} GPU errors in its last {n} attempts"
        if reported.temperature_c >= max_temperature - TEMPERATURE_WARNING_MARGIN_C:
            return "warning", f"temperature {reported.temperature_c:.0f}°C near the {max_temperature:.0f}°C limit"
        return "healthy", ""

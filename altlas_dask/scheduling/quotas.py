"""Per-user quotas and rate limits: pure bookkeeping with an injectable clock.

Hard limits (requests per minute/day, GPU time per day, priority 4-5 tasks
outstanding) reject a submission at once with :class:`QuotaExceededError`,
naming the limit, the usage and when it resets. The concurrency limit never
rejects: the router keeps the user's extra tasks waiting in priority order.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from altlas_dask.config import QuotaLimits, QuotaOverride, Quotas
from altlas_dask.options import describe

MINUTE = 60.0
HIGH_PRIORITY = 4  # priority 4 and 5 count against priority_requests


class QuotaExceededError(RuntimeError):
    """A hard quota limit was hit; the message names it, the usage and the reset time."""

    def __init__(self, user: str, limit_name: str, limit: float, used: float, reset_time: str | None) -> None:
        self.user, self.limit_name, self.limit, self.used, self.reset_time = user, limit_name, limit, used, reset_time
        when = f"resets at {reset_time}" if reset_time else "frees when one of your priority 4-5 tasks finishes"
        super().__init__(f"quota exceeded for user {user!r}: {limit_name} limit {limit:g}, used {used:g}; {when}")

    def __reduce__(self):
        return type(self), (self.user, self.limit_name, self.limit, self.used, self.reset_time)

    def retry_after(self, now: float | None = None) -> int:
        """Seconds until the limit resets (for HTTP ``Retry-After``)."""
        if not self.reset_time:
            return 1
        reset = datetime.fromisoformat(self.reset_time).timestamp()
        return max(1, int(reset - (time.time() if now is None else now)) + 1)


class QuotaValueError(ValueError):
    """A quota value given at run time is invalid."""


def utc_day(ts: float) -> str:
    """``"2026-11-23"`` for a Unix time (cached per day: it is on every task's path)."""
    return _day_name(int(ts // 86400))


@functools.lru_cache(maxsize=8)
def _day_name(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * 86400, UTC).strftime("%Y-%m-%d")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def next_midnight(ts: float) -> float:
    day = datetime.fromtimestamp(ts, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day + timedelta(days=1)).timestamp()


@dataclass
class UserUsage:
    day: str
    day_requests: int = 0
    day_gpu_seconds: float = 0.0
    minute: deque[float] = field(default_factory=deque)
    running: int = 0
    priority_outstanding: int = 0


def validate_override(changes: Mapping[str, Any]) -> dict[str, Any]:
    """An admin's change to a user's limits, validated (raises :class:`QuotaValueError` naming the field)."""
    try:
        valid = QuotaOverride.model_validate(dict(changes)).model_dump(exclude_none=True)
    except ValidationError as exc:
        raise QuotaValueError(describe(exc, "quota")) from None
    if not valid:
        raise QuotaValueError(f"no quota value given; settable: {', '.join(QuotaOverride.model_fields)}")
    return valid


class QuotaBook:
    """Limits and live usage of every user."""

    def __init__(self, quotas: Quotas, clock: Callable[[], float] = time.time) -> None:
        self.quotas = quotas
        self.clock = clock
        self.overrides: dict[str, dict[str, Any]] = {
            user: o.model_dump(exclude_none=True) for user, o in quotas.users.items()
        }
        self.usage: dict[str, UserUsage] = {}

    # -- limits ----------------------------------------------------------------------------
    def limits(self, user: str) -> QuotaLimits:
        override = self.overrides.get(user)
        return self.quotas.defaults.model_copy(update=override) if override else self.quotas.defaults

    def set_override(self, user: str, changes: Mapping[str, Any]) -> QuotaLimits:
        """Validate and apply an admin's change; returns the user's new limits."""
        self.override(user, validate_override(changes))
        return self.limits(user)

    def override(self, user: str, valid: Mapping[str, Any]) -> dict[str, Any]:
        """Apply already validated limits over ``user``'s overrides; returns all of them."""
        merged = self.overrides[user] = {**self.overrides.get(user, {}), **valid}
        return merged

    def is_admin(self, user: str | None) -> bool:
        return user is not None and user in self.quotas.admins

    # -- usage -------------------------------------------------------------------------------
    def _usage(self, user: str, now: float) -> UserUsage:
        day = utc_day(now)
        usage = self.usage.get(user)
        if usage is None:
            usage = self.usage[user] = UserUsage(day)
        elif usage.day != day:  # a new UTC day: daily counters reset
            usage.day, usage.day_requests, usage.day_gpu_seconds = day, 0, 0.0
        while usage.minute and usage.minute[0] <= now - MINUTE:
            usage.minute.popleft()
        return usage

    def restore(self, user: str, day: str, requests: int, gpu_seconds: float) -> None:
        """Load today's durable usage (after a scheduler restart)."""
        usage = self._usage(user, self.clock())
        if usage.day == day:
            usage.day_requests += requests
            usage.day_gpu_seconds += gpu_seconds

    def priority_full(self, user: str, priority: int) -> bool:
        """A priority 4-5 task of ``user`` now would exceed ``priority_requests`` (it waits, or is rejected)."""
        if not self.quotas.enabled or priority < HIGH_PRIORITY:
            return False
        return self._usage(user, self.clock()).priority_outstanding >= self.limits(user).priority_requests

    def count_outstanding(self, user: str) -> None:
        """A priority 4-5 task that waited for admission is admitted now."""
        self._usage(user, self.clock()).priority_outstanding += 1

    def admit(
        self, user: str, priority: int, requests: int = 1, *, count_priority: bool = True
    ) -> QuotaExceededError | None:
        """Count a submission that serves ``requests`` client requests (a gateway batch serves several), or
        return the error that rejects it (nothing counted then). ``count_priority=False``: a priority 4-5
        task that waits for admission (:meth:`count_outstanding` later), so ``priority_requests`` is not
        checked nor counted now."""
        if not self.quotas.enabled:
            return None
        now = self.clock()
        usage, limits = self._usage(user, now), self.limits(user)
        if len(usage.minute) + requests > limits.requests_per_minute:
            reset = iso(usage.minute[0] + MINUTE)
            return QuotaExceededError(user, "requests_per_minute", limits.requests_per_minute, len(usage.minute), reset)
        if usage.day_requests + requests > limits.requests_per_day:
            return QuotaExceededError(
                user, "requests_per_day", limits.requests_per_day, usage.day_requests, iso(next_midnight(now))
            )
        used_minutes = usage.day_gpu_seconds / 60
        if used_minutes >= limits.gpu_time_minutes:
            return QuotaExceededError(
                user, "gpu_time_minutes", limits.gpu_time_minutes, round(used_minutes, 2), iso(next_midnight(now))
            )
        high = priority >= HIGH_PRIORITY and count_priority
        if high and usage.priority_outstanding >= limits.priority_requests:
            return QuotaExceededError(
                user, "priority_requests", limits.priority_requests, usage.priority_outstanding, None
            )
        usage.minute.extend([now] * requests)
        usage.day_requests += requests
        if high:
            usage.priority_outstanding += 1
        return None

    def can_start(self, user: str) -> bool:
        if not self.quotas.enabled:
            return True
        return self._usage(user, self.clock()).running < self.limits(user).concurrent_requests

    def started(self, user: str) -> None:
        self._usage(user, self.clock()).running += 1

    def stopped(self, user: str) -> None:
        usage = self._usage(user, self.clock())
        usage.running = max(0, usage.running - 1)

    def finished(self, user: str, priority: int, gpu_seconds: float, *, outstanding: bool = True) -> None:
        """A task left the system (done, failed or cancelled): meter its GPU time. ``outstanding=False``: it
        left while it still waited for admission (it was never counted as outstanding)."""
        usage = self._usage(user, self.clock())
        usage.day_gpu_seconds += max(gpu_seconds, 0.0)
        if priority >= HIGH_PRIORITY and outstanding:
            usage.priority_outstanding = max(0, usage.priority_outstanding - 1)

    # -- reporting ------------------------------------------------------------------------------
    def report(self, user: str) -> dict[str, Any]:
        """Seed 001 section 6.3.4: limits, used, remaining and reset times."""
        now = self.clock()
        usage, limits = self._usage(user, now), self.limits(user)
        midnight = iso(next_midnight(now))

        def entry(limit: float, used: float, reset: str | None = None) -> dict[str, Any]:
            out = {"limit": limit, "used": used, "remaining": max(limit - used, 0)}
            if reset:
                out["reset_time"] = reset
            return out

        minute_reset = iso(usage.minute[0] + MINUTE) if usage.minute else iso(now + MINUTE)
        return {
            "user_id": user,
            "quotas": {
                "gpu_time": entry(limits.gpu_time_minutes, round(usage.day_gpu_seconds / 60, 3), midnight),
                "concurrent_requests": entry(limits.concurrent_requests, usage.running),
                "priority_requests": entry(limits.priority_requests, usage.priority_outstanding),
            },
            "rate_limits": {
                "requests_per_minute": entry(limits.requests_per_minute, len(usage.minute), minute_reset),
                "requests_per_day": entry(limits.requests_per_day, usage.day_requests, midnight),
            },
            "weight": limits.weight,
        }

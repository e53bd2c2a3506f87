"""GPU time a task is charged: measured device time where its worker knows it, else its share of the device.

Tasks that run on one GPU at the same time share it. Without a measurement of each one's device time, the
core charges processor sharing: while ``n`` tasks run on a GPU, each is charged ``dt / n``. A
:class:`ShareClock` per GPU keeps ``∫ dt / n(t)`` over the time any task ran there (the virtual time of
processor sharing); a task's share is the clock's advance from its start to its end. So the shares of the
tasks that ran on one GPU inside any window add up to the time at least one of them ran: at most the window.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ShareClock:
    """``∫ dt / n(t)`` on one GPU while ``n(t) >= 1`` tasks run there; read it whenever ``n`` is about to change."""

    value: float = 0.0
    at: float | None = None

    def advance(self, now: float, running: int) -> float:
        """The clock at ``now``, with ``running`` tasks having run since the last call."""
        if self.at is not None and running and now > self.at:
            self.value += (now - self.at) / running
        self.at = now if self.at is None else max(self.at, now)
        return self.value


def charged_seconds(share_s: float | None, compute_s: float, device_s: float | None) -> float:
    """GPU seconds for one run of a task.

    ``device_s``: the device time its worker measured (a device that runs one kernel at a time knows it);
    it wins. Else the task's processor-sharing ``share_s``, never more than the ``compute_s`` its worker
    timed (a task alone on its GPU is charged its compute time, not the messages around it). ``share_s`` is
    None when the core never saw it run (then ``compute_s``, as before).
    """
    if device_s is not None:
        return max(device_s, 0.0)
    if share_s is None:
        return max(compute_s, 0.0)
    return min(compute_s, share_s) if compute_s > 0 else share_s

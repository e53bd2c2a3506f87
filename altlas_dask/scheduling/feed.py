"""The router's task feed: what it pushes to its subscribers (the REST gateway) on a Dask event topic.

The scheduler plugin publishes with ``Scheduler.log_event(TOPIC, {key: record})`` once per event-loop turn for
every GPU task that changed in that turn (submitted, placed, started, finished, failed, cancelled, ...); a
subscriber listens with ``Client.subscribe_topic(TOPIC, handler)``. The records carry every user's tasks, so
under ``security.identity: tls`` only admin-level certificates (delegates such as the gateway, admins) may
subscribe: the protocol gate refuses the topic to user certificates (``scheduler_plugins/gate.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TOPIC = "altlas-tasks"

#: The fields of the router's record (``altlas_explain``) that the feed carries.
FIELDS = (
    "key",
    "user",
    "status",
    "gpu",
    "error",
    "outcome",
    "reason",
    "waiting_reason",
    "queue_position",
    "submitted",
    "placed_at",
    "finished_at",
    "estimated_start",
    "estimated_completion",
)


def feed_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """The feed's record of one task: the fields of :data:`FIELDS` that its router record has."""
    return {name: row[name] for name in FIELDS if name in row}

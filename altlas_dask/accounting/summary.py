"""Aggregates of the finished task records over a time window: what ``GET /metrics`` reports about finished work
(the router serves them, ``altlas_finished``; nothing outside ``altlas_dask.accounting`` speaks SQL).

Response time = router submission to completion (queue wait + run); "models" are task types.
"""

from __future__ import annotations

import sqlite3
from typing import Any

PERCENTILE_SAMPLE = 100_000  # the newest completed tasks whose response times the percentiles are read from

EMPTY: dict[str, Any] = {"status": {}, "durations": [], "gpus": [], "models": [], "users": []}


def finished_summary(conn: sqlite3.Connection, since: float) -> dict[str, Any]:
    """``status`` (count per final status), ``durations`` (sorted response times of completed tasks, the newest
    :data:`PERCENTILE_SAMPLE`), rows ``gpus`` (gpu, completed, mean response), ``models`` (task type, total,
    completed, mean response, mean memory MB) and ``users`` (user, total, GPU seconds, mean response), over the
    records finished since ``since``."""
    q = conn.execute
    try:
        status = q("SELECT status, COUNT(*) FROM tasks WHERE finished >= ? GROUP BY status", (since,)).fetchall()
        durations = [
            r[0]
            for r in q(
                "SELECT finished - submitted FROM tasks WHERE finished >= ? AND status = 'completed' "
                "ORDER BY finished DESC LIMIT ?",
                (since, PERCENTILE_SAMPLE),
            )
        ]
        gpus = q(
            "SELECT gpu, COUNT(*), AVG(finished - submitted) FROM tasks "
            "WHERE finished >= ? AND status = 'completed' AND gpu IS NOT NULL GROUP BY gpu",
            (since,),
        ).fetchall()
        models = q(
            "SELECT task_type, COUNT(*), SUM(status = 'completed'), "
            "AVG(CASE WHEN status = 'completed' THEN finished - submitted END), AVG(memory_mb) "
            "FROM tasks WHERE finished >= ? GROUP BY task_type",
            (since,),
        ).fetchall()
        users = q(
            "SELECT user, COUNT(*), SUM(gpu_seconds), "
            "AVG(CASE WHEN status = 'completed' THEN finished - submitted END) "
            "FROM tasks WHERE finished >= ? GROUP BY user",
            (since,),
        ).fetchall()
    except sqlite3.OperationalError:  # no tasks table yet
        return {key: type(value)() for key, value in EMPTY.items()}
    return {
        "status": {row[0]: row[1] for row in status},
        "durations": sorted(durations),
        "gpus": [tuple(row) for row in gpus],
        "models": [tuple(row) for row in models],
        "users": [tuple(row) for row in users],
    }

"""Usage reports in the manner of Slurm's ``sreport``: per GPU, user or model over a period, from the final task
records (the accounting database): tasks, outcomes, GPU-hours, p50/p95 wait and run time, GPU-time quota use.

Pure: records in, rows out; ``altlas-dask report`` and the console's Reports page both call :func:`build_report`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sqlite3
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BY = ("gpu", "user", "model")
FORMATS = ("table", "csv", "json")
FAILED = ("failed", "timed_out")
COLUMNS = (
    "tasks",
    "completed",
    "failed",
    "rejected",
    "cancelled",
    "gpu_hours",
    "wait_p50_s",
    "wait_p95_s",
    "run_p50_s",
    "run_p95_s",
    "quota_use_pct",
)
DAY = 86_400.0
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}


class ReportError(ValueError):
    """Bad report input (a time, a grouping, a format); the message names the option and the value."""


def parse_when(text: str, now: float, option: str = "--since") -> float:
    """``now``, a span ago (``90m``, ``24h``, ``7d``, ``2w``) or an ISO 8601 date or time (UTC unless it names
    a zone) -> a Unix time."""
    value = text.strip()
    if value.lower() == "now":
        return now
    if match := _AGO.match(value):
        return now - float(match[1]) * _UNIT_S[match[2]]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ReportError(
            f"{option}: {text!r} is not a time; give 'now', a span ago like 24h or 7d, or a date like 2026-12-01"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between the closest ranks; None when empty."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return float(cuts[int(q) - 1]) if 0 < q < 100 else float(min(values) if q <= 0 else max(values))


def group_of(record: Mapping[str, Any], by: str) -> str:
    if by == "gpu":
        return "none" if record.get("gpu") is None else f"gpu_{int(record['gpu'])}"
    if by == "user":
        return str(record["user"])
    return str(record.get("task_type") or "none")


def build_report(
    records: Iterable[Mapping[str, Any]],
    by: str,
    since: float,
    until: float,
    gpu_minutes_per_day: Callable[[str], float] | None = None,
) -> list[dict[str, Any]]:
    """One row per ``by`` group of the records that finished in ``[since, until)``, sorted by name.

    ``wait``: submission to start; ``run``: start to finish of completed tasks; ``gpu_hours``: the GPU time
    the records carry; ``quota_use_pct`` (``by="user"`` with ``gpu_minutes_per_day``): GPU-minutes used over
    the user's daily GPU-time limit times the days in the period.
    """
    if by not in BY:
        raise ReportError(f"--by: {by!r} is not one of {', '.join(BY)}")
    if until <= since:
        raise ReportError(f"--until must be after --since (got {iso(since)} .. {iso(until)})")
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        finished = record.get("finished")
        if finished is not None and since <= finished < until:
            groups.setdefault(group_of(record, by), []).append(record)
    days = (until - since) / DAY
    rows = []
    for name in sorted(groups):
        group = groups[name]
        statuses = [r["status"] for r in group]
        waits = [r["started"] - r["submitted"] for r in group if r.get("started") is not None and r.get("submitted")]
        runs = [r["finished"] - r["started"] for r in group if r["status"] == "completed" and r.get("started")]
        gpu_seconds = sum(r.get("gpu_seconds") or 0.0 for r in group)
        quota = None
        if by == "user" and gpu_minutes_per_day is not None:
            quota = _round(100 * (gpu_seconds / 60) / (gpu_minutes_per_day(name) * days), 2)
        rows.append(
            {
                by: name,
                "tasks": len(group),
                "completed": statuses.count("completed"),
                "failed": sum(statuses.count(s) for s in FAILED),
                "rejected": statuses.count("rejected"),
                "cancelled": statuses.count("cancelled"),
                "gpu_hours": round(gpu_seconds / 3600, 4),
                "wait_p50_s": _round(percentile(waits, 50)),
                "wait_p95_s": _round(percentile(waits, 95)),
                "run_p50_s": _round(percentile(runs, 50)),
                "run_p95_s": _round(percentile(runs, 95)),
                "quota_use_pct": quota,
            }
        )
    return rows


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_database(
    database: str | Path, since: float, until: float
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The task records that finished in ``[since, until)`` and the admins' quota overrides, read-only from an
    accounting database file."""
    path = Path(database)
    if str(database) == ":memory:" or not path.is_file():
        raise ReportError(f"no accounting database at {str(database)!r} (accounting.database, or --database FILE)")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT * FROM tasks WHERE finished >= ? AND finished < ? ORDER BY finished", (since, until)
        ).fetchall()
        overrides = conn.execute("SELECT user, limits FROM quota_overrides").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"{str(database)!r} is not an altlas-dask accounting database ({exc})") from None
    finally:
        conn.close()
    return [dict(r) for r in rows], {r["user"]: json.loads(r["limits"]) for r in overrides}


def submitted_records(database: str | Path, since: float | None, until: float | None) -> list[dict[str, Any]]:
    """The task records submitted in ``[since, until)`` (None: unbounded), oldest first, read-only from an
    accounting database file (``altlas-dask replay`` turns them into a trace)."""
    bounds = [(f"submitted {op} ?", value) for op, value in ((">=", since), ("<", until)) if value is not None]
    where = " AND ".join(["1=1", *(clause for clause, _ in bounds)])
    conn = sqlite3.connect(f"{Path(database).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(f"SELECT * FROM tasks WHERE {where} ORDER BY submitted", [v for _, v in bounds])
        return [dict(r) for r in rows]
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"{str(database)!r} is not an altlas-dask accounting database ({exc})") from None
    finally:
        conn.close()


def to_csv(rows: list[dict[str, Any]], by: str) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[by, *COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_json(rows: list[dict[str, Any]], by: str, since: float, until: float) -> str:
    return json.dumps({"since": iso(since), "until": iso(until), "by": by, "rows": rows}, indent=2)


def to_table(rows: list[dict[str, Any]], by: str, since: float, until: float) -> str:
    """Fixed-width text, one line per group, with a header naming the period (UTC)."""
    headers = [by.upper(), *(c.upper() for c in COLUMNS)]
    cells = [[_cell(row[k]) for k in (by, *COLUMNS)] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:  # the name left-aligned, numbers right-aligned
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    lines = [f"Usage by {by}, {iso(since)} .. {iso(until)} (UTC; tasks that finished in the period)", line(headers)]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(row) for row in cells)
    if not rows:
        lines.append("(no finished tasks in this period)")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)

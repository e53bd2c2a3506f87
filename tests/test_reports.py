"""``altlas-dask report`` (sreport-like usage reports): the pure summary against its definitions, and the
command end to end on a real accounting database."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess

import numpy as np
import pytest
from conftest import cli_command, cli_env

from altlas_dask.accounting.reports import ReportError, build_report, parse_when
from altlas_dask.accounting.store import AccountingStore

T0 = 1_796_000_000.0  # a fixed Unix time: 2026-11-30
STATUSES = ("completed", "completed", "completed", "failed", "timed_out", "rejected", "cancelled")


def make_records(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        status = rng.choice(STATUSES)
        submitted = T0 + rng.uniform(0, 7200)
        started = None if status == "rejected" else submitted + rng.uniform(0, 30)
        finished = submitted if started is None else started + rng.uniform(0.1, 60)
        records.append(
            {
                "key": f"k{i}",
                "user": rng.choice(("ana", "bob", "cem")),
                "gpu": None if started is None else rng.randrange(3),
                "strategy": "least_loaded",
                "reason": "",
                "status": status,
                "priority": 3,
                "task_type": rng.choice(("inference", "generate")),
                "memory_mb": 0,
                "submitted": submitted,
                "started": started,
                "finished": finished,
                "gpu_seconds": 0.0 if started is None else finished - started,
                "attempts": 1,
                "error": None,
            }
        )
    return records


def expected(records: list[dict], by: str, since: float, until: float, limit_minutes: float) -> dict[str, dict]:
    """The report from its definition, with numpy's percentiles (linear interpolation)."""
    name = {"gpu": lambda r: "none" if r["gpu"] is None else f"gpu_{r['gpu']}", "user": lambda r: r["user"]}
    key = name.get(by, lambda r: r["task_type"])
    out: dict[str, dict] = {}
    for group in sorted({key(r) for r in records if since <= r["finished"] < until}):
        rows = [r for r in records if key(r) == group and since <= r["finished"] < until]
        waits = [r["started"] - r["submitted"] for r in rows if r["started"] is not None]
        runs = [r["finished"] - r["started"] for r in rows if r["status"] == "completed"]
        seconds = sum(r["gpu_seconds"] for r in rows)
        out[group] = {
            "tasks": len(rows),
            "completed": sum(r["status"] == "completed" for r in rows),
            "failed": sum(r["status"] in ("failed", "timed_out") for r in rows),
            "rejected": sum(r["status"] == "rejected" for r in rows),
            "cancelled": sum(r["status"] == "cancelled" for r in rows),
            "gpu_hours": seconds / 3600,
            "wait_p50_s": np.percentile(waits, 50) if waits else None,
            "wait_p95_s": np.percentile(waits, 95) if waits else None,
            "run_p50_s": np.percentile(runs, 50) if runs else None,
            "run_p95_s": np.percentile(runs, 95) if runs else None,
            "quota_use_pct": 100 * seconds / 60 / (limit_minutes * (until - since) / 86_400) if by == "user" else None,
        }
    return out


def assert_close(rows: list[dict], by: str, want: dict[str, dict]) -> None:
    assert [row[by] for row in rows] == list(want)
    for row in rows:
        for column, value in want[row[by]].items():
            if value is None:
                assert row[column] is None, (row, column)
            else:
                assert row[column] == pytest.approx(value, abs=0.01), (row[by], column)


@pytest.mark.parametrize("by", ["gpu", "user", "model"])
def test_report_rows_follow_their_definitions(by: str) -> None:
    records = make_records(400)
    since, until = T0 + 600, T0 + 6000  # cuts records off at both ends
    rows = build_report(records, by, since, until, lambda user: 90.0)
    assert_close(rows, by, expected(records, by, since, until, 90.0))


def test_times_are_now_spans_ago_or_iso_dates_and_bad_ones_name_the_option() -> None:
    now = T0
    assert parse_when("now", now) == now
    assert parse_when("90m", now) == now - 5400 and parse_when("7d", now) == now - 7 * 86_400
    assert parse_when("2026-12-01", now) == 1_796_083_200.0  # UTC midnight
    assert parse_when("2026-12-01T01:00:00+01:00", now) == 1_796_083_200.0
    with pytest.raises(ReportError, match="--until: 'yesterday-ish' is not a time"):
        parse_when("yesterday-ish", now, "--until")
    with pytest.raises(ReportError, match="--until must be after --since"):
        build_report([], "user", now, now - 1)


def write_database(path, records: list[dict]) -> None:
    store = AccountingStore(path)
    for record in records:
        store.record_task(record)
    store.set_override("bob", {"gpu_time_minutes": 30.0})
    assert store.flush()
    store.close()


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_command(), "report", *args], capture_output=True, text=True, env=cli_env(), timeout=120)


def test_report_command_in_every_format(tmp_path) -> None:
    records = make_records(300, seed=11)
    database = tmp_path / "altlas.sqlite"
    write_database(database, records)
    period = ["--database", str(database), "--since", "2026-11-30T00:00:00Z", "--until", "2026-12-01"]
    since, until = parse_when("2026-11-30T00:00:00Z", 0), parse_when("2026-12-01", 0)
    done = report(*period, "--by", "user", "--format", "json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["since"], answer["until"], answer["by"]) == ("2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z", "user")
    default_minutes = 14_400.0  # quotas.defaults.gpu_time_minutes; bob has an admin's override of 30
    want = expected(records, "user", since, until, default_minutes)
    want["bob"] = expected(records, "user", since, until, 30.0)["bob"]
    assert_close(answer["rows"], "user", want)
    as_csv = report(*period, "--by", "gpu", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    gpus = expected(records, "gpu", since, until, 1.0)
    assert [row["gpu"] for row in parsed] == list(gpus)
    assert [int(row["tasks"]) for row in parsed] == [g["tasks"] for g in gpus.values()]
    table = report(*period, "--by", "model")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("Usage by model, 2026-11-30T00:00:00Z .. 2026-12-01T00:00:00Z")
    assert lines[1].split()[:3] == ["MODEL", "TASKS", "COMPLETED"]
    assert [line.split()[0] for line in lines[3:]] == ["generate", "inference"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last tuesday"], "--since: 'last tuesday' is not a time"),
        (["--database", "/nonexistent/altlas.sqlite"], "no accounting database at '/nonexistent/altlas.sqlite'"),
    ],
)
def test_report_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    done = report(*args)
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1] == f"error: {message}" or message in done.stderr.strip().splitlines()[-1]
    )
    assert "Traceback" not in done.stderr

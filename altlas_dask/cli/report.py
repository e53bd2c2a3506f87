"""``altlas-dask report``: usage per GPU, user or model over a period, like Slurm's ``sreport``."""

from __future__ import annotations

import time
from typing import Any

import click

from altlas_dask.accounting.reports import (
    BY,
    FORMATS,
    ReportError,
    build_report,
    parse_when,
    read_database,
    to_csv,
    to_json,
    to_table,
)
from altlas_dask.cli.errors import CliError


@click.command("report")
@click.option("--since", default="24h", show_default=True, help="Start: 'now', a span ago (24h, 7d) or a date/time.")
@click.option("--until", default="now", show_default=True, help="End, in the same forms (UTC unless it names a zone).")
@click.option("--by", type=click.Choice(BY), default="user", show_default=True, help="One row per GPU, user or model.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--database", default=None, help="Accounting database file (default: accounting.database).")
@click.pass_obj
def report_command(ctx: Any, since: str, until: str, by: str, fmt: str, database: str | None) -> None:
    """GPU-hours, tasks, failures, p50/p95 wait and run time and GPU-time quota use of the tasks that finished
    in a period, read from the accounting database (docs/reports.md)."""
    from altlas_dask.scheduling.quotas import QuotaBook

    config = ctx.config()
    now = time.time()
    try:
        start, end = parse_when(since, now, "--since"), parse_when(until, now, "--until")
        records, overrides = read_database(database or config.accounting.database, start, end)
        book = QuotaBook(config.quotas)
        book.overrides.update(overrides)
        rows = build_report(records, by, start, end, lambda user: book.limits(user).gpu_time_minutes)
    except ReportError as exc:
        raise CliError(str(exc)) from None
    if fmt == "csv":
        click.echo(to_csv(rows, by), nl=False)
    elif fmt == "json":
        click.echo(to_json(rows, by, start, end))
    else:
        click.echo(to_table(rows, by, start, end))

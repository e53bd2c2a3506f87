"""``altlas-dask submit``: run a named workload N times on a running cluster, with a progress bar and a summary."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from concurrent.futures import CancelledError
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from altlas_dask.cli.errors import CONNECT_TIMEOUT_S, SCHEDULER, CliError, check_scheduler_address, unreachable
from altlas_dask.client.runs import RunSummary, WorkloadRun, parse_params, submit_workload
from altlas_dask.client.workloads import WORKLOADS, get_workload
from altlas_dask.options import check_strategy


def strategy_names(ctx: click.Context | None = None) -> list[str]:
    """The routing strategies ``--strategy`` accepts: the built-in ones and the config's custom ones."""
    from altlas_dask.config import STRATEGIES

    custom: list[str] = []
    obj = ctx.find_root().obj if ctx is not None else None
    if obj is not None and hasattr(obj, "config"):
        with contextlib.suppress(ValueError):  # a bad config is reported when the command runs
            custom = list(obj.config().gpu.multi_gpu.custom_strategies)
    return [*STRATEGIES, *custom]


def workload_names(ctx: click.Context | None = None) -> list[str]:
    return list(WORKLOADS)


class ListedOption(click.Option):
    """An option whose ``--help`` lists the names a function returns when help is shown."""

    def __init__(self, *args: Any, names: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names = names

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        return record[0], f"{record[1]} One of: {', '.join(self.names(ctx))}."


def scheduler_address(obj: Any, scheduler: str | None) -> str:
    """``--scheduler``, else ``$ALTLAS_SCHEDULER``, else ``cluster.scheduler_address`` of the config."""
    if scheduler:
        return scheduler
    if os.environ.get("ALTLAS_SCHEDULER"):
        return check_scheduler_address(os.environ["ALTLAS_SCHEDULER"], "$ALTLAS_SCHEDULER")
    if obj is not None and hasattr(obj, "config"):
        return obj.config().cluster.connect_address()
    from altlas_dask.config import load_config

    return load_config().cluster.connect_address()


def connect(address: str, user: str, obj: Any = None) -> Any:
    """An ``altlas_dask.Client`` acting as ``user``, waiting the group's ``--connect-timeout``; an unreachable
    scheduler is one clear error."""
    from altlas_dask.client.gpu_client import Client

    timeout = getattr(obj, "connect_timeout", CONNECT_TIMEOUT_S)
    try:
        return Client(address, gpu_defaults={"user": user}, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise unreachable(address, exc) from None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def summary_table(summary: RunSummary, names: dict[str, str]) -> Table:
    table = Table(title=f"Run {summary.name}: per-GPU summary")
    for column in ("GPU", "Name", "Tasks", "Calls", "p50 ms", "p95 ms"):
        table.add_column(column, justify="left" if column in ("GPU", "Name") else "right", no_wrap=True)
    for row in summary.per_gpu:
        table.add_row(
            row["gpu"],
            names.get(row["gpu"], "-"),
            str(row["tasks"]),
            str(row["calls"]),
            _ms(row["p50_latency_s"]),
            _ms(row["p95_latency_s"]),
        )
    calls = str(sum(row["calls"] for row in summary.per_gpu))
    p50, p95 = _ms(summary.p50_latency_s), _ms(summary.p95_latency_s)
    table.add_row("all", "", str(summary.completed), calls, p50, p95, style="bold")
    return table


def summary_line(summary: RunSummary) -> str:
    return (
        f"{summary.calls} calls of {summary.workload} in {summary.tasks} tasks: {summary.completed} completed, "
        f"{summary.failed} failed, {summary.cancelled} cancelled in {summary.wall_s:.2f} s "
        f"({summary.throughput:.1f} calls/s); latency p50 {_ms(summary.p50_latency_s)} ms, "
        f"p95 {_ms(summary.p95_latency_s)} ms"
    )


def lost_connection(address: str, run: WorkloadRun) -> click.ClickException:
    """The one line for a scheduler that went away mid-run (Dask dropped the unfinished tasks with it)."""
    completed = sum(size for f, size in zip(run.futures, run.sizes, strict=True) if f.status == "finished")
    return CliError(
        f"lost the connection to the scheduler at {address} with {completed}/{run.calls} calls completed: "
        "the unfinished tasks were lost with it; run the command again once the scheduler is back"
    )


def wait_with_progress(run: WorkloadRun, timeout: float | None, quiet: bool, client: Any = None) -> None:
    """Poll the run's futures until all are done; on timeout or Ctrl-C cancel what is left; stop with one line
    if the scheduler connection breaks."""
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), disable=quiet) as progress:
        bar = progress.add_task(run.name, total=run.calls)

        def check_connection() -> None:
            """A lost scheduler cancels the run's futures: no full bar for them, only the one error line."""
            if client is not None and client.status != "running":
                progress.remove_task(bar)
                raise lost_connection(client.scheduler.address if client.scheduler else "?", run)

        try:
            while not run.done():
                check_connection()
                progress.update(bar, completed=run.done_calls())
                if deadline is not None and time.monotonic() > deadline:
                    run.cancel()
                    raise click.ClickException(
                        f"timed out after {timeout:g}s with {run.done_calls()}/{run.calls} calls done; "
                        "cancelled the rest"
                    )
                time.sleep(0.1)
        except KeyboardInterrupt:
            run.cancel()
            raise click.Abort() from None
        check_connection()
        progress.update(bar, completed=run.done_calls())


@click.command()
@click.option(
    "--workload", "workload_name", required=True, cls=ListedOption, names=workload_names, help="Named workload."
)
@click.option("--count", type=int, default=1, show_default=True, help="Workload calls to run.")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Calls per Dask task.")
@click.option(
    "--strategy",
    default=None,
    cls=ListedOption,
    names=strategy_names,
    help="Routing strategy (default: the cluster's).",
)
@click.option("--priority", type=int, default=3, show_default=True, help="1 (low) .. 5 (high).")
@click.option("--user", envvar="ALTLAS_USER", default="anonymous", show_default=True, help="Submit as this user.")
@click.option("--task-type", default=None, help="Task type for routing (default: the workload's).")
@click.option(
    "--scheduler", type=SCHEDULER, default=None, help="Scheduler address (default: $ALTLAS_SCHEDULER, else the config)."
)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Workload parameter (repeatable).")
@click.option("--timeout", type=float, default=None, help="Stop waiting after this many seconds; cancel the rest.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (no progress bar).")
@click.option(
    "--show-results",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    metavar="N",
    help="Also print the results (generated text, return values; one line each) of the first N tasks.",
)
@click.pass_obj
def submit(
    obj: Any,
    workload_name: str,
    count: int,
    batch_size: int,
    strategy: str | None,
    priority: int,
    user: str,
    task_type: str | None,
    scheduler: str | None,
    params: tuple[str, ...],
    timeout: float | None,
    as_json: bool,
    show_results: int,
) -> None:
    """Submit COUNT calls of a named workload and wait for them; print per-GPU counts and latencies."""
    from altlas_dask.options import GpuOptions

    workload = get_workload(workload_name)  # bad input: ValueError -> one line, exit 2 (cli.main)
    values = parse_params(workload, params)
    gpu_options = {"strategy": strategy, "priority": priority, "user": user, "task_type": task_type}
    GpuOptions.parse({k: v for k, v in gpu_options.items() if v is not None})
    known = strategy_names(click.get_current_context())
    check_strategy(strategy, known, field="--strategy", known_as="a known strategy")
    if count < 1 or batch_size < 1:
        raise ValueError(f"--count and --batch-size must be >= 1 (got {count}, {batch_size})")
    address = scheduler_address(obj, scheduler)
    from altlas_dask.errors import RouterError

    if not logging.getLogger().isEnabledFor(logging.INFO):  # without -v: a lost scheduler is our one line only
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)

    with connect(address, user, obj) as client:
        try:
            run = submit_workload(
                client, workload.name, count, batch_size=batch_size, params=values, gpu_options=gpu_options
            )
            wait_with_progress(run, timeout, quiet=as_json, client=client)
            if client.status != "running":
                raise lost_connection(address, run)
            summary = run.summary()
            names = {str(g.id): g.name for g in client.gpus()}
            results = run.results(show_results) if show_results else []
        except RouterError as exc:
            raise click.ClickException(str(exc)) from None
        except (OSError, CancelledError) as exc:  # CommClosedError, FutureCancelledError: the scheduler went away
            if client.status == "running":
                raise click.ClickException(f"the scheduler at {address} failed the run: {exc}") from None
            raise lost_connection(address, run) from None
    if as_json:
        payload = summary.to_dict()
        if show_results:
            payload["results"] = [{"key": key, "result": text} for key, text in results]
        click.echo(json.dumps(payload, indent=2))
    else:
        out = Console()
        out.print(summary_table(summary, names))
        out.print(summary_line(summary), highlight=False)
        for error in summary.errors:
            out.print(f"[red]error[/red] {error}", highlight=False)
        for key, text in results:
            out.print(f"{key}: {text}", highlight=False, markup=False, soft_wrap=True)
    if summary.failed or summary.cancelled:
        raise SystemExit(1)

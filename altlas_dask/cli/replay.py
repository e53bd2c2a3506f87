"""``altlas-dask replay TRACE``: what would each strategy do to this workload? (docs/replay.md)

Replays a JSONL trace in virtual time on the modelled pool of the config's ``simulation:`` section,
through the same scheduling core the router runs, once per strategy; prints a table per strategy (or
JSON) and writes a latency CDF plot (``replay-cdf.png``) and ``replay.json`` into ``--out``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from altlas_dask.accounting.reports import ReportError
from altlas_dask.config import ConfigError, load_config
from altlas_dask.simulation.engine import replay
from altlas_dask.simulation.importers import FORMATS, import_trace
from altlas_dask.simulation.metrics import summarize
from altlas_dask.simulation.records import gpu_speeds, trace_from_database
from altlas_dask.simulation.trace import TraceError, TraceLine, read_trace
from altlas_dask.simulation.trace import write_trace as write

TRACES_DIR = Path(__file__).resolve().parents[1] / "simulation" / "traces"
console = Console(width=shutil.get_terminal_size((160, 24)).columns)


def find_trace(name: str) -> Path:
    """A path, or the name of a shipped trace (``heterogeneous`` -> simulation/traces/heterogeneous.jsonl)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = TRACES_DIR / f"{path.stem}.jsonl"
    if path.parent == Path(".") and shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in TRACES_DIR.glob("*.jsonl")))
    raise click.BadParameter(f"no trace file {name!r} (shipped traces: {known})", param_hint="TRACE")


def parse_window(window: str | None) -> tuple[int, int | None]:
    """``START:COUNT`` -> (start, count); None -> the whole file."""
    if window is None:
        return 0, None
    start, sep, count = window.partition(":")
    if not (sep and start.isdigit() and count.isdigit() and int(count) > 0):
        raise click.BadParameter(f"{window!r} is not START:COUNT (whole numbers, COUNT > 0)", param_hint="--window")
    return int(start), int(count)


def strategy_table(s: dict[str, Any]) -> Table:
    lat = s["latency_s"]
    table = Table(title=f"Strategy {s['strategy']}", title_justify="left")
    for column in ("done / failed", "p50 ms", "p95 ms", "p99 ms", "queue wait ms", "throughput /s", "GPU util"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_row(
        f"{s['done']} / {s['failed']}",
        _ms(lat["p50"]),
        _ms(lat["p95"]),
        _ms(lat["p99"]),
        _ms(s["queue_wait_mean_s"]),
        f"{s['throughput_per_s']:.1f}",
        f"{s['gpu_utilization']:.0%}",
    )
    return table


def detail_table(s: dict[str, Any]) -> Table:
    table = Table(show_header=True, box=None, padding=(0, 2))
    table.add_column("per user: served GPU s", no_wrap=True)
    table.add_column("per task type: p95 ms", no_wrap=True)
    users = [f"{u} {v:.1f}" for u, v in s["user_gpu_s"].items()]
    types = [f"{t} {_ms(v)}" for t, v in s["p95_by_task_type_s"].items()]
    for i in range(max(len(users), len(types))):
        table.add_row(users[i] if i < len(users) else "", types[i] if i < len(types) else "")
    return table


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def plot_cdf(results: dict[str, list[float]], path: Path, title: str) -> Path:
    """Latency CDF per strategy as a PNG (matplotlib is a dependency: this command always draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, latency in results.items():
        xs = sorted(v * 1e3 for v in latency)
        ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency, arrival -> result (ms)")
    ax.set_ylabel("fraction of tasks")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def run_replay(lines: list[TraceLine], config: Any, strategies: list[str], seed: int) -> tuple[list, dict]:
    summaries, latencies = [], {}
    for name in strategies:
        result = replay(config, lines, name, seed=seed)
        summaries.append(summarize(result))
        latencies[name] = [o.done - o.task.t for o in result.outcomes if o.status == "completed"]
    return summaries, latencies


@click.command("replay")
@click.argument("trace")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="cluster.yaml whose simulation: section is the pool (default: the global --config).",
)
@click.option("--strategy", "-s", "strategies", multiple=True, help="A strategy to replay (repeatable).")
@click.option("--all", "all_strategies", is_flag=True, help="Every strategy enabled in gpu.multi_gpu.strategies.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the strategies' randomness.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for replay.json and replay-cdf.png (default: the current folder).",
)
@click.option("--since", type=float, default=None, help="With an accounting database: tasks submitted from (Unix s).")
@click.option("--until", type=float, default=None, help="With an accounting database: tasks submitted before (Unix s).")
@click.option("--write-trace", type=click.Path(dir_okay=False), default=None, help="Also save the trace as JSONL.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(FORMATS)),
    default=None,
    help="TRACE is a public trace in this format (docs/replay.md: azure-llm, mooncake), converted on reading.",
)
@click.option(
    "--window",
    default=None,
    metavar="START:COUNT",
    help="With --format: requests START .. START+COUNT of the file (times from the window's first).",
)
@click.pass_obj
def replay_command(
    obj: Any, trace: str, config_path: str | None, strategies: tuple[str, ...], all_strategies: bool,
    as_json: bool, seed: int, out_dir: str | None, since: float | None, until: float | None, write_trace: str | None,
    fmt: str | None, window: str | None,
) -> None:  # fmt: skip
    """Replay TRACE in virtual time, per strategy. TRACE: a JSONL file, a shipped trace's name, or the router's
    accounting database (``*.sqlite``/``*.db``: what the cluster ran, ``--since``/``--until``)."""
    if strategies and all_strategies:
        raise click.UsageError("give --strategy names or --all, not both")
    try:
        if config_path is not None or obj is None:
            config = load_config(config_path, overrides=getattr(obj, "overrides", ()))
        else:
            config = obj.config()
        if fmt is not None:
            lines = list(import_trace(fmt, trace, *parse_window(window)))
        elif window is not None:
            raise click.UsageError("--window needs --format (it picks requests of a public trace)")
        elif Path(trace).suffix in (".sqlite", ".db"):
            if not Path(trace).is_file():
                raise TraceError(f"no accounting database {trace}")
            lines = list(trace_from_database(trace, gpu_speeds(config), since, until))
        else:
            lines = read_trace(find_trace(trace))
    except (ConfigError, TraceError, ReportError) as exc:
        raise click.ClickException(str(exc)) from None
    if write_trace:
        write(write_trace, lines)
    multi = config.gpu.multi_gpu
    known = set(multi.strategies) | set(multi.custom_strategies) | {"single_gpu"}
    names = list(multi.strategies) if all_strategies else list(strategies) or [config.routing().default_strategy]
    for name in names:
        if name not in known:
            raise click.BadParameter(f"unknown strategy {name!r}; enabled: {', '.join(multi.strategies)}",
                                     param_hint="--strategy")  # fmt: skip
    summaries, latencies = run_replay(lines, config, names, seed)
    out = Path(out_dir) if out_dir else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    report = {"trace": trace, "seed": seed, "gpus": len(config.simulation.expanded()), "strategies": summaries}
    (out / "replay.json").write_text(json.dumps(report, indent=2) + "\n")
    plot = plot_cdf(latencies, out / "replay-cdf.png", f"Latency CDF: {Path(trace).stem}")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    tasks = sum(1 for _ in lines if hasattr(_, "work_gflop"))
    console.print(f"Replay of {trace}: {tasks} tasks on {report['gpus']} modelled GPUs, seed {seed}")
    for s in summaries:
        console.print(strategy_table(s))
        console.print(detail_table(s))
    console.print(f"wrote {out / 'replay.json'} and {plot}")

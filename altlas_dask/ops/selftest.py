"""``altlas-dask selftest``: seed 003's test suite, run against a live cluster (simulated or real GPUs).

The config's ``test:`` section drives it, scenario by scenario: GPU detection (every field), basic
functionality, concurrent processing, performance (small / medium / large dense layers on every GPU:
throughput and latency) and error handling (overload beyond GPU memory: the tasks wait or fail with a
clear error; a task past its timeout: cancelled and its GPU given back). Every task is real torch work
(:func:`altlas_dask.worker.kernels.dense_layer`) submitted through :class:`altlas_dask.Client`.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from distributed import as_completed, wait
from rich.console import Console
from rich.table import Table

from altlas_dask.cli.errors import SCHEDULER
from altlas_dask.client.gpu_client import Client
from altlas_dask.config import AltlasConfig, SelftestErrorScenario, SelftestScenario
from altlas_dask.errors import (
    GpuRetriesExhaustedError,
    GpuRoutingError,
    GpuTaskTimeoutError,
    QuotaExceededError,
    RouterError,
)
from altlas_dask.gpus.errors import GpuOutOfMemoryError
from altlas_dask.gpus.state import GpuState
from altlas_dask.worker.kernels import dense_inputs, dense_layer, dense_memory_mb

BATCH = 256  # rows of every dense layer's input
USER = "selftest"
#: Errors that say plainly why a task over GPU memory did not run.
CLEAR_MEMORY_ERRORS = (GpuOutOfMemoryError, GpuRoutingError, GpuRetriesExhaustedError, QuotaExceededError, RouterError)
SLACK_S = 60.0  # on top of the work itself, how long a scenario may wait for its results


@dataclass
class Outcome:
    """One scenario's verdict and figures."""

    name: str
    passed: bool | None  # None: disabled in the config
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)


class ScenarioFailed(AssertionError):
    """A scenario's check failed; the message says which and with what figures."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


async def _warm_up(dask_worker: Any = None) -> str:
    """Import torch and run one tiny product on the worker's device, so no scenario pays for it; in a thread,
    not on the worker's event loop (``Client.run`` awaits a coroutine there: the heartbeats go on)."""
    return await asyncio.to_thread(_load_torch, dask_worker)


def _load_torch(dask_worker: Any) -> str:
    import torch

    from altlas_dask.worker.binding import PLUGIN_NAME

    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.device is None:
        return "no GPU"
    device = plugin.device
    x = torch.ones(8, 8, device=device.torch_device)
    float((x @ x).sum().cpu())
    return device.torch_device


SMALL_CONFIG = Path(__file__).with_name("selftest-small.yaml")  # the CPU-sized scenarios (--small)


class Selftest:
    """Runs the enabled scenarios of ``config.test`` on the cluster ``client`` is connected to."""

    def __init__(self, client: Client, config: AltlasConfig, progress: Callable[[str], None] | None = None) -> None:
        """``progress``: told a line as each scenario starts and ends (the command prints them on stderr)."""
        self.client, self.config, self.suite = client, config, config.test
        self.gpus: list[GpuState] = []
        self.progress = progress or (lambda line: None)

    # -- helpers ---------------------------------------------------------------------------------
    def _submit(self, size: SelftestScenario | Any, *, seed: int = 0, memory_mb: int = 0, **gpu_options: Any):
        """One :func:`dense_layer` of ``size``'s shape and duration; ``memory_mb`` is declared to the router too."""
        if memory_mb:
            gpu_options["memory_mb"] = memory_mb
        return self.client.submit(
            dense_layer,
            size.input_size,
            size.output_size,
            float(size.duration),
            BATCH,
            seed,
            memory_mb,
            gpu_options={"user": USER, "task_type": "selftest", **gpu_options},
            pure=False,
        )

    def _deadline(self, duration: float, rounds: int = 1) -> float:
        return duration * rounds + SLACK_S

    def _free(self, baseline: dict[int, GpuState], timeout: float = 30.0) -> dict[int, GpuState]:
        """Wait until every GPU runs nothing and holds no more memory than at ``baseline``; return the states."""
        deadline = time.monotonic() + timeout
        while True:
            states = {g.id: g for g in self.client.gpus()}
            busy = {
                gid: g
                for gid, g in states.items()
                if g.active_requests > 0 or g.memory_used_mb > baseline.get(gid, g).memory_used_mb + self._margin(g)
            }
            if not busy:
                return states
            if time.monotonic() > deadline:
                detail = ", ".join(
                    f"GPU {k}: {g.active_requests} running, {g.memory_used_mb} MB" for k, g in busy.items()
                )
                raise ScenarioFailed(f"GPUs not given back within {timeout:.0f}s ({detail})")
            time.sleep(0.2)

    @staticmethod
    def _margin(gpu: GpuState) -> int:
        """Memory a real GPU keeps after the work (the worker's CUDA context and allocator); none when simulated."""
        return 0 if gpu.simulated else 1024

    def _reported_gpus(self, timeout: float = 30.0) -> list[GpuState]:
        """The router's GPUs once every worker has reported an active GPU (a cluster just started, or one on a
        loaded machine, may lag by a few heartbeats); after ``timeout`` the GPUs as they are."""
        deadline = time.monotonic() + timeout
        while True:
            gpus = self.client.gpus()
            workers = len(self.client.scheduler_info(n_workers=-1)["workers"])
            reported = [
                g
                for g in gpus
                if g.worker and g.status == "active" and (g.memory_total_mb > 0 or "memory_total_mb" in g.unknown)
            ]
            if workers and len(reported) >= workers or time.monotonic() > deadline:
                return gpus
            time.sleep(0.2)

    # -- scenarios -------------------------------------------------------------------------------
    def detection(self) -> Outcome:
        self.gpus = gpus = self._reported_gpus()
        if not gpus:
            raise ScenarioFailed("the cluster reports no GPU")
        problems = []
        for g in gpus:
            if not g.uuid or not g.name or not g.compute_capability:
                problems.append(f"GPU {g.id}: uuid/name/compute capability missing")
            if g.memory_total_mb <= 0 and "memory_total_mb" not in g.unknown:
                problems.append(f"GPU {g.id}: memory total {g.memory_total_mb} MB")
            if g.status != "active":
                problems.append(f"GPU {g.id}: status {g.status}")
        unknown = {g.id: list(g.unknown) for g in gpus if g.unknown}
        figures = {"gpus": len(gpus), "simulated": all(g.simulated for g in gpus), "unknown_fields": unknown}
        if problems:
            raise ScenarioFailed("; ".join(problems))
        kinds = Counter(g.name for g in gpus)
        text = ", ".join(f"{n}x {name}" for name, n in kinds.items())
        extra = f"; not reported by NVML: {unknown}" if unknown else ""
        return Outcome("detection", True, f"{len(gpus)} GPU(s): {text}{extra}", figures)

    def basic_functionality(self) -> Outcome:
        import torch

        work = self.suite.basic_functionality
        future = self._submit(work, seed=1)
        result = future.result(timeout=self._deadline(work.duration))
        x, w = dense_inputs(work.input_size, work.output_size, BATCH, 1)
        expected = float((x @ w).sum())
        scale = float(torch.linalg.norm(x @ w)) + 1.0
        error = abs(result["checksum"] - expected) / scale
        figures = {
            "gpu": result["gpu"],
            "device": result["device"],
            "iterations": result["iterations"],
            "seconds": round(result["seconds"], 3),
            "gflops": round(result["gflop"] / max(result["seconds"], 1e-9), 1),
            "relative_error": error,
        }
        if error > 1e-3:
            raise ScenarioFailed(
                f"result differs from the CPU reference: relative error {error:.2e} (figures {figures})"
            )
        return Outcome(
            "basic_functionality",
            True,
            f"GPU {result['gpu']} ({result['device']}): {result['iterations']} products of "
            f"{BATCH}x{work.input_size} @ {work.input_size}x{work.output_size} in {result['seconds']:.2f}s, "
            f"{figures['gflops']} GFLOP/s, matches the CPU reference (rel. error {error:.1e})",
            figures,
        )

    def concurrent_processing(self) -> Outcome:
        work = self.suite.concurrent_processing
        started: dict[str, float] = {}
        latencies: list[float] = []
        used: Counter[int] = Counter()
        failures: list[str] = []
        submitted = 0

        def submit_one():
            nonlocal submitted
            future = self._submit(work, seed=submitted)
            started[future.key] = time.perf_counter()
            submitted += 1
            return future

        begin = time.perf_counter()
        pending = as_completed([submit_one() for _ in range(min(work.concurrent_tasks, work.task_count))])
        rounds = math.ceil(work.task_count / work.concurrent_tasks)
        deadline = time.monotonic() + self._deadline(work.duration, rounds)
        for future in pending:
            try:
                result = future.result(timeout=max(deadline - time.monotonic(), 0.1))
                used[result["gpu"]] += 1
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - started[future.key])
            if submitted < work.task_count:
                pending.add(submit_one())
        wall = time.perf_counter() - begin
        figures = {
            "tasks": work.task_count,
            "in_flight": work.concurrent_tasks,
            "completed": sum(used.values()),
            "failed": len(failures),
            "seconds": round(wall, 3),
            "tasks_per_s": round(work.task_count / wall, 2),
            "latency_p50_ms": _ms(statistics.median(latencies)),
            "latency_p95_ms": _ms(_percentile(latencies, 95)),
            "per_gpu": dict(sorted(used.items())),
        }
        if failures:
            raise ScenarioFailed(f"{len(failures)} of {work.task_count} tasks failed, first: {failures[0]}")
        return Outcome(
            "concurrent_processing",
            True,
            f"{work.task_count} tasks, {work.concurrent_tasks} in flight: {figures['tasks_per_s']} tasks/s, "
            f"latency p50 {figures['latency_p50_ms']} ms / p95 {figures['latency_p95_ms']} ms, "
            f"per GPU {figures['per_gpu']}",
            figures,
        )

    def performance(self) -> list[Outcome]:
        outcomes = []
        for scenario in self.suite.performance.scenarios:
            outcomes.append(self._guarded(f"performance:{scenario.name}", lambda s=scenario: self._performance(s)))
        return outcomes

    def _performance(self, scenario: SelftestScenario) -> Outcome:
        futures = {g.id: self._submit(scenario, specific_gpu_id=g.id) for g in self.gpus}
        wait(list(futures.values()), timeout=self._deadline(scenario.duration, len(futures)))
        per_gpu, failures = {}, []
        for gid, future in futures.items():
            try:
                r = future.result(timeout=1)
            except Exception as exc:
                failures.append(f"GPU {gid}: {type(exc).__name__}: {exc}")
                continue
            per_gpu[gid] = {
                "gflops": round(r["gflop"] / max(r["seconds"], 1e-9), 1),
                "latency_ms": round(1000 * r["seconds"] / r["iterations"], 3),
                "iterations": r["iterations"],
            }
        figures = {"input_size": scenario.input_size, "output_size": scenario.output_size, "per_gpu": per_gpu}
        if failures:
            raise ScenarioFailed("; ".join(failures))
        total = round(sum(p["gflops"] for p in per_gpu.values()), 1)
        figures["total_gflops"] = total
        parts = ", ".join(f"GPU {k}: {p['gflops']} GFLOP/s, {p['latency_ms']} ms/product" for k, p in per_gpu.items())
        return Outcome(
            f"performance:{scenario.name}",
            True,
            f"{BATCH}x{scenario.input_size} @ {scenario.input_size}x{scenario.output_size} for {scenario.duration:g}s "
            f"per GPU: {parts}; total {total} GFLOP/s",
            figures,
        )

    def error_handling(self) -> list[Outcome]:
        run = {"gpu_overload": self._overload, "task_timeout": self._timeout}
        return [
            self._guarded(f"error_handling:{s.name}", lambda s=s: run[s.name](s))
            for s in self.suite.error_handling.scenarios
        ]

    def _overload(self, scenario: SelftestErrorScenario) -> Outcome:
        """More declared GPU memory than the pool has: each task must wait its turn or fail with a clear error."""
        baseline = {g.id: g for g in self.client.gpus()}
        pool_mb = sum(g.memory_total_mb for g in baseline.values())
        largest = max(g.memory_total_mb for g in baseline.values())
        tensors = dense_memory_mb(scenario.input_size, scenario.output_size, BATCH)
        # each task fits one GPU under the router's memory threshold, but all of them together exceed the pool
        fits = int(largest * self.config.routing().memory_threshold * 0.95)
        per_task = max(tensors, min(math.ceil(1.25 * pool_mb / scenario.concurrent_tasks), fits))
        futures = [self._submit(scenario, seed=i, memory_mb=per_task) for i in range(scenario.concurrent_tasks)]
        done, not_done = wait(futures, timeout=self._deadline(scenario.duration, scenario.concurrent_tasks))
        completed, clear, unclear, held = 0, Counter(), [], []
        for future in done:
            try:
                r = future.result(timeout=1)
                completed += 1
                held.append((r["gpu"], r["started"], r["ended"], r["memory_mb"]))
            except CLEAR_MEMORY_ERRORS as exc:
                clear[type(exc).__name__] += 1
            except Exception as exc:
                unclear.append(f"{type(exc).__name__}: {exc}")
        for future in not_done:
            future.cancel()
        self._free(baseline)
        peak = peak_memory(held)
        over = {gid: mb for gid, mb in peak.items() if mb > baseline[gid].memory_total_mb}
        figures = {
            "tasks": scenario.concurrent_tasks,
            "declared_mb_per_task": per_task,
            "declared_mb_total": per_task * scenario.concurrent_tasks,
            "pool_mb": pool_mb,
            "completed": completed,
            "clear_errors": dict(clear),
            "unclear_errors": unclear,
            "unfinished": len(not_done),
            "peak_declared_mb_per_gpu": peak,
        }
        if not_done:
            raise ScenarioFailed(f"{len(not_done)} tasks neither ran nor failed within the deadline ({figures})")
        if unclear:
            raise ScenarioFailed(f"{len(unclear)} tasks failed without a clear memory error, first: {unclear[0]}")
        if over:
            raise ScenarioFailed(f"GPU memory over-committed: declared MB held at once {over} ({figures})")
        refused = f", {sum(clear.values())} refused with a clear error {dict(clear)}" if clear else ""
        return Outcome(
            "error_handling:gpu_overload",
            True,
            f"{scenario.concurrent_tasks} tasks x {per_task} MB declared = {figures['declared_mb_total']} MB "
            f"{'>' if figures['declared_mb_total'] > pool_mb else '<='} the {pool_mb} MB pool: "
            f"{completed} completed, never more than a GPU's memory at once "
            f"(peak MB per GPU {peak}){refused}; GPUs given back",
            figures,
        )

    def _timeout(self, scenario: SelftestErrorScenario) -> Outcome:
        """A task longer than ``gpu.workload.timeout``: it must time out, stop, and give its GPU back."""
        timeout = self.config.gpu.workload.timeout
        baseline = {g.id: g for g in self.client.gpus()}
        gpu = self.gpus[0].id
        begin = time.perf_counter()
        future = self._submit(scenario, specific_gpu_id=gpu)
        try:
            future.result(timeout=timeout + SLACK_S)
        except GpuTaskTimeoutError as exc:
            timed_out_after = time.perf_counter() - begin
            message = str(exc)
        else:
            raise ScenarioFailed(
                f"the task ran its {scenario.duration:g}s without being timed out (gpu.workload.timeout={timeout:g}s)"
            ) from None
        self._free(baseline)
        freed_after = time.perf_counter() - begin
        figures = {
            "timeout_s": timeout,
            "duration_s": scenario.duration,
            "gpu": gpu,
            "timed_out_after_s": round(timed_out_after, 2),
            "gpu_free_after_s": round(freed_after, 2),
            "error": message,
        }
        return Outcome(
            "error_handling:task_timeout",
            True,
            f"a {scenario.duration:g}s task on GPU {gpu} timed out after {timed_out_after:.1f}s "
            f"(timeout {timeout:g}s); GPU free again after {freed_after:.1f}s",
            figures,
        )

    # -- the run -----------------------------------------------------------------------------------
    def _guarded(self, name: str, scenario: Callable[[], Outcome]) -> Outcome:
        self.progress(f"{name}: running")
        began = time.perf_counter()
        try:
            outcome = scenario()
        except ScenarioFailed as exc:
            outcome = Outcome(name, False, str(exc))
        except Exception as exc:  # a scenario that crashed is a failed scenario, reported with its error
            outcome = Outcome(name, False, f"{type(exc).__name__}: {exc}")
        self.progress(f"{name}: {'pass' if outcome.passed else 'FAIL'} in {time.perf_counter() - began:.1f}s")
        return outcome

    def _warm_up(self) -> Outcome:
        began = time.perf_counter()
        devices = self.client.run(_warm_up)
        warm = time.perf_counter() - began
        kinds = dict(Counter(devices.values()))
        return Outcome(
            "warm_up", True, f"torch loaded on every worker in {warm:.1f}s ({kinds})", {"seconds": round(warm, 2)}
        )

    def run(self) -> list[Outcome]:
        suite = self.suite
        outcomes = [self._guarded("warm_up", self._warm_up)]
        detected = self._guarded("detection", self.detection)
        if not suite.detection.enabled:  # the other scenarios still need the GPU list
            detected = Outcome("detection", None, "disabled (test.detection.enabled)")
        outcomes.append(detected)
        if not self.gpus:
            return outcomes
        for name in ("basic_functionality", "concurrent_processing"):
            if getattr(suite, name).enabled:
                outcomes.append(self._guarded(name, getattr(self, name)))
            else:
                outcomes.append(Outcome(name, None, f"disabled (test.{name}.enabled)"))
        for name in ("performance", "error_handling"):
            if getattr(suite, name).enabled:
                outcomes += getattr(self, name)()
            else:
                outcomes.append(Outcome(name, None, f"disabled (test.{name}.enabled)"))
        return outcomes


def peak_memory(held: Sequence[tuple[int, float, float, int]]) -> dict[int, int]:
    """GPU -> the most memory held at one moment, from ``(gpu, started, ended, memory_mb)`` intervals."""
    events = [(t, delta, gid) for gid, a, b, mb in held for t, delta in ((a, mb), (b, -mb))]
    now: Counter[int] = Counter()
    peak: dict[int, int] = {}
    for _, delta, gid in sorted(events):  # at a tie, the release (negative) comes before the take
        now[gid] += delta
        peak[gid] = max(peak.get(gid, 0), now[gid])
    return dict(sorted(peak.items()))


def passed(outcomes: Sequence[Outcome]) -> bool:
    return all(o.passed is not False for o in outcomes)


def report_table(outcomes: Sequence[Outcome], title: str) -> Table:
    table = Table(title=title)
    for column in ("Scenario", "Result", "Figures"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        result = {True: "[green]pass[/green]", False: "[red]FAIL[/red]", None: "skipped"}[o.passed]
        table.add_row(o.name, result, o.summary)
    return table


def gpu_detail_table(gpus: Sequence[GpuState]) -> Table:
    """Every field of every GPU, one column per GPU; fields NVML could not report read ``n/a``."""
    table = Table(title="Detected GPUs")
    table.add_column("Field")
    for g in gpus:
        table.add_column(f"GPU {g.id}", overflow="fold")
    for name in GpuState.__dataclass_fields__:
        if name != "unknown":
            table.add_row(name, *["n/a" if name in g.unknown else str(getattr(g, name)) for g in gpus])
    return table


def as_json(outcomes: Sequence[Outcome], gpus: Sequence[GpuState]) -> dict[str, Any]:
    return {
        "passed": passed(outcomes),
        "scenarios": [asdict(o) for o in outcomes],
        "gpus": [g.to_api() for g in gpus],
    }


def print_report(console: Console, outcomes: Sequence[Outcome], gpus: Sequence[GpuState], where: str) -> None:
    if gpus:
        console.print(gpu_detail_table(gpus))
    verdict = "PASSED" if passed(outcomes) else "FAILED"
    console.print(report_table(outcomes, f"altlas-dask selftest on {where}: {verdict}"))


@click.command("selftest")
@click.option(
    "--scheduler", type=SCHEDULER, default=None, help="Test the running cluster at this address (default: start one)."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="cluster.yaml whose test: section to run (default: the one given to altlas-dask).",
)
@click.option("--small", is_flag=True, help="The CPU-sized scenarios shipped with the package (seconds, not minutes).")
@click.option("--simulate", type=click.IntRange(1, 256), default=None, help="Start N virtual GPUs (no --scheduler).")
@click.option("--json", "as_json_output", is_flag=True, help="Print the report as JSON.")
@click.option("--json-file", type=click.Path(dir_okay=False), default=None, help="Also write the JSON report here.")
@click.option("--connect-timeout", type=float, default=30.0, show_default=True, help="Seconds to reach --scheduler.")
@click.pass_obj
def selftest_command(
    ctx: Any,
    scheduler: str | None,
    config_path: str | None,
    small: bool,
    simulate: int | None,
    as_json_output: bool,
    json_file: str | None,
    connect_timeout: float,
) -> None:
    """Run the acceptance scenarios (the config's test: section) against a cluster; exit 1 if one fails."""
    import json

    from altlas_dask.config import load_config

    if small and config_path:
        raise click.UsageError("give --small or --config, not both")
    config_path = str(SMALL_CONFIG) if small else config_path
    config = load_config(config_path, overrides=ctx.overrides) if config_path else ctx.config()
    cluster = None
    if scheduler is None:
        from altlas_dask.ops.launcher import start_cluster

        click.echo("selftest: starting a local cluster", err=True)
        cluster = start_cluster(config, simulate=simulate, scheduler_address="127.0.0.1:0", dashboard_address=":0")
        scheduler = cluster.scheduler_address
    try:
        with Client(scheduler, timeout=connect_timeout, gpu_defaults={"user": USER}) as client:
            test = Selftest(client, config, progress=lambda line: click.echo(f"selftest: {line}", err=True))
            outcomes = test.run()
    except OSError as exc:
        raise click.ClickException(f"cannot reach the scheduler at {scheduler}: {exc}") from None
    finally:
        if cluster is not None:
            cluster.close()
    report = json.dumps(as_json(outcomes, test.gpus), indent=2, default=str)
    if json_file:
        Path(json_file).write_text(report + "\n")
    if as_json_output:
        click.echo(report)
    else:
        console = Console(width=shutil.get_terminal_size((200, 24)).columns)
        print_report(console, outcomes, test.gpus, scheduler if cluster is None else "a fresh local cluster")
    if not passed(outcomes):
        sys.exit(1)

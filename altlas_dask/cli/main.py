"""``altlas-dask``: start the cluster, list GPUs (more commands join as they land)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from altlas_dask.cli.errors import CONNECT_TIMEOUT_S, SCHEDULER, UNREACHABLE_HINT, CliError, fail, unreachable
from altlas_dask.config import AltlasConfig, ConfigError, load_config
from altlas_dask.gpus.condition import condition
from altlas_dask.gpus.errors import GpuUnavailableError
from altlas_dask.gpus.state import GpuState

console = Console(width=shutil.get_terminal_size((160, 24)).columns)


def gpu_table(gpus: Sequence[GpuState], title: str) -> Table:
    table = Table(title=title)
    for column in (
        "GPU",
        "Name",
        "CC",
        "Memory used / total (MB)",
        "Util %",
        "Temp °C",
        "Power W",
        "Health",
        "Status",
        "Worker",
        "Reason",
    ):
        table.add_column(column)
    for g in gpus:
        state = condition(g)
        table.add_row(
            str(g.id),
            g.name,
            g.compute_capability,
            f"{g.memory_used_mb} / {g.memory_total_mb}",
            "n/a" if "utilization_gpu" in g.unknown else f"{g.utilization_gpu:.0f}",  # NVML: not supported
            "n/a" if "temperature_c" in g.unknown else f"{g.temperature_c:.0f}",
            "n/a" if "power_usage_w" in g.unknown else f"{g.power_usage_w:.0f} / {g.power_limit_w:.0f}",
            f"[{state.style}]{state.label}[/{state.style}]",
            g.status,
            g.worker or "-",
            state.reason or "-",
        )
    return table


class _Context:
    def __init__(self, config_path: str | None, overrides: tuple[str, ...], connect_timeout: float) -> None:
        self.config_path, self.overrides, self.connect_timeout = config_path, overrides, connect_timeout

    def config(self) -> AltlasConfig:
        return load_config(self.config_path, overrides=self.overrides)

    def command(self, *args: str) -> list[str]:
        """Another altlas-dask command line with the same config and overrides (to run as a child process)."""
        head = [sys.executable, "-m", "altlas_dask.cli.main"]
        if self.config_path:
            head += ["--config", self.config_path]
        for item in self.overrides:
            head += ["--set", item]
        return [*head, *args]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="altlas-dask", prog_name="altlas-dask")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="cluster.yaml to use (default: $ALTLAS_CONFIG, else the project's).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set gpu.multi_gpu.default_strategy=hybrid (repeatable).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=CONNECT_TIMEOUT_S,
    show_default=True,
    envvar="ALTLAS_CONNECT_TIMEOUT",
    help="Seconds a command waits to reach the scheduler before it says it cannot ($ALTLAS_CONNECT_TIMEOUT).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, overrides: tuple[str, ...], connect_timeout: float, verbose: bool
) -> None:
    """GPU-aware scheduling for AI inference and batch jobs, built on Dask."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = _Context(config_path, overrides, connect_timeout)


@cli.command()
@click.option("--simulate", type=click.IntRange(1, 256), default=None, help="Force N virtual GPUs.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: one object per GPU, the shape REST uses (docs/rest-api.md)."
)
@click.option(
    "--scheduler", type=SCHEDULER, default=None, help="Read live state from a running cluster at this address."
)
@click.pass_obj
def gpus(ctx: _Context, simulate: int | None, as_json: bool, scheduler: str | None) -> None:
    """Print the GPU table."""
    if scheduler:
        from distributed import Client

        from altlas_dask.client.live import live_gpus
        from altlas_dask.client.router_client import RouterClient
        from altlas_dask.errors import RouterError

        try:
            with Client(scheduler, timeout=ctx.connect_timeout, set_as_default=False) as client:
                try:  # the router's view: drains and reasons
                    states = [GpuState.from_dict(g) for g in client.sync(RouterClient(client).gpus)["gpus"]]
                except RouterError as exc:
                    if exc.code != 503:
                        raise click.ClickException(f"the router at {scheduler} refused: {exc}") from None
                    states = live_gpus(client)  # no router: what the workers report
                title = f"GPUs of {scheduler}"
        except (OSError, TimeoutError) as exc:
            raise unreachable(scheduler, exc) from None
    else:
        from altlas_dask.ops.launcher import detect_gpus

        states, simulated = detect_gpus(ctx.config(), simulate)
        title = "Simulated GPUs" if simulated else "GPUs (NVML)"
    if as_json:
        click.echo(json.dumps({"gpus": [s.to_api() for s in states]}, indent=2))
    else:
        console.print(gpu_table(states, title))


@cli.command()
@click.option("--simulate", type=click.IntRange(1, 256), default=None, help="Force N virtual GPUs.")
@click.option("--scheduler-address", default=None, help="host:port for the scheduler (default from config).")
@click.option("--dashboard-address", default=None, help="host:port for the dashboard (default from config).")
@click.option("--with-console", is_flag=True, help="Also serve the Streamlit console (altlas-dask console).")
@click.option("--console-port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--with-api", is_flag=True, help="Also serve the REST API (altlas-dask api).")
@click.option("--api-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--insecure", is_flag=True, help="Allow a non-loopback scheduler address with security.identity: none.")
@click.pass_obj
def up(
    ctx: _Context,
    simulate: int | None,
    scheduler_address: str | None,
    dashboard_address: str | None,
    with_console: bool,
    console_port: int,
    with_api: bool,
    api_port: int,
    insecure: bool,
) -> None:
    """Start the cluster (one worker per GPU) and keep it up until Ctrl-C; optionally the console and API."""
    from altlas_dask.ops import services
    from altlas_dask.ops.certs import identity_line
    from altlas_dask.ops.launcher import start_cluster

    config = ctx.config()
    identity = identity_line(config.security, scheduler_address or config.cluster.scheduler_address, insecure)
    for what, address in (
        ("scheduler", scheduler_address or config.cluster.scheduler_address),
        ("dashboard", dashboard_address or config.cluster.dashboard_address),
    ):
        if services.port_in_use(address):
            raise CliError(
                f"the {what} address {address} is in use (another `altlas-dask up`?): stop it, or pass "
                f"--{what}-address HOST:PORT (port 0 picks a free one)"
            )
    # A terminal's Ctrl-C goes to the whole process group. The worker processes inherit an ignored SIGINT
    # (Python then leaves it ignored), so only this process hears it and stops them in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cluster = start_cluster(
        config, simulate=simulate, scheduler_address=scheduler_address, dashboard_address=dashboard_address
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    running: list[services.Service] = []
    try:
        console.print(gpu_table(cluster.gpus, "Simulated GPUs" if cluster.simulated else "GPUs (NVML)"))
        click.echo(f"Scheduler: {cluster.scheduler_address}")
        click.echo(f"Identity:  {identity}")
        click.echo(f"Dashboard: {cluster.dashboard_link}")
        click.echo(f"GPU page:  {cluster.dashboard_link.replace('/status', '/altlas-gpus')}")
        click.echo(f"Metrics:   {cluster.dashboard_link.replace('/status', '/metrics')}")
        click.echo(f"State:     {config.home}")
        sys.stdout.flush()
        wanted = _services(ctx, config.home, cluster.scheduler_address, with_console, console_port, with_api, api_port)
        running = services.wait_ready(wanted, _announce, stop.is_set)
        click.echo("Press Ctrl-C to stop.", err=True)
        while not stop.wait(0.5):
            for service in [s for s in running if s.process.poll() is not None]:
                click.echo(f"error: the {service.name} stopped: {service.failure()}; the cluster stays up", err=True)
                running.remove(service)
    finally:
        click.echo("Stopping cluster...", err=True)
        for service in running:
            service.process.terminate()  # they let go of the cluster first
        for service in running:
            service.stop(timeout=1.0)
        _close_quietly(cluster)


def _services(
    ctx: _Context, home: str, scheduler: str, with_console: bool, console_port: int, with_api: bool, api_port: int
) -> list[Any]:
    """Start the asked-for console and API (their output goes to HOME/logs/); a busy port is reported, not fatal."""
    from altlas_dask.ops import services
    wanted = []
    if with_console:
        url = f"http://127.0.0.1:{console_port}"
        wanted.append(("console", console_port, url, f"{url}/_stcore/health", ("console", "--port")))
    if with_api:
        url = f"http://127.0.0.1:{api_port}"
        wanted.append(("REST API", api_port, f"{url}/api/v1", f"{url}/api/v1/health", ("api", "--port")))
    started = []
    for name, port, url, health, (command, flag) in wanted:
        if services.port_in_use(f"127.0.0.1:{port}"):
            option = "--console-port" if command == "console" else "--api-port"
            _announce_failure(name, f"port {port} is in use; pass {option} PORT")
            continue
        args = ctx.command(command, "--scheduler", scheduler, flag, str(port))
        started.append(services.start(name, args, url, health, Path(home) / "logs" / f"{command}.log"))
    return started


def _announce(service: Any, failure: str | None) -> None:
    if failure is not None:
        _announce_failure(service.name, f"{failure} (log: {service.log})")
    elif service.name == "console":
        click.echo(f"Console:   {service.url}")
    else:
        click.echo(
            f"REST API:  {service.url} (docs: {service.url.removesuffix('/api/v1')}/docs; create a key with "
            "`altlas-dask keys create --user admin --admin`)"
        )
    sys.stdout.flush()


def _announce_failure(name: str, why: str) -> None:
    click.echo(f"error: the {name} did not start: {why}; the cluster stays up", err=True)


def _close_quietly(cluster: Any, timeout: float = 2.5) -> None:
    """Close the cluster within ``timeout`` seconds, without shutdown noise.

    Workers slow to exit (torch loaded, a busy machine) are killed once the router's accounting is on disk,
    and the process ends there (Dask's own exit hook would wait for them again, with no limit).
    """
    import psutil

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        cluster.cluster.close(timeout=timeout)
        return
    except Exception:
        pass
    for child in psutil.Process().children(recursive=True):  # before the scheduler goes: they would log that
        with contextlib.suppress(psutil.Error):
            child.kill()
    for plugin in getattr(getattr(cluster.cluster, "scheduler", None), "plugins", {}).values():
        if hasattr(getattr(plugin, "store", None), "flush"):
            plugin.store.flush(timeout=2.0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


from altlas_dask.api.cli import api, keys  # noqa: E402  (the REST API's commands)

cli.add_command(api)
cli.add_command(keys)

from altlas_dask.cli.console import console as console_command  # noqa: E402  (the web console)
from altlas_dask.cli.submit import submit  # noqa: E402  (submit a named workload)

cli.add_command(console_command)
cli.add_command(submit)

from altlas_dask.ops.selftest import selftest_command  # noqa: E402  (seed 003's test suite)

cli.add_command(selftest_command)

from altlas_dask.cli.k8s import k8s  # noqa: E402  (Kubernetes manifests for the Dask operator)

cli.add_command(k8s)

from altlas_dask.ops.certs import certs  # noqa: E402  (the CA for mutual TLS)

cli.add_command(certs)

from altlas_dask.cli.replay import replay_command  # noqa: E402  (trace replay in virtual time)

cli.add_command(replay_command)

from altlas_dask.cli.report import report_command  # noqa: E402  (usage reports, like sreport)

cli.add_command(report_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: user errors print one clear line (and a JSON object under --json), exit 2."""
    try:
        cli.main(args=argv, prog_name="altlas-dask", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.Exit as exc:  # --version, --help
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # every user-facing error is exit 2 (cli_errors: the convention)
        fail(exc.format_message(), 2, argv)
    except (ConfigError, GpuUnavailableError, ValueError) as exc:
        fail(str(exc), 2, argv)
    except (OSError, TimeoutError) as exc:  # a scheduler lost mid-command (CommClosedError is an OSError)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fail(f"lost contact with the scheduler ({detail}); {UNREACHABLE_HINT}", 2, argv)


if __name__ == "__main__":
    main()

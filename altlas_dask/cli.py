"""``altlas-dask``: start the cluster, list GPUs (more commands join as they land)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

import click
from rich.console import Console
from rich.table import Table

from altlas_dask.config import AltlasConfig, ConfigError, load_config
from altlas_dask.gpus.errors import GpuUnavailableError
from altlas_dask.gpus.state import GpuState

console = Console(width=shutil.get_terminal_size((160, 24)).columns)
HEALTH_STYLE = {"healthy": "green", "warning": "yellow", "critical": "red"}


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
    ):
        table.add_column(column)
    for g in gpus:
        style = HEALTH_STYLE.get(g.health_status, "")
        table.add_row(
            str(g.id),
            g.name,
            g.compute_capability,
            f"{g.memory_used_mb} / {g.memory_total_mb}",
            "n/a" if "utilization_gpu" in g.unknown else f"{g.utilization_gpu:.0f}",  # NVML: not supported
            "n/a" if "temperature_c" in g.unknown else f"{g.temperature_c:.0f}",
            "n/a" if "power_usage_w" in g.unknown else f"{g.power_usage_w:.0f} / {g.power_limit_w:.0f}",
            f"[{style}]{g.health_status}[/{style}]",
            g.status,
            g.worker or "-",
        )
    return table


class _Context:
    def __init__(self, config_path: str | None, overrides: tuple[str, ...]) -> None:
        self.config_path, self.overrides = config_path, overrides

    def config(self) -> AltlasConfig:
        return load_config(self.config_path, overrides=self.overrides)

    def spawn(self, *args: str) -> subprocess.Popen:
        """Run another altlas-dask command as a child process with the same config and overrides."""
        head = [sys.executable, "-m", "altlas_dask.cli"]
        if self.config_path:
            head += ["--config", self.config_path]
        for item in self.overrides:
            head += ["--set", item]
        return subprocess.Popen([*head, *args])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, overrides: tuple[str, ...], verbose: bool) -> None:
    """GPU-aware scheduling for AI inference and batch jobs, built on Dask."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = _Context(config_path, overrides)


@cli.command()
@click.option("--simulate", type=click.IntRange(1, 256), default=None, help="Force N virtual GPUs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (seed 001 section 6.3.3 shape).")
@click.option("--scheduler", default=None, help="Read live state from a running cluster at this address.")
@click.pass_obj
def gpus(ctx: _Context, simulate: int | None, as_json: bool, scheduler: str | None) -> None:
    """Print the GPU table."""
    if scheduler:
        from distributed import Client

        from altlas_dask.live import live_gpus

        with Client(scheduler, timeout=10) as client:
            states, title = live_gpus(client), f"GPUs of {scheduler}"
    else:
        from altlas_dask.launcher import detect_gpus

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
) -> None:
    """Start the cluster (one worker per GPU) and keep it up until Ctrl-C; optionally the console and API."""
    from altlas_dask.launcher import start_cluster

    config = ctx.config()
    cluster = start_cluster(
        config, simulate=simulate, scheduler_address=scheduler_address, dashboard_address=dashboard_address
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    services: dict[str, subprocess.Popen] = {}
    try:
        console.print(gpu_table(cluster.gpus, "Simulated GPUs" if cluster.simulated else "GPUs (NVML)"))
        click.echo(f"Scheduler: {cluster.scheduler_address}")
        click.echo(f"Dashboard: {cluster.dashboard_link}")
        click.echo(f"GPU page:  {cluster.dashboard_link.replace('/status', '/altlas-gpus')}")
        click.echo(f"Metrics:   {cluster.dashboard_link.replace('/status', '/metrics')}")
        if with_console:
            address = cluster.scheduler_address
            services["console"] = ctx.spawn("console", "--scheduler", address, "--port", str(console_port))
            click.echo(f"Console:   http://127.0.0.1:{console_port}")
        if with_api:
            services["api"] = ctx.spawn("api", "--scheduler", cluster.scheduler_address, "--port", str(api_port))
            click.echo(
                f"REST API:  http://127.0.0.1:{api_port}/api/v1 (docs: /docs; create a key with "
                "`altlas-dask keys create --user admin --admin`)"
            )
        click.echo("Press Ctrl-C to stop.", err=True)
        sys.stdout.flush()
        while not stop.wait(1.0):
            for name, service in services.items():
                if service.poll() is not None:
                    click.echo(f"error: the {name} exited with code {service.returncode}; stopping", err=True)
                    stop.set()
    finally:
        click.echo("Stopping cluster...", err=True)
        for service in services.values():
            service.terminate()
        for service in services.values():
            try:
                service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                service.kill()
        cluster.close()


from altlas_dask.api.cli import api, keys  # noqa: E402  (the REST API's commands)

cli.add_command(api)
cli.add_command(keys)

from altlas_dask.console_cli import console as console_command  # noqa: E402  (the web console)
from altlas_dask.submit_cli import submit  # noqa: E402  (submit a named workload)

cli.add_command(console_command)
cli.add_command(submit)

from altlas_dask.selftest import selftest_command  # noqa: E402  (seed 003's test suite)

cli.add_command(selftest_command)

from altlas_dask.k8s_cli import k8s  # noqa: E402  (Kubernetes manifests for the Dask operator)

cli.add_command(k8s)

from altlas_dask.certs import certs  # noqa: E402  (the CA for mutual TLS)

cli.add_command(certs)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: configuration and GPU errors print one clear line, exit 2."""
    try:
        cli.main(args=argv, prog_name="altlas-dask", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ConfigError, GpuUnavailableError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""``altlas-dask console``: serve the Streamlit console (altlas_dask/console/app.py) for a running cluster."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from altlas_dask.cli.errors import SCHEDULER
from altlas_dask.cli.submit import scheduler_address
from altlas_dask.console import APP


def streamlit_command(port: int, host: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless",
        "true",
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",
        *extra,
    ]


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--scheduler", type=SCHEDULER, default=None, help="Scheduler address (default: $ALTLAS_SCHEDULER, else the config)."
)
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="Port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.argument("streamlit_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def console(obj: Any, scheduler: str | None, port: int, host: str, streamlit_args: tuple[str, ...]) -> None:
    """Open the web console (GPUs, Submit, Tasks, Reports) on http://HOST:PORT; extra args go to streamlit.

    Each browser session signs in with an API key (``altlas-dask keys create``) and acts as the key's user."""
    env = {**os.environ, "ALTLAS_SCHEDULER": scheduler_address(obj, scheduler)}
    if getattr(obj, "config_path", None):  # the console checks API keys in this config's key store
        env["ALTLAS_CONFIG"] = os.path.abspath(obj.config_path)
    if getattr(obj, "connect_timeout", None):  # the group's --connect-timeout, for each page's connection
        env["ALTLAS_CONNECT_TIMEOUT"] = f"{obj.connect_timeout:g}"
    click.echo(f"altlas-dask console for {env['ALTLAS_SCHEDULER']} on http://{host}:{port}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    command = streamlit_command(port, host, streamlit_args)
    os.execve(command[0], command, env)  # streamlit takes over this process (signals go straight to it)

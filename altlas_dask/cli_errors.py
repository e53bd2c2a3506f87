"""How the ``altlas-dask`` commands fail: one line on stderr (and a JSON object on stdout under ``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

UNREACHABLE_HINT = "is the cluster up (`altlas-dask up`) and the address right (--scheduler HOST:PORT)?"


class CliError(click.ClickException):
    """A user-facing problem (bad address, unreachable scheduler, busy port): one line, exit code 2."""

    exit_code = 2


def unreachable(address: str, exc: BaseException) -> CliError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CliError(f"cannot reach the scheduler at {address} ({detail}); {UNREACHABLE_HINT}")


def fail(message: str, code: int, argv: Sequence[str] | None) -> None:
    """Print ``error: message`` (plus ``{"error": message}`` on stdout under --json) and exit ``code``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if "--json" in args:
        click.echo(json.dumps({"error": message, "exit_code": code}))
    click.echo(f"error: {message}", err=True)
    sys.exit(code)

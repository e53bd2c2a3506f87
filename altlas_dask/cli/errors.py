"""How the ``altlas-dask`` commands fail: one line on stderr (and a JSON object on stdout under ``--json``).

Exit codes, the same for every command (docs/cli.md): 0 done; 1 the command ran but some of the work it ran
failed (``submit``'s failed tasks, a ``selftest`` scenario); 2 nothing was done: bad input (an option, a
value, the config) or an unusable environment (the scheduler unreachable, a port in use); 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

#: seconds a command waits to reach the scheduler (``--connect-timeout`` / ``$ALTLAS_CONNECT_TIMEOUT``)
CONNECT_TIMEOUT_S = 5.0
UNREACHABLE_HINT = "is the cluster up (`altlas-dask up`) and the address right (--scheduler HOST:PORT)?"


class CliError(click.ClickException):
    """A user-facing problem (bad address, unreachable scheduler, busy port): one line, exit code 2."""

    exit_code = 2


def check_scheduler_address(address: str, where: str = "--scheduler") -> str:
    """``address`` when it reads as ``[SCHEME://]HOST:PORT`` with a scheme Dask knows; else a one-line
    :class:`CliError` at once (a connection attempt would wait for its timeout first)."""
    from distributed.comm import get_address_host_port, parse_address
    from distributed.comm.registry import get_backend

    try:
        scheme, _ = parse_address(address)
        get_backend(scheme)
        if scheme != "inproc":
            get_address_host_port(address)
    except (ValueError, TypeError, NotImplementedError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CliError(
            f"{where}: {address!r} is not a scheduler address ({detail}); give HOST:PORT or tcp://HOST:PORT, "
            "as `altlas-dask up` prints after 'Scheduler:'"
        ) from None
    return address


class SchedulerAddress(click.ParamType):
    """A ``--scheduler`` value, checked as it is parsed (:func:`check_scheduler_address`)."""

    name = "ADDRESS"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return check_scheduler_address(value, f"--{param.name}" if param is not None and param.name else "--scheduler")


SCHEDULER = SchedulerAddress()


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

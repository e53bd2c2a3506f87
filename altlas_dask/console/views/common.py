"""What every console page shares: the cached client, clear error messages, small formatting helpers."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from altlas_dask.cli.errors import CONNECT_TIMEOUT_S  # the CLI's --connect-timeout default, one definition
from altlas_dask.client.gpu_client import Client
from altlas_dask.config import load_config
from altlas_dask.console import auth
from altlas_dask.errors import RouterError
from altlas_dask.ops.certs import dask_security
from altlas_dask.options import GpuOptionsError

DEFAULT_SCHEDULER = "127.0.0.1:8786"
RETRY_S = 3.0  # while the scheduler is away, a page looks for it this often and reloads itself once it is back


class ConsoleError(Exception):
    """A problem the page explains in one sentence (no traceback)."""


def connect_timeout() -> float:
    """Seconds a page waits to reach the scheduler: $ALTLAS_CONNECT_TIMEOUT (set by ``altlas-dask
    --connect-timeout``), else :data:`CONNECT_TIMEOUT_S`."""
    raw = os.environ.get("ALTLAS_CONNECT_TIMEOUT")
    if raw is None:
        return CONNECT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConsoleError(f"$ALTLAS_CONNECT_TIMEOUT: {raw!r} is not a number of seconds above 0")
    return seconds


class SchedulerUnavailable(ConsoleError):
    """The scheduler does not answer: the page says so in one line and comes back by itself when it does."""


def unavailable(address: str, exc: BaseException | None = None) -> SchedulerUnavailable:
    why = f" ({type(exc).__name__})" if exc is not None else ""
    return SchedulerUnavailable(
        f"Cannot reach the scheduler at {address}{why}. Is the cluster up (`altlas-dask up`) and the address "
        f"right? This page retries every {RETRY_S:g} s and comes back by itself."
    )


def scheduler_address() -> str:
    """The scheduler address in the sidebar."""
    return (st.session_state.get("scheduler") or "").strip()


def scheduler_listening(address: str, timeout: float = 1.0) -> bool:
    """Whether something accepts connections at the scheduler's address (a cheap probe, no Dask handshake)."""
    from distributed.comm import get_address_host_port

    try:
        host, port = get_address_host_port(address)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def default_scheduler() -> str:
    return os.environ.get("ALTLAS_SCHEDULER") or DEFAULT_SCHEDULER


class Connection:
    """Holds a client: st.cache_resource refuses awaitable values, and a distributed.Client is awaitable."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def alive(self) -> bool:
        return self.client.status == "running"

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a client whose scheduler is gone may fail; nothing to do
            self.client.close(timeout=2)


@st.cache_resource(
    show_spinner="Connecting to the scheduler...",
    validate=Connection.alive,
    on_release=Connection.close,
    max_entries=32,
)
def _connection(address: str, user: str, admin: bool) -> Connection:
    # One client per (scheduler, user, role), shared by the sessions that use it; futures live in each
    # session's st.session_state. set_as_default=False: several clients can live in this one process.
    # With security.identity: tls the client uses the console's service certificate (a delegate).
    security = dask_security(load_config().security, "client")
    client = Client(
        address, gpu_defaults={"user": user}, timeout=connect_timeout(), set_as_default=False, security=security
    )
    client.vouch_admin = admin  # the console checked the admin key; the router trusts it as a delegate
    return Connection(client)


def client() -> Client:
    """The client for the scheduler in the sidebar, acting as the signed-in key's user; a clear ConsoleError if
    nobody signed in or the scheduler is unreachable."""
    address = scheduler_address()
    who = auth.principal()
    if not address:
        raise ConsoleError("Enter the scheduler address in the sidebar (e.g. tcp://127.0.0.1:8786).")
    if who is None:
        raise ConsoleError("Sign in: enter your API key in the sidebar (`altlas-dask keys create --user NAME`).")
    user = who.user
    try:
        return _connection(address, user, who.is_admin).client
    except GpuOptionsError as exc:
        raise ConsoleError(f"Invalid user {user!r}: {exc}") from None
    except (OSError, TimeoutError) as exc:
        raise unavailable(address, exc) from None
    except (ValueError, TypeError) as exc:
        raise ConsoleError(f"Invalid scheduler address {address!r}: {exc}") from None


def describe(exc: BaseException) -> str:
    """One clear line for an error a page hit."""
    if isinstance(exc, ConsoleError):
        return str(exc)
    if isinstance(exc, RouterError):
        return f"The router refused the request ({exc.code}): {exc}"
    if isinstance(exc, GpuOptionsError):
        return f"Invalid GPU options: {exc}"
    if isinstance(exc, ValueError | KeyError):
        return f"Invalid input: {exc}"
    if isinstance(exc, OSError | TimeoutError):  # CommClosedError is an OSError
        return str(unavailable(scheduler_address(), exc))
    return f"Unexpected error ({type(exc).__name__}): {exc}"


def _lost(exc: BaseException) -> bool:
    return isinstance(exc, SchedulerUnavailable | OSError | TimeoutError)


def guarded(render: Callable[..., None]) -> Callable[..., None]:
    """Run a fragment (or a page body, see :func:`page`) and show any error as st.error, never a traceback."""

    @functools.wraps(render)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            render(*args, **kwargs)
        except Exception as exc:  # st.rerun/st.stop are BaseExceptions and pass through
            st.error(describe(exc), icon=":material/error:")

    return run


def page(render: Callable[[], None]) -> Callable[[], None]:
    """A page body, guarded; when the scheduler is away it says so in one line and reloads itself once the
    scheduler listens again (no click, no console restart: the next run connects a fresh client)."""

    @functools.wraps(render)
    def run() -> None:
        try:
            render()
        except Exception as exc:
            st.error(describe(exc), icon=":material/error:")
            if _lost(exc) and scheduler_address():
                _await_scheduler(scheduler_address())

    return run


@st.fragment(run_every=RETRY_S)
def _await_scheduler(address: str) -> None:
    """Reload the page when the scheduler is seen listening again after it was seen away (a page that fails
    for another reason while the scheduler listens is not reloaded in a loop)."""
    if not scheduler_listening(address):
        st.session_state["scheduler_away"] = address
    elif st.session_state.get("scheduler_away") == address:
        del st.session_state["scheduler_away"]
        st.rerun()  # the whole page, which connects again


def when(ts: float | None) -> str:
    """A UNIX time as ``HH:MM:SS`` UTC."""
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"

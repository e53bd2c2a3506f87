"""What every console page shares: the cached client, clear error messages, small formatting helpers."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from altlas_dask.certs import dask_security
from altlas_dask.client import Client, RouterError
from altlas_dask.config import load_config
from altlas_dask.console import auth
from altlas_dask.options import GpuOptionsError

DEFAULT_SCHEDULER = "127.0.0.1:8786"
CONNECT_TIMEOUT_S = 5


class ConsoleError(Exception):
    """A problem the page explains in one sentence (no traceback)."""


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
        address, gpu_defaults={"user": user}, timeout=CONNECT_TIMEOUT_S, set_as_default=False, security=security
    )
    client.vouch_admin = admin  # the console checked the admin key; the router trusts it as a delegate
    return Connection(client)


def client() -> Client:
    """The client for the scheduler in the sidebar, acting as the signed-in key's user; a clear ConsoleError if
    nobody signed in or the scheduler is unreachable."""
    address = (st.session_state.get("scheduler") or "").strip()
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
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ConsoleError(
            f"Cannot reach the scheduler at {address}: {exc}. Is the cluster up (`altlas-dask up`) "
            "and the address right?"
        ) from None


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
    if isinstance(exc, OSError | TimeoutError):
        return f"Lost contact with the scheduler: {exc}"
    return f"Unexpected error ({type(exc).__name__}): {exc}"


def guarded(render: Callable[..., None]) -> Callable[..., None]:
    """Run a page body (or a fragment) and show any error as st.error, never a traceback."""

    @functools.wraps(render)
    def page(*args: Any, **kwargs: Any) -> None:
        try:
            render(*args, **kwargs)
        except Exception as exc:  # st.rerun/st.stop are BaseExceptions and pass through
            st.error(describe(exc), icon=":material/error:")

    return page


def when(ts: float | None) -> str:
    """A UNIX time as ``HH:MM:SS`` UTC."""
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"

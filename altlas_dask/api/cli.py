"""``altlas-dask api`` (serve the REST API) and ``altlas-dask keys`` (create, list, revoke API keys).

Registered on the main ``altlas-dask`` group; ``--config``/``--set`` of that group apply (the key
database is ``accounting.database``, in the state directory: ``home`` / ``$ALTLAS_HOME``).
Heavy imports (FastAPI, uvicorn) happen only when a command runs.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from datetime import UTC, datetime
from typing import Any

import click

from altlas_dask.cli.errors import SCHEDULER, CliError

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--scheduler", type=SCHEDULER, default=None, help="Scheduler address (default: cluster.scheduler_address)."
)
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS certificate.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None, help="TLS private key.")
@click.option(
    "--start-cluster",
    is_flag=True,
    help="Also start the GPU cluster in this process (like `altlas-dask up`), then serve the API on it.",
)
@click.option("--simulate", type=click.IntRange(1, 256), default=None, help="With --start-cluster: N virtual GPUs.")
@click.option("--max-tasks", type=click.IntRange(1), default=10_000, show_default=True, help="Finished tasks kept.")
@click.option(
    "--placement-wait",
    type=click.FloatRange(0, 60),
    default=1.0,
    show_default=True,
    help="Seconds a submission waits to learn its GPU before answering 'queued'.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Seconds to reach the cluster.",
)
@click.option("--no-warm-up", is_flag=True, help="Do not load the model on every worker at start-up.")
@click.option("--access-log", is_flag=True, help="Log every request (costs throughput).")
@click.pass_obj
def api(
    ctx: Any,
    host: str,
    port: int,
    scheduler: str | None,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    start_cluster: bool,
    simulate: int | None,
    max_tasks: int,
    placement_wait: float,
    connect_timeout: float,
    no_warm_up: bool,
    access_log: bool,
) -> None:
    """Serve the REST API (/api/v1, docs at /docs) for the cluster at --scheduler."""
    import uvicorn

    from altlas_dask.accounting.api_keys import KeyStore
    from altlas_dask.api.app import create_app
    from altlas_dask.api.settings import ApiSettings

    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise click.UsageError("--ssl-certfile and --ssl-keyfile go together")
    config = ctx.config()
    KeyStore.of(config)  # fail now, clearly, if the key database cannot be used
    if not _is_loopback(host) and not ssl_certfile:
        click.echo(
            f"warning: serving plain HTTP on {host}: API keys cross the network in clear; use --ssl-certfile/"
            "--ssl-keyfile or a TLS-terminating proxy",
            err=True,
        )
    cluster = None
    if start_cluster:
        from altlas_dask.ops.launcher import start_cluster as start

        cluster = start(config, simulate=simulate)
        scheduler = cluster.scheduler_address
        click.echo(f"Cluster: scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}", err=True)
    settings = ApiSettings(
        max_tasks=max_tasks, placement_wait=placement_wait, warm_up=not no_warm_up, connect_timeout=connect_timeout
    )
    address = scheduler or config.cluster.scheduler_address
    if cluster is None:
        _check_scheduler(address, settings.connect_timeout, config)
    app = create_app(address, config, settings)
    scheme = "https" if ssl_certfile else "http"
    click.echo(f"REST API: {scheme}://{host}:{port}/api/v1  (docs: {scheme}://{host}:{port}/docs)", err=True)
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            log_level="info" if logging.getLogger().level <= logging.INFO else "warning",
            access_log=access_log,
            timeout_graceful_shutdown=5,
        )
    finally:
        if cluster is not None:
            cluster.close()


def _check_scheduler(address: str, timeout: float, config: Any) -> None:
    """Fail with one clear line (not a traceback from the app's start-up) when the cluster is not there, or when
    this gateway's certificate (security.identity: tls) is not a delegate the router lets act for users."""
    from distributed import Client

    from altlas_dask.client.router_client import RouterClient
    from altlas_dask.errors import RouterError
    from altlas_dask.ops.certs import common_name, dask_security

    security = dask_security(config.security, "client")
    if security is not None and (name := common_name(security.tls_client_cert)) not in config.security.delegates:
        raise click.ClickException(
            f"the gateway's certificate security.client_cert names {name!r}, which is not in security.delegates "
            f"{list(config.security.delegates)}: the router would refuse its requests for users; issue it with "
            "`altlas-dask certs issue DIR --service gateway`"
        )
    try:
        with Client(address, timeout=timeout, set_as_default=False, security=security) as probe:
            probe.sync(RouterClient(probe).policy)
    except RouterError as exc:
        raise click.ClickException(
            f"the scheduler at {address} has no GPU router: start the cluster with `altlas-dask up` or `dask "
            "scheduler --preload scheduler_plugins.gpu_router`"
            if exc.code == 503
            else f"the router at {address} refused the gateway: {exc}"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise CliError(
            f"cannot reach the scheduler at {address} ({exc}); start the cluster first (`altlas-dask up`), pass "
            "--scheduler, or use --start-cluster"
        ) from None


# -- keys ----------------------------------------------------------------------------------------------


def _store(ctx: Any, database: str | None):
    from altlas_dask.accounting.api_keys import KeyStore, KeyStoreError

    config = ctx.config()
    if database is None:
        click.echo(f"state directory: {config.home}", err=True)
    try:
        return KeyStore(database) if database else KeyStore.of(config)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def keys() -> None:
    """Create, list and revoke REST API keys (stored hashed in their own SQLite file, accounting.api_keys)."""


@keys.command("create")
@click.option("--user", required=True, help="The user the key acts as.")
@click.option("--admin", is_flag=True, help="An admin key (admin endpoints; sees every user's work).")
@click.option("--note", default="", help="A note stored with the key.")
@click.option("--database", default=None, help="SQLite file (default: accounting.api_keys).")
@click.pass_obj
def create_key(ctx: Any, user: str, admin: bool, note: str, database: str | None) -> None:
    """Print a new key on stdout (only time it is shown): KEY=$(altlas-dask keys create --user ana)."""
    from altlas_dask.accounting.api_keys import KeyStoreError

    store = _store(ctx, database)
    try:
        key_id, key = store.create(user, "admin" if admin else "user", note)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    role = "admin" if admin else "user"
    click.echo(f"created {role} key {key_id} for user {user!r} in {store.path}; it is shown only once", err=True)
    click.echo(key)


@keys.command("list")
@click.option("--database", default=None, help="SQLite file (default: accounting.api_keys).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_keys(ctx: Any, database: str | None, as_json: bool) -> None:
    """List keys (ids, users, roles; never the keys themselves)."""
    rows = _store(ctx, database).list()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return

    def when(ts: float | None) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"

    click.echo(f"{'KEY ID':<14} {'USER':<24} {'ROLE':<6} {'CREATED':<21} {'REVOKED':<21} NOTE")
    for r in rows:
        click.echo(
            f"{r['key_id']:<14} {r['user']:<24} {r['role']:<6} {when(r['created']):<21} "
            f"{when(r['revoked']):<21} {r['note'] or ''}"
        )


@keys.command("revoke")
@click.argument("key_id")
@click.option("--database", default=None, help="SQLite file (default: accounting.api_keys).")
@click.pass_obj
def revoke_key(ctx: Any, key_id: str, database: str | None) -> None:
    """Revoke a key by its id (gateways stop accepting it within their cache time, 10 s)."""
    if not _store(ctx, database).revoke(key_id):
        raise click.ClickException(f"no active key {key_id!r}")
    click.echo(f"revoked {key_id}", err=True)

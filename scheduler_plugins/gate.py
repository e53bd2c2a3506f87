"""The protocol gate of a scheduler or a worker under ``security.identity: tls``: each incoming comm's verified
certificate gets a level (:mod:`scheduler_plugins.handler_policy`), and every message it sends is admitted
or refused before Dask's handler sees it. The scheduler's gate also checks whose keys a call touches."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from scheduler_plugins import dask_internals as dx
from scheduler_plugins.handler_policy import (
    NANNY_RULES,
    SCHEDULER_RULES,
    USER_TOPICS,
    WORKER_RULES,
    Check,
    Connection,
    Rules,
    refusal_for_keys,
)
from scheduler_plugins.identity import Identities, Identity, of_comm

ROUTER_RPC_REASON = "router RPC: it checks its caller itself (scheduler_plugins/router_api.py)"


def install_scheduler_gate(
    scheduler: Any, identities: Identities, is_admin: Callable[[str], bool], router_handlers: Iterable[str]
) -> None:
    """Gate every comm the scheduler accepts (tls mode only); the router's own RPCs are user-level."""
    if not identities.required:
        return
    rules = SCHEDULER_RULES.with_rpc({name: ("user", ROUTER_RPC_REASON) for name in router_handlers})
    checks = scheduler_checks(scheduler, identities)

    def owner(client_id: str) -> Identity | None:
        return identities.client(scheduler, client_id)

    def open_connection(comm: Any) -> Connection:
        identity = of_comm(comm)
        return Connection(rules, identity, identities.level(identity, is_admin), checks, owner)

    dx.gate_comms(scheduler, open_connection)


def install_worker_gate(worker: Any, rules: Rules = WORKER_RULES) -> None:
    """Gate every comm a worker (or a nanny) accepts: only the cluster's nodes talk to them; users go through
    the scheduler."""
    dx.gate_comms(worker, lambda comm: _node_side_connection(rules, of_comm(comm)))


def dask_setup(nanny: Any) -> None:
    """``dask worker --preload-nanny scheduler_plugins.gate``: the nanny's gate (the launcher adds it in tls mode)."""
    install_worker_gate(nanny, NANNY_RULES)


def _node_side_connection(rules: Rules, identity: Identity | None) -> Connection:
    level = "node" if identity is not None and identity.kind == "node" else "user" if identity else None
    return Connection(rules, identity, level, {}, lambda _: None)


def scheduler_checks(scheduler: Any, identities: Identities) -> dict[str, Check]:
    """The argument checks of user-level scheduler messages (admins and nodes skip them)."""

    def owner(client_id: str) -> Identity | None:
        return identities.client(scheduler, client_id)

    def not_mine(conn: Connection) -> Callable[[Collection[Any]], list[Any]]:
        """Keys that exist and that no client of this identity wants (reading them reads another's data)."""

        def find(keys: Collection[Any]) -> list[Any]:
            out = []
            for key in keys:
                wanting = dx.wanted_by(scheduler, key)
                if wanting is not None and not any(owner(c) == conn.identity for c in wanting):
                    out.append(key)
            return out

        return find

    def foreign(conn: Connection) -> Callable[[Collection[Any]], list[Any]]:
        """Keys another identity's client wants, directly or through a task that needs it (writing replaces
        their data)."""

        def find(keys: Collection[Any]) -> list[Any]:
            return [k for k in keys if any(owner(c) != conn.identity for c in dx.wanted_by(scheduler, k, True) or ())]

        return find

    def reading(what: str, field: str) -> Check:
        def check(conn: Connection, msg: dict[str, Any]) -> str | None:
            if conn.level != "user":
                return None
            return refusal_for_keys(what, _keys(msg.get(field)), not_mine(conn))

        return check

    def writing(what: str, field: str) -> Check:
        def check(conn: Connection, msg: dict[str, Any]) -> str | None:
            if conn.level != "user":
                return None
            return refusal_for_keys(what, _keys(msg.get(field)) or (), foreign(conn))

        return check

    def desires(conn: Connection, msg: dict[str, Any]) -> str | None:
        if conn.level != "user":
            return None
        return refusal_for_keys("client-desires-keys", _keys(msg.get("keys")) or (), not_mine(conn))

    def report_key(conn: Connection, msg: dict[str, Any]) -> str | None:
        if conn.level != "user":
            return None
        return refusal_for_keys("report-key", [msg.get("key")], not_mine(conn))

    def subscribe(conn: Connection, msg: dict[str, Any]) -> str | None:
        topic = msg.get("topic")
        if conn.level == "user" and topic not in USER_TOPICS:
            return f"subscribe-topic {topic!r}: users subscribe only to {sorted(USER_TOPICS)} (others: admins)"
        return None

    def register(conn: Connection, msg: dict[str, Any]) -> str | None:
        client_id = msg.get("client")
        if not isinstance(client_id, str):
            return f"register-client: client id {client_id!r} is not a string"
        holder = identities.clients.get(client_id)
        if holder is not None and holder != conn.identity:
            return f"register-client: client id {client_id!r} belongs to another connection's certificate"
        identities.clients[client_id] = conn.identity
        return None

    return {
        "register-client": register,
        "gather": reading("gather", "keys"),
        "who_has": reading("who_has", "keys"),
        "nbytes": reading("nbytes", "keys"),
        "get_task_status": reading("get_task_status", "keys"),
        "get_error_cause": reading("get_error_cause", "keys"),
        "retry": reading("retry", "keys"),
        "scatter": writing("scatter", "data"),
        "update_data": writing("update_data", "who_has"),
        "update-data": writing("update-data", "who_has"),
        "client-desires-keys": desires,
        "report-key": report_key,
        "subscribe-topic": subscribe,
    }


def _keys(value: Any) -> list[Any] | None:
    """Keys from a message field: a dict's keys, a list, or None (the field is absent: all keys)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return list(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]

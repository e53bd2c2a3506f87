"""Default deny for the Dask protocol (``security.identity: tls``): which certificate may send which message.

Every scheduler handler (RPC), scheduler stream handler, worker handler, worker stream handler and nanny handler
of the installed distributed is classified here, each with a one-line reason:

* ``user``: any verified user or service certificate (some with an argument check, :data:`CHECKED`);
* ``admin``: a user certificate named in ``quotas.admins``, or a delegate service (``security.delegates``,
  the gateway and console, which authenticate their admins themselves);
* ``node``: the cluster's own processes (``OU=node``: scheduler, workers, nannies).

A level includes the ones before it (node > admin > user). A handler that is not listed here, such as one a
future distributed adds, is refused for everyone and logged; ``tests/test_handler_policy.py`` fails on any
unclassified handler of the installed distributed. :class:`Connection` applies the tables to one comm; the
hook that shows it every message is :func:`scheduler_plugins.dask_internals.gate_comms`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from scheduler_plugins.identity import Identity

logger = logging.getLogger(__name__)

Level = Literal["user", "admin", "node"]
LEVELS: tuple[Level, ...] = ("user", "admin", "node")

#: Dask's own structural ops (handled before the handler tables): close an RPC comm, end a stream.
STRUCTURAL = frozenset({"close", "close-stream"})

#: Ops after which Dask reads the comm as a stream of messages.
STREAM_OPENERS = frozenset({"register-client", "register-worker", "connection_stream"})

#: Topics a user's client may subscribe to: the two Dask's Client subscribes to at start.
USER_TOPICS = frozenset({"print", "warn"})

U, A, N = "user", "admin", "node"

SCHEDULER_RPC: dict[str, tuple[Level, str]] = {
    # -- a client's ordinary work ------------------------------------------------------------------------
    "register-client": (U, "opens the client's own stream; its client id is bound to this connection"),
    "identity": (U, "cluster facts every Client reads at start (scheduler_info)"),
    "versions": (U, "package versions, checked by Client.get_versions"),
    "ncores": (U, "threads per worker (Client.nthreads): cluster facts"),
    "ncores_running": (U, "threads per running worker: cluster facts"),
    "echo": (U, "returns its argument: a liveness probe"),
    "gather": (U, "results of keys this identity's clients hold (checked)"),
    "scatter": (U, "data under keys no other identity's client wants (checked)"),
    "update_data": (U, "registers direct-scattered keys no other identity's client wants (checked)"),
    "who_has": (U, "where this identity's own keys are (checked; all keys: admin)"),
    "nbytes": (U, "sizes of this identity's own keys (checked; all keys: admin)"),
    "get_task_status": (U, "states of this identity's own keys (checked)"),
    "get_error_cause": (U, "error cause of this identity's own keys (checked)"),
    "retry": (U, "retries this identity's own erred keys (checked)"),
    "event_clear": (U, "distributed.Event: coordination by name, no data"),
    "event_is_set": (U, "distributed.Event: coordination by name, no data"),
    "event_set": (U, "distributed.Event: coordination by name, no data"),
    "event_wait": (U, "distributed.Event: coordination by name, no data"),
    "multi_lock_acquire": (U, "distributed.MultiLock: coordination by name, no data"),
    "multi_lock_release": (U, "distributed.MultiLock: coordination by name, no data"),
    "semaphore_acquire": (U, "distributed.Semaphore/Lock: coordination by name, no data"),
    "semaphore_close": (U, "distributed.Semaphore/Lock: coordination by name, no data"),
    "semaphore_refresh_leases": (U, "distributed.Semaphore/Lock: coordination by name, no data"),
    "semaphore_register": (U, "distributed.Semaphore/Lock: coordination by name, no data"),
    "semaphore_release": (U, "distributed.Semaphore/Lock: coordination by name, no data"),
    "semaphore_value": (U, "distributed.Semaphore/Lock: coordination by name, no data"),
    # -- whole-cluster views, cross-client sharing, diagnostics: admins -----------------------------------
    "events": (A, "event log: every client id, key and worker (what a forged client id needs)"),
    "log_event": (A, "writes into any event topic; tasks log through their worker (a node)"),
    "get_task_stream": (A, "every user's tasks, keys, workers and timings"),
    "get_task_stream_index": (A, "task stream, as above"),
    "performance_report": (A, "task stream and profiles of every user"),
    "has_what": (A, "every key on every worker"),
    "processing": (A, "every running key on every worker"),
    "call_stack": (A, "stacks of every user's running tasks"),
    "get_task_prefix_states": (A, "every user's task prefixes"),
    "get_metadata": (A, "metadata of any key"),
    "set_metadata": (A, "writes metadata of any key"),
    "get_runspec": (A, "the code of any key"),
    "get_story": (A, "transition log of any key or worker"),
    "get_logs": (A, "the scheduler's log (every user's activity)"),
    "logs": (A, "the scheduler's log (every user's activity)"),
    "worker_logs": (A, "every worker's log"),
    "profile": (A, "profiles of every user's code"),
    "dump_state": (A, "the whole scheduler state"),
    "get_cluster_state": (A, "the whole cluster state"),
    "dump_cluster_state_to_url": (A, "the whole cluster state, written anywhere"),
    "start_task_metadata": (A, "collects every task's metadata"),
    "stop_task_metadata": (A, "collects every task's metadata"),
    "memory_sampler_start": (A, "cluster-wide memory sampling"),
    "memory_sampler_stop": (A, "cluster-wide memory sampling"),
    "benchmark_hardware": (A, "runs benchmarks on every worker"),
    "check_idle": (A, "autoscaling input (adaptive runs in the scheduler)"),
    "adaptive_target": (A, "autoscaling input (adaptive runs in the scheduler)"),
    "workers_to_close": (A, "autoscaling input; its key argument may be pickled code"),
    "amm_handler": (A, "starts/stops the active memory manager"),
    "rebalance": (A, "moves every user's data between workers"),
    "replicate": (A, "copies any key to other workers"),
    "set_restrictions": (A, "re-pins any key (the router pins GPU tasks itself)"),
    "publish_put": (A, "datasets are shared between clients: not across users"),
    "publish_get": (A, "datasets are shared between clients: not across users"),
    "publish_list": (A, "dataset names of every user"),
    "publish_delete": (A, "deletes any dataset"),
    "variable_set": (A, "distributed.Variable shares data and futures across clients"),
    "variable_get": (A, "distributed.Variable shares data and futures across clients"),
    "queue_create": (A, "distributed.Queue shares data and futures across clients"),
    "queue_get": (A, "distributed.Queue shares data and futures across clients"),
    "queue_put": (A, "distributed.Queue shares data and futures across clients"),
    "queue_qsize": (A, "distributed.Queue shares data and futures across clients"),
    "run_function": (A, "client.run_on_scheduler: any code in the scheduler"),
    "broadcast": (A, "client.run and friends: any message to every worker, sent as the scheduler"),
    "proxy": (A, "any message to a worker, sent as the scheduler"),
    "feed": (A, "runs pickled code in the scheduler periodically"),
    "register_scheduler_plugin": (A, "code in the scheduler"),
    "unregister_scheduler_plugin": (A, "removes the router (identity, quotas) or any plugin"),
    "register_worker_plugin": (A, "code on every worker"),
    "unregister_worker_plugin": (A, "removes any worker plugin (the GPU binding)"),
    "register_nanny_plugin": (A, "code in every nanny"),
    "unregister_nanny_plugin": (A, "removes any nanny plugin"),
    "restart": (A, "restarts every worker and forgets every task"),
    "restart_workers": (A, "restarts GPU workers"),
    "retire_workers": (A, "removes GPU workers"),
    "terminate": (A, "stops the scheduler"),
    "unregister": (A, "removes a worker (workers unregister themselves as nodes)"),
    # -- the cluster's own processes ---------------------------------------------------------------------
    "register-worker": (N, "a worker joins"),
    "register_nanny": (N, "a nanny joins"),
    "heartbeat_worker": (N, "a worker's heartbeat: its GPU state and health"),
    "add_keys": (N, "a worker reports keys it holds"),
    "set_resources": (N, "a worker advertises its resources (GPU, memory)"),
    "connection_stream": (N, "opens a raw stream to any stream handler"),
    "subscribe_worker_status": (N, "a nanny or worker follows worker status"),
    "shuffle_barrier": (N, "P2P shuffle: worker to scheduler"),
    "shuffle_get": (N, "P2P shuffle: worker to scheduler"),
    "shuffle_get_or_create": (N, "P2P shuffle: worker to scheduler"),
    "shuffle_restrict_task": (N, "P2P shuffle: worker to scheduler"),
}

SCHEDULER_STREAM: dict[str, tuple[Level, str]] = {
    "update-graph": (U, "submits work; the router binds it to the certificate's user"),
    "client-desires-keys": (U, "holds keys this identity's clients hold or that do not exist (checked)"),
    "client-releases-keys": (U, "drops this client's own interest in keys"),
    "cancel-keys": (U, "cancels this client's own interest; force is admin-only (guard_force_cancel)"),
    "heartbeat-client": (U, "the client is alive"),
    "close-client": (U, "the client leaves"),
    "report-key": (U, "the state of this identity's own key (checked)"),
    "update-data": (U, "registers direct-scattered keys no other identity's client wants (checked)"),
    "subscribe-topic": (U, "Dask's default print/warn topics only (checked; others: admin)"),
    "unsubscribe-topic": (U, "stops this client's own subscription"),
    "publish_flush_batched_send": (A, "datasets: see publish_put"),
    "queue-future-release": (A, "distributed.Queue: see queue_put"),
    "queue_release": (A, "distributed.Queue: see queue_put"),
    "variable-future-received-confirm": (A, "distributed.Variable: see variable_set"),
    "variable_delete": (A, "distributed.Variable: see variable_set"),
    "task-finished": (N, "a worker's result report"),
    "task-erred": (N, "a worker's error report"),
    "release-worker-data": (N, "a worker dropped a key"),
    "add-keys": (N, "a worker reports keys it holds"),
    "long-running": (N, "a worker's task seceded"),
    "reschedule": (N, "a worker hands a task back"),
    "request-refresh-who-has": (N, "a worker asks where keys are"),
    "steal-response": (N, "a worker answers a steal request"),
    "worker-status-change": (N, "a worker pauses or resumes"),
    "keep-alive": (N, "a worker's stream is alive"),
    "log-event": (N, "a worker logs an event (tasks log through it)"),
}

WORKER_RPC: dict[str, tuple[Level, str]] = {
    # Users reach workers only through the scheduler, which checks who owns what: a worker cannot.
    "get_data": (N, "peer workers and the scheduler fetch data; users gather through the scheduler"),
    "update_data": (N, "the scheduler scatters; users scatter through the scheduler"),
    "gather": (N, "the scheduler moves data between workers"),
    "free_keys": (N, "the scheduler releases keys"),
    "actor_attribute": (N, "actors: direct client-to-worker calls are not offered under tls"),
    "actor_execute": (N, "actors: direct client-to-worker calls are not offered under tls"),
    "benchmark_disk": (N, "the scheduler benchmarks (admins ask it)"),
    "benchmark_memory": (N, "the scheduler benchmarks (admins ask it)"),
    "benchmark_network": (N, "the scheduler benchmarks (admins ask it)"),
    "call_stack": (N, "stacks of every user's tasks (admins ask the scheduler)"),
    "connection_stream": (N, "opens a raw stream to the worker's stream handlers"),
    "dump_state": (N, "the whole worker state"),
    "echo": (N, "liveness probe between nodes"),
    "get_logs": (N, "the worker's log"),
    "get_monitor_info": (N, "the worker's monitor"),
    "get_story": (N, "the worker's transition log"),
    "identity": (N, "the worker's state"),
    "keys": (N, "every key on the worker"),
    "ping": (N, "liveness probe between nodes"),
    "plugin-add": (N, "code on the worker (admins ask the scheduler)"),
    "plugin-remove": (N, "removes the GPU binding or any plugin"),
    "profile": (N, "profiles of every user's code"),
    "profile_metadata": (N, "profiles of every user's code"),
    "run": (N, "client.run: any code (admins ask the scheduler)"),
    "run_coroutine": (N, "client.run: any code (admins ask the scheduler)"),
    "terminate": (N, "stops the worker"),
    "upload_file": (N, "code on the worker (admins ask the scheduler)"),
    "versions": (N, "package versions (the scheduler asks)"),
}

WORKER_STREAM: dict[str, tuple[Level, str]] = {
    name: (N, "the scheduler's instructions to its worker")
    for name in (
        "acquire-replicas",
        "cancel-compute",
        "close",
        "compute-task",
        "free-keys",
        "refresh-who-has",
        "remove-replicas",
        "remove-worker",
        "steal-request",
        "worker-status-change",
    )
}


#: A nanny (``dask worker``'s default process manager): it starts, restarts and kills its worker.
NANNY_RPC: dict[str, tuple[Level, str]] = {
    "close_gracefully": (N, "its worker asks it to stop"),
    "connection_stream": (N, "opens a raw stream"),
    "dump_state": (N, "the nanny's state"),
    "echo": (N, "liveness probe between nodes"),
    "get_logs": (N, "the nanny's log"),
    "identity": (N, "the nanny's state"),
    "instantiate": (N, "starts a worker process"),
    "kill": (N, "kills its worker (the scheduler's restart_workers, for admins)"),
    "plugin_add": (N, "code in the nanny (admins ask the scheduler)"),
    "plugin_remove": (N, "removes a nanny plugin"),
    "restart": (N, "restarts its worker (the scheduler's restart_workers, for admins)"),
    "run": (N, "any code in the nanny (admins ask the scheduler)"),
    "terminate": (N, "stops the nanny and its worker"),
}


def level_admits(level: Level | None, required: Level) -> bool:
    return level is not None and LEVELS.index(level) >= LEVELS.index(required)


@dataclass(frozen=True)
class Rules:
    """One server's classification, and the ops each level may send (computed once)."""

    rpc: Mapping[str, tuple[Level, str]]
    stream: Mapping[str, tuple[Level, str]]
    allowed: dict[Level, tuple[frozenset[str], frozenset[str]]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "allowed",
            {
                level: (
                    frozenset(op for op, (need, _) in self.rpc.items() if level_admits(level, need)) | STRUCTURAL,
                    frozenset(op for op, (need, _) in self.stream.items() if level_admits(level, need)) | STRUCTURAL,
                )
                for level in LEVELS
            },
        )

    def with_rpc(self, extra: Mapping[str, tuple[Level, str]]) -> Rules:
        return Rules({**self.rpc, **extra}, self.stream)


SCHEDULER_RULES = Rules(SCHEDULER_RPC, SCHEDULER_STREAM)
WORKER_RULES = Rules(WORKER_RPC, WORKER_STREAM)
NANNY_RULES = Rules(NANNY_RPC, {})


#: An argument check: (the connection, the message) -> a refusal, or None to admit.
Check = Callable[["Connection", dict[str, Any]], str | None]


@dataclass
class Connection:
    """What one comm may do: its verified identity, level, and (once it registered) its client id."""

    rules: Rules
    identity: Identity | None
    level: Level | None
    checks: Mapping[str, Check]
    owner_of_client: Callable[[str], Identity | None]  # client id -> the identity that registered it
    client: str | None = None  # the client id this comm's stream is bound to
    streaming: bool = False

    @property
    def who(self) -> str:
        return f"{self.identity.name!r} ({self.identity.kind or 'no kind'})" if self.identity else "no certificate"

    def admit(self, msg: Any) -> str | None:
        """None when the message may pass, else the refusal (an RPC op, or a stream message)."""
        if not isinstance(msg, dict):
            return None  # Dask's own "OK" and malformed messages: Dask answers those itself
        op = msg.get("op")
        rpc_ok, stream_ok = self.rules.allowed[self.level] if self.level else (STRUCTURAL, STRUCTURAL)
        if op not in (stream_ok if self.streaming else rpc_ok):
            return self._refusal(op)
        if self.level != "node":
            claimed = msg.get("client")
            if claimed is not None and op != "register-client" and not self.holds_client(claimed):
                return f"{op!r} names client {claimed!r}, which is not this connection's ({self.who})"
            check = self.checks.get(op)
            if check is not None and (refusal := check(self, msg)) is not None:
                return refusal
        if op in STREAM_OPENERS:  # the rest of this comm is a stream (of this client)
            self.streaming, self.client = True, msg.get("client")
        return None

    def _refusal(self, op: Any) -> str:
        kind, table = ("stream message", self.rules.stream) if self.streaming else ("call", self.rules.rpc)
        if op not in table:
            return f"{kind} {op!r} is not in the protocol allowlist (scheduler_plugins/handler_policy.py)"
        need = table[op][0]
        return f"{kind} {op!r} needs {'an' if need == 'admin' else 'a'} {need} certificate: {self.who} may not send it"

    def holds_client(self, client_id: Any) -> bool:
        """A stream speaks only for its own client; an RPC comm for any client its identity registered."""
        if self.streaming:
            return client_id == self.client
        return self.identity is not None and self.owner_of_client(client_id) == self.identity

    def admit_batch(self, msgs: Iterable[Any]) -> list[Any]:
        """The stream messages that may pass; the others are logged and dropped."""
        kept = []
        for msg in msgs:
            refusal = self.admit(msg)
            if refusal is None:
                kept.append(msg)
            else:
                logger.warning("refused %s", refusal)
        return kept


def refusal_for_keys(
    what: str, keys: Collection[Any] | None, foreign: Callable[[Collection[Any]], list[Any]]
) -> str | None:
    """A refusal naming up to three of ``keys`` that ``foreign`` rejects (None: all fine)."""
    if keys is None:
        return f"{what}: name your keys (all keys need an admin certificate)"
    bad = foreign(keys)
    if not bad:
        return None
    shown = ", ".join(repr(k) for k in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return f"{what}: {shown} belong(s) to another user's client"

"""CPU per message of the tls-mode protocol gate (``scheduler_plugins/handler_policy.py``), against the dict
lookup Dask itself does per message (``stream_handlers[op]``).

Times ``Connection.admit_batch`` on the scheduler's two hot streams: a worker's (``task-finished``, a node
certificate: op lookup only) and a client's (``update-graph``/``client-releases-keys`` naming its own client:
op lookup, client binding). Thread CPU time, median of ``--reps`` runs of ``--messages`` messages.

Run: ``.venv/bin/python bench/gatecost.py [--messages 200000] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from scheduler_plugins.handler_policy import SCHEDULER_RULES, SCHEDULER_STREAM, Connection
from scheduler_plugins.identity import Identity


def per_message_ns(run, messages: int, reps: int) -> float:
    samples = []
    for _ in range(reps):
        began = time.thread_time_ns()
        run()
        samples.append((time.thread_time_ns() - began) / messages)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    n = args.messages
    worker = Connection(SCHEDULER_RULES, Identity("node-1", "node"), "node", {}, lambda _: None)
    worker.admit({"op": "register-worker"})
    client = Connection(SCHEDULER_RULES, Identity("alice", "user"), "user", {}, lambda _: None)
    client.admit({"op": "register-client", "client": "Client-1"})
    finished = [{"op": "task-finished", "key": f"k{i}", "worker": "w", "stimulus_id": "s"} for i in range(n)]
    submitted = [
        {"op": "update-graph" if i % 2 else "client-releases-keys", "client": "Client-1", "keys": [f"k{i}"]}
        for i in range(n)
    ]

    def dask_lookup() -> None:
        for msg in finished:
            SCHEDULER_STREAM[msg["op"]]

    rows = {
        "dask's own handler lookup (baseline)": per_message_ns(dask_lookup, n, args.reps),
        "gate: worker stream (task-finished)": per_message_ns(lambda: worker.admit_batch(finished), n, args.reps),
        "gate: client stream (own client id)": per_message_ns(lambda: client.admit_batch(submitted), n, args.reps),
    }
    print(f"{n} messages, median of {args.reps}; load average {os.getloadavg()[0]:.2f}")
    for name, ns in rows.items():
        print(f"| {name} | {ns:.0f} ns |")


if __name__ == "__main__":
    main()

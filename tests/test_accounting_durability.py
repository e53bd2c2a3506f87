"""No record lost (issue 22 item 5): ``kill -9`` of a real scheduler under load, and every result a client
received has its accounting record (the router's journal, replayed when the database is opened again).

Real processes on loopback (tests/outage_helpers.py): ``dask scheduler --preload scheduler_plugins.gpu_router``
and a ``dask worker`` with simulated GPU 0. The writer's batch interval is set to 60 s, so nothing reaches
SQLite before the kill on its own: without the journal, every record of the run would be lost.
"""

from __future__ import annotations

import sqlite3

from conftest import wait_for
from distributed import as_completed
from outage_helpers import address, kill_scheduler, scheduler_and_worker

from altlas_dask import run_on_gpu
from altlas_dask.accounting import AccountingStore
from altlas_dask.client import Client

TASKS = 2000
KILL_AFTER = 1000  # results received when the scheduler is killed (the rest are still in flight)


def test_kill_9_of_the_scheduler_under_load_loses_no_record_of_a_received_result(tmp_path):
    with scheduler_and_worker(tmp_path, accounting={"flush_interval": 60}) as world:
        client = Client(address(world), timeout=30, set_as_default=False)
        try:
            wait_for(lambda: client.gpus(), timeout=120, interval=0.2, what="the worker's GPU")
            futures = client.map(run_on_gpu, [0.0] * TASKS, pure=False)
            received = set()
            for future, result in as_completed(futures, with_results=True):
                assert result["gpu"] == 0
                received.add(future.key)
                if len(received) >= KILL_AFTER:
                    break
            kill_scheduler(world)
        finally:
            client.close(timeout=5)
    database = tmp_path / "altlas.sqlite"
    with sqlite3.connect(database) as conn:  # what the writer had committed: nothing (60 s batches)
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone() == (0,)
    store = AccountingStore(database)  # what a restarted scheduler opens: the journal is replayed
    try:
        records = store.tasks_by_key(sorted(received))
        assert len(records) == len(received), f"{len(records)} records of {len(received)} received results"
        assert {r["status"] for r in records.values()} == {"completed"}
        assert sum(row["tasks"] for row in store.usage()) >= len(received)  # each counted in its day's usage
    finally:
        store.close()

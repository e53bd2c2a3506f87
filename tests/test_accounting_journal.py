"""No accounting record lost with its process (issue 22 item 5): the store's journal, on real files and a real
``kill -9``. tests/test_accounting_durability.py does the same to a real scheduler under load."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from altlas_dask.accounting.store import AccountingStore, Journal

WRITER = """
import os, signal, sys
from altlas_dask.accounting.store import AccountingStore, Journal
path, n, rotate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = AccountingStore(path, flush_interval=60)  # its writer never runs: every write is only queued
store.journal.rotate_bytes = rotate
for i in range(n):
    store.record_task({"key": f"t{i}", "user": "ana", "status": "completed", "finished": float(i)})
    store.add_usage("ana", "2026-12-07", tasks=1, gpu_seconds=0.5)
store.set_override("ana", {"concurrent_requests": 3})
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_writer(path: Path, n: int, rotate_bytes: int = 64 << 20) -> None:
    """A process that makes ``n`` task records and usage increments, then is killed (-9) before any flush."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(path), str(n), str(rotate_bytes)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_writes_of_a_killed_process_are_replayed_once_when_the_store_opens_again(tmp_path):
    path = tmp_path / "acct.sqlite"
    killed_writer(path, 50)
    for _ in range(2):  # opened twice: the second replays nothing (the usage would double)
        store = AccountingStore(path)
        try:
            assert len(store.tasks(limit=1000)) == 50
            assert store.usage_on("2026-12-07") == {"ana": (50, 25.0)}
            assert store.overrides() == {"ana": {"concurrent_requests": 3}}
        finally:
            store.close()
    assert not list(tmp_path.glob("acct.sqlite.journal.*"))  # a clean close leaves no journal


def test_a_journal_in_many_files_is_replayed_in_order_and_removed_as_it_is_committed(tmp_path):
    path = tmp_path / "acct.sqlite"
    killed_writer(path, 40, rotate_bytes=500)
    assert len(list(tmp_path.glob("acct.sqlite.journal.*"))) > 5
    store = AccountingStore(path, flush_interval=0.01)
    try:
        assert len(store.tasks(limit=1000)) == 40 and store.usage_on("2026-12-07") == {"ana": (40, 20.0)}
        assert len(list(tmp_path.glob("acct.sqlite.journal.*"))) == 1  # this store's own, replayed ones gone
        store.journal.rotate_bytes = 200
        for _ in range(10):
            store.add_usage("bob", "2026-12-07", tasks=1)
        assert store.flush()
        store.add_usage("bob", "2026-12-07", tasks=1)  # makes the writer look at the files again
        assert store.flush()
        assert len(list(tmp_path.glob("acct.sqlite.journal.*"))) <= 2  # committed files are removed
    finally:
        store.close()


def test_a_torn_last_line_is_skipped(tmp_path):
    """A line whose ``write`` never returned recorded nothing any client saw: replay stops before it."""
    path = tmp_path / "acct.sqlite"
    killed_writer(path, 3)
    (journal,) = tmp_path.glob("acct.sqlite.journal.*")
    with journal.open("ab") as f:
        f.write(b'["usage",["ana","2026-12-07",1')
    store = AccountingStore(path)
    try:
        assert store.usage_on("2026-12-07") == {"ana": (3, 1.5)}
    finally:
        store.close()


def test_journal_lines_round_trip(tmp_path):
    journal = Journal(str(tmp_path / "db"))
    ops = [("task", ("k", "ana", None, 1.5, "x\ny")), ("usage", ("ana", "2026-12-07", 1, 0.25, 0))]
    marks = [journal.append(op) for op in ops]
    journal.close()
    assert list(journal.read((0, 0))) == list(zip(ops, marks, strict=True))
    assert list(journal.read(marks[0])) == [(ops[1], marks[1])]

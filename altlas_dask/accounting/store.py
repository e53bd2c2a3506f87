"""Durable accounting in an embedded SQLite database.

Writes (task records, usage increments, quota overrides) are queued and
applied by one writer thread every ``flush_interval`` in one transaction, so
the scheduler's event loop never waits on SQLite (nor wakes the writer). Reads open their own connection (WAL mode
lets them run beside the writer); the router calls them off the loop too.

No write is lost with the scheduler process: each is also appended to a journal file (:class:`Journal`, one
``write(2)`` in the caller, before Dask tells any client the task's result) and the journal is replayed into the
database when a store opens it again, exactly once: the writer commits, in the same transaction as the writes,
how far into the journal they reach (docs/design.md "No record lost").
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from altlas_dask.accounting.summary import finished_summary

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    user TEXT NOT NULL, day TEXT NOT NULL,
    tasks INTEGER NOT NULL DEFAULT 0, gpu_seconds REAL NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, day)
);
CREATE TABLE IF NOT EXISTS quota_overrides (user TEXT PRIMARY KEY, limits TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY, user TEXT NOT NULL, gpu INTEGER, strategy TEXT, reason TEXT, status TEXT NOT NULL,
    priority INTEGER, task_type TEXT, memory_mb INTEGER, submitted REAL, started REAL, finished REAL,
    gpu_seconds REAL, attempts INTEGER, error TEXT
);
CREATE INDEX IF NOT EXISTS tasks_user ON tasks (user, finished);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished);
CREATE TABLE IF NOT EXISTS journal_applied (id INTEGER PRIMARY KEY CHECK (id = 0), generation INTEGER, offset INTEGER);
"""
TASK_COLUMNS = (
    "key",
    "user",
    "gpu",
    "strategy",
    "reason",
    "status",
    "priority",
    "task_type",
    "memory_mb",
    "submitted",
    "started",
    "finished",
    "gpu_seconds",
    "attempts",
    "error",
)


Op = tuple[str, tuple]
Mark = tuple[int, int]  # (journal generation, offset just past the op's line)


class Journal:
    """Append-only files ``<database>.journal.<generation>`` of the writes not yet known to be in the database.

    :meth:`append` is one unbuffered ``write(2)``: once it returns, the line is the kernel's and survives the
    process (``kill -9``), not a power cut (SQLite's own ``synchronous=NORMAL`` has the same reach). A file
    past ``rotate_bytes`` is closed and the next generation begun; the writer removes files whose lines are
    all committed. Only the event loop appends; only the writer thread removes.
    """

    def __init__(self, database: str, rotate_bytes: int = 64 << 20) -> None:
        self.base = database + ".journal."
        self.rotate_bytes = rotate_bytes
        self.generation = max(self.generations(), default=0) + 1
        self.offset = 0
        self._fd = self._open()

    def generations(self) -> list[int]:
        folder, prefix = os.path.split(self.base)
        suffixes = (name.removeprefix(prefix) for name in os.listdir(folder or ".") if name.startswith(prefix))
        return sorted(int(s) for s in suffixes if s.isascii() and s.isdigit())

    def _open(self) -> int:
        return os.open(f"{self.base}{self.generation}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, op: Op) -> Mark:
        line = (json.dumps(op, separators=(",", ":")) + "\n").encode()
        os.write(self._fd, line)
        self.offset += len(line)
        mark = (self.generation, self.offset)
        if self.offset >= self.rotate_bytes:
            os.close(self._fd)
            self.generation, self.offset = self.generation + 1, 0
            self._fd = self._open()
        return mark

    def read(self, after: Mark) -> Iterator[tuple[Op, Mark]]:
        """Every complete line past ``after`` (generation, offset), oldest first; a torn last line is skipped
        (its ``write`` never returned, so no client saw what it records)."""
        for generation in self.generations():
            if generation < after[0]:
                continue
            with open(f"{self.base}{generation}", "rb") as f:
                data = f.read()
            offset = after[1] if generation == after[0] else 0
            while (end := data.find(b"\n", offset)) != -1:
                kind, args = json.loads(data[offset:end])
                offset = end + 1
                yield (kind, tuple(args)), (generation, offset)

    def remove_before(self, generation: int) -> None:
        for old in self.generations():
            if old < generation:
                os.unlink(f"{self.base}{old}")

    def close(self) -> None:
        os.close(self._fd)


class AccountingStore:
    """Usage per user and day, quota overrides and the final record of every task."""

    def __init__(self, path: str | Path, flush_interval: float = 0.2, *, journal: bool = True) -> None:
        self.path = str(path)
        self.memory = self.path == ":memory:"
        if self.memory:  # one shared in-memory database for the writer and readers
            self.path = f"file:altlas-{id(self)}?mode=memory&cache=shared"
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.flush_interval = flush_interval
        self._ops: deque[tuple[Op, Mark | None]] = deque()  # appended by the event loop, drained by the writer
        self._appended = 0
        self._applied = 0
        self._wake = threading.Event()  # flush() and close() wake the writer early; writes never do
        self._stopping = False
        self._done = threading.Condition()
        self._keepalive = self._connect()  # keeps a shared in-memory database alive
        self._keepalive.executescript(SCHEMA)
        self.journal: Journal | None = None
        if journal and not self.memory:
            self.journal = Journal(self.path)
            self._replay()
        self._writer = threading.Thread(target=self._write_loop, name="altlas-accounting", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, uri=self.memory, check_same_thread=False, timeout=30)
        if not self.memory:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    # -- writes (queued; never block the caller) -----------------------------------------
    def record_task(self, record: dict[str, Any]) -> None:
        self._put(("task", tuple(map(record.get, TASK_COLUMNS))))

    def add_usage(self, user: str, day: str, *, tasks: int = 0, gpu_seconds: float = 0.0, rejected: int = 0) -> None:
        self._put(("usage", (user, day, tasks, gpu_seconds, rejected)))

    def set_override(self, user: str, limits: dict[str, Any]) -> None:
        self._put(("override", (user, json.dumps(limits), time.time())))

    def _put(self, op: Op) -> None:
        # A journal line and a deque append: no lock, no wake-up of the writer thread (which would contend for
        # the GIL with the scheduler's event loop on every task).
        journal = self.journal
        self._ops.append((op, None if journal is None else journal.append(op)))
        self._appended += 1

    def _replay(self) -> None:
        """Apply the journal's lines the database does not have yet (a scheduler killed before its writer ran)."""
        conn, journal = self._keepalive, self.journal
        row = conn.execute("SELECT generation, offset FROM journal_applied").fetchone()
        ops, marks = [], []
        for op, mark in journal.read(tuple(row) if row else (0, 0)):
            ops.append(op)
            marks.append(mark)
        if ops:
            self._apply(conn, ops, marks[-1])
            logger.warning("accounting: replayed %d write(s) from the journal of a scheduler that stopped", len(ops))
        journal.remove_before(journal.generation)

    def _write_loop(self) -> None:
        conn = self._connect()
        removed = 0  # journal generations below this one are removed
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            writes, mark = [], None
            while self._ops:
                op, op_mark = self._ops.popleft()
                writes.append(op)
                mark = op_mark or mark
            if writes:
                try:
                    self._apply(conn, writes, mark)
                except sqlite3.Error:
                    logger.exception("accounting write failed; %d change(s) lost", len(writes))
                else:
                    journal = self.journal  # (None while a benchmark runs without it)
                    if journal is not None and mark is not None and mark[0] > removed:  # the files before are in
                        journal.remove_before(mark[0])
                        removed = mark[0]
            with self._done:
                self._applied += len(writes)
                self._done.notify_all()
            if self._stopping and not self._ops:
                conn.close()
                return

    @staticmethod
    def _apply(conn: sqlite3.Connection, ops: list[Op], mark: Mark | None) -> None:
        tasks = [args for kind, args in ops if kind == "task"]
        usage = [args for kind, args in ops if kind == "usage"]
        overrides = [args for kind, args in ops if kind == "override"]
        with conn:
            if tasks:
                conn.executemany(
                    f"INSERT OR REPLACE INTO tasks ({', '.join(TASK_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(TASK_COLUMNS))})",
                    tasks,
                )
            if usage:
                conn.executemany(
                    "INSERT INTO usage (user, day, tasks, gpu_seconds, rejected) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (user, day) DO UPDATE SET tasks = tasks + excluded.tasks, "
                    "gpu_seconds = gpu_seconds + excluded.gpu_seconds, rejected = rejected + excluded.rejected",
                    usage,
                )
            if overrides:
                conn.executemany(
                    "INSERT OR REPLACE INTO quota_overrides (user, limits, updated) VALUES (?, ?, ?)", overrides
                )
            if mark is not None:  # in the same transaction: the journal is replayed from here, exactly once
                conn.execute("INSERT OR REPLACE INTO journal_applied (id, generation, offset) VALUES (0, ?, ?)", mark)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every write queued so far is on disk."""
        target = self._appended
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._applied >= target, timeout)

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._writer.join(timeout=10)
        if self.journal is not None:
            self.journal.close()
            if not self._writer.is_alive() and self._applied >= self._appended:  # all in the database
                self.journal.remove_before(self.journal.generation + 1)
        self._keepalive.close()

    # -- reads ----------------------------------------------------------------------------------
    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def usage_on(self, day: str) -> dict[str, tuple[int, float]]:
        """``{user: (tasks, gpu_seconds)}`` for one UTC day."""
        with self._reader() as conn:
            rows = conn.execute("SELECT user, tasks, gpu_seconds FROM usage WHERE day = ?", (day,)).fetchall()
        return {r["user"]: (r["tasks"], r["gpu_seconds"]) for r in rows}

    def overrides(self) -> dict[str, dict[str, Any]]:
        with self._reader() as conn:
            rows = conn.execute("SELECT user, limits FROM quota_overrides").fetchall()
        return {r["user"]: json.loads(r["limits"]) for r in rows}

    def usage(self, user: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        """Rows of (user, day, tasks, gpu_seconds, rejected), oldest day first."""
        query, args = "SELECT user, day, tasks, gpu_seconds, rejected FROM usage WHERE 1=1", []
        if user is not None:
            query += " AND user = ?"
            args.append(user)
        if since is not None:
            query += " AND day >= ?"
            args.append(since)
        with self._reader() as conn:
            return [dict(r) for r in conn.execute(query + " ORDER BY day, user", args)]

    def tasks(
        self,
        *,
        user: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Final task records, newest first."""
        query, args = "SELECT * FROM tasks WHERE 1=1", []
        for column, value in (("user", user), ("status", status)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        if since is not None:
            query += " AND finished >= ?"
            args.append(since)
        query += " ORDER BY finished DESC LIMIT ? OFFSET ?"
        with self._reader() as conn:
            return [dict(r) for r in conn.execute(query, [*args, limit, offset])]

    def finished_summary(self, since: float) -> dict[str, Any]:
        """Aggregates of the records finished since ``since`` (``GET /metrics``; see accounting.summary)."""
        with self._reader() as conn:
            return finished_summary(conn, since)

    def tasks_by_key(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Final records of these tasks, as explanations (``placed_at``/``finished_at`` named as live ones)."""
        out: dict[str, dict[str, Any]] = {}
        with self._reader() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for r in conn.execute(f"SELECT * FROM tasks WHERE key IN ({marks})", chunk):
                    row = dict(r)
                    row["placed_at"], row["finished_at"] = row.pop("started"), row.pop("finished")
                    out[row["key"]] = row
        return out

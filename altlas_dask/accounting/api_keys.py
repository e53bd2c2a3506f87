"""API keys: created by ``altlas-dask keys create``, stored hashed in their own SQLite file.

A key reads ``ak_<key_id>_<secret>``. The table ``api_keys`` (in the file named by ``accounting.api_keys``,
by default ``api_keys.sqlite`` beside the scheduler's accounting database, never inside it) keeps the public ``key_id``,
the key's user and role (``user`` or ``admin``), a random per-key salt and
``sha256(salt + secret)``; the secret itself is never stored. Keys are 256-bit random
values, so a fast salted hash is enough (a slow password KDF protects low-entropy secrets);
comparison is constant-time (``hmac.compare_digest``). Verified keys are cached in memory for
``cache_ttl`` seconds, so a revoked key stops working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from altlas_dask.config import USER_NAME_PATTERN, AltlasConfig

Role = Literal["user", "admin"]
ROLES: tuple[Role, ...] = ("user", "admin")
KEY_PATTERN = re.compile(r"^ak_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    salt TEXT NOT NULL,
    hash TEXT NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    created REAL NOT NULL,
    revoked REAL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys (user);
"""
COLUMNS = "key_id, salt, hash, user, role, created, revoked, note"


class KeyStoreError(ValueError):
    """A key cannot be created or the key database cannot be used (the message says why)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the key's user and role."""

    user: str
    role: Role
    key_id: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class KeyVerifier(Protocol):
    """What the gateway and the console need of a key store: whom a key proves (None: invalid or revoked)."""

    def verify(self, key: str) -> Principal | None: ...


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class KeyStore:
    """The ``api_keys`` table of one SQLite file (``accounting.api_keys``): a :class:`KeyVerifier` that the CLI also
    manages keys in."""

    def __init__(self, path: str | Path, cache_ttl: float = 10.0) -> None:
        path = str(path)
        if path == ":memory:" or path.startswith("file:"):
            raise KeyStoreError(
                "API keys need a database file shared by the CLI and the gateway, but accounting.api_keys is "
                f"{path!r}: set accounting.api_keys (or accounting.database) to a file path (e.g. var/api_keys.sqlite)"
            )
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    @classmethod
    def of(cls, config: AltlasConfig, cache_ttl: float = 10.0) -> KeyStore:
        """The cluster's key store (``accounting.api_keys``), with the keys of the accounting database adopted once
        (where keys lived before they had their own file: none is lost in the move)."""
        store = cls(config.accounting.api_keys, cache_ttl)
        store.adopt(config.accounting.database)
        return store

    def adopt(self, legacy: str | Path) -> int:
        """Copy the ``api_keys`` rows of ``legacy`` (an accounting database of the older layout) into this store if
        it holds no key yet; how many were copied."""
        legacy_path = Path(legacy)
        if str(legacy) == self.path or not legacy_path.is_file():
            return 0
        with self._connect() as conn:
            if conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None:
                return 0
            source = sqlite3.connect(f"{legacy_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
            try:
                rows = source.execute(f"SELECT {COLUMNS} FROM api_keys").fetchall()
            except sqlite3.OperationalError:  # no api_keys table there
                rows = []
            finally:
                source.close()
            conn.executemany(f"INSERT OR IGNORE INTO api_keys ({COLUMNS}) VALUES ({', '.join('?' * 8)})", rows)
        return len(rows)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            with conn:
                yield conn
        finally:
            conn.close()

    # -- management (the CLI) ---------------------------------------------------------------------
    def create(self, user: str, role: Role = "user", note: str = "") -> tuple[str, str]:
        """A new key for ``user``: returns ``(key_id, key)``; the key is shown once and never stored."""
        if not re.match(USER_NAME_PATTERN, user or ""):
            raise KeyStoreError(f"user {user!r} must be 1-128 letters, digits or _ . @ -")
        if role not in ROLES:
            raise KeyStoreError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO api_keys (key_id, salt, hash, user, role, created, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, salt, _digest(salt, secret), user, role, time.time(), note),
            )
        return key_id, f"ak_{key_id}_{secret}"

    def revoke(self, key_id: str) -> bool:
        with self._connect() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL", (time.time(), key_id)
            )
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if v[0].key_id != key_id}
        return cur.rowcount > 0

    def list(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT key_id, user, role, created, revoked, note FROM api_keys ORDER BY created"
            ).fetchall()
        return [dict(r) for r in rows]

    # -- verification (every request) -----------------------------------------------------------------
    def verify(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key; ``None`` for anything else."""
        match = KEY_PATTERN.match(key or "")
        if match is None:
            return None
        cache_key = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(cache_key)
        if cached is not None and cached[1] > now:
            return cached[0]
        key_id, secret = match.groups()
        with self._connect() as conn:
            row = conn.execute(
                "SELECT salt, hash, user, role FROM api_keys WHERE key_id = ? AND revoked IS NULL", (key_id,)
            ).fetchone()
        if row is None or not hmac.compare_digest(_digest(row["salt"], secret), row["hash"]):
            return None
        principal = Principal(row["user"], row["role"], key_id)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[cache_key] = (principal, now + self.cache_ttl)
        return principal

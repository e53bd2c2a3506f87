"""The API key store: its own SQLite file beside (never inside) the scheduler's accounting database, and the keys
of the older layout (a table in the accounting database) adopted once, so none is lost in the move."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from altlas_dask.accounting.api_keys import SCHEMA, KeyStore, _digest
from altlas_dask.config import build_config


def test_keys_live_in_their_own_file_beside_the_accounting_database(tmp_path: Path):
    config = build_config({"home": str(tmp_path), "accounting": {"database": "db/altlas.sqlite"}})
    assert config.accounting.api_keys == str(tmp_path / "db" / "api_keys.sqlite")
    store = KeyStore.of(config)
    key_id, key = store.create("ana")
    assert store.verify(key).user == "ana"
    assert not (tmp_path / "db" / "altlas.sqlite").exists()  # the gateway never opened the scheduler's file
    chosen = build_config({"home": str(tmp_path), "accounting": {"api_keys": "keys/k.sqlite"}})
    assert chosen.accounting.api_keys == str(tmp_path / "keys" / "k.sqlite")


def test_keys_of_the_accounting_database_are_adopted_once(tmp_path: Path):
    """A key made before keys had their own file (a row of the accounting database's api_keys table) still works."""
    accounting = tmp_path / "altlas.sqlite"
    with sqlite3.connect(accounting) as old:  # the older layout, written as KeyStore wrote it then
        old.executescript(SCHEMA)
        salt, secret = "00" * 16, "s" * 43
        old.execute(
            "INSERT INTO api_keys (key_id, salt, hash, user, role, created, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("0123456789ab", salt, _digest(salt, secret), "old-admin", "admin", 1.0, "from before"),
        )
    config = build_config({"home": str(tmp_path)})
    store = KeyStore.of(config)
    principal = store.verify(f"ak_0123456789ab_{secret}")
    assert principal is not None and (principal.user, principal.role) == ("old-admin", "admin")
    assert [r["note"] for r in store.list()] == ["from before"]
    store.revoke("0123456789ab")
    assert KeyStore.of(config).verify(f"ak_0123456789ab_{secret}") is None  # adopted once: a revoke sticks

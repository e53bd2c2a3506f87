"""SQL lives in one room: ``altlas_dask/accounting/``. No other module of the package or the scheduler plugins imports
``sqlite3`` or writes an SQL statement; the gateway, the console and the CLI reach the records through the router
(``altlas_finished``, ``altlas_records``, ...) or the accounting modules' own functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOMS = (REPO / "altlas_dask", REPO / "scheduler_plugins")
ALLOWED = REPO / "altlas_dask" / "accounting"
#: A statement as SQL spells it: the verb, then (somewhere after it) the word that goes with it.
STATEMENT = re.compile(
    r"\b(SELECT\b.*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)"
    r"|DROP\s+TABLE|ALTER\s+TABLE|PRAGMA\s+\w+)\b",
    re.S,
)


def sql_in(path: Path) -> list[str]:
    """Where ``path`` imports sqlite3 or holds an SQL statement in a string (docstrings too: code in them counts)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sqlite3" for a in node.names):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: import sqlite3")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3":
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: from sqlite3 import")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and STATEMENT.search(node.value):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: SQL {STATEMENT.search(node.value).group(0)!r}")
    return found


def test_no_sql_outside_accounting():
    outside = [p for room in ROOMS for p in sorted(room.rglob("*.py")) if not p.is_relative_to(ALLOWED)]
    assert outside, "the scan found no files"
    assert [hit for path in outside for hit in sql_in(path)] == []


def test_the_scan_sees_sql(tmp_path: Path, monkeypatch):
    """Not vacuous: the accounting modules hold SQL by this definition, and a planted import and query are found."""
    assert any(sql_in(p) for p in ALLOWED.rglob("*.py"))
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    planted = tmp_path / "metrics.py"
    planted.write_text('import sqlite3\nQ = "SELECT status, COUNT(*) FROM tasks GROUP BY status"\n')
    found = [hit.split(": ", 1)[1] for hit in sql_in(planted)]
    assert found == ["import sqlite3", "SQL 'SELECT status, COUNT(*) FROM'"]
    prose = tmp_path / "prose.py"
    prose.write_text('"""Select a GPU from the list; insert it into the pool."""\n')
    assert sql_in(prose) == []

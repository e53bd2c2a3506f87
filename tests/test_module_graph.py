"""The router's modules import each other without cycles (type-checking imports aside)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("scheduler_plugins", "altlas_dask/scheduling")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def runtime_imports(path: Path, type_checking: bool = False) -> set[str]:
    """Modules imported at run time: every import except those under ``if TYPE_CHECKING:`` (those too with
    ``type_checking``)."""
    tree = ast.parse(path.read_text())
    skipped = set() if type_checking else {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def cycle(packages: tuple[str, ...], type_checking: bool = False) -> str | None:
    """An import cycle among the modules of ``packages`` (``a -> b -> a``), or None."""
    files = [p for package in packages for p in (REPO / package).glob("*.py")]
    names = {module_name(p) for p in files}
    graph = {module_name(p): runtime_imports(p, type_checking) & names for p in files}
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> str | None:
        if node in path:
            return " -> ".join((*path[path.index(node) :], node))
        if node in done:
            return None
        found = next((c for nxt in graph.get(node, ()) if nxt != node and (c := visit(nxt, (*path, node)))), None)
        done.add(node)
        return found

    return next((c for name in sorted(graph) if (c := visit(name, ()))), None)


def test_no_import_cycles_between_the_router_modules():
    assert cycle(PACKAGES) is None


def test_no_import_circle_in_scheduler_plugins_not_even_for_type_hints():
    """The adapter imports its parts; they know the router only as a protocol of what they use (issue 25)."""
    assert cycle(("scheduler_plugins",), type_checking=True) is None


def test_the_cycle_check_sees_a_circle_through_a_type_checking_import(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("import pkg.b\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert cycle(("pkg",)) is None
    assert cycle(("pkg",), type_checking=True) in ("pkg.a -> pkg.b -> pkg.a", "pkg.b -> pkg.a -> pkg.b")


def test_only_the_adapter_modules_import_distributed_in_the_router():
    users = {
        module_name(p)
        for p in (REPO / "scheduler_plugins").glob("*.py")
        if "distributed" in str({m.split(".")[0] for m in runtime_imports(p)})
    }
    assert users <= {
        "scheduler_plugins.gpu_router",  # SchedulerPlugin, and the hooks' types
        "scheduler_plugins.dask_internals",  # every internal access
        "scheduler_plugins.dashboard",  # the dashboard page is a Dask dashboard page
        "scheduler_plugins.autoscale",  # a scheduler preload of its own: Dask's adaptive target
        "scheduler_plugins.task_feed",  # a SchedulerPlugin beside the router: its hooks, Scheduler.log_event
    }, users

"""The router's modules import each other without cycles (type-checking imports aside)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("scheduler_plugins", "altlas_dask/scheduling")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def runtime_imports(path: Path) -> set[str]:
    """Modules imported at run time: every import except those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = {
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


def test_no_import_cycles_between_the_router_modules():
    files = [p for package in PACKAGES for p in (REPO / package).glob("*.py")]
    names = {module_name(p) for p in files}
    graph = {module_name(p): runtime_imports(p) & names for p in files}

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " -> ".join((*path, node))
        for nxt in graph.get(node, ()):
            if nxt != node:
                visit(nxt, (*path, node))

    for name in graph:
        visit(name, ())


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

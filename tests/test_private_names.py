"""Dask's private names are used only in the internals modules, one per side.

A Dask upgrade that changes an internal should break exactly one module per side and its tests:

* ``scheduler_plugins/dask_internals.py``: the scheduler side (the router, identity, autoscale, dashboard);
* ``altlas_dask/gpus/dask_worker_internals.py``: the worker side;
* ``altlas_dask/client/dask_internals.py``: the client side (client, coalescer, gateway, CLI).

Every other ``.py`` under ``altlas_dask/`` and ``scheduler_plugins/`` is parsed and must not:

(a) import a ``_``-prefixed name from dask/distributed, or anything from a ``_``-prefixed module
    (``from dask._expr import ...``);
(b) read, write or override an attribute whose name is private (``_x``, not a dunder) in the dask or
    distributed modules we import: the set is built by introspecting the installed modules (module names,
    class members along the MRO, and ``self._x`` attributes assigned in their source), not hand-listed.
    A name our own code also defines on our own objects is skipped (``obj._state`` could be ours), but
    a method defined in a subclass of a Dask class always counts (overriding ``Client._send_to_scheduler``
    is using an internal);
(c) touch the public-looking internals in :data:`INTERNAL_ATTRIBUTES`: Dask documents none of them as
    an extension point. ``handlers``/``stream_handlers`` are the server's RPC tables (adding or wrapping
    an entry is patching the server); ``adaptive_target`` replaced on an instance is monkey-patching;
    ``unrunnable`` is the scheduler's internal set of tasks in ``no-worker``; ``applications`` is the
    dashboard's module-level route table. A plain read of ``scheduler.workers``/``tasks`` is the
    documented ``SchedulerPlugin`` way of looking at the cluster and is not listed.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("altlas_dask", "scheduler_plugins")
INTERNALS = {
    "scheduler_plugins/dask_internals.py",
    "altlas_dask/gpus/dask_worker_internals.py",
    "altlas_dask/client/dask_internals.py",
}
DASK_PACKAGES = ("dask", "distributed")
INTERNAL_ATTRIBUTES = frozenset({"handlers", "stream_handlers", "adaptive_target", "unrunnable", "applications"})


def is_private(name: str) -> bool:
    """``_x``; not a dunder, nor a ``_repr_html_``-style protocol name."""
    return name.startswith("_") and not name.endswith("_")


def is_dask_module(name: str) -> bool:
    return name.split(".")[0] in DASK_PACKAGES


def source_files(tree: Path = REPO) -> list[Path]:
    return sorted(
        p for root in ROOTS for p in (tree / root).rglob("*.py") if p.relative_to(tree).as_posix() not in INTERNALS
    )


def imported_dask_modules(files: list[Path]) -> set[str]:
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if is_dask_module(a.name)}
            elif isinstance(node, ast.ImportFrom) and node.module and is_dask_module(node.module):
                found.add(node.module)
    return found


def dask_private_names(modules: set[str]) -> set[str]:
    """Private names of the dask/distributed modules our code imports and of the classes they hold."""
    loaded = {importlib.import_module(n) for n in modules if not any(is_private(p) for p in n.split("."))}
    names: set[str] = set()
    sources = set(loaded)
    for module in loaded:
        names |= {n for n in vars(module) if is_private(n)}
        for value in vars(module).values():
            if inspect.isclass(value) and is_dask_module(value.__module__ or ""):
                for klass in value.__mro__:
                    names |= {n for n in vars(klass) if is_private(n)}
                    if is_dask_module(klass.__module__):
                        sources.add(sys.modules[klass.__module__])
    for module in sources:  # instance attributes: ``self._x = ...``
        try:
            tree = ast.parse(inspect.getsource(module))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and is_private(node.attr):
                names.add(node.attr)
    return names


def dask_bases(tree: ast.Module) -> set[str]:
    """Local names that stand for dask/distributed modules or classes in this file (``distributed``, ``Client``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if is_dask_module(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.module and is_dask_module(node.module):
            names |= {a.asname or a.name for a in node.names}
    return names


def subclasses_dask(node: ast.ClassDef, bases: set[str]) -> bool:
    return any(ast.unparse(b).split(".")[0] in bases for b in node.bases)


def dask_base_members(node: ast.ClassDef, tree: ast.Module) -> set[str]:
    """Every name the Dask classes that ``node`` derives from define (along their MRO)."""
    where: dict[str, str] = {}
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            where |= {(a.asname or a.name).split(".")[0]: a.name.split(".")[0] for a in item.names}
        elif isinstance(item, ast.ImportFrom) and item.module and is_dask_module(item.module):
            where |= {a.asname or a.name: f"{item.module}.{a.name}" for a in item.names}
    members: set[str] = set()
    for base in node.bases:
        head, *rest = ast.unparse(base).split(".")
        if head not in where or not is_dask_module(where[head]):
            continue
        module, _, name = where[head].rpartition(".")
        value = importlib.import_module(where[head]) if not module else getattr(importlib.import_module(module), name)
        for attribute in rest:
            value = getattr(value, attribute)
        members |= set(dir(value))
    return members


def own_private_names(files: list[Path]) -> set[str]:
    """``_x`` names our code defines for its own objects: module level, and in classes not derived from Dask's."""
    names: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text())
        bases = dask_bases(tree)
        inherited: dict[int, set[str]] = {}
        for c in ast.walk(tree):
            if isinstance(c, ast.ClassDef) and subclasses_dask(c, bases):
                members = dask_base_members(c, tree)
                inherited |= {id(n): members for n in ast.walk(c)}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = node.name
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                name = node.id
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            else:
                continue
            if is_private(name) and name not in inherited.get(id(node), ()):
                names.add(name)
    return names


def violations(path: Path, private: set[str], own: set[str], tree_root: Path = REPO) -> Iterator[str]:
    where = path.relative_to(tree_root).as_posix()
    tree = ast.parse(path.read_text())
    bases = dask_bases(tree)
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_dask_module(alias.name) and any(is_private(p) for p in alias.name.split(".")):
                    yield f"{line}: imports the private module {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module and is_dask_module(node.module):
            if any(is_private(p) for p in node.module.split(".")):
                yield f"{line}: imports from the private module {node.module}"
            for alias in node.names:
                if is_private(alias.name) or alias.name in INTERNAL_ATTRIBUTES:
                    yield f"{line}: imports the private name {node.module}.{alias.name}"
        elif isinstance(node, ast.ClassDef) and subclasses_dask(node, bases):
            inherited = dask_base_members(node, tree)
            for item in node.body:
                overrides = isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in inherited
                if overrides and is_private(item.name):
                    yield f"{line}: {node.name} overrides the Dask internal {item.name}"
        elif isinstance(node, ast.Attribute) and (
            (is_private(node.attr) and node.attr in private and node.attr not in own)
            or node.attr in INTERNAL_ATTRIBUTES
        ):
            yield f"{line}: uses the Dask internal .{node.attr}"


def find_violations(tree_root: Path = REPO) -> list[str]:
    files = source_files(tree_root)
    private = dask_private_names(imported_dask_modules(files))
    own = own_private_names(files)
    return [v for path in files for v in violations(path, private, own, tree_root)]


def test_dask_internals_are_used_only_in_the_internals_modules():
    found = find_violations()
    assert not found, "Dask internals outside the internals modules:\n" + "\n".join(found)


def test_the_check_sees_each_kind_of_internal(tmp_path):
    """The checker flags (a), (b) and (c) and an override, and leaves our own ``_x`` and dunders alone."""
    package = tmp_path / "altlas_dask"
    package.mkdir()
    (tmp_path / "scheduler_plugins").mkdir()
    (package / "bad.py").write_text(
        "import distributed\n"
        "from dask._expr import LLGExpr\n"
        "from distributed.client import _get_global_client\n"
        "class C(distributed.Client):\n"
        "    def _send_to_scheduler(self, msg): ...\n"
        "async def f(future, scheduler):\n"
        "    await future._state.wait()\n"
        "    scheduler.stream_handlers['x'] = f\n"
    )
    (package / "good.py").write_text(
        "class Mine:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def __repr__(self):\n"
        "        return str(self._mine)\n"
    )
    found = "\n".join(find_violations(tmp_path))
    for expected in (
        "bad.py:2: imports from the private module dask._expr",
        "bad.py:3: imports the private name distributed.client._get_global_client",
        "bad.py:4: C overrides the Dask internal _send_to_scheduler",
        "bad.py:7: uses the Dask internal ._state",
        "bad.py:8: uses the Dask internal .stream_handlers",
    ):
        assert expected in found, found
    assert "good.py" not in found, found

"""The package's layers import one way (docs/design.md, "Layers"); every import counts, lazy ones too.

From the bottom: the vocabulary (pure value types and helpers) <- the policy (``altlas_dask.scheduling``)
<- the client <- the gateway (``altlas_dask.api``) and the console (``altlas_dask.console``), which do not
import each other. The GPU inventory (``altlas_dask.gpus``) knows no worker. Only ``TYPE_CHECKING``
imports are exempt (they do not run).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

from test_module_graph import runtime_imports

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "altlas_dask"

#: Pure helpers any layer may use: value types, validation and errors, no I/O at import, no Dask.
VOCABULARY = frozenset(
    {
        "altlas_dask.config",  # the cluster.yaml model (RoutingPolicy, Quotas, Health)
        "altlas_dask.options",  # gpu_options: the task's annotation and its validation
        "altlas_dask.errors",
        "altlas_dask.protocol",  # the router protocol: RPC names, task statuses, wire shapes
        "altlas_dask.ranges",
        "altlas_dask.scheduling.quotas",  # the quota book (pure)
        "altlas_dask.gpus.state",  # a GPU's state (pure value type)
        "altlas_dask.lazy",
    }
)
POLICY = "altlas_dask.scheduling"
ABOVE_THE_POLICY = ("altlas_dask.client", "altlas_dask.api", "altlas_dask.console")
WORKER_SIDE = ("altlas_dask.worker",)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def known(module: str, names: set[str]) -> str | None:
    """The project module ``module`` names (``m.x`` where ``x`` is a function, not a module, is ``m``)."""
    while module and module not in names:
        module = module.rpartition(".")[0]
    return module or None


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    names = {module_name(p) for p in files}
    found: dict[str, set[str]] = {}
    for path in files:
        targets = {target for m in runtime_imports(path) if (target := known(m, names))}
        found[module_name(path)] = targets - {module_name(path)}
    return found


def broken(rule: str, allowed: Callable[[str, str], bool], modules: Callable[[str], bool]) -> list[str]:
    """The imports of the modules ``modules`` picks that ``allowed(source, target)`` refuses."""
    edges = graph()
    return [
        f"{rule}: {source} imports {target}"
        for source, targets in edges.items()
        if modules(source)
        for target in sorted(targets)
        if not allowed(source, target)
    ]


def test_the_policy_imports_only_itself_and_the_vocabulary():
    assert not broken(
        "policy",
        lambda _s, t: within(t, POLICY) or t in VOCABULARY or t == "altlas_dask",
        lambda s: within(s, POLICY),
    )


def test_the_vocabulary_imports_only_the_vocabulary():
    assert not broken("vocabulary", lambda _s, t: t in VOCABULARY or t == "altlas_dask", lambda s: s in VOCABULARY)


def test_nothing_below_the_client_imports_what_sits_above_it():
    assert not broken(
        "upward", lambda _s, t: not within(t, *ABOVE_THE_POLICY), lambda s: within(s, POLICY) or s in VOCABULARY
    )


def test_the_gateway_and_the_console_do_not_import_each_other():
    assert not broken(
        "gateway->console", lambda _s, t: not within(t, "altlas_dask.console"), lambda s: within(s, "altlas_dask.api")
    )
    assert not broken(
        "console->gateway", lambda _s, t: not within(t, "altlas_dask.api"), lambda s: within(s, "altlas_dask.console")
    )


def test_the_gpu_inventory_knows_no_worker():
    assert not broken("inventory", lambda _s, t: not within(t, *WORKER_SIDE), lambda s: within(s, "altlas_dask.gpus"))


def test_the_client_imports_the_notebook_views_only_lazily():
    """``client/gpu_client.py`` shows itself in notebooks (``_repr_html_`` imports ``altlas_dask.client.notebook``
    when called); it takes nothing else from there, so the notebook views sit above the client."""
    tree = ast.parse((PACKAGE / "client" / "gpu_client.py").read_text())
    top_level = [
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and within(node.module, "altlas_dask.client.notebook")
    ]
    assert not top_level


def test_the_contract_sees_a_backward_import(tmp_path, monkeypatch):
    """The checker is not vacuous: a policy module importing the client, and the inventory importing the worker,
    are reported."""
    package = tmp_path / "altlas_dask"
    (package / "scheduling").mkdir(parents=True)
    for folder in ("gpus", "client", "worker"):
        (package / folder).mkdir()
    for path in (package / "__init__.py", package / "client" / "gpu_client.py", package / "worker" / "binding.py",
                 package / "gpus" / "state.py"):
        path.write_text("")
    (package / "scheduling" / "core.py").write_text("from altlas_dask.client.gpu_client import Client\n")
    (package / "gpus" / "cuda.py").write_text("def f():\n    from altlas_dask.worker.binding import x\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", package)
    assert broken("policy", lambda _s, t: within(t, POLICY) or t in VOCABULARY, lambda s: within(s, POLICY)) == [
        "policy: altlas_dask.scheduling.core imports altlas_dask.client.gpu_client"
    ]
    assert broken("inventory", lambda _s, t: not within(t, *WORKER_SIDE), lambda s: within(s, "altlas_dask.gpus")) == [
        "inventory: altlas_dask.gpus.cuda imports altlas_dask.worker.binding"
    ]

"""Every router RPC that the package calls is served by a handler, with arguments that handler takes.

The calls are found in the source (``x._call("altlas_…")``, ``x.rpc("altlas_…")``,
``x.scheduler.altlas_…(…)``); the handlers are the router's own table (``router_api.handlers``). A client
calling a name that nothing serves (as ``altlas_speeds`` once did: a ``KeyError`` logged on the scheduler
and a silent fallback in the client) fails here instead of in production.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from scheduler_plugins.router_api import RouterApi

REPO = Path(__file__).resolve().parent.parent
CALLERS = ("_call", "rpc")  # Client._call, Gateway._call / Gateway.rpc: the first argument is the RPC's name


def handler_table() -> dict[str, inspect.Signature]:
    public = [name for name in dir(RouterApi) if not name.startswith("_")]
    return {f"altlas_{name}": inspect.signature(getattr(RouterApi, name)) for name in public}


def rpc_calls() -> list[tuple[str, str, set[str]]]:
    """(where, RPC name, keyword names) of every router call written in the package."""
    found = []
    for path in sorted((REPO / "altlas_dask").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            keywords = {k.arg for k in node.keywords if k.arg is not None}
            name = None
            if node.func.attr in CALLERS and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and str(first.value).startswith("altlas_"):
                    name = first.value
            elif node.func.attr.startswith("altlas_") and ast.unparse(node.func.value).endswith("scheduler"):
                name = node.func.attr
            elif isinstance(node.func, ast.Attribute) and node.func.attr == "sync" and node.args:
                target = node.args[0]  # client.sync(client.scheduler.altlas_x, **kwargs)
                if isinstance(target, ast.Attribute) and target.attr.startswith("altlas_"):
                    name = target.attr
            if name is not None:
                found.append((where, name, keywords - {"pick"}))  # pick: Client._call's own argument
    return found


CALLS = rpc_calls()


def test_the_scan_finds_the_package_s_router_calls():
    names = {name for _, name, _ in CALLS}
    # the client's explain/drain/cancel and the gateway's placement lookups are all written as such calls
    assert {"altlas_explain", "altlas_drain", "altlas_cancel", "altlas_tasks"} <= names, names


@pytest.mark.parametrize(("where", "name", "keywords"), CALLS, ids=[f"{w}:{n}" for w, n, _ in CALLS])
def test_every_router_call_has_a_handler_that_takes_its_arguments(where: str, name: str, keywords: set[str]):
    table = handler_table()
    assert name in table, f"{where} calls {name}, which no router handler serves (handlers: {sorted(table)})"
    params = table[name].parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = keywords - set(params)
    assert not unknown, f"{where} passes {sorted(unknown)} to {name}, whose handler takes {sorted(params)}"

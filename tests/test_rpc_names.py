"""Both sides speak the protocol (altlas_dask.protocol): the router serves exactly its RPCs with exactly its request
fields, and every router call written in the package names one of them with fields its request takes.

The calls are found in the source (``x.call(Rpc.X, …)``; where not yet moved onto RouterClient, ``x.rpc("altlas_…")``,
``x._call("altlas_…")``, ``x.scheduler.altlas_…(…)``). A client calling a name that nothing serves (as
``altlas_speeds`` once did: a ``KeyError`` logged on the scheduler and a silent fallback in the client), a handler no
client can name, or a keyword the handler does not take fails here instead of in production.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from altlas_dask.protocol import REQUESTS, Rpc
from scheduler_plugins.router_api import RouterApi, handlers

REPO = Path(__file__).resolve().parent.parent
CALLERS = ("_call", "rpc")  # hand-written calls (as the gateway had): the first argument is the RPC's name
ACTING = {"as_user", "admin"}  # RouterClient fills them; the gateway's own calls still pass them


def handler_parameters(api: type) -> dict[str, inspect.Signature]:
    """Public method name -> its signature, for a ``RouterApi``-like class."""
    return {name: inspect.signature(getattr(api, name)) for name in dir(api) if not name.startswith("_")}


def mismatches(api: type) -> list[str]:
    """Where ``api``'s handlers and the protocol disagree (names, fields, which fields are required)."""
    table = handler_parameters(api)
    found = [f"handler {name} is not in the protocol" for name in sorted(set(table) - {r.method for r in Rpc})]
    for rpc in Rpc:
        if rpc.method not in table:
            found.append(f"{rpc.value} has no handler")
            continue
        params = {n: p for n, p in table[rpc.method].parameters.items() if n not in ("self", "comm")}
        taken = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        required = {n for n in taken if params[n].default is inspect.Parameter.empty}
        if taken != rpc.fields:
            found.append(f"{rpc.value}: handler takes {sorted(taken)}, protocol says {sorted(rpc.fields)}")
        if required != rpc.required:
            found.append(f"{rpc.value}: handler requires {sorted(required)}, protocol {sorted(rpc.required)}")
    return found


def rpc_name(node: ast.Call) -> str | None:
    """The RPC a call names, if it is a router call."""
    func = node.func
    if not isinstance(func, ast.Attribute):
        return None
    first = node.args[0] if node.args else None
    if func.attr == "call" and isinstance(first, ast.Attribute) and ast.unparse(first.value) == "Rpc":
        return Rpc[first.attr].value if first.attr in Rpc.__members__ else f"Rpc.{first.attr}"
    if func.attr in CALLERS and isinstance(first, ast.Constant) and str(first.value).startswith("altlas_"):
        return str(first.value)
    if func.attr.startswith("altlas_") and ast.unparse(func.value).endswith("scheduler"):
        return func.attr
    if func.attr == "sync" and isinstance(first, ast.Attribute) and first.attr.startswith("altlas_"):
        return first.attr  # client.sync(client.scheduler.altlas_x, **kwargs)
    return None


def rpc_calls(root: Path) -> list[tuple[str, str, set[str]]]:
    """(where, RPC name, keyword names) of every router call written under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and (name := rpc_name(node)) is not None:
                keywords = {k.arg for k in node.keywords if k.arg is not None}
                found.append((f"{path.relative_to(root.parent)}:{node.lineno}", name, keywords))
    return found


def wrong(where: str, name: str, keywords: set[str]) -> str | None:
    """Why a call breaks the protocol, or None."""
    if name not in {r.value for r in Rpc}:
        return f"{where} calls {name}, which is not in the protocol (altlas_dask.protocol.Rpc)"
    unknown = keywords - Rpc(name).fields - {"pick"}  # pick: a caller's own argument
    if unknown:
        return f"{where} passes {sorted(unknown)} to {name}, whose request takes {sorted(Rpc(name).fields)}"
    return None


CALLS = rpc_calls(REPO / "altlas_dask")


def test_the_router_serves_exactly_the_protocol():
    assert mismatches(RouterApi) == []
    served = handlers(SimpleNamespace(view=None, identities=None))  # type: ignore[arg-type]
    assert set(served) == {rpc.value for rpc in Rpc} == {rpc.value for rpc in REQUESTS}


def test_a_handler_outside_the_protocol_or_a_field_it_does_not_take_is_found():
    """The check is not vacuous: a handler the protocol lacks, one it lacks a handler for, and a changed parameter
    are each reported."""

    def metrics(self, comm=None):  # a new handler nobody added to the protocol
        return {}

    def cancel(self, comm, key, as_user=None, reason="", admin=False, force=False):  # a new parameter
        return {}

    kept = {name: getattr(RouterApi, name) for name in handler_parameters(RouterApi) if name != "policy"}
    drifted = type("Drifted", (), {**kept, "metrics": metrics, "cancel": cancel})  # and no policy handler
    found = mismatches(drifted)
    assert "handler metrics is not in the protocol" in found
    assert any(m.startswith("altlas_cancel: handler takes") and "'force'" in m for m in found), found
    assert "altlas_policy has no handler" in found


def test_the_scan_finds_the_package_s_router_calls():
    names = {name for _, name, _ in CALLS}
    # RouterClient's calls (one per RPC) and the gateway's placement lookups are all written as such calls
    assert {rpc.value for rpc in Rpc} <= names, names
    assert any(where.startswith("altlas_dask/client/router_client.py") for where, _, _ in CALLS)


def test_the_scan_sees_a_call_with_a_field_the_request_lacks(tmp_path):
    package = tmp_path / "altlas_dask"
    package.mkdir()
    (package / "caller.py").write_text(
        "async def f(router, gateway):\n"
        "    await router.call(Rpc.CANCEL, key='k', force=True)\n"
        "    await gateway.rpc('altlas_speed', task_type='x')\n"
    )
    problems = [why for call in rpc_calls(package) if (why := wrong(*call))]
    assert problems == [
        "altlas_dask/caller.py:2 passes ['force'] to altlas_cancel, whose request takes "
        "['admin', 'as_user', 'key', 'reason']",
        "altlas_dask/caller.py:3 calls altlas_speed, which is not in the protocol (altlas_dask.protocol.Rpc)",
    ]


@pytest.mark.parametrize(("where", "name", "keywords"), CALLS, ids=[f"{w}:{n}" for w, n, _ in CALLS])
def test_every_router_call_is_in_the_protocol_with_fields_its_request_takes(where: str, name: str, keywords: set[str]):
    assert wrong(where, name, keywords) is None, wrong(where, name, keywords)


def test_only_the_protocol_spells_rpc_names():
    """RouterClient is the one owner of the names: no other module spells one (as a string or an attribute)."""
    names = {rpc.value for rpc in Rpc}
    spelled = [
        f"{where}:{node.lineno}"
        for path in sorted((REPO / "altlas_dask").rglob("*.py"))
        if (where := str(path.relative_to(REPO))) != "altlas_dask/protocol.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Constant) and node.value in names)
        or (isinstance(node, ast.Attribute) and node.attr in names)
    ]
    assert spelled == []

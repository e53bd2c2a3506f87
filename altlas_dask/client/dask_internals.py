"""Every use of distributed's and dask's internal client-side API in one place.

The client side (the Python client, its submission coalescer, the REST gateway, the CLI) needs a few
things Dask offers no public API for: a hook on graph submission, the low-level graph type, the
``update-graph`` message, and a future's completion event. Each is wrapped here in a small function that
says what Dask does and the version it was checked against (distributed/dask 2026.7.1); a Dask upgrade
that changes them breaks this module and ``tests/test_coalesce.py``, nothing else
(``tests/test_private_names.py`` keeps it so).
"""

from __future__ import annotations

import uuid
from typing import Any

import dask
import distributed
from dask._expr import LLGExpr
from distributed import Future
from distributed.protocol import serialize, to_serialize
from distributed.protocol.serialize import Serialized, ToPickle


class SubmissionHooks(distributed.Client):
    """``distributed.Client`` with a hook on graph submission and one before every other scheduler message.

    ``Client._graph_to_futures(expr, keys, span_metadata, **kwargs)`` is where ``submit``/``map``/``compute``/
    ``persist`` turn a graph into futures and send one ``update-graph``; ``Client._send_to_scheduler(msg)``
    is the one path of every other message on the client's batched stream (distributed 2026.7.1).
    """

    def hold_submission(self, expr: Any, keys: Any, span_metadata: Any, kwargs: dict[str, Any]) -> Any:
        """The futures of a submission kept back to send later, or None to send it now (the default)."""
        return None

    def flush_submissions(self) -> None:
        """Send what :meth:`hold_submission` kept back; called before any other message goes out."""

    def _graph_to_futures(self, expr, keys, span_metadata, **kwargs):  # type: ignore[no-untyped-def,override]
        held = self.hold_submission(expr, keys, span_metadata, kwargs)
        if held is not None:
            return held
        self.flush_submissions()
        return super()._graph_to_futures(expr, keys, span_metadata, **kwargs)

    def _send_to_scheduler(self, msg: dict[str, Any]) -> None:
        self.flush_submissions()
        super()._send_to_scheduler(msg)

    def _send_now(self, msg: dict[str, Any]) -> None:
        """Put ``msg`` on the batched stream without flushing first (the flush itself sends this way)."""
        distributed.Client._send_to_scheduler(self, msg)


def is_single_task_graph(expr: Any, keys: Any, actors: Any) -> bool:
    """Whether a ``_graph_to_futures`` call is a plain ``submit``: one key of a low-level graph, no actors.

    ``Client.submit`` wraps its one task in ``dask._expr.LLGExpr`` (dask 2026.7.1).
    """
    return type(expr) is LLGExpr and len(keys) == 1 and not actors


def graph_tasks(expr: Any) -> dict[Any, Any]:
    """The ``{key: task}`` dict of a low-level graph expression (its ``dsk`` operand, dask 2026.7.1)."""
    return expr.operand("dsk")


def refcount_lock(client: distributed.Client) -> Any:
    """The lock ``Client`` holds while it creates and releases futures (``Client._refcount_lock``)."""
    return client._refcount_lock


def computation_code(client: distributed.Client) -> Any:
    """The caller's source frames Dask attaches to a graph update (``Client._get_computation_code``,
    with ``distributed.diagnostics.computations.nframes`` frames; distributed 2026.7.1)."""
    return client._get_computation_code(nframes=dask.config.get("distributed.diagnostics.computations.nframes"))


def serialize_tasks(tasks: dict[Any, Any]) -> Serialized:
    """``tasks`` as ``Client._graph_to_futures`` serialises a graph (an ``LLGExpr``, ``on_error="raise"``)."""
    expr = LLGExpr(tasks, _determ_token=uuid.uuid4().hex)
    return Serialized(*serialize(to_serialize(expr), on_error="raise"))


def update_graph_message(
    expr_ser: Serialized,
    keys: list[Any],
    *,
    submitting_task: Any,
    fifo_timeout: Any,
    code: Any,
    annotations: dict[str, Any],
    span_metadata: Any,
) -> dict[str, Any]:
    """The ``update-graph`` message ``Client._graph_to_futures`` sends (distributed 2026.7.1); ``keys`` run
    in the order given (first submitted, first run)."""
    return {
        "op": "update-graph",
        "expr_ser": expr_ser,
        "keys": set(keys),
        "internal_priority": {key: i for i, key in enumerate(keys)},
        "submitting_task": submitting_task,
        "fifo_timeout": fifo_timeout,
        "actors": None,
        "code": ToPickle(code),
        "annotations": ToPickle(annotations),
        "span_metadata": ToPickle(span_metadata),
    }


async def settled(future: Future) -> None:
    """Until ``future`` is finished, erred or cancelled, without fetching its result.

    ``await future`` fetches the result for every waiter; Dask's ``wait()`` needs a default client.
    ``FutureState.wait`` (``future._state``, distributed 2026.7.1) is the event both of them await.
    """
    await future._state.wait()


"""Tasks page: true totals per status, live and recent tasks in a stated order with queue position and the
reason each queued task waits, results of this session's finished tasks, and the selected task's explanation."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from altlas_dask.client.gpu_client import Client
from altlas_dask.client.runs import WorkloadRun
from altlas_dask.console import auth
from altlas_dask.console.views import common
from altlas_dask.protocol import FINAL, TaskStatus

STATUSES = ["all", *(s.value for s in TaskStatus)]
CANCELLABLE = {s.value for s in TaskStatus if s not in FINAL}
ORDERS = {
    "submission (newest first)": "submitted",
    "priority (highest first)": "priority",
    "queue position": "queue",
}


def render() -> None:
    st.title("Tasks")
    client = common.client()
    cells = st.columns([1, 1, 1.3, 1, 1])
    status = cells[0].selectbox("Status", STATUSES, key="tasks_status")
    if auth.is_admin():  # an admin view: anyone's tasks
        user = cells[1].text_input("User", key="tasks_user", placeholder="everyone")
    else:
        user = cells[1].text_input("User", value=client.user, disabled=True, help="Admins see every user's tasks")
    order = cells[2].selectbox("Order", list(ORDERS), key="tasks_order")
    limit = cells[3].number_input("Show at most", min_value=10, max_value=10_000, value=200, step=50, key="tasks_limit")
    auto = cells[4].toggle("Auto-refresh (2 s)", key="tasks_auto")
    if not client.user:
        return
    show = live_table if auto else table
    show(None if status == "all" else status, user.strip() or None, order, int(limit))


def fetch(client: Client, user: str | None, status: str | None, order: str, limit: int) -> dict[str, Any]:
    """The router's answer: ``tasks`` (one page, in ``order``), ``total`` and ``counts`` (true totals per status)."""
    return client.sync(client.router.tasks, user=user, status=status, limit=limit, order=ORDERS[order])


@common.guarded
def _table(status: str | None, user: str | None, order: str, limit: int) -> None:
    client = common.client()  # each run: after a scheduler outage the next one connects afresh
    if "tasks_flash" in st.session_state:
        st.success(st.session_state.pop("tasks_flash"))
    answer = fetch(client, user, status, order, limit)
    rows, counts = answer["tasks"], answer["counts"]
    cells = st.columns(len(counts) + 1)
    cells[0].metric("Tasks", sum(counts.values()))
    for cell, name in zip(cells[1:], sorted(counts, key=STATUSES.index), strict=False):
        cell.metric(name, counts[name])
    window = answer.get("finished_window")
    if window:
        st.caption(
            f"Counted: the tasks still live and those among the cluster's last {window:,} finished "
            "(older ones: Reports). As work finishes, the oldest finished ones leave the count."
        )
    if not rows:
        st.info("No tasks match these filters.")
        return
    st.caption(
        f"Showing {len(rows)} of {answer['total']} matching tasks, ordered by {order}. "
        "Queue # is the place in the line for a GPU (1 = next); 'waiting / result' says why a queued task "
        "waits, or what a finished task of this session returned."
    )
    frame = to_frame(rows, st.session_state.get("runs", []))
    event = st.dataframe(frame, hide_index=True, on_select="rerun", selection_mode="single-row", key="tasks_table")
    keys = frame["key"].tolist()
    picked = event.selection.rows if event is not None else []
    if picked and picked[0] < len(keys) and keys[picked[0]] != st.session_state.get("tasks_picked"):
        st.session_state["tasks_picked"] = st.session_state["tasks_explain"] = keys[picked[0]]
    if st.session_state.get("tasks_explain") not in keys:
        st.session_state.pop("tasks_explain", None)
    status_of = dict(zip(frame["key"], frame["status"], strict=True))
    key = st.selectbox("Explain task", keys, key="tasks_explain", format_func=lambda k: f"{k} ({status_of[k]})")
    if key:
        explain(client, key)


table = st.fragment(_table)
live_table = st.fragment(run_every=2.0)(_table)


def result_of(runs: list[WorkloadRun], key: str) -> str | None:
    """The result preview of a task submitted from this console session (others' futures are not here)."""
    for run in runs:
        if key.startswith(run.name):
            return run.result_of(key)
    return None


def to_frame(rows: list[dict[str, Any]], runs: list[WorkloadRun]) -> pd.DataFrame:
    def span(end: float | None, start: float | None) -> float | None:
        return None if end is None or start is None else round(end - start, 3)

    def waiting_or_result(r: dict[str, Any]) -> str:
        if r["status"] == TaskStatus.COMPLETED:
            return result_of(runs, r["key"]) or ""
        return r.get("waiting_reason") or r.get("error") or ""

    return pd.DataFrame(
        [
            {
                "key": r["key"],
                "status": r["status"],
                "queue #": r.get("queue_position"),
                "waiting / result": waiting_or_result(r),
                "user": r["user"],
                "gpu": r.get("gpu"),
                "priority": r.get("priority"),
                "strategy": r.get("strategy"),
                "latency_s": span(r.get("finished_at"), r.get("submitted")),
                "wait_s": span(r.get("placed_at"), r.get("submitted")),
                "gpu_s": r.get("gpu_seconds"),
                "attempts": len(r.get("attempts") or []),
                "submitted (UTC)": common.when(r.get("submitted")),
                "task_type": r.get("task_type"),
                "memory_mb": r.get("memory_mb"),
            }
            for r in rows
        ]
    ).astype({"queue #": "Int64"})


def explain(client: Client, key: str) -> None:
    info = client.explain(key, wait=0.0)
    with st.container(border=True, key="task-explanation"):
        where = "not placed yet" if info.get("gpu") is None else f"GPU {info['gpu']}"
        position = f" · queue #{info['queue_position']}" if info.get("queue_position") else ""
        st.markdown(
            f"**{key}** · {info['status']}{position} · {where} · strategy `{info.get('strategy') or 'default'}`"
        )
        if info.get("waiting_reason"):
            st.write(f"Waiting: {info['waiting_reason']}")
        if info.get("reason"):
            st.write(f"Why: {info['reason']}")
        result = result_of(st.session_state.get("runs", []), key)
        if result:
            st.text(f"Result: {result}")
        scores, rejected = info.get("scores") or {}, info.get("rejected") or {}
        gpus = sorted(set(scores) | set(rejected), key=lambda g: int(g) if str(g).isdigit() else 1 << 30)
        if gpus:
            st.dataframe(
                pd.DataFrame([{"gpu": g, "score": scores.get(g), "rejected": rejected.get(g, "")} for g in gpus]),
                hide_index=True,
            )
        for attempt in info.get("attempts") or []:
            st.warning(f"Attempt on GPU {attempt.get('gpu')}: {attempt.get('error')}")
        if info.get("error"):
            st.error(info["error"])
        if info["status"] in CANCELLABLE and st.button("Cancel task", key=f"cancel-{key}", type="primary"):
            result = client.cancel_task(key, reason=f"cancelled from the console by {client.user}")
            st.session_state["tasks_flash"] = f"Task {result['key']}: {result['status']}"
            st.rerun(scope="fragment")  # list it again with its new status

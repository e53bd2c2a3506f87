"""Tasks page: live and recent tasks filtered by status/user, a task's routing explanation, and cancel."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from altlas_dask.client import Client
from altlas_dask.console.views import common

STATUSES = ["all", "queued", "placed", "running", "completed", "failed", "timed_out", "cancelled", "rejected"]
CANCELLABLE = {"queued", "placed", "running"}


def render() -> None:
    st.title("Tasks")
    client = common.client()
    cells = st.columns([1, 1, 1, 1])
    status = cells[0].selectbox("Status", STATUSES, key="tasks_status")
    user = cells[1].text_input("User", key="tasks_user", placeholder="everyone you may see")
    limit = cells[2].number_input("Show at most", min_value=10, max_value=10_000, value=200, step=50, key="tasks_limit")
    auto = cells[3].toggle("Auto-refresh (2 s)", key="tasks_auto")
    if not client.user:
        return
    show = live_table if auto else table
    show(client, None if status == "all" else status, user.strip() or None, int(limit))


@common.guarded
def _table(client: Client, status: str | None, user: str | None, limit: int) -> None:
    if "tasks_flash" in st.session_state:
        st.success(st.session_state.pop("tasks_flash"))
    rows = client.tasks(user=user, status=status, limit=limit)
    if not rows:
        st.info("No tasks match these filters.")
        return
    counts = pd.Series([r["status"] for r in rows]).value_counts()
    cells = st.columns(max(len(counts), 1) + 1)
    cells[0].metric("Tasks", len(rows))
    for cell, (name, count) in zip(cells[1:], counts.items(), strict=False):
        cell.metric(str(name), int(count))
    frame = to_frame(rows)
    event = st.dataframe(frame, hide_index=True, on_select="rerun", selection_mode="single-row", key="tasks_table")
    keys = frame["key"].tolist()
    picked = event.selection.rows if event is not None else []
    if picked and picked[0] < len(keys) and keys[picked[0]] != st.session_state.get("tasks_picked"):
        st.session_state["tasks_picked"] = st.session_state["tasks_explain"] = keys[picked[0]]
    if st.session_state.get("tasks_explain") not in keys:
        st.session_state.pop("tasks_explain", None)
    status_of = dict(zip(frame["key"], frame["status"], strict=True))
    key = st.selectbox(
        "Routing explanation for", keys, key="tasks_explain", format_func=lambda k: f"{k} ({status_of[k]})"
    )
    if key:
        explain(client, key)


table = st.fragment(_table)
live_table = st.fragment(run_every=2.0)(_table)


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    def span(end: float | None, start: float | None) -> float | None:
        return None if end is None or start is None else round(end - start, 3)

    return pd.DataFrame(
        [
            {
                "key": r["key"],
                "status": r["status"],
                "user": r["user"],
                "gpu": r.get("gpu"),
                "strategy": r.get("strategy"),
                "priority": r.get("priority"),
                "latency_s": span(r.get("finished_at"), r.get("submitted")),
                "wait_s": span(r.get("placed_at"), r.get("submitted")),
                "gpu_s": r.get("gpu_seconds"),
                "attempts": len(r.get("attempts") or []),
                "submitted (UTC)": common.when(r.get("submitted")),
                "task_type": r.get("task_type"),
                "memory_mb": r.get("memory_mb"),
                "error": r.get("error") or "",
            }
            for r in rows
        ]
    )


def explain(client: Client, key: str) -> None:
    info = client.explain(key, wait=0.0)
    with st.container(border=True, key="task-explanation"):
        where = "not placed yet" if info.get("gpu") is None else f"GPU {info['gpu']}"
        st.markdown(f"**{key}** · {info['status']} · {where} · strategy `{info.get('strategy') or 'default'}`")
        if info.get("reason"):
            st.write(f"Why: {info['reason']}")
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

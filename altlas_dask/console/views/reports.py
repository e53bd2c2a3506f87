"""Reports page: per-GPU and per-user throughput and latency over a window, from the final task records."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from altlas_dask.accounting import reports
from altlas_dask.console import auth
from altlas_dask.console.views import common

WINDOWS = {"Last 15 minutes": 900, "Last hour": 3600, "Last 24 hours": 86_400, "Last 7 days": 604_800, "All": None}
LIMIT = 50_000


def render() -> None:
    st.title("Reports")
    client = common.client()
    cells = st.columns([1, 1, 1])
    window = cells[0].selectbox("Window", list(WINDOWS), index=1, key="reports_window")
    if auth.is_admin():  # an admin view: anyone's records
        user = cells[1].text_input("User", key="reports_user", placeholder="everyone").strip() or None
    else:
        user = cells[1].text_input("User", value=client.user, disabled=True, help="Admins see every user") or None
    cells[2].button("Refresh", key="reports_refresh")
    span = WINDOWS[window]
    records = client.records(user=user, since=None if span is None else time.time() - span, limit=LIMIT)
    if not records:
        st.info("No finished tasks in this window.")
        return
    if len(records) >= LIMIT:
        st.caption(f"Showing the newest {LIMIT} records of the window.")
    frame = prepare(records)
    active = max(frame["finished"].max() - frame["submitted"].min(), 1e-9)
    totals(frame, active)
    st.caption(
        f"Throughput: completed tasks per second over the active span ({active:.1f} s, first submission "
        "to last finish); latency: submission to finish; wait: submission to placement."
    )
    st.subheader("Per GPU")
    st.dataframe(summarise(frame, "gpu", active), hide_index=True, key="reports_per_gpu")
    st.subheader("Per user")
    st.dataframe(summarise(frame, "user", active), hide_index=True, key="reports_per_user")
    per_bin(frame[frame["status"] == "completed"])
    export(client, records, time.time() - span if span is not None else float(frame["submitted"].min()))


def export(client: Any, records: list[dict[str, Any]], since: float) -> None:
    """The window's report as ``altlas-dask report`` gives it (altlas_dask.accounting.reports), to download."""
    st.subheader("Export")
    until = time.time() + 1e-3
    cells = st.columns([1, 1, 1])
    by = cells[0].selectbox("By", reports.BY, index=1, key="reports_export_by")
    limits: dict[str, float] = {}

    def gpu_minutes(user: str) -> float:
        if user not in limits:
            limits[user] = float(client.quota(user)["quotas"]["gpu_time"]["limit"])
        return limits[user]

    rows = reports.build_report(records, by, since, until, gpu_minutes)
    stem = f"altlas-report-by-{by}-{reports.iso(since)}"
    cells[1].download_button("CSV", reports.to_csv(rows, by), f"{stem}.csv", "text/csv", key="reports_csv")
    body = reports.to_json(rows, by, since, until)
    cells[2].download_button("JSON", body, f"{stem}.json", "application/json", key="reports_json")
    st.caption(f"The same rows as `altlas-dask report --by {by} --since {reports.iso(since)}`.")


BINS = ((2 * 3600, "min", "minute", "%H:%M"), (3 * 86_400, "h", "hour", "%m-%d %H:00"), (None, "D", "day", "%Y-%m-%d"))


def per_bin(done: pd.DataFrame) -> None:
    """Completed tasks per minute / hour / day (by the span of the data), stacked by GPU."""
    if done.empty:
        return
    finished = pd.to_datetime(done["finished"], unit="s")
    span = (finished.max() - finished.min()).total_seconds()
    _, freq, unit, fmt = next(b for b in BINS if b[0] is None or span <= b[0])
    counts = done.assign(bin=finished.dt.floor(freq)).pivot_table(
        index="bin", columns="gpu", values="key", aggfunc="count", fill_value=0
    )
    counts = counts.reindex(pd.date_range(counts.index.min(), counts.index.max(), freq=freq), fill_value=0)
    counts.index = counts.index.strftime(fmt)
    st.subheader(f"Completed tasks per {unit} (UTC)")
    st.bar_chart(counts, x_label=unit, y_label="tasks")


def prepare(records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(records)
    frame["gpu"] = frame["gpu"].map(lambda g: "none" if g is None or pd.isna(g) else f"GPU {int(g)}")
    frame["latency_s"] = frame["finished"] - frame["submitted"]
    frame["wait_s"] = frame["started"] - frame["submitted"]
    return frame


def totals(frame: pd.DataFrame, active: float) -> None:
    done = frame[frame["status"] == "completed"]
    cells = st.columns(6)
    cells[0].metric("Tasks", len(frame))
    cells[1].metric("Completed", len(done))
    cells[2].metric("Not completed", int((frame["status"] != "completed").sum()))
    cells[3].metric("Tasks/s", f"{len(done) / active:.2f}")
    cells[4].metric("p50 latency", common.seconds(_quantile(done["latency_s"], 0.5)))
    cells[5].metric("p95 latency", common.seconds(_quantile(done["latency_s"], 0.95)))


def summarise(frame: pd.DataFrame, by: str, active: float) -> pd.DataFrame:
    rows = []
    for name, group in frame.groupby(by, sort=True):
        done = group[group["status"] == "completed"]
        rows.append(
            {
                by: name,
                "tasks": len(group),
                "completed": len(done),
                "failed": int(group["status"].isin(reports.FAILED).sum()),
                "rejected": int((group["status"] == "rejected").sum()),
                "cancelled": int((group["status"] == "cancelled").sum()),
                "throughput (tasks/s)": round(len(done) / active, 3),
                "p50 latency (s)": _round(_quantile(done["latency_s"], 0.5)),
                "p95 latency (s)": _round(_quantile(done["latency_s"], 0.95)),
                "mean wait (s)": _round(done["wait_s"].mean() if len(done) else None),
                "GPU time (s)": round(float(group["gpu_seconds"].sum()), 3),
            }
        )
    return pd.DataFrame(rows)


def _quantile(values: pd.Series, q: float) -> float | None:
    values = values.dropna()
    return float(values.quantile(q)) if len(values) else None


def _round(value: float | None) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 4)

"""GPUs page: a live card per GPU and a time series of the last minutes (samples kept in session state)."""

from __future__ import annotations

import time

import altair as alt
import pandas as pd
import streamlit as st

from altlas_dask.client.gpu_client import Client
from altlas_dask.console.views import common
from altlas_dask.gpus.condition import condition
from altlas_dask.gpus.state import GpuState

REFRESH_S = 2.0
KEEP_S = 15 * 60
PER_ROW = 4
WINDOWS = {"1 min": 60, "5 min": 300, "15 min": 900}
SERIES = {
    "Utilization %": "utilization",
    "Memory used %": "memory",
    "Temperature °C": "temperature",
    "Power W": "power",
}
PERCENT = {"utilization", "memory"}
ON_GPU_HELP = "Tasks placed on a GPU: running there, or next in line on that GPU's worker."
QUEUED_HELP = (
    "Tasks waiting for a GPU on the scheduler (not placed yet), the same count as status 'queued' on the "
    "Tasks page and in the REST API: waiting for a free GPU, for the user's limits, or to be retried."
)


def render() -> None:
    st.title("GPUs")
    common.client()  # not signed in, or no scheduler: the page says so (and retries)
    left, right = st.columns(2)
    series = left.segmented_control("Chart", list(SERIES), default="Utilization %", required=True, key="gpu_series")
    window = right.segmented_control("Window", list(WINDOWS), default="5 min", required=True, key="gpu_window")
    live(SERIES[series], WINDOWS[window])


@st.fragment(run_every=REFRESH_S)
@common.guarded
def live(series: str, window_s: int) -> None:
    """Every REFRESH_S; asks for the client each time: after a scheduler outage the next run connects afresh."""
    client = common.client()
    gpus = client.gpus()
    samples = record(gpus)
    overview(client, gpus)
    for start in range(0, len(gpus), PER_ROW):
        columns = st.columns(PER_ROW)
        for column, gpu in zip(columns, gpus[start : start + PER_ROW], strict=False):
            with column:
                card(gpu, samples)
    chart(samples, series, window_s)


def record(gpus: list[GpuState]) -> pd.DataFrame:
    """Append one sample per GPU to st.session_state and return the last KEEP_S seconds as a frame."""
    now = time.time()
    rows = st.session_state.setdefault("gpu_samples", [])
    rows.extend(
        {
            "time": now,
            "gpu": f"GPU {g.id}",
            "utilization": g.utilization_gpu,
            "memory": 100 * g.memory_used_ratio,
            "temperature": g.temperature_c,
            "power": g.power_usage_w,
        }
        for g in gpus
    )
    while rows and rows[0]["time"] < now - KEEP_S:
        rows.pop(0)
    return pd.DataFrame(rows)


def overview(client: Client, gpus: list[GpuState]) -> None:
    status = client.router_status()
    tracked, counters = status.get("tracked", {}), status.get("counters", {})
    cells = st.columns(6)
    cells[0].metric("Active GPUs", f"{sum(g.status == 'active' for g in gpus)} / {len(gpus)}")
    cells[1].metric("On a GPU", tracked.get("running", 0) + tracked.get("placed", 0), help=ON_GPU_HELP)
    cells[2].metric("Queued", tracked.get("queued", 0) + tracked.get("retrying", 0), help=QUEUED_HELP)
    cells[3].metric("Placed since start", counters.get("placed", 0))
    cells[4].metric("Retried since start", counters.get("retried", 0))
    cells[5].metric("Failed since start", counters.get("failed", 0))


def card(gpu: GpuState, samples: pd.DataFrame) -> None:
    history = samples[samples["gpu"] == f"GPU {gpu.id}"].tail(60)
    with st.container(border=True, key=f"gpu-card-{gpu.id}"):
        title, badge = st.columns([2, 1], vertical_alignment="center")
        title.markdown(f"**GPU {gpu.id}**")
        state = condition(gpu)
        with badge:
            st.badge(state.label, color=state.badge)
        if state.reason:
            st.markdown(f":{state.badge}[{state.reason}]")
        st.caption(
            f"{gpu.name} · CC {gpu.compute_capability} · {gpu.status}" + (" · simulated" if gpu.simulated else "")
        )
        st.metric("Utilization", f"{gpu.utilization_gpu:.0f} %")
        sparkline(history, "utilization", key=f"gpu-util-{gpu.id}")  # 0-100 %: a dip reads as its real size
        st.metric("Temperature", f"{gpu.temperature_c:.0f} °C", chart_data=history["temperature"].tolist())
        used, total = gpu.memory_used_mb / 1024, gpu.memory_total_mb / 1024
        st.progress(min(gpu.memory_used_ratio, 1.0), text=f"Memory {used:.1f} / {total:.0f} GB")
        power = gpu.power_usage_w / gpu.power_limit_w if gpu.power_limit_w else 0.0
        st.progress(min(power, 1.0), text=f"Power {gpu.power_usage_w:.0f} / {gpu.power_limit_w:.0f} W")
        st.caption(
            f"{gpu.active_requests} on this GPU, {gpu.queued_requests} of them waiting for a slot · "
            f"{gpu.worker or 'no worker'}"
        )


def sparkline(history: pd.DataFrame, column: str, key: str) -> None:
    """A percentage's recent samples on a fixed 0-100 axis (st.metric's own sparkline scales to the data)."""
    if len(history) < 2:
        return
    data = history.assign(sample=range(len(history)))
    line = (
        alt.Chart(data)
        .mark_area(line=True, opacity=0.3)
        .encode(
            x=alt.X("sample:Q", axis=None),
            y=alt.Y(f"{column}:Q", axis=None, scale=alt.Scale(domain=[0, 100])),
            tooltip=[alt.Tooltip(f"{column}:Q", format=".0f", title="%")],
        )
        .properties(height=40)
    )
    st.altair_chart(line, width="stretch", key=key)


def chart(samples: pd.DataFrame, series: str, window_s: int) -> None:
    """One line per GPU; gaps (while this page was not open) break the lines instead of bridging them."""
    now = time.time()
    if samples.empty:  # no GPU reported yet (a cluster starting, or back after an outage)
        return
    recent = samples[samples["time"] >= now - window_s].sort_values("time")
    if recent.empty:
        return
    covered = now - float(recent["time"].min())
    st.subheader(f"Last {window_s // 60} min")
    if covered < window_s - 2 * REFRESH_S:  # the page keeps only what it sampled while open
        st.caption(
            f"Samples from the {covered / 60:.1f} min this page has been open (it samples every {REFRESH_S:g} s)."
        )
    recent = recent.assign(
        seconds=(recent["time"] - now).round(1), segment=(recent["time"].diff() > 3 * REFRESH_S).cumsum()
    )
    label = next(name for name, key in SERIES.items() if key == series)
    scale = alt.Scale(domain=[0, 100]) if series in PERCENT else alt.Scale(zero=False, nice=True)
    lines = (
        alt.Chart(recent)
        .mark_line(point=alt.OverlayMarkDef(size=14))
        .encode(
            x=alt.X("seconds:Q", title="seconds (0 = now)"),
            y=alt.Y(f"{series}:Q", title=label, scale=scale),
            color=alt.Color("gpu:N", title=None),
            detail="segment:N",
            tooltip=["gpu", "seconds", series],
        )
    )
    st.altair_chart(lines, width="stretch")

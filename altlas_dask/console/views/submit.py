"""Submit page: run a named workload N times; progress bars until done, then a result summary.

The runs (and so their futures) live in st.session_state["runs"], so nothing is released
before it finishes; "Clear finished runs" lets them go.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from altlas_dask.client.gpu_client import Client
from altlas_dask.client.runs import RunSummary, WorkloadRun, coerce, submit_workload
from altlas_dask.client.workloads import WORKLOADS, Workload
from altlas_dask.config import STRATEGIES
from altlas_dask.console import auth
from altlas_dask.console.views import common
from altlas_dask.gpus.condition import why_nothing_fits
from altlas_dask.options import GpuOptions

DEFAULT_STRATEGY = "(cluster default)"
KEEP_RUNS = 10


def render() -> None:
    st.title("Submit")
    client = common.client()
    name = st.selectbox("Workload", list(WORKLOADS), key="submit_workload")
    workload = WORKLOADS[name]
    st.caption(workload.description)
    with st.form("submit_form", border=True):
        cells = st.columns(3)
        count = cells[0].number_input("Count", min_value=1, max_value=100_000, value=8, step=1)
        batch = cells[1].number_input("Batch size", min_value=1, max_value=10_000, value=1, step=1, help=BATCH_HELP)
        strategy = cells[2].selectbox("Strategy", [DEFAULT_STRATEGY, *STRATEGIES])
        cells = st.columns(3)
        priority = cells[0].slider("Priority", min_value=1, max_value=5, value=3, help="5 is served first")
        user = cells[1].text_input(
            "Submit as", value=st.session_state.get("user") or "", help="The user the tasks belong to"
        )
        task_type = cells[2].text_input("Task type", value=workload.task_type)
        st.markdown("**Parameters**")
        params = param_inputs(workload)
        submitted = st.form_submit_button("Submit", type="primary")
    if submitted and (why := never_fits(client, params)):
        st.error(f"No GPU can ever take these tasks: {why}. Nothing was submitted.", icon=":material/block:")
    elif submitted:
        options = {"strategy": None if strategy == DEFAULT_STRATEGY else strategy, "priority": int(priority)}
        options.update(user=user.strip() or None, task_type=task_type.strip() or None)
        who = auth.principal()
        GpuOptions.parse({"user": options["user"]} if options["user"] else {})  # a bad name: its own clear error
        if options["user"] not in (None, who.user) and not who.is_admin:
            raise common.ConsoleError(f"{who.user!r} may submit only as themself: admins submit for other users")
        run = submit_workload(client, name, int(count), batch_size=int(batch), params=params, gpu_options=options)
        runs = st.session_state.setdefault("runs", [])
        runs.insert(0, run)
        del runs[KEEP_RUNS:]
    progress()


BATCH_HELP = "Workload calls per Dask task: 1 runs every call as its own task."
SHOW_RESULTS = 5


def never_fits(client: Client, params: dict[str, Any]) -> str | None:
    """Why no GPU of the cluster could ever hold these tasks (their ``memory_mb``), or None."""
    memory = params.get("memory_mb")
    if not isinstance(memory, int) or memory <= 0:
        return None
    policy = client.sync(client.router.policy)
    return why_nothing_fits(client.gpus(), memory, policy["memory_threshold"])


def param_inputs(workload: Workload) -> dict[str, Any]:
    """One input per workload parameter, typed like its default."""
    values: dict[str, Any] = {}
    cells = st.columns(max(len(workload.defaults), 1))
    for cell, (key, default) in zip(cells, workload.defaults.items(), strict=False):
        if isinstance(default, bool):
            values[key] = cell.checkbox(key, value=default)
        elif isinstance(default, int | float):
            values[key] = cell.number_input(key, value=default, step=1 if isinstance(default, int) else None)
        else:
            raw = cell.text_input(key, value="" if default is None else str(default))
            values[key] = coerce(default, raw, key)
    return values


@st.fragment(run_every=0.5)
@common.guarded
def progress() -> None:
    runs: list[WorkloadRun] = st.session_state.get("runs", [])
    if not runs:
        st.info("No runs yet in this session: choose a workload and press Submit.")
        return
    if any(run.done() for run in runs) and st.button("Clear finished runs"):
        runs[:] = [run for run in runs if not run.done()]
        st.rerun(scope="fragment")
    for index, run in enumerate(runs):
        with st.container(border=True, key=f"run-{run.name}"):
            show_run(run, detailed=index == 0)


def show_run(run: WorkloadRun, detailed: bool) -> None:
    done, total = run.done_calls(), run.calls
    options = ", ".join(f"{k}={v}" for k, v in run.gpu_options.items())
    st.markdown(f"**{run.name}** · {total} calls in {len(run.futures)} tasks · {options}")
    st.progress(done / total, text=f"{done} / {total} calls done")
    if not run.done():
        if st.button("Cancel run", key=f"cancel-{run.name}"):
            run.cancel()
        return
    summary = run.summary()
    text = (
        f"Done: {summary.completed} of {summary.tasks} tasks completed, {summary.failed} failed, "
        f"{summary.cancelled} cancelled in {summary.wall_s:.2f} s"
    )
    (st.success if not summary.failed and not summary.cancelled else st.warning)(text)
    if detailed:
        show_summary(summary)
        show_results(run)


def show_results(run: WorkloadRun) -> None:
    """The first results: generated text, or the return value's repr (one line each, cut short)."""
    results = run.results(SHOW_RESULTS)
    if not results:
        return
    with st.container(key=f"run-results-{run.name}"):
        st.markdown(f"**Results** (first {len(results)} of {len(run.futures)} tasks)")
        for key, text in results:
            st.text(f"{key}: {text}")


def show_summary(summary: RunSummary) -> None:
    st.caption("Latency: from submission until this console saw the task finish (queueing and transfer included).")
    cells = st.columns(4)
    cells[0].metric("Throughput", f"{summary.throughput:.1f} calls/s")
    cells[1].metric("Wall time", common.seconds(summary.wall_s))
    cells[2].metric("p50 latency", common.seconds(summary.p50_latency_s))
    cells[3].metric("p95 latency", common.seconds(summary.p95_latency_s))
    if summary.per_gpu:
        frame = pd.DataFrame(summary.per_gpu).rename(
            columns={"gpu": "GPU", "tasks": "Tasks", "calls": "Calls", "p50_latency_s": "p50 (s)"}
        )
        st.dataframe(frame.rename(columns={"p95_latency_s": "p95 (s)"}), hide_index=True)
    for error in summary.errors:
        st.error(error)

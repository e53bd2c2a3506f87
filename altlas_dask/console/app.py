"""altlas-dask web console: ``altlas-dask console`` (or ``streamlit run altlas_dask/console/app.py``).

The scheduler comes from ``$ALTLAS_SCHEDULER`` (or the sidebar); who the console acts as from the API key
entered in the sidebar (:mod:`altlas_dask.console.auth`). Pages: GPUs, Submit, Tasks, Reports.
"""

from __future__ import annotations

import streamlit as st

from altlas_dask.console import auth
from altlas_dask.console.views import common, gpus, reports, submit, tasks

st.set_page_config(page_title="altlas-dask console", page_icon=":material/memory:", layout="wide")

with st.sidebar:
    st.markdown("### altlas-dask")
    st.text_input("Scheduler", value=common.default_scheduler(), key="scheduler", help="tcp://host:port")
    auth.sidebar()

pages = [
    st.Page(common.page(gpus.render), title="GPUs", icon=":material/memory:", url_path="gpus", default=True),
    st.Page(common.page(submit.render), title="Submit", icon=":material/send:", url_path="submit"),
    st.Page(common.page(tasks.render), title="Tasks", icon=":material/list:", url_path="tasks"),
    st.Page(common.page(reports.render), title="Reports", icon=":material/bar_chart:", url_path="reports"),
]
st.navigation(pages, position="sidebar").run()

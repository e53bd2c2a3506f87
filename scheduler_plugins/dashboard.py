"""The "GPUs" page of the Dask dashboard: the router's live view of every GPU, at ``/altlas-gpus``.

One Bokeh document per browser tab, built by :func:`gpus_doc` over the scheduler's
:class:`~scheduler_plugins.gpu_router.GpuRouter` and refreshed by a 1 s periodic callback:
a bar per GPU for memory in use (with the configured ``memory_threshold``), utilization
(with ``utilization_threshold``) and tasks placed on it, each bar coloured by the GPU's
health (green healthy, orange warning, red critical or error, violet drained, grey inactive); a table of
the GPUs' temperature and power; the tasks held on the scheduler waiting for a GPU; and the
last routing decisions with their reasons. Nothing here changes the router's state.

How the page is registered, and why this way
--------------------------------------------
The scheduler's Bokeh pages are the module-level dict
``distributed.dashboard.scheduler.applications`` (URL path -> ``doc(scheduler, extra, doc)``).
``Scheduler.__init__`` reads it once, in ``distributed.dashboard.scheduler.connect``, to build
its ``BokehTornado`` server: a page added after that is never routed (Bokeh builds the
per-application Tornado handlers up front, and adding a route to a running server would mean
re-creating Bokeh's session, websocket and autoload handlers by hand, private Bokeh API).
So :func:`register_page` adds the page to that dict, and ``scheduler_plugins.gpu_router``
calls it when it is imported. The router module is imported before every scheduler that can
carry a router is built, on both supported paths:

* :func:`altlas_dask.start_cluster` imports it to construct ``GpuRouter(config)`` before the
  ``LocalCluster`` (whose scheduler runs in this process) is created;
* ``dask scheduler --preload scheduler_plugins.gpu_router``: ``Scheduler.__init__`` imports
  preload modules (``preloading.process_preloads``) before it starts its HTTP server.

This is the extension point the Dask maintainers point to for custom scheduler pages
(add an application to the scheduler's ``applications`` from a preload; dask/distributed#2790),
the same dict Dask's own ``/gpu`` and ``/individual-*`` pages live in. The page is also
registered as ``/individual-altlas-gpus``, which lists it as "Altlas GPUs" in the dashboard's
"More..." menu (Dask builds that menu from the ``/individual-*`` keys). Alternatives rejected:
``http_prefix`` only moves every page under a prefix; ``distributed.scheduler.http.routes``
serves plain Tornado handlers, not Bokeh documents; a separate Bokeh server would be a second
port outside the dashboard. A router registered later on an already running scheduler (with
``client.register_plugin``) is found too, if this module was imported before that scheduler
started; otherwise the page is simply absent there (``/metrics`` still has every number).
"""

from __future__ import annotations

import html
import logging
import time
from typing import TYPE_CHECKING, Any

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    Div,
    FactorRange,
    HoverTool,
    NumeralTickFormatter,
    Range1d,
    Span,
)
from bokeh.plotting import figure
from distributed.utils import log_errors

from altlas_dask.gpus.condition import condition
from scheduler_plugins.dask_internals import add_dashboard_pages

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler

    from altlas_dask.scheduling.view import CoreView

logger = logging.getLogger(__name__)

PLUGIN_NAME = "altlas-router"  # the router's name in scheduler.plugins
PAGE = "/altlas-gpus"
MENU_PAGE = "/individual-altlas-gpus"  # listed in the dashboard's "More..." menu
REFRESH_MS = 1000
DECISION_ROWS = 50
GIB = 1024.0
GPU_COLUMNS = (
    "gpu",
    "label",
    "name",
    "status",
    "health",
    "colour",
    "memory_ratio",
    "memory_text",
    "utilization",
    "utilization_text",
    "running",
    "temperature",
    "power_text",
    "worker",
)
DECISION_COLUMNS = ("time", "key", "gpu", "strategy", "user", "priority", "reason")


GPU_TABLE = {
    "label": "GPU",
    "name": "name",
    "status": "status",
    "health": "health",
    "temperature": "°C",
    "power_text": "power",
    "memory_text": "memory",
    "utilization_text": "util",
    "running": "tasks",
    "worker": "worker",
}
DECISION_TABLE = {
    "time": "time",
    "key": "task",
    "gpu": "GPU",
    "strategy": "strategy",
    "user": "user",
    "priority": "prio",
    "reason": "reason",
}
TABLE_STYLE = "border-collapse:collapse;font-size:13px;width:100%"
CELL_STYLE = "padding:2px 8px;border-bottom:1px solid #e0e0e0;text-align:left;white-space:nowrap"


def html_table(columns: dict[str, str], data: dict[str, list[Any]]) -> str:
    """``data``'s ``columns`` (field -> header) as an HTML table, every value escaped."""
    head = "".join(f'<th style="{CELL_STYLE}">{html.escape(title)}</th>' for title in columns.values())
    n = len(next(iter(data.values()), []))
    body = "".join(
        "<tr>" + "".join(f'<td style="{CELL_STYLE}">{html.escape(str(data[f][i]))}</td>' for f in columns) + "</tr>"
        for i in range(n)
    )
    return f'<table style="{TABLE_STYLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def find_view(scheduler: Scheduler) -> CoreView | None:
    """The view of the scheduler's GPU router, or ``None`` where it has none."""
    router = scheduler.plugins.get(PLUGIN_NAME)
    return router.view if router is not None else None


def gpu_rows(view: CoreView | None) -> dict[str, list[Any]]:
    """One row per GPU, in GPU order, from the router's snapshot (heartbeat + in-flight work + drain)."""
    data: dict[str, list[Any]] = {c: [] for c in GPU_COLUMNS}
    for g in view.gpus() if view is not None else ():
        ratio = g.memory_used_ratio if g.memory_total_mb else 0.0
        values = {
            "gpu": str(g.id),
            "label": f"GPU {g.id}",
            "name": g.name,
            "status": g.status,
            "health": condition(g).label,
            "colour": condition(g).hex,  # drained, failed and unhealthy GPUs each have their own colour
            "memory_ratio": min(ratio, 1.0),
            "memory_text": f"{g.memory_used_mb / GIB:.1f} / {g.memory_total_mb / GIB:.1f} GiB ({ratio:.0%})",
            "utilization": min(g.utilization_gpu / 100.0, 1.0),
            "utilization_text": f"{g.utilization_gpu:.0f}%",
            "running": g.active_requests,
            "temperature": round(g.temperature_c, 1),
            "power_text": f"{g.power_usage_w:.0f} / {g.power_limit_w:.0f} W",
            "worker": g.worker or "",
        }
        for c in GPU_COLUMNS:
            data[c].append(values[c])
    return data


def decision_rows(view: CoreView | None, limit: int = DECISION_ROWS) -> dict[str, list[Any]]:
    """The router's last placements, newest first, with the strategy's reason."""
    data: dict[str, list[Any]] = {c: [] for c in DECISION_COLUMNS}
    recent = view.placements(limit) if view is not None else []
    for d in reversed(recent):
        millis = int(d["time"] * 1000) % 1000
        data["time"].append(f"{time.strftime('%H:%M:%S', time.localtime(d['time']))}.{millis:03d}")
        data["key"].append(str(d["key"]))
        data["gpu"].append(str(d["gpu"]))
        data["strategy"].append(d["strategy"])
        data["user"].append(d["user"])
        data["priority"].append(d["priority"])
        data["reason"].append(d["reason"])
    return data


def summary_html(view: CoreView | None) -> str:
    if view is None:
        return (
            "<h3>GPUs</h3><p>No GPU router on this scheduler (start it with <code>altlas_dask.start_cluster</code> "
            "or <code>dask scheduler --preload scheduler_plugins.gpu_router</code>).</p>"
        )
    gpus = view.gpus()
    queued = view.queued_by_user()
    by_user = ", ".join(f"{html.escape(u)}: {n}" for u, n in sorted(queued.items(), key=lambda kv: -kv[1])[:8])
    c = view.counters()
    return (
        f"<h3>GPUs</h3><p><b>{len(gpus)}</b> GPUs ({sum(g.status == 'active' for g in gpus)} active) &middot; "
        f"<b>{sum(g.active_requests for g in gpus)}</b> tasks placed on GPUs &middot; "
        f"<b>{sum(queued.values())}</b> queued on the scheduler{f' ({by_user})' if by_user else ''} &middot; "
        f"placed {c['placed']}, held {c['held']}, retried {c['retried']}, rejected {c['rejected']}, "
        f"failed {c['failed']}, timed out {c['timed_out']}</p>"
    )


class GpuPage:
    """The models of one open page; :meth:`update` refreshes them from the router."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        view = find_view(scheduler)
        policy = view.policy if view is not None else None
        self.gpus = ColumnDataSource({c: [] for c in GPU_COLUMNS}, name="altlas-gpus")
        self.summary = Div(text="", sizing_mode="stretch_width", name="altlas-summary")
        # Plain HTML tables: a Bokeh DataTable does not redraw when new data has as many rows as the old
        # (its CDSView indices do not change, so the grid is never invalidated): 4 GPUs would stay frozen.
        self.gpu_table = Div(text="", sizing_mode="stretch_width", name="altlas-gpu-table")
        self.decisions = Div(
            text="",
            sizing_mode="stretch_width",
            styles={"max-height": "420px", "overflow-y": "auto"},
            name="altlas-decisions",
        )
        self.y_range = FactorRange(factors=[])
        self.memory = self._bars(
            "Memory in use",
            "memory_ratio",
            [("GPU", "@label @name"), ("memory", "@memory_text"), ("health", "@health"), ("status", "@status")],
            Range1d(0, 1),
            policy.memory_threshold if policy else None,
        )
        self.utilization = self._bars(
            "Utilization",
            "utilization",
            [("GPU", "@label @name"), ("utilization", "@utilization_text"), ("health", "@health")],
            Range1d(0, 1),
            policy.utilization_threshold if policy else None,
        )
        limit = policy.max_concurrent_tasks_per_gpu if policy else 1
        self.running = self._bars(
            "Tasks on the GPU",
            "running",
            [("GPU", "@label @name"), ("tasks", "@running"), ("worker", "@worker")],
            Range1d(0, limit),
            None,
        )
        for fig in (self.memory, self.utilization):
            fig.xaxis.formatter = NumeralTickFormatter(format="0%")
        self.root = column(
            self.summary,
            row(self.memory, self.utilization, self.running, sizing_mode="stretch_width"),
            self.gpu_table,
            Div(text="<h4>Last routing decisions</h4>"),
            self.decisions,
            sizing_mode="stretch_width",
        )

    def _bars(self, title: str, field: str, tooltips: list[tuple[str, str]], x_range, threshold: float | None):
        fig = figure(
            title=title,
            y_range=self.y_range,
            x_range=x_range,
            height=220,
            width=380,
            tools="",
            toolbar_location=None,
            sizing_mode="stretch_width",
            name=f"altlas-{field}",
        )
        fig.hbar(y="label", right=field, height=0.7, color="colour", source=self.gpus, name=f"altlas-{field}-bars")
        fig.add_tools(HoverTool(tooltips=tooltips))
        if threshold is not None:
            fig.add_layout(Span(location=threshold, dimension="height", line_dash="dashed", line_color="#555"))
        fig.ygrid.visible = False
        return fig

    def update(self) -> None:
        view = find_view(self.scheduler)
        data = gpu_rows(view)
        if data != self.gpus.data:
            factors = list(reversed(data["label"]))  # GPU 0 on top
            if list(self.y_range.factors) != factors:
                self.y_range.factors = factors
            self.gpus.data = data
            self.gpu_table.text = html_table(GPU_TABLE, data)
            top = max([*data["running"], 1])
            if top > self.running.x_range.end:
                self.running.x_range.end = top
        decisions = html_table(DECISION_TABLE, decision_rows(view))
        if decisions != self.decisions.text:
            self.decisions.text = decisions
        text = summary_html(view)
        if text != self.summary.text:
            self.summary.text = text


@log_errors
def gpus_doc(scheduler: Scheduler, extra: dict[str, Any], doc: Document, *, template: bool = True) -> GpuPage:
    """Build the page in ``doc`` (Dask's page signature); returns the :class:`GpuPage` it refreshes."""
    page = GpuPage(scheduler)
    page.update()
    doc.add_periodic_callback(page.update, REFRESH_MS)
    doc.add_root(page.root)
    doc.title = "Dask: GPUs"
    try:
        from distributed.dashboard.components.scheduler import BOKEH_THEME, env
    except ImportError:  # pragma: no cover - only without a dashboard-capable bokeh
        return page
    doc.theme = BOKEH_THEME
    if template:
        doc.template = env.get_template("simple.html")
        doc.template_variables.update(extra)
    return page


def _menu_doc(scheduler: Scheduler, extra: dict[str, Any], doc: Document) -> GpuPage:
    return gpus_doc(scheduler, extra, doc, template=False)


def register_page() -> bool:
    """Add the page to the scheduler dashboard's applications (for schedulers built after this call)."""
    return add_dashboard_pages({PAGE: gpus_doc, MENU_PAGE: _menu_doc})

"""What notebooks show: GPU tables (HTML and pandas), batch progress, the cluster.

The HTML is plain tables with inline styles (renders on GitHub and in Jupyter alike).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from altlas_dask.gpus.condition import condition, field

MIB_PER_GIB = 1024.0
TABLE = "border-collapse:collapse;font-size:12px"
CELL = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:left"


# -- tables -----------------------------------------------------------------------------------------------------


def gpu_records(gpus: Sequence[Any]) -> list[dict[str, Any]]:
    """One flat row per GPU with its condition (what gpus_frame and the HTML table show)."""
    rows = []
    for g in gpus:
        state = condition(g)
        total, used = field(g, "memory_total_mb", 0), field(g, "memory_used_mb", 0)
        rows.append(
            {
                "gpu": field(g, "id"),
                "name": field(g, "name"),
                "condition": state.label,
                "reason": state.reason,
                "status": field(g, "status"),
                "health": field(g, "health_status"),
                "memory_used_mb": used,
                "memory_total_mb": total,
                "memory_used_pct": round(100 * used / total, 1) if total else None,
                "utilization_pct": field(g, "utilization_gpu"),
                "temperature_c": field(g, "temperature_c"),
                "running": field(g, "active_requests", 0),
                "compute_capability": field(g, "compute_capability"),
                "worker": field(g, "worker"),
            }
        )
    return rows


def _bar(fraction: float, colour: str, text: str) -> str:
    width = max(0.0, min(fraction, 1.0)) * 100
    return (
        f'<div style="width:120px;background:#eee;position:relative;height:14px">'
        f'<div style="width:{width:.0f}%;background:{colour};height:14px"></div>'
        f'<span style="position:absolute;top:0;left:4px;font-size:10px">{html.escape(text)}</span></div>'
    )


def _link(url: str | None, text: str) -> str:
    return f'<a href="{html.escape(url)}" target="_blank">{html.escape(text)}</a>' if url else ""


def gpus_html(gpus: Sequence[Any], title: str, links: Mapping[str, str | None]) -> str:
    """A GPU table: condition (coloured, with its reason), memory, utilization; links under it."""
    head = "".join(f'<th style="{CELL}">{h}</th>' for h in ("GPU", "Name", "Condition", "Memory", "Util", "Running"))
    body = []
    for g, row in zip(gpus, gpu_records(gpus), strict=True):
        state = condition(g)
        used, total = row["memory_used_mb"] / MIB_PER_GIB, row["memory_total_mb"] / MIB_PER_GIB
        badge = f'<span style="color:{state.hex};font-weight:bold">{state.label}</span>'
        if state.reason:
            badge += f"<br><small>{html.escape(state.reason)}</small>"
        cells = (
            str(row["gpu"]),
            html.escape(str(row["name"])),
            badge,
            _bar(used / total if total else 0, "#1f77b4", f"{used:.1f} / {total:.0f} GiB"),
            _bar((row["utilization_pct"] or 0) / 100, "#2ca02c", f"{row['utilization_pct'] or 0:.0f} %"),
            str(row["running"]),
        )
        body.append("<tr>" + "".join(f'<td style="{CELL}">{c}</td>' for c in cells) + "</tr>")
    footer = " · ".join(_link(url, text) for text, url in links.items() if url)
    return (
        f"<div><strong>{html.escape(title)}</strong>"
        f'<table style="{TABLE}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f"<div>{footer}</div></div>"
    )


def batch_text(statuses: Sequence[str], sizes: Sequence[int], gpus: Sequence[int | None]) -> str:
    done = sum(size for status, size in zip(statuses, sizes, strict=True) if status == "finished")
    split = ", ".join(f"{_where(g)}: {n}" for g, n in _per_gpu(sizes, gpus).items())
    return f"Batch: {done} / {sum(sizes)} items done in {len(sizes)} chunks (split {split})"


def _where(gpu: Any) -> str:
    return "the router's pick" if gpu == "any" else f"GPU {gpu}"


def _per_gpu(sizes: Sequence[int], gpus: Sequence[int | None]) -> dict[Any, int]:
    per_gpu: dict[Any, int] = {}
    for size, gpu in zip(sizes, gpus, strict=True):
        key = "any" if gpu is None else gpu
        per_gpu[key] = per_gpu.get(key, 0) + size
    return per_gpu


def batch_html(statuses: Sequence[str], sizes: Sequence[int], gpus: Sequence[int | None]) -> str:
    """Chunk by chunk: one coloured cell per chunk (green done, red failed, grey waiting), items and GPUs."""
    colours = {"finished": "#2ca02c", "error": "#d62728", "cancelled": "#9e9e9e", "lost": "#d62728"}
    done = sum(size for status, size in zip(statuses, sizes, strict=True) if status == "finished")
    cells = "".join(
        f'<span title="chunk {i}: {size} items{"" if gpu is None else f" on GPU {gpu}"}, {status}" '
        f'style="display:inline-block;width:10px;height:14px;margin:1px;'
        f'background:{colours.get(status, "#ddd")}"></span>'
        for i, (status, size, gpu) in enumerate(zip(statuses, sizes, gpus, strict=True))
    )
    split = ", ".join(f"{_where(g)}: {n}" for g, n in _per_gpu(sizes, gpus).items())
    return (
        f"<div><strong>Batch</strong>: {done} / {sum(sizes)} items done in {len(sizes)} chunks"
        f" ({sum(s == 'finished' for s in statuses)} finished)<br>{cells}<br><small>split: {split}</small></div>"
    )


def cluster_html(cluster: Any) -> str:
    """The cluster: where it listens, its GPUs, links to the dashboard's GPU page."""
    dashboard = cluster.dashboard_link
    kind = "simulated" if cluster.simulated else "NVML"
    title = f"GpuCluster: {len(cluster.gpus)} {kind} GPUs · scheduler {cluster.scheduler_address}"
    links = {"dashboard": dashboard, "GPU page": dashboard.replace("/status", "/altlas-gpus")}
    return gpus_html(cluster.gpus, title, links)

"""Prometheus metrics for the router, served by the Dask scheduler's own ``/metrics``.

Dask's scheduler renders ``prometheus_client``'s default registry, so one
collector registered there (once per process) adds every ``altlas_*`` series
of each live router. Counters and histograms are plain counts kept per router
(``_Family``) and rendered as prometheus_client renders its own when that collector is scraped.

Label values are bounded (:class:`LabelPolicy`, deploy/README.md "Metrics labels"): ``model`` is one of
the configured task types or ``other``; ``user`` is a configured user (``quotas.users``, ``quotas.admins``)
or a user an admin set a quota for at run time, else ``other``; every user when ``metrics.all_user_labels``;
``strategy`` is a built-in or configured custom strategy (or ``specific_gpu``, ``none``), else ``other``.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import weakref
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import REGISTRY
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from altlas_dask.scheduling.actions import Action, Decided, Place, Record, Retry, Usage
from scheduler_plugins.gpu_info import gpu_info_family

if TYPE_CHECKING:
    from altlas_dask.config import AltlasConfig
    from altlas_dask.scheduling.view import CoreView

OTHER = "other"
DEFAULT_TASK_TYPE = "inference"  # GpuOptions.task_type's default

MB = 1024 * 1024
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DECISION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2)
HEALTH_STATES = ("healthy", "warning", "critical")


class LabelPolicy:
    """Maps free-form user names and task types onto a bounded set of label values."""

    def __init__(self, config: AltlasConfig, overridden: Collection[str] = ()) -> None:
        """``overridden``: users an admin gave a quota at run time (a live view; bounded by admins' actions)."""
        from altlas_dask.client.workloads import WORKLOADS

        self.overridden = overridden

        self.models = frozenset(
            {DEFAULT_TASK_TYPE, *config.gpu.multi_gpu.task_specific_mappings, *config.serving.batching}
            | {w.task_type for w in WORKLOADS.values()}
        )
        from altlas_dask.config import STRATEGIES

        self.strategies = frozenset({*STRATEGIES, "specific_gpu", "none", *config.gpu.multi_gpu.custom_strategies})
        quotas = config.quotas
        self.users: frozenset[str] | None = (
            None if config.metrics.all_user_labels else frozenset({*quotas.users, *quotas.admins})
        )

    def model(self, task_type: str | None) -> str:
        return task_type if task_type in self.models else OTHER

    def strategy(self, name: str | None) -> str:
        return name if name in self.strategies else OTHER

    def user(self, user: str | None) -> str:
        if self.users is None:
            return user or OTHER
        return user if user in self.users or user in self.overridden else OTHER


class _CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value, self.created = 0.0, time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum, self.created = bounds, [0] * len(bounds), 0.0, time.time()

    def observe(self, amount: float) -> None:
        if amount == amount:  # (NaN falls in no bucket, as in prometheus_client; it still joins the sum)
            self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # the first bucket whose bound >= amount
        self.sum += amount


class _Family:
    """One labelled counter or histogram, counted in plain Python and rendered as prometheus_client would
    (``_total`` / ``_bucket`` ``_count`` ``_sum``, and ``_created``) only when ``/metrics`` is scraped.

    prometheus_client's own objects take a lock and walk their buckets at every ``inc``/``observe``; the router
    updates several per task inside the scheduler's event loop, the one thread every observation comes from.
    """

    def __init__(
        self, kind: str, name: str, documentation: str, labelnames: tuple[str, ...] = (), buckets: tuple = ()
    ) -> None:
        self.kind, self.name, self.documentation, self.labelnames = kind, name, documentation, labelnames
        self.bounds = (*buckets, math.inf) if kind == "histogram" else ()
        self.children: dict[tuple[str, ...], Any] = {}
        if not labelnames:  # an unlabelled series exists from the start, as prometheus_client's does
            self.labels()

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {values!r} do not match {self.labelnames!r}")
            child = _HistogramChild(self.bounds) if self.kind == "histogram" else _CounterChild()
            self.children[values] = child
        return child

    def observe(self, amount: float) -> None:
        self.children[()].observe(amount)

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, self.kind)
        for values, child in list(self.children.items()):
            labels = dict(zip(self.labelnames, values, strict=True))
            if self.kind == "counter":
                metric.add_sample(f"{self.name}_total", labels, child.value)
            else:
                acc = 0.0
                for bound, count in zip(self.bounds, list(child.counts), strict=True):
                    acc += count
                    metric.add_sample(f"{self.name}_bucket", {**labels, "le": floatToGoString(bound)}, acc)
                metric.add_sample(f"{self.name}_count", labels, acc)
                metric.add_sample(f"{self.name}_sum", labels, child.sum)
            if getattr(prometheus_metrics, "_use_created", True):  # PROMETHEUS_DISABLE_CREATED_SERIES
                metric.add_sample(f"{self.name}_created", labels, child.created)
        yield metric


#: The core's actions :meth:`RouterMetrics.observe` counts.
OBSERVED = frozenset({Record, Usage, Place, Decided, Retry})


class RouterMetrics:
    """The counters and histograms of one router, counted from the core's actions as the adapter carries them
    out (:meth:`observe`); label values bounded by ``labels``."""

    def __init__(self, labels: LabelPolicy) -> None:
        self.labels = labels
        self.tasks = _Family(
            "counter",
            "altlas_tasks",
            "GPU tasks that reached a final status",
            ("status", "user", "model", "strategy", "gpu"),
        )
        self.duration = _Family(
            "histogram",
            "altlas_task_duration_seconds",
            "Run time of completed GPU tasks on the GPU",
            ("gpu", "model"),
            DURATION_BUCKETS,
        )
        self.queue_wait = _Family(
            "histogram",
            "altlas_task_queue_wait_seconds",
            "Submission to placement on a GPU",
            ("user", "model"),
            DURATION_BUCKETS,
        )
        self.decisions = _Family(
            "counter", "altlas_routing_decisions", "Routing decisions by strategy and outcome", ("strategy", "outcome")
        )
        self.decision_seconds = _Family(
            "histogram", "altlas_routing_decision_seconds", "Time to take one routing decision", (), DECISION_BUCKETS
        )
        self.quota_rejections = _Family(
            "counter", "altlas_quota_rejections", "Submissions rejected by a quota limit", ("user", "limit")
        )
        self.retries = _Family("counter", "altlas_task_retries", "GPU errors retried on another GPU", ("gpu",))

    def observe(self, action: Action) -> None:
        """Count one of the core's actions (those in :data:`OBSERVED`; others are ignored)."""
        kind, labels = type(action), self.labels
        if kind is Decided:
            self.decision_seconds.observe(action.seconds)
            self.decisions.labels(labels.strategy(action.strategy), action.outcome).inc()
        elif kind is Place:
            self.queue_wait.labels(labels.user(action.user), labels.model(action.task_type)).observe(action.waited)
        elif kind is Record:
            row = action.row
            gpu = "none" if row["gpu"] is None else str(row["gpu"])
            strategy, model = labels.strategy(row["strategy"] or "none"), labels.model(row["task_type"])
            self.tasks.labels(row["status"], labels.user(row["user"]), model, strategy, gpu).inc()
            if row["status"] == "completed":
                self.duration.labels(gpu, model).observe(row["gpu_seconds"])
        elif kind is Usage and action.limit:
            self.quota_rejections.labels(labels.user(action.user), action.limit).inc()
        elif kind is Retry:
            self.retries.labels(str(action.gpu)).inc()

    def collect(self) -> Iterator[Metric]:
        for metric in (
            self.tasks,
            self.duration,
            self.queue_wait,
            self.decisions,
            self.decision_seconds,
            self.quota_rejections,
            self.retries,
        ):
            yield from metric.collect()


def gpu_gauges(view: CoreView, label_policy: LabelPolicy) -> Iterator[Metric]:
    """Per-GPU state from the router's snapshot (heartbeat + in-flight work)."""
    labels = ["gpu", "name"]
    families = {
        "memory_used": GaugeMetricFamily("altlas_gpu_memory_used_bytes", "GPU memory in use", labels=labels),
        "memory_total": GaugeMetricFamily("altlas_gpu_memory_total_bytes", "GPU memory in all", labels=labels),
        "util": GaugeMetricFamily("altlas_gpu_utilization_ratio", "GPU compute utilization, 0-1", labels=labels),
        "temp": GaugeMetricFamily("altlas_gpu_temperature_celsius", "GPU temperature", labels=labels),
        "power": GaugeMetricFamily("altlas_gpu_power_watts", "GPU power draw", labels=labels),
        "limit": GaugeMetricFamily("altlas_gpu_power_limit_watts", "GPU power limit", labels=labels),
        "up": GaugeMetricFamily("altlas_gpu_up", "1 if the GPU is connected and not failed", labels=labels),
        "draining": GaugeMetricFamily("altlas_gpu_draining", "1 while drained for maintenance", labels=labels),
        "running": GaugeMetricFamily("altlas_gpu_running_tasks", "Tasks placed on the GPU", labels=labels),
        "health": GaugeMetricFamily(
            "altlas_gpu_health", "1 for the GPU's current health state", labels=[*labels, "state"]
        ),
    }
    snapshot = view.gpus()
    yield gpu_info_family(snapshot)  # gpu -> UUID, for joining DCGM's series
    for g in snapshot:
        key = [str(g.id), g.name]
        families["memory_used"].add_metric(key, g.memory_used_mb * MB)
        families["memory_total"].add_metric(key, g.memory_total_mb * MB)
        families["util"].add_metric(key, g.utilization_gpu / 100)
        families["temp"].add_metric(key, g.temperature_c)
        families["power"].add_metric(key, g.power_usage_w)
        families["limit"].add_metric(key, g.power_limit_w)
        families["up"].add_metric(key, 0.0 if g.status in ("error", "inactive", "unresponsive") else 1.0)
        families["draining"].add_metric(key, 1.0 if g.status == "maintenance" else 0.0)
        families["running"].add_metric(key, g.active_requests)
        for state in HEALTH_STATES:
            families["health"].add_metric([*key, state], 1.0 if g.health_status == state else 0.0)
    yield from families.values()
    queued = GaugeMetricFamily(
        "altlas_queued_tasks", "GPU tasks held on the scheduler waiting for a GPU", labels=["user"]
    )
    by_label: dict[str, int] = {}
    for user, count in view.queued_by_user().items():
        label = label_policy.user(user)
        by_label[label] = by_label.get(label, 0) + count
    for label, count in sorted(by_label.items()):
        queued.add_metric([label], count)
    yield queued


class Published(Protocol):
    """What a router shows on ``/metrics``: its view of the core and its metrics."""

    view: CoreView
    metrics: RouterMetrics


class _Collector:
    """Registered once in the default registry; reports every live router in this process."""

    def __init__(self) -> None:
        self.routers: weakref.WeakSet[Published] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        for router in list(self.routers):
            yield from gpu_gauges(router.view, router.metrics.labels)
            yield from router.metrics.collect()


_collector: _Collector | None = None
_lock = threading.Lock()


def publish(router: Published) -> None:
    """Make ``router``'s metrics part of the scheduler's ``/metrics``."""
    global _collector
    with _lock:
        if _collector is None:
            _collector = _Collector()
            REGISTRY.register(_collector)
        _collector.routers.add(router)


def unpublish(router: Published) -> None:
    if _collector is not None:
        _collector.routers.discard(router)

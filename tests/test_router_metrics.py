"""The router's counters and histograms (plain counts rendered at scrape) expose exactly what prometheus_client's
own Counter and Histogram objects expose for the same observations (the oracle is prometheus_client itself)."""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from altlas_dask.config import build_config
from altlas_dask.scheduling.actions import Decided, Hold, Place, Record, Retry, Usage
from scheduler_plugins.metrics import DECISION_BUCKETS, DURATION_BUCKETS, LabelPolicy, RouterMetrics

#: values on, between, below and above the bucket bounds, negative, huge, infinite and NaN
VALUES = (0.0, 1e-5, 1.0001e-5, 3e-5, 0.005, 0.0051, 7.0, 3600.0, 3600.5, 1e9, -1.0, math.inf, math.nan)


def reference() -> list:
    """prometheus_client's own metrics, named and labelled as the router's."""
    return [
        Counter(
            "altlas_tasks",
            "GPU tasks that reached a final status",
            ["status", "user", "model", "strategy", "gpu"],
            registry=None,
        ),
        Histogram(
            "altlas_task_duration_seconds",
            "Run time of completed GPU tasks on the GPU",
            ["gpu", "model"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        Histogram(
            "altlas_task_queue_wait_seconds",
            "Submission to placement on a GPU",
            ["user", "model"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        Counter(
            "altlas_routing_decisions",
            "Routing decisions by strategy and outcome",
            ["strategy", "outcome"],
            registry=None,
        ),
        Histogram(
            "altlas_routing_decision_seconds",
            "Time to take one routing decision",
            buckets=DECISION_BUCKETS,
            registry=None,
        ),
        Counter("altlas_quota_rejections", "Submissions rejected by a quota limit", ["user", "limit"], registry=None),
        Counter("altlas_task_retries", "GPU errors retried on another GPU", ["gpu"], registry=None),
    ]


def exposition(metrics) -> tuple[str, str]:
    """Both text formats, with the ``_created`` timestamps (creation times, not data) masked."""

    class Source:
        def collect(self):
            return metrics()

    registry = CollectorRegistry()
    registry.register(Source())
    texts = (generate_latest(registry).decode(), generate_openmetrics(registry).decode())
    return tuple(re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", text) for text in texts)


def router_metrics() -> RouterMetrics:
    return RouterMetrics(LabelPolicy(build_config({"metrics": {"all_user_labels": True}})))


def row(status: str, seconds: float) -> dict:
    return {"status": status, "user": "alice", "task_type": "inference", "strategy": "earliest_finish", "gpu": 0,
            "gpu_seconds": seconds}  # fmt: skip


@pytest.mark.parametrize("observations", [0, 1, len(VALUES)])
def test_router_metrics_expose_what_prometheus_client_exposes(observations: int) -> None:
    """The core's actions, observed by the router's metrics, against prometheus_client fed the same values."""
    ours = router_metrics()
    tasks, duration, queue_wait, decisions, decision_seconds, rejections, retries = theirs = reference()
    for value in VALUES[:observations]:
        ours.observe(Record(row("completed", value)))
        duration.labels("0", "inference").observe(value)
        tasks.labels("completed", "alice", "inference", "earliest_finish", "0").inc()
        ours.observe(Place("k", 0, "tcp://w", 0, user="alice", task_type="a model nobody configured", waited=value))
        queue_wait.labels("alice", "other").observe(value)
        ours.observe(Decided("earliest_finish", "placed", value / 1000))
        decision_seconds.observe(value / 1000)
        decisions.labels("earliest_finish", "placed").inc()
        ours.observe(Hold("k"))  # not a metric
    if observations:
        ours.observe(Record(row("failed", 1.0)))
        tasks.labels("failed", "alice", "inference", "earliest_finish", "0").inc()
        ours.observe(Usage("bob", "2026-01-01", rejected=1, limit="requests_per_day"))
        ours.observe(Usage("bob", "2026-01-01", tasks=1))  # usage, not a rejection
        rejections.labels("bob", "requests_per_day").inc()
        for _ in range(2):
            ours.observe(Retry("k", 1))
        retries.labels("1").inc(2)

    def reference_metrics():
        for metric in theirs:
            yield from metric.collect()

    assert exposition(ours.collect) == exposition(reference_metrics)


def test_router_metrics_refuse_a_wrong_number_of_labels() -> None:
    with pytest.raises(ValueError, match="altlas_tasks"):
        router_metrics().tasks.labels("completed")

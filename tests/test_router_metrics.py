"""The router's counters and histograms (plain counts rendered at scrape) expose exactly what prometheus_client's
own Counter and Histogram objects expose for the same observations (the oracle is prometheus_client itself)."""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from scheduler_plugins.metrics import DECISION_BUCKETS, DURATION_BUCKETS, RouterMetrics

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


@pytest.mark.parametrize("observations", [0, 1, len(VALUES)])
def test_router_metrics_expose_what_prometheus_client_exposes(observations: int) -> None:
    ours = RouterMetrics()
    tasks, duration, queue_wait, decisions, decision_seconds, rejections, retries = theirs = reference()
    for value in VALUES[:observations]:
        ours.child(ours.duration, "0", "inference").observe(value)
        duration.labels("0", "inference").observe(value)
        ours.child(ours.queue_wait, "alice", "other").observe(value)
        queue_wait.labels("alice", "other").observe(value)
        ours.decision_seconds.observe(value / 1000)
        decision_seconds.observe(value / 1000)
        ours.child(ours.tasks, "completed", "alice", "inference", "earliest_finish", "0").inc()
        tasks.labels("completed", "alice", "inference", "earliest_finish", "0").inc()
        ours.child(ours.decisions, "earliest_finish", "placed").inc()
        decisions.labels("earliest_finish", "placed").inc()
    if observations:
        ours.quota_rejections.labels("bob", "requests_per_day").inc()
        rejections.labels("bob", "requests_per_day").inc()
        ours.retries.labels("1").inc(2)
        retries.labels("1").inc(2)

    def reference_metrics():
        for metric in theirs:
            yield from metric.collect()

    assert exposition(ours.collect) == exposition(reference_metrics)


def test_router_metrics_refuse_a_wrong_number_of_labels() -> None:
    with pytest.raises(ValueError, match="altlas_tasks"):
        RouterMetrics().tasks.labels("completed")

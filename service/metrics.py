"""Prometheus metrics: HTTP requests by route, plus queue state read from Redis at scrape time.

Each app gets its own registry (tests build many apps). Job outcomes are counted by the workers in
Redis (`Queue.job_outcomes`), so one scrape of any web process sees all workers' counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `*_created` series double the output and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream


class _QueueSnapshot(Collector):
    """Reports the values the /metrics handler fetched from Redis just before rendering."""

    def __init__(self) -> None:
        self.depth: int | None = None
        self.outcomes: dict[tuple[str, str], int] = {}
        self.sink_moves: int | None = None

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("pdbridge_queue_depth", "Jobs waiting in the queue.", labels=[])
        if self.depth is not None:
            depth.add_metric([], self.depth)
        yield depth
        outcomes = CounterMetricFamily(
            "pdbridge_job_outcomes",
            "Finished job tries by function and outcome (complete, retried, dead_lettered).",
            labels=["function", "outcome"],
        )
        for (function, outcome), count in sorted(self.outcomes.items()):
            outcomes.add_metric([function, outcome], count)
        yield outcomes
        moves = CounterMetricFamily(
            "pdbridge_sink_moves",
            "Channels that `auto` moved to the notes sink because the Channels API is gone.",
            labels=[],
        )
        if self.sink_moves is not None:
            moves.add_metric([], self.sink_moves)
        yield moves


class Metrics:
    """The metric objects of one web process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pdbridge_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pdbridge_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.not_queued = Counter(
            "pdbridge_work_not_queued",
            "Recorded work whose queueing failed (Redis away); the sweeper queues it later.",
            registry=self.registry,
        )
        self.queue = _QueueSnapshot()
        self.registry.register(self.queue)

    def queue_unavailable(self) -> None:
        self.not_queued.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

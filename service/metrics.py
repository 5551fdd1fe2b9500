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


class _ApiUsageSnapshot(Collector):
    """The API cost ledger as the /metrics handler read it just before rendering.

    Label cardinality: the counters are labelled by endpoint family only (a fixed list, see
    `service.pipedrive.ledger.FAMILIES`), never by company or path. The per-company figures are
    gauges of today's spend, for the companies that called Pipedrive today: one or two series
    per installed company, which a Marketplace app's install count keeps in the thousands at
    most, and a company's series go away the day after it stops calling.
    """

    def __init__(self) -> None:
        self.family_tokens: dict[str, int] = {}
        self.family_calls: dict[str, int] = {}
        self.company_tokens: dict[int, int] = {}
        self.company_budget_left: dict[int, int] = {}

    def collect(self) -> Iterable[Metric]:
        tokens = CounterMetricFamily(
            "pdbridge_pipedrive_api_tokens",
            "Pipedrive API tokens spent by every company, by endpoint family.",
            labels=["family"],
        )
        for name, count in sorted(self.family_tokens.items()):
            tokens.add_metric([name], count)
        yield tokens
        calls = CounterMetricFamily(
            "pdbridge_pipedrive_api_calls",
            "Pipedrive API calls answered, by endpoint family.",
            labels=["family"],
        )
        for name, count in sorted(self.family_calls.items()):
            calls.add_metric([name], count)
        yield calls
        today = GaugeMetricFamily(
            "pdbridge_pipedrive_api_tokens_today",
            "Pipedrive API tokens a company spent through us today (UTC).",
            labels=["company_id"],
        )
        for company_id, count in sorted(self.company_tokens.items()):
            today.add_metric([str(company_id)], count)
        yield today
        left = GaugeMetricFamily(
            "pdbridge_pipedrive_api_budget_left",
            "Tokens left of a company's daily Pipedrive budget, where known.",
            labels=["company_id"],
        )
        for company_id, count in sorted(self.company_budget_left.items()):
            left.add_metric([str(company_id)], count)
        yield left


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
        self.api_usage = _ApiUsageSnapshot()
        self.registry.register(self.api_usage)

    def queue_unavailable(self) -> None:
        self.not_queued.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

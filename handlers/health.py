"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers import services
from service import redis_keys
from service.config import redact
from service.logging import get_logger
from service.metrics import CONTENT_TYPE
from service.store import migrate

log = get_logger(__name__)

CHECK_TIMEOUT = 2.0


async def healthz(request: Request) -> Response:
    """The process is up and its event loop answers; nothing else is checked."""
    return JSONResponse({"status": "ok"})


class SchemaBehind(RuntimeError):
    """The database answers but is not migrated to what this code expects; the message says
    what to run and holds nothing secret."""


def _failure(error: BaseException) -> str:
    if isinstance(error, SchemaBehind):
        return str(error)
    if isinstance(error, TimeoutError):
        return "did not answer in time"
    return f"unreachable ({type(error).__name__})"


async def _check_database(request: Request) -> None:
    svc = services(request)
    await svc.db.ping(CHECK_TIMEOUT)
    if request.app.state.schema_at_head:
        return
    async with asyncio.timeout(CHECK_TIMEOUT):
        current = await migrate.current_revision(svc.db)
    head = migrate.head_revision()
    if current != head:
        raise SchemaBehind(f"schema at {current}, code expects {head}: run `pdbridge migrate`")
    request.app.state.schema_at_head = True


async def readyz(request: Request) -> Response:
    """Ready when the database (migrated to head) and Redis both answer; 503 names what fails."""
    svc = services(request)
    names = ("database", "redis")
    results = await asyncio.gather(
        _check_database(request), svc.queue.ping(CHECK_TIMEOUT), return_exceptions=True
    )
    # The answer names what fails and how, never the error's text: that can carry a host, a
    # user name or a query, and /readyz answers anyone. The log line has the detail.
    checks = {
        name: "ok" if result is None else _failure(result)
        for name, result in zip(names, results, strict=True)
    }
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        log.warning(
            "readyz.failing",
            failing=failing,
            errors={
                n: redact(f"{type(r).__name__}: {r}")
                for n, r in zip(names, results, strict=True)
                if r is not None
            },
        )
        return JSONResponse(
            {"status": "unavailable", "failing": failing, "checks": checks}, status_code=503
        )
    return JSONResponse({"status": "ready", "checks": checks})


async def metrics(request: Request) -> Response:
    """Prometheus text; queue figures are read from Redis now, and left out if it is down."""
    svc = services(request)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            svc.metrics.queue.depth = await svc.queue.depth()
            svc.metrics.queue.outcomes = await svc.queue.job_outcomes()
            moves = await svc.queue.redis.get(redis_keys.SINK_MOVES)
            svc.metrics.queue.sink_moves = int(moves or 0)
    except Exception as error:  # noqa: BLE001 -- a scrape must answer even when Redis is down
        svc.metrics.queue.depth = None
        svc.metrics.queue.sink_moves = None
        log.warning("metrics.queue_unavailable", error=str(error))
    await _read_api_usage(request)
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)


async def _read_api_usage(request: Request) -> None:
    """Fill the API cost ledger's metrics; left as they were if Redis or the database fail."""
    svc = services(request)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            snapshot = await svc.pipedrive.ledger.snapshot(svc.db)
    except Exception as error:  # noqa: BLE001 -- a scrape must answer even when Redis is down
        log.warning("metrics.api_usage_unavailable", error=type(error).__name__)
        return
    target = svc.metrics.api_usage
    target.family_tokens = snapshot.family_tokens
    target.family_calls = snapshot.family_calls
    target.company_tokens = {c: u.tokens for c, u in snapshot.today.items()}
    target.company_budget_left = {
        c: u.budget_left for c, u in snapshot.today.items() if u.budget_left is not None
    }


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]

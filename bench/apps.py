"""ASGI apps the HTTP benchmark serves: a bare Starlette baseline and pdbridge itself."""

from __future__ import annotations

import hmac
import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ingest_baseline(request: Request) -> Response:
    """What any webhook receiver must do at least: read, check the secret, parse, answer."""
    body = await request.body()
    given = request.headers.get("x-telegram-bot-api-secret-token", "")
    if not hmac.compare_digest(given, os.environ.get("BENCH_SECRET", "")):
        return Response(status_code=401)
    json.loads(body)
    return Response(status_code=200)


def bare() -> Starlette:
    """The baseline: the same answers with no middleware, metrics, logging or storage."""
    return Starlette(
        routes=[
            Route("/healthz", ok),
            Route("/webhooks/telegram/{channel}", ingest_baseline, methods=["POST"]),
        ]
    )


def pdbridge() -> Starlette:
    """The service's real app (request ids, metrics, access log) with logs at warning level."""
    from service.app import create_app
    from service.config import load_settings
    from service.logging import configure_logging

    os.environ.setdefault("LOG_LEVEL", "warning")
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)

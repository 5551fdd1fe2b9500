"""ASGI apps the HTTP benchmark serves: a bare Starlette baseline and pdbridge itself."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def bare() -> Starlette:
    """The baseline: the same answer with no middleware, metrics or logging."""
    return Starlette(routes=[Route("/healthz", ok)])


def pdbridge() -> Starlette:
    """The service's real app (request ids, metrics, access log) with logs at warning level."""
    from service.app import create_app
    from service.config import load_settings
    from service.logging import configure_logging

    os.environ.setdefault("LOG_LEVEL", "warning")
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)

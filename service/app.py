"""The Starlette application: route table, middleware and the process's shared services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount

from handlers import (
    admin,
    console,
    error_response,
    health,
    manifest,
    media,
    oauth,
    pipedrive_webhooks,
    provider_webhooks,
)
from service import queue
from service.config import Settings
from service.context import Services
from service.logging import get_logger
from service.metrics import Metrics
from service.middleware import EXTENSION_PREFIX, RequestContext

log = get_logger(__name__)

#: Webhook and API bodies are small; anything larger is refused before it is read.
DEFAULT_BODY_LIMIT = 1024 * 1024
#: Routes that accept more, by path prefix (first match wins): postMessage carries files.
BODY_LIMITS: tuple[tuple[str, int], ...] = ((EXTENSION_PREFIX, 45 * 1024 * 1024),)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405: in the extension's envelope under the routes Pipedrive calls,
    in ours elsewhere."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = str(exc.detail) if isinstance(exc, HTTPException) else "error"
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(status, "HTTP_ERROR")
    if request.url.path.startswith(EXTENSION_PREFIX):
        return JSONResponse(
            {"success": False, "data": {"code": code, "message": detail}}, status_code=status
        )
    return error_response(status, code, detail)


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """Build the app; given `services` (as tests do) it uses them and does not close them."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = services is None
        app.state.services = (
            await Services.start(settings, metrics=metrics) if services is None else services
        )
        if owned:
            app.state.services.follow_invalidations()
        app.state.schema_at_head = False
        app.state.media_store = app.state.services.media
        if settings.single_company:
            # Learn the token's company and create its webhooks (once; the job key dedupes).
            try:
                await app.state.services.queue.enqueue(queue.SETUP_SINGLE_COMPANY, {})
            except Exception as error:  # noqa: BLE001 -- start anyway; /readyz reports Redis
                log.error("web.setup_not_queued", error=str(error), action="restart when ready")
        log.info("web.started", public_base_url=settings.base_url)
        try:
            yield
        finally:
            if owned:
                await app.state.services.close()
            log.info("web.stopped")

    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    metrics = services.metrics if services is not None else Metrics()
    app = Starlette(
        routes=[
            *health.routes,
            *oauth.routes,
            *pipedrive_webhooks.routes,
            *provider_webhooks.routes,
            *manifest.routes,
            *media.routes,
            *console.routes,
            Mount("/admin", app=admin.admin_app(token)),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    if services is not None:
        app.state.services = services  # usable without running the lifespan (in-process tests)
        app.state.schema_at_head = False
        app.state.media_store = services.media
    app.user_middleware.insert(
        0,
        Middleware(
            RequestContext, metrics=metrics, default_limit=DEFAULT_BODY_LIMIT, limits=BODY_LIMITS
        ),
    )
    return app


def from_environment() -> Starlette:
    """The app for settings read from the environment (uvicorn's factory, one per process when
    `WEB_CONCURRENCY` > 1)."""
    from service.config import load_settings
    from service.logging import configure_logging

    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)

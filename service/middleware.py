"""ASGI middleware: request id, body size limit, access log and request metrics, in one pass."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence

import structlog
from starlette.requests import ClientDisconnect
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import get_logger
from service.metrics import Metrics

log = get_logger("pdbridge.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


#: Routes Pipedrive calls (the manifest endpoints): their errors use the extension's envelope.
EXTENSION_PREFIX = "/pipedrive/channels/"


class BodyTooLarge(Exception):
    """The request body passed the size limit for its route."""


class RequestContext:
    """Binds `request_id` (from `X-Request-ID` when well formed), echoes it, enforces body
    size limits per path prefix, and records one log event and one metric per request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        default_limit: int,
        limits: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.default_limit = default_limit
        self.limits = limits

    def _limit(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path.startswith(prefix):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        limit = self._limit(scope["path"])

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge
            await self.app(scope, receive_wrapper, send_wrapper)
        except ClientDisconnect:
            # The client hung up mid-request: nobody is left to answer, and nothing was
            # recorded (the body never arrived whole). The request line below says 499,
            # nginx's word for it; it is no server error.
            status = 499
        except BodyTooLarge:
            if response_started:
                raise
            message = b"the request body is larger than this route accepts"
            if scope["path"].startswith(EXTENSION_PREFIX):  # Pipedrive's own error envelope
                body = b'{"success":false,"data":{"code":"BODY_TOO_LARGE","message":"%s"}}'
            else:
                body = b'{"error":{"code":"BODY_TOO_LARGE","message":"%s"}}'
            await _send_json(send_wrapper, 413, body % message)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_label(scope)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(elapsed)
            log.info(
                "http.request",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")


def _route_label(scope: Scope) -> str:
    """The route template (`/webhooks/telegram/{provider_channel_id}`), never the raw path,
    so metric labels stay few and carry no identifiers."""
    route = scope.get("route")
    if isinstance(route, Mount):  # the mount answered itself (an auth gate, a 404 inside it)
        return f"{route.path}/*"
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    return f"{scope.get('root_path', '')}{path}" or "/"


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

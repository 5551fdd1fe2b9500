"""Request context: request ids in logs and responses, and body size limits."""

from __future__ import annotations

import httpx2
import pytest
import structlog
from structlog.testing import capture_logs

from service.app import DEFAULT_BODY_LIMIT, create_app
from service.context import Services
from service.logging import get_logger, redact, shared_processors
from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.anyio


def client_for(services: Services) -> httpx2.AsyncClient:
    app = create_app(services.settings, services)
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")


async def test_request_id_is_taken_echoed_and_logged(services: Services) -> None:
    """A well-formed X-Request-ID is kept, echoed in the response and bound to the log event."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with client_for(services) as client:
            response = await client.get("/healthz", headers={"X-Request-ID": "req-42.a"})
    assert response.headers["x-request-id"] == "req-42.a"
    [event] = [e for e in logs if e["event"] == "http.request"]
    assert event["request_id"] == "req-42.a"
    assert event["route"] == "/healthz"
    assert event["status"] == 200


async def test_request_id_is_generated_when_missing_or_malformed(services: Services) -> None:
    """Without a usable X-Request-ID each response gets a fresh one (log injection is refused)."""
    async with client_for(services) as client:
        plain = await client.get("/healthz")
        evil = await client.get("/healthz", headers={"X-Request-ID": 'x" injected=1'})
    assert len(plain.headers["x-request-id"]) == 32
    assert evil.headers["x-request-id"] != 'x" injected=1'
    assert plain.headers["x-request-id"] != evil.headers["x-request-id"]


async def test_oversized_body_is_refused_with_413(services: Services) -> None:
    """A body over the route's limit is refused before the handler reads it."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with client_for(services) as client:
        response = await client.post(
            "/admin/dead-letters/1/replay", content=b"x" * (DEFAULT_BODY_LIMIT + 1), headers=headers
        )

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(3):
                yield b"y" * (DEFAULT_BODY_LIMIT // 2)

        streamed = await client.post(
            "/admin/dead-letters/1/replay", content=chunks(), headers=headers
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "BODY_TOO_LARGE"
    assert streamed.status_code in (404, 413)


def test_secrets_never_reach_the_log() -> None:
    """Values under secret-looking keys are redacted by a processor in the configured chain."""
    assert redact in shared_processors()
    with capture_logs(processors=[redact]) as logs:
        get_logger("test").info("token.refreshed", access_token="abc-secret", company_id=1)
    assert logs[0]["access_token"] == "[redacted]"
    assert logs[0]["company_id"] == 1

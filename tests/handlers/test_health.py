"""/healthz, /readyz and /metrics against real backends, and with each backend taken away."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from service.app import create_app
from service.context import Services
from service.embedded_redis import free_port
from service.queue import Queue
from service.store.migrate import downgrade
from tests.conftest import ADMIN_TOKEN, make_settings

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def client_for(services: Services) -> httpx2.AsyncClient:
    app = create_app(services.settings, services)
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")


async def test_healthz(services: Services) -> None:
    """The process answers without touching its backends."""
    async with client_for(services) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_everything_answers(services: Services) -> None:
    """With a migrated database and Redis up, /readyz is 200 and lists both checks."""
    async with client_for(services) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


async def test_readyz_names_redis_when_it_is_down(services: Services) -> None:
    """A Redis that does not answer makes /readyz 503 with `redis` named as failing."""
    dead = await Queue.connect(f"redis://127.0.0.1:{free_port()}/0")
    broken = Services.create(services.settings, db=services.db, queue=dead)
    try:
        async with client_for(broken) as client:
            response = await client.get("/readyz")
    finally:
        await broken.http.aclose()
        await dead.close()
    assert response.status_code == 503
    assert response.json()["failing"] == ["redis"]
    # What failed and how, never the error's own text (hosts, ports, users): anyone may ask.
    assert response.json()["checks"]["redis"] == "unreachable (ConnectionError)"
    assert "127.0.0.1" not in response.text


async def test_readyz_names_the_database_when_migrations_are_pending(services: Services) -> None:
    """An unmigrated database makes /readyz 503 with `database` named and the fix spelt out."""
    await downgrade(services.db, "base")
    async with client_for(services) as client:
        response = await client.get("/readyz")
    body: dict[str, Any] = response.json()
    assert response.status_code == 503
    assert body["failing"] == ["database"]
    assert "pdbridge migrate" in body["checks"]["database"]


async def test_metrics_count_requests_by_route_and_report_the_queue(services: Services) -> None:
    """Prometheus text carries request counts per route template, queue depth and job outcomes."""
    await services.queue.enqueue("some_job", {}, key="k1")
    await services.queue.redis.hincrby("pdbridge:metrics:job-outcomes", "some_job:complete", 3)
    async with client_for(services) as client:
        await client.get("/healthz")
        await client.get("/admin/dead-letters/999/replay", headers=ADMIN)
        text = (await client.get("/metrics")).text
    assert 'pdbridge_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="/admin/dead-letters/{id}/replay",status="405"' in text
    assert "pdbridge_queue_depth 1.0" in text
    assert 'pdbridge_job_outcomes_total{function="some_job",outcome="complete"} 3.0' in text
    assert "pdbridge_http_request_duration_seconds_bucket" in text


def test_settings_fixture_has_no_stray_environment() -> None:
    """The helpers build settings from arguments only."""
    assert make_settings().redis_url is None


async def test_a_client_that_hangs_up_mid_body_is_no_server_error(services: Services) -> None:
    """A client that disconnects before its body arrives gets no 500 and raises nothing: the
    request is counted as 499 and nothing is written."""
    app = create_app(services.settings, services)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/admin/channels",
        "raw_path": b"/admin/channels",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"authorization", ADMIN["Authorization"].encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    chunks = [{"type": "http.request", "body": b'{"provider": "tele', "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent == []
    text = services.metrics.render().decode()
    counted = [line for line in text.splitlines() if 'status="499"' in line]
    assert counted, text
    assert all(line.endswith(" 1.0") for line in counted if line.startswith("pdbridge_http"))
    assert 'status="500"' not in text

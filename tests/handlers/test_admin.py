"""The admin API: bearer auth, dead-letter listing and replay through a real worker."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from service import queue as queue_module
from service.app import create_app
from service.context import Services
from service.queue import JobContext
from service.store import dead_letters
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.test_queue import run_burst

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def client_for(services: Services) -> httpx2.AsyncClient:
    app = create_app(services.settings, services)
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")


async def test_admin_is_absent_without_a_token(services: Services) -> None:
    """With ADMIN_TOKEN unset the whole /admin mount answers 404, even with a header."""
    no_admin = Services.create(
        make_settings(database_url=services.settings.database_url, admin_token=None),
        db=services.db,
        queue=services.queue,
    )
    async with client_for(no_admin) as client:
        response = await client.get("/admin/dead-letters", headers={"Authorization": "Bearer "})
    await no_admin.http.aclose()
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": ADMIN_TOKEN},
        {"X-Token": ADMIN_TOKEN},
    ],
)
async def test_admin_refuses_missing_or_wrong_tokens(
    services: Services, headers: dict[str, str]
) -> None:
    """Anything but the exact bearer token gets 401 with a Bearer challenge and no data."""
    async with client_for(services) as client:
        response = await client.get("/admin/dead-letters", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "UNAUTHORIZED"


async def test_failed_job_is_listed_and_replayed(settings: Any, services: Services) -> None:
    """A job that failed for good shows in /admin/dead-letters; replay runs it again."""
    attempts: list[dict[str, Any]] = []
    healthy = False

    async def deliver(ctx: JobContext, payload: dict[str, Any]) -> None:
        attempts.append(payload)
        if not healthy:
            raise ValueError("provider rejected the message")

    job = queue_module.job(deliver)
    await services.queue.enqueue("deliver", {"company_id": 7, "text": "hi"}, key="deliver-1")
    await run_burst(settings, job)

    async with client_for(services) as client:
        listed = (await client.get("/admin/dead-letters", headers=ADMIN)).json()["data"]
        assert [(d["kind"], d["company_id"], d["payload"]) for d in listed] == [
            ("deliver", 7, {"company_id": 7, "text": "hi"})
        ]
        assert listed[0]["error"] == "ValueError: provider rejected the message"
        assert listed[0]["replayed_at"] is None

        healthy = True
        replay = await client.post(f"/admin/dead-letters/{listed[0]['id']}/replay", headers=ADMIN)
        assert replay.status_code == 202
        assert replay.json() == {"id": listed[0]["id"], "status": "enqueued"}

        await run_burst(settings, job)
        assert attempts == [{"company_id": 7, "text": "hi"}] * 2

        pending = await client.get("/admin/dead-letters?pending=1", headers=ADMIN)
        assert pending.json()["data"] == []
    [letter] = await dead_letters.list_all(services.db)
    assert letter.replay_count == 1


async def test_replaying_an_unknown_dead_letter_is_404(services: Services) -> None:
    """Replay of an id that does not exist says so and enqueues nothing."""
    async with client_for(services) as client:
        response = await client.post("/admin/dead-letters/12345/replay", headers=ADMIN)
        bad_id = await client.post("/admin/dead-letters/abc/replay", headers=ADMIN)
    assert response.status_code == 404
    assert bad_id.status_code == 404
    assert await services.queue.depth() == 0


async def test_bad_limit_is_a_clear_400(services: Services) -> None:
    async with client_for(services) as client:
        response = await client.get("/admin/dead-letters?limit=lots", headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_QUERY"

"""`POST /webhooks/pipedrive` with real bodies: auth, dedupe, processing, built-in handlers."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.pipedrive import PipedriveStandin
from service.embedded_redis import free_port
from service.queue import Queue
from service.store import deliveries, installations, person_links
from service.store.installations import Installation
from tests.pipedrive.bridge import Bridge, running_bridge, standin

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "pipedrive"
if not FIXTURES.is_dir():
    pytest.skip("the shared fixtures folder is not beside the project", allow_module_level=True)


def fixture(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return body


def basic_for(bridge: Bridge, inst: Installation) -> dict[str, str]:
    """The pair the bridge registered with Pipedrive for this installation's webhooks."""
    assert inst.webhook_user
    assert inst.webhook_password_encrypted
    password = bridge.services.crypto.decrypt(inst.webhook_password_encrypted)
    pair = f"{inst.webhook_user}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
async def bridge(stack: tuple[str, str], pd: PipedriveStandin) -> AsyncIterator[Bridge]:
    async with running_bridge(stack, pd) as running:
        yield running


async def installed(bridge: Bridge, company_id: int, user_id: int) -> Installation:
    await bridge.install(company_id, user_id)
    found = await installations.find(bridge.services.db, company_id, user_id)
    assert found is not None
    return found


async def test_every_recorded_delivery_is_processed_once(bridge: Bridge) -> None:
    """All 21 real v1/v2 bodies, each delivered three times, are acknowledged and run once."""
    by_company = {
        company: await installed(bridge, company, user)
        for company, user in ((8087566, 12415231), (1820179, 2636888), (1689563, 2428657))
    }
    names = sorted(p.name for p in FIXTURES.glob("*.json"))
    assert len(names) == 21
    for name in names:
        body = fixture(name)
        inst = by_company[int(body["meta"]["company_id"])]
        statuses = []
        for attempt in range(3):
            if "attempt" in body["meta"]:
                body["meta"]["attempt"] = attempt + 1
            else:
                body["retry"] = attempt
            response = await bridge.http.post(
                "/webhooks/pipedrive", json=body, headers=basic_for(bridge, inst)
            )
            assert response.status_code == 200, (name, response.text)
            statuses.append(response.json()["status"])
        assert statuses == ["accepted", "duplicate", "duplicate"], name
    await bridge.run_worker()
    counts = await deliveries.count_by_status(bridge.services.db, "pipedrive")
    assert counts == {"done": 21}
    outcomes = await bridge.services.queue.job_outcomes()
    assert outcomes[("pipedrive_event", "complete")] == 21


async def test_wrong_credentials_are_refused_and_nothing_is_recorded(bridge: Bridge) -> None:
    """No header, a wrong password or an unknown user: 401, nothing stored or queued."""
    inst = await installed(bridge, 8087566, 12415231)
    good = basic_for(bridge, inst)["Authorization"]
    user = base64.b64decode(good.removeprefix("Basic ")).decode().split(":")[0]
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Basic " + base64.b64encode(f"{user}:wrong".encode()).decode()},
        {"Authorization": "Basic " + base64.b64encode(b"nobody:pw").decode()},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer x"},
    ]
    depth = await bridge.services.queue.depth()
    for headers in bad_headers:
        response = await bridge.http.post(
            "/webhooks/pipedrive", json=fixture("v2-docs-person-change.json"), headers=headers
        )
        assert response.status_code == 401
    assert await deliveries.count(bridge.services.db, "pipedrive") == 0
    assert await bridge.services.queue.depth() == depth


async def test_malformed_bodies_get_400_with_a_reason(bridge: Bridge) -> None:
    """A body that is not a Pipedrive event is refused with a reason and nothing is stored."""
    inst = await installed(bridge, 8087566, 12415231)
    headers = basic_for(bridge, inst)
    no_company = fixture("v2-docs-person-change.json")
    del no_company["meta"]["company_id"]
    for content in (b"not json", b"[]", json.dumps(no_company).encode()):
        response = await bridge.http.post("/webhooks/pipedrive", content=content, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "INVALID_PAYLOAD"
    assert "company_id" in response.json()["error"]["message"]
    assert await deliveries.count(bridge.services.db, "pipedrive") == 0


async def test_an_event_of_another_company_is_refused(bridge: Bridge) -> None:
    """Credentials of one company cannot inject events for another."""
    inst = await installed(bridge, 1820179, 2636888)
    response = await bridge.http.post(
        "/webhooks/pipedrive",
        json=fixture("v2-docs-person-change.json"),
        headers=basic_for(bridge, inst),
    )
    assert response.status_code == 403
    assert await deliveries.count(bridge.services.db, "pipedrive") == 0


def merge_pair(survivor: int, merged_away: int) -> list[dict[str, Any]]:
    """A v2 merge as the doc describes it: `delete` (merged_to_id) + `change` (merged_from_id)."""
    change = fixture("v2-docs-person-change.json")
    change["meta"].update(entity_id=str(survivor), merged_from_id=str(merged_away))
    change["data"]["id"] = survivor
    delete = fixture("v2-docs-person-change.json")
    delete["meta"].update(
        action="delete", entity_id=str(merged_away), merged_to_id=str(survivor), id="other-id"
    )
    delete["previous"], delete["data"] = delete["data"], None
    return [delete, change]


async def test_person_merge_repoints_the_bridges_links(bridge: Bridge) -> None:
    """After a v2 merge every link to the merged-away person points at the survivor."""
    inst = await installed(bridge, 8087566, 12415231)
    db = bridge.services.db
    await person_links.link(db, company_id=8087566, person_id=5, ref_kind="tg", ref_id="chat-1")
    await person_links.link(db, company_id=8087566, person_id=7, ref_kind="tg", ref_id="chat-2")
    for body in merge_pair(survivor=9, merged_away=5):
        response = await bridge.http.post(
            "/webhooks/pipedrive", json=body, headers=basic_for(bridge, inst)
        )
        assert response.json()["status"] == "accepted"
    await bridge.run_worker()
    assert (
        await person_links.person_for(db, company_id=8087566, ref_kind="tg", ref_id="chat-1") == 9
    )
    assert (
        await person_links.person_for(db, company_id=8087566, ref_kind="tg", ref_id="chat-2") == 7
    )


async def test_v1_person_merge_repoints_too(bridge: Bridge) -> None:
    """A v1 `merged.person` (survivor in `current`, `merge_what_id`) moves the links as well."""
    inst = await installed(bridge, 1689563, 2428657)
    db = bridge.services.db
    await person_links.link(db, company_id=1689563, person_id=995, ref_kind="wa", ref_id="+1")
    body = fixture("v1-django-pipedrive-organization-merged.json")
    body["meta"]["object"] = "person"
    body["event"] = "merged.person"
    response = await bridge.http.post(
        "/webhooks/pipedrive", json=body, headers=basic_for(bridge, inst)
    )
    assert response.status_code == 200
    await bridge.run_worker()
    survivor = int(body["current"]["id"])
    assert (
        await person_links.person_for(db, company_id=1689563, ref_kind="wa", ref_id="+1")
        == survivor
    )


async def test_deactivated_user_installation_is_marked(bridge: Bridge) -> None:
    """A user deactivated in Pipedrive has their installation set to needs_reauth."""
    admin = await installed(bridge, 8087566, 12415231)
    leaver = await installed(bridge, 8087566, 15702024)
    response = await bridge.http.post(
        "/webhooks/pipedrive",
        json=fixture("v2-docs-user-deactivated.json"),
        headers=basic_for(bridge, admin),
    )
    assert response.status_code == 200
    await bridge.run_worker()
    leaver = await bridge.reload(leaver)
    assert leaver.status == "needs_reauth"
    assert leaver.status_reason == "user deactivated in Pipedrive"
    assert (await bridge.reload(admin)).status == "active"


async def test_delivery_is_kept_when_the_queue_is_down(bridge: Bridge) -> None:
    """With Redis away the delivery is still recorded and acknowledged (a 503 would make
    Pipedrive ban the webhook); its redelivery queues it, and it is processed once."""
    inst = await installed(bridge, 8087566, 12415231)
    body = fixture("v2-docs-person-change.json")
    working = bridge.services.queue
    bridge.services.queue = await Queue.connect(f"redis://127.0.0.1:{free_port()}/0")
    try:
        first = await bridge.http.post(
            "/webhooks/pipedrive", json=body, headers=basic_for(bridge, inst)
        )
    finally:
        await bridge.services.queue.close()
        bridge.services.queue = working
    assert first.status_code == 200
    assert first.json()["status"] == "accepted"
    assert await deliveries.count_by_status(bridge.services.db, "pipedrive") == {"received": 1}
    body["meta"]["attempt"] = 2
    retried = await bridge.http.post(
        "/webhooks/pipedrive", json=body, headers=basic_for(bridge, inst)
    )
    assert retried.json()["status"] == "duplicate"
    await bridge.run_worker()
    assert await deliveries.count_by_status(bridge.services.db, "pipedrive") == {"done": 1}


async def test_events_for_an_uninstalled_installation_are_ignored(bridge: Bridge) -> None:
    """After uninstall a late delivery is acknowledged but not processed."""
    inst = await installed(bridge, 8087566, 12415231)
    await installations.set_status(bridge.services.db, inst.id, "uninstalled")
    response = await bridge.http.post(
        "/webhooks/pipedrive",
        json=fixture("v2-docs-person-change.json"),
        headers=basic_for(bridge, inst),
    )
    assert response.json() == {"status": "ignored"}
    assert await deliveries.count(bridge.services.db, "pipedrive") == 0

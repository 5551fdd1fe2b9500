"""Install, callback, uninstall and single-company mode against the Pipedrive stand-in."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlparse

import pytest
import sqlalchemy as sa

from service.pipedrive import subscriptions
from service.pipedrive.errors import InstallationInactive
from service.store import installations
from service.store.schema import installations as installations_table
from tests.conftest import ADMIN_TOKEN
from tests.pipedrive.bridge import (
    API_TOKEN,
    CLIENT_ID,
    CLIENT_SECRET,
    PUBLIC_URL,
    Bridge,
    running_bridge,
    standin,
)
from tests.standins.pipedrive import PipedriveStandin

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin(api_token=API_TOKEN) as server:
        yield server


@pytest.fixture
async def bridge(stack: tuple[str, str], pd: PipedriveStandin) -> AsyncIterator[Bridge]:
    async with running_bridge(stack, pd) as running:
        yield running


async def test_install_redirects_to_pipedrive_with_a_signed_state(bridge: Bridge) -> None:
    """/oauth/install sends the browser to the authorize page with our client and callback."""
    response = await bridge.http.get("/oauth/install")
    assert response.status_code == 302
    target = urlparse(response.headers["location"])
    query = parse_qs(target.query)
    assert (
        f"{target.scheme}://{target.netloc}{target.path}" == f"{bridge.pd.base_url}/oauth/authorize"
    )
    assert query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == [f"{PUBLIC_URL}/oauth/callback"]
    assert bridge.services.crypto.unsign(query["state"][0]).startswith("install:")


async def test_callback_installs_once_and_lists_it(bridge: Bridge) -> None:
    """A callback stores the installation; the same code again creates nothing new."""
    code = bridge.pd.issue_code(1001, 2001)
    first = await bridge.http.get("/oauth/callback", params={"code": code})
    again = await bridge.http.get("/oauth/callback", params={"code": code})
    assert first.status_code == again.status_code == 200
    assert "installed" in again.text
    token_requests = [r for r in bridge.pd.requests if r.path == "/oauth/token"]
    assert len(token_requests) == 1
    assert token_requests[0].headers["content-type"] == "application/x-www-form-urlencoded"
    listed = (await bridge.http.get("/admin/installations", headers=ADMIN)).json()["data"]
    assert [(i["company_id"], i["user_id"], i["status"]) for i in listed] == [
        (1001, 2001, "active")
    ]
    assert listed[0]["api_domain"] == bridge.pd.base_url


async def test_tokens_are_encrypted_at_rest(bridge: Bridge) -> None:
    """The database holds no token in clear."""
    inst = await bridge.install()
    token_response = next(r for r in bridge.pd.requests if r.path == "/oauth/token")
    assert token_response.status == 200
    async with bridge.services.db.engine.connect() as conn:
        row = (await conn.execute(sa.select(installations_table))).one()._mapping
    bearer = next(r for r in bridge.pd.requests if r.api_path == "/v1/users/me")
    access_token = bearer.headers["authorization"].removeprefix("Bearer ")
    assert access_token not in str(dict(row))
    assert bridge.services.crypto.decrypt(row["access_token"]) == access_token
    assert inst.access_token_encrypted == row["access_token"]


async def test_bad_state_and_declined_install_are_refused(bridge: Bridge) -> None:
    """A tampered state, a declined consent and a burned code each get a clear error page."""
    code = bridge.pd.issue_code(1001, 2001)
    tampered = await bridge.http.get("/oauth/callback", params={"code": code, "state": "x.1.y"})
    declined = await bridge.http.get("/oauth/callback", params={"error": "user_denied"})
    unknown = await bridge.http.get("/oauth/callback", params={"code": "never-issued"})
    assert tampered.status_code == 400
    assert "expired" in tampered.text
    assert declined.status_code == 400
    assert "cancelled" in declined.text
    assert unknown.status_code == 400
    assert "start again" in unknown.text
    assert await installations.list_all(bridge.services.db) == []


async def test_marketplace_install_without_state_and_with_our_state(bridge: Bridge) -> None:
    """A callback without state (Marketplace) and one with our own valid state both install."""
    redirect = await bridge.http.get("/oauth/install")
    state = parse_qs(urlparse(redirect.headers["location"]).query)["state"][0]
    code = bridge.pd.issue_code(1001, 2002)
    ours = await bridge.http.get("/oauth/callback", params={"code": code, "state": state})
    assert ours.status_code == 200
    market = await bridge.http.get(
        "/oauth/callback", params={"code": bridge.pd.issue_code(1001, 2003)}
    )
    assert market.status_code == 200
    assert len(await installations.list_all(bridge.services.db)) == 2


async def test_setup_registers_v2_webhooks_with_basic_auth(bridge: Bridge) -> None:
    """After install the worker creates the app's v2 webhooks with a per-installation Basic pair."""
    await bridge.install()
    hooks = bridge.pd.webhooks
    assert sorted((h["event_object"], h["event_action"]) for h in hooks) == [
        ("note", "create"),
        ("person", "change"),
        ("person", "delete"),
        ("user", "change"),
    ]
    assert {h["version"] for h in hooks} == {"2.0"}
    assert {h["subscription_url"] for h in hooks} == {f"{PUBLIC_URL}/webhooks/pipedrive"}
    assert len({(h["http_auth_user"], h["http_auth_password"]) for h in hooks}) == 1
    assert all(h["name"] for h in hooks)


async def test_reconcile_recreates_a_deleted_webhook(bridge: Bridge) -> None:
    """A webhook Pipedrive removed is created again by the next setup; the others are kept."""
    inst = await bridge.install()
    removed = bridge.pd.webhooks[0]
    await bridge.services.pipedrive.delete(inst, f"/webhooks/{removed['id']}")
    await bridge.services.queue.enqueue(
        "setup_installation", {"installation_id": inst.id}, key="reconcile-test"
    )
    await bridge.run_worker()
    hooks = bridge.pd.webhooks
    assert len(hooks) == len(subscriptions.WANTED)
    assert (removed["event_object"], removed["event_action"]) in {
        (h["event_object"], h["event_action"]) for h in hooks
    }


async def test_uninstall_needs_the_client_credentials(bridge: Bridge) -> None:
    """DELETE /oauth/callback with a wrong Basic pair is 401 and changes nothing."""
    inst = await bridge.install()
    body = {"client_id": CLIENT_ID, "company_id": 1001, "user_id": 2001, "timestamp": "x"}
    for headers in ({}, basic(CLIENT_ID, "wrong"), basic("other", CLIENT_SECRET)):
        response = await bridge.http.request(
            "DELETE", "/oauth/callback", json=body, headers=headers
        )
        assert response.status_code == 401
    assert (await bridge.reload(inst)).status == "active"


async def test_uninstall_marks_it_and_stops_its_work(bridge: Bridge) -> None:
    """The uninstall notice marks the installation (twice is fine) and no call goes out after."""
    inst = await bridge.install()
    body = {"client_id": CLIENT_ID, "company_id": "1001", "user_id": 2001, "timestamp": "t"}
    for _ in range(2):
        response = await bridge.http.request(
            "DELETE", "/oauth/callback", json=body, headers=basic(CLIENT_ID, CLIENT_SECRET)
        )
        assert response.status_code == 200
    inst = await bridge.reload(inst)
    assert inst.status == "uninstalled"
    sent = len(bridge.pd.requests)
    with pytest.raises(InstallationInactive):
        await bridge.services.pipedrive.get(inst, "/users/me")
    assert len(bridge.pd.requests) == sent
    listed = (await bridge.http.get("/admin/installations", headers=ADMIN)).json()["data"]
    assert listed[0]["status"] == "uninstalled"


async def test_uninstall_of_an_unknown_installation_is_acknowledged(bridge: Bridge) -> None:
    """A notice for an installation we never had answers 200 and stores nothing."""
    response = await bridge.http.request(
        "DELETE",
        "/oauth/callback",
        json={"company_id": 5, "user_id": 6},
        headers=basic(CLIENT_ID, CLIENT_SECRET),
    )
    assert response.status_code == 200
    bad = await bridge.http.request(
        "DELETE", "/oauth/callback", content=b"nope", headers=basic(CLIENT_ID, CLIENT_SECRET)
    )
    assert bad.status_code == 400


async def test_single_company_mode_uses_the_personal_token(
    stack: tuple[str, str], pd: PipedriveStandin
) -> None:
    """With PIPEDRIVE_API_TOKEN the implicit installation calls with `x-api-token`, no OAuth."""
    async with running_bridge(stack, pd, pipedrive_api_token=API_TOKEN) as bridge:
        await bridge.services.queue.enqueue("setup_single_company", {}, key="single")
        await bridge.run_worker()
        [inst] = await installations.list_all(bridge.services.db)
        assert (inst.company_id, inst.user_id, inst.auth_kind) == (1001, 2001, "api_token")
        api_calls = [r for r in pd.requests if r.api_path is not None]
        assert api_calls
        assert all(r.headers.get("x-api-token") == API_TOKEN for r in api_calls)
        assert all("authorization" not in r.headers for r in api_calls)
        assert len(pd.webhooks) == len(subscriptions.WANTED)
        assert not [r for r in pd.requests if r.path == "/oauth/token"]

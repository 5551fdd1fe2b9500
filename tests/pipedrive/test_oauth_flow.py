"""Install, callback, uninstall and single-company mode against the Pipedrive stand-in."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlparse

import httpx2
import pytest
import sqlalchemy as sa

from sandbox.pipedrive import PipedriveStandin
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
    """/oauth/install sends the browser to the authorize page with our client and callback, and
    binds the state to the browser with a signed, HttpOnly, SameSite=Lax, Secure cookie."""
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
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("pdbridge_install=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=lax", "path=/oauth"} <= flags
    assert query["state"][0] not in cookie  # the cookie binds the state; it is not a copy


async def test_the_cookie_is_not_secure_on_a_plain_http_base(
    stack: tuple[str, str], pd: PipedriveStandin
) -> None:
    """On http:// (a laptop) a Secure cookie would never come back, so it is not set Secure."""
    async with running_bridge(stack, pd, public_base_url="http://localhost:8000") as bridge:
        cookie = (await bridge.http.get("/oauth/install")).headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "secure" not in cookie


async def test_callback_installs_once_and_lists_it(bridge: Bridge) -> None:
    """A callback stores the installation; the browser repeating it creates nothing new."""
    params = await bridge.consent(1001, 2001)
    first = await bridge.http.get("/oauth/callback", params=params)
    again = await bridge.http.get("/oauth/callback", params=params)
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


async def test_a_whole_browser_round_trip_through_the_standin(bridge: Bridge) -> None:
    """Install, Pipedrive's consent page (the stand-in, on a real socket) and our callback,
    following the redirects as a browser does, carrying our cookie."""
    start = await bridge.http.get("/oauth/install")
    async with httpx2.AsyncClient() as outside:
        consent = await outside.get(start.headers["location"])
    assert consent.status_code == 302
    back = urlparse(consent.headers["location"])
    done = await bridge.http.get(f"{back.path}?{back.query}")
    assert done.status_code == 200, done.text
    assert [i.company_id for i in await installations.list_all(bridge.services.db)] == [1001]


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
    params = await bridge.consent(1001, 2001)
    tampered = await bridge.http.get("/oauth/callback", params={**params, "state": "x.1.y"})
    declined = await bridge.http.get("/oauth/callback", params={"error": "user_denied"})
    burned = {**(await bridge.consent(1001, 2001)), "code": "never-issued"}
    unknown = await bridge.http.get("/oauth/callback", params=burned)
    assert tampered.status_code == 400
    assert "expired" in tampered.text
    assert declined.status_code == 400
    assert "cancelled" in declined.text
    assert unknown.status_code == 400
    assert "start again" in unknown.text
    assert await installations.list_all(bridge.services.db) == []


def token_calls(pd: PipedriveStandin) -> int:
    return sum(1 for r in pd.requests if r.path == "/oauth/token")


async def test_state_is_required_and_bound_to_the_browser(bridge: Bridge) -> None:
    """No state (a forged link), a valid state without this browser's cookie (someone else's
    link, carried cross-site), or another browser's cookie: each refused before any exchange."""
    params = await bridge.consent(1001, 2001)
    no_state = await bridge.http.get("/oauth/callback", params={"code": params["code"]})
    assert no_state.status_code == 400
    assert "no state" in no_state.text
    async with httpx2.AsyncClient(
        transport=bridge.http._transport, base_url=PUBLIC_URL
    ) as stranger:
        without_cookie = await stranger.get("/oauth/callback", params=params)
        await stranger.get("/oauth/install")  # the stranger's own cookie, for its own state
        other_cookie = await stranger.get("/oauth/callback", params=params)
    for refused in (without_cookie, other_cookie):
        assert refused.status_code == 400
        assert "another browser" in refused.text
    assert token_calls(bridge.pd) == 0
    assert await installations.list_all(bridge.services.db) == []
    ours = await bridge.http.get("/oauth/callback", params=params)
    assert ours.status_code == 200, ours.text


async def test_a_used_state_is_refused_for_another_code(bridge: Bridge) -> None:
    """Once a callback used a state, the same state with another code is a replay: refused
    without a token exchange (the same code again is the browser repeating itself: fine)."""
    params = await bridge.consent(1001, 2001)
    assert (await bridge.http.get("/oauth/callback", params=params)).status_code == 200
    replay = {**params, "code": bridge.pd.issue_code(1001, 2002)}
    replayed = await bridge.http.get("/oauth/callback", params=replay)
    assert replayed.status_code == 400
    assert "already used" in replayed.text
    assert token_calls(bridge.pd) == 1
    assert [i.user_id for i in await installations.list_all(bridge.services.db)] == [2001]


async def test_unknown_codes_cost_a_few_exchanges_a_minute_per_client(bridge: Bridge) -> None:
    """Guessing codes is throttled: after five exchanges in a minute from one client the
    callback answers 429 without calling Pipedrive; a known code still answers (no exchange)."""
    installed = await bridge.consent(1001, 2001)
    assert (await bridge.http.get("/oauth/callback", params=installed)).status_code == 200
    answers = []
    for n in range(8):
        params = {**(await bridge.consent(1001, 2001)), "code": f"guess-{n}"}
        answers.append((await bridge.http.get("/oauth/callback", params=params)).status_code)
    assert answers == [400] * 4 + [429] * 4
    assert token_calls(bridge.pd) == 5
    known = {**(await bridge.consent(1001, 2001)), "code": installed["code"]}
    assert (await bridge.http.get("/oauth/callback", params=known)).status_code == 200
    assert token_calls(bridge.pd) == 5


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


async def test_uninstall_by_another_admin_of_the_company_finds_the_installation(
    bridge: Bridge,
) -> None:
    """The notice names the admin who removed the app, who need not be the installer: the
    company's installation is found all the same; another company's is left alone."""
    inst = await bridge.install(1001, 2001)
    other = await bridge.install(3003, 4004)
    body = {"client_id": CLIENT_ID, "company_id": 1001, "user_id": 2999, "timestamp": "t"}
    response = await bridge.http.request(
        "DELETE", "/oauth/callback", json=body, headers=basic(CLIENT_ID, CLIENT_SECRET)
    )
    assert response.status_code == 200
    assert response.json() == {"status": "uninstalled"}
    assert (await bridge.reload(inst)).status == "uninstalled"
    assert (await bridge.reload(other)).status == "active"


async def test_uninstall_by_one_installer_leaves_a_colleagues_installation(
    bridge: Bridge,
) -> None:
    """Installs are per user: when one installer removes the app, a colleague who installed it
    too keeps theirs."""
    first = await bridge.install(1001, 2001)
    second = await bridge.install(1001, 2002)
    body = {"client_id": CLIENT_ID, "company_id": 1001, "user_id": 2002, "timestamp": "t"}
    response = await bridge.http.request(
        "DELETE", "/oauth/callback", json=body, headers=basic(CLIENT_ID, CLIENT_SECRET)
    )
    assert response.status_code == 200
    assert (await bridge.reload(second)).status == "uninstalled"
    assert (await bridge.reload(first)).status == "active"


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

"""The auth matrix: every route of the app, called four ways (no credentials, wrong ones, another
tenant's, the right ones), each with the outcome it must have.

Conventions (../shared/docs/interface.md): a failed authentication is 401, or 403 where the
caller's convention says so (Twilio's signature, Meta's verify handshake, a Pipedrive webhook
whose credentials belong to another company); a media link that is forged or expired is 404, like
a missing file, so a link never tells what is wrong with it. A refusal changes nothing: no row,
no job, no file, no call to Pipedrive. The route list is read from the app, and a route missing
from the table fails the test, so a new route cannot skip this.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.routing import Mount, Route

from tests.conftest import ADMIN_TOKEN
from tests.hostile.conftest import Live
from tests.hostile.world import OTHER_APP_SECRET, World, basic
from tests.pipedrive.bridge import CLIENT_ID, CLIENT_SECRET, PUBLIC_URL

NONE, WRONG, OTHER, RIGHT = "no credentials", "wrong credentials", "another tenant's", "right"
WAYS = (NONE, WRONG, OTHER, RIGHT)
FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "pipedrive"


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    kwargs: dict[str, Any]


Build = Callable[[World, str], Awaitable[Call]]


@dataclass(frozen=True)
class Row:
    method: str
    template: str
    variant: str
    build: Build
    expected: dict[str, int | tuple[int, ...]]

    @property
    def id(self) -> str:
        return f"{self.method} {self.template}{' ' + self.variant if self.variant else ''}"


def outcomes(none: int, wrong: int, other: int, right: int | tuple[int, ...]) -> dict[str, Any]:
    return {NONE: none, WRONG: wrong, OTHER: other, RIGHT: right}


PUBLIC = outcomes(200, 200, 200, 200)


# --- builders: one per route family, each knows its four ways ---------------------------------


def public(path: str) -> Build:
    async def build(world: World, way: str) -> Call:
        return Call("GET", path, {})

    return build


def admin(method: str, path: str, json_body: Any = None) -> Build:
    async def build(world: World, way: str) -> Call:
        headers = {
            NONE: {},
            WRONG: {"Authorization": "Bearer not-the-admin-token"},
            OTHER: {**world.client_auth},  # Pipedrive's client pair is no admin credential
            RIGHT: world.admin,
        }[way]
        kwargs: dict[str, Any] = {"headers": headers}
        if json_body is not None:
            kwargs["json"] = json_body
        return Call(method, path.format(a=world.pcid(world.a, "telegram")), kwargs)

    return build


def manifest(method: str, path: str, **request: Any) -> Build:
    """Pipedrive's manifest calls carry the app's client pair; an installation's webhook pair
    (a tenant's own credential) is not it."""

    async def build(world: World, way: str) -> Call:
        headers = {
            NONE: {},
            WRONG: {"Authorization": basic(CLIENT_ID, "not-the-secret")},
            OTHER: {"Authorization": basic(world.b.webhook_user, world.b.webhook_password)},
            RIGHT: world.client_auth,
        }[way]
        conversation = world.a.channels["telegram"]["conversation"]
        url = f"/pipedrive/channels/{world.pcid(world.a, 'telegram')}{path}".format(
            conversation=conversation
        )
        if "data" in request:
            form = {k: v.format(conversation=conversation) for k, v in request["data"].items()}
            return Call(method, url, {"headers": headers, "data": form})
        return Call(method, url, {"headers": headers, **request})

    return build


def pipedrive_webhook() -> Build:
    async def build(world: World, way: str) -> Call:
        body = json.loads((FIXTURES / "v2-docs-person-change.json").read_text())
        body["meta"]["company_id"] = str(world.a.company_id)
        body["meta"]["id"] = str(time.monotonic_ns())  # a fresh event each time
        headers = {
            NONE: {},
            WRONG: {"Authorization": basic(world.a.webhook_user, "not-the-password")},
            OTHER: {"Authorization": basic(world.b.webhook_user, world.b.webhook_password)},
            RIGHT: {"Authorization": basic(world.a.webhook_user, world.a.webhook_password)},
        }[way]
        return Call("POST", "/webhooks/pipedrive", {"json": body, "headers": headers})

    return build


def telegram() -> Build:
    async def build(world: World, way: str) -> Call:
        update = world.tg.text_update(
            update_id=time.monotonic_ns() % 2**31, chat_id=777001, text="hi", message_id=2
        )
        secret = {
            NONE: None,
            WRONG: "not-the-secret",
            OTHER: world.b.channels["telegram"]["secret"],  # channel Y's secret on channel X
            RIGHT: world.a.channels["telegram"]["secret"],
        }[way]
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        path = f"/webhooks/telegram/{world.pcid(world.a, 'telegram')}"
        return Call("POST", path, {"json": update, "headers": headers})

    return build


def whatsapp() -> Build:
    async def build(world: World, way: str) -> Call:
        body = world.wa.encode(
            world.wa.text_webhook(
                wamid=f"wamid.{time.monotonic_ns()}", wa_id="16315551181", text="hi"
            )
        )
        headers = {
            NONE: {"Content-Type": "application/json"},
            WRONG: {**world.whatsapp_headers(body), "X-Hub-Signature-256": "sha256=" + "0" * 64},
            OTHER: world.whatsapp_headers(body, OTHER_APP_SECRET),  # signed for another app
            RIGHT: world.whatsapp_headers(body),
        }[way]
        path = f"/webhooks/whatsapp/{world.pcid(world.a, 'whatsapp')}"
        return Call("POST", path, {"content": body, "headers": headers})

    return build


def whatsapp_handshake() -> Build:
    async def build(world: World, way: str) -> Call:
        token = {
            NONE: None,
            WRONG: "not-the-verify-token",
            OTHER: "verify-token-of-company-b",
            RIGHT: world.wa.credentials["verify_token"],
        }[way]
        params = {"hub.mode": "subscribe", "hub.challenge": "4242"}
        if token:
            params["hub.verify_token"] = token
        path = f"/webhooks/whatsapp/{world.pcid(world.a, 'whatsapp')}"
        return Call("GET", path, {"params": params})

    return build


def twilio() -> Build:
    async def build(world: World, way: str) -> Call:
        path = f"/webhooks/twilio/{world.pcid(world.a, 'twilio')}"
        form = {
            "MessageSid": f"SM{time.monotonic_ns()}",
            "From": "+15551230001",
            "To": world.tw.number,
            "Body": "hi",
            "NumMedia": "0",
            "AccountSid": world.tw.account_sid,
        }
        elsewhere = f"/webhooks/twilio/{world.pcid(world.a, 'whatsapp')}"
        headers = {
            NONE: {},
            WRONG: {"X-Twilio-Signature": "bm90IGl0"},
            OTHER: world.twilio_headers(elsewhere, form),  # signed for another URL
            RIGHT: world.twilio_headers(path, form),
        }[way]
        return Call("POST", path, {"data": form, "headers": headers})

    return build


def media(method: str) -> Build:
    async def build(world: World, way: str) -> Call:
        good = world.media_link()
        link = {
            NONE: "/media/unsigned",
            WRONG: good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
            OTHER: world.media_link(ttl_seconds=-60),  # an expired link
            RIGHT: good,
        }[way]
        return Call(method, link, {})

    return build


def oauth_callback() -> Build:
    async def build(world: World, way: str) -> Call:
        if way == NONE:  # no state at all
            return Call("GET", "/oauth/callback", {"params": {"code": "c"}})
        if way == WRONG:  # a state we never signed
            return Call("GET", "/oauth/callback", {"params": {"code": "c", "state": "x.1.y"}})
        if way == OTHER:  # a real state, started in another browser (no matching cookie)
            async with httpx2.AsyncClient(
                transport=world.http._transport,  # type: ignore[attr-defined]
                base_url=PUBLIC_URL,
            ) as stranger:
                started = await stranger.get("/oauth/install")
            state = httpx2.URL(started.headers["location"]).params["state"]
            code = world.pd.issue_code(5005, 6006)
            return Call("GET", "/oauth/callback", {"params": {"code": code, "state": state}})
        return Call("GET", "/oauth/callback", {"params": await world.bridge.consent(1001, 2009)})

    return build


def uninstall() -> Build:
    async def build(world: World, way: str) -> Call:
        headers = {
            NONE: {},
            WRONG: {"Authorization": basic(CLIENT_ID, "not-the-secret")},
            OTHER: {"Authorization": basic(world.a.webhook_user, world.a.webhook_password)},
            RIGHT: world.client_auth,
        }[way]
        # the right call names a company we never had: authorized, and harmless to the world
        body = {"client_id": CLIENT_ID, "company_id": 5, "user_id": 6, "timestamp": "t"}
        return Call("DELETE", "/oauth/callback", {"json": body, "headers": headers})

    return build


CONSOLE_COOKIE = "pdbridge_console"


async def _console_login(world: World) -> tuple[str, str]:
    """Log in to the console in a browser of its own; its session cookie and CSRF token."""
    async with httpx2.AsyncClient(
        transport=world.http._transport,  # type: ignore[attr-defined]
        base_url=PUBLIC_URL,
    ) as operator:
        answer = await operator.post("/admin/ui/login", data={"token": ADMIN_TOKEN})
        assert answer.status_code == 303, answer.text[:300]
        page = await operator.get("/admin/ui")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        return str(operator.cookies[CONSOLE_COOKIE]), csrf.group(1)


def console(method: str, path: str) -> Build:
    """The console takes its signed session cookie (and a form's CSRF token): no cookie, a forged
    one, and another signed value of ours (a media link's) are all no session."""

    async def build(world: World, way: str) -> Call:
        # the login row's right call leaves its session in the shared client's jar: drop it, so
        # each way sends only the cookie it names
        world.http.cookies.delete(CONSOLE_COOKIE)
        cookie, csrf = await _console_login(world) if way == RIGHT else ("", "forged")
        if way == WRONG:
            cookie = "forged.1.session"
        elif way == OTHER:
            cookie = world.media_link().rsplit("/", 1)[-1]
        headers = {"Cookie": f"{CONSOLE_COOKIE}={cookie}"} if cookie else {}
        kwargs: dict[str, Any] = {"headers": headers}
        if method == "POST":
            kwargs["data"] = {"csrf": csrf}
        return Call(method, path, kwargs)

    return build


def console_login() -> Build:
    async def build(world: World, way: str) -> Call:
        token = {
            NONE: None,
            WRONG: "not-the-admin-token",
            OTHER: CLIENT_SECRET,  # Pipedrive's client secret is no admin token
            RIGHT: ADMIN_TOKEN,
        }[way]
        return Call("POST", "/admin/ui/login", {"data": {"token": token} if token else {}})

    return build


EXT = outcomes(401, 401, 401, 200)
ADMIN = outcomes(401, 401, 401, 200)
CONSOLE_POST = outcomes(401, 401, 401, 303)
UI_INST = "/admin/ui/installations"
UI_CONV = "/admin/ui/conversations"
_WEBHOOK = "/webhooks/{provider}/{provider_channel_id}"
_CH = "/pipedrive/channels/{provider_channel_id}"
ROWS = [
    Row("GET", "/healthz", "", public("/healthz"), PUBLIC),
    Row("GET", "/readyz", "", public("/readyz"), PUBLIC),
    Row("GET", "/metrics", "", public("/metrics"), PUBLIC),
    Row("GET", "/oauth/install", "", public("/oauth/install"), outcomes(302, 302, 302, 302)),
    Row("GET", "/oauth/callback", "", oauth_callback(), outcomes(400, 400, 400, 200)),
    Row("DELETE", "/oauth/callback", "", uninstall(), outcomes(401, 401, 401, 200)),
    Row("POST", "/webhooks/pipedrive", "", pipedrive_webhook(), outcomes(401, 401, 403, 200)),
    Row("POST", _WEBHOOK, "telegram", telegram(), outcomes(401, 401, 401, 200)),
    Row("POST", _WEBHOOK, "whatsapp", whatsapp(), outcomes(401, 401, 401, 200)),
    Row("POST", _WEBHOOK, "twilio", twilio(), outcomes(403, 403, 403, 200)),
    Row("GET", _WEBHOOK, "whatsapp", whatsapp_handshake(), outcomes(403, 403, 403, 200)),
    Row("GET", f"{_CH}/conversations", "", manifest("GET", "/conversations"), EXT),
    Row(
        "GET",
        f"{_CH}/conversations/{{conversation_id}}",
        "",
        manifest("GET", "/conversations/{conversation}"),
        EXT,
    ),
    Row(
        "GET",
        f"{_CH}/conversations/{{conversation_id}}/messages/{{message_id}}",
        "",
        manifest("GET", "/conversations/{conversation}/messages/none"),
        outcomes(401, 401, 401, 404),
    ),
    Row(
        "GET",
        f"{_CH}/messages/{{message_id}}",
        "",
        manifest("GET", "/messages/none"),
        outcomes(401, 401, 401, 404),
    ),
    Row(
        "GET",
        f"{_CH}/senders/{{sender_id}}",
        "",
        manifest("GET", "/senders/none"),
        outcomes(401, 401, 401, 404),
    ),
    Row("GET", f"{_CH}/templates", "", manifest("GET", "/templates"), EXT),
    Row(
        "POST",
        f"{_CH}/messages",
        "",
        manifest("POST", "/messages", data={"conversationId": "{conversation}", "message": "hi"}),
        EXT,
    ),
    Row("DELETE", _CH, "", manifest("DELETE", "-unknown"), EXT),
    Row("GET", "/media/{signed}", "", media("GET"), outcomes(404, 404, 404, 200)),
    Row("HEAD", "/media/{signed}", "", media("HEAD"), outcomes(404, 404, 404, 200)),
    Row("GET", "/admin/installations", "", admin("GET", "/admin/installations"), ADMIN),
    Row("GET", "/admin/channels", "", admin("GET", "/admin/channels"), ADMIN),
    Row(
        "POST",
        "/admin/channels",
        "",
        admin("POST", "/admin/channels", {"provider": "telegram"}),
        outcomes(401, 401, 401, 400),
    ),
    Row(
        "DELETE",
        "/admin/channels/{provider_channel_id}",
        "",
        admin("DELETE", "/admin/channels/not-a-channel"),
        outcomes(401, 401, 401, 404),
    ),
    Row(
        "PATCH",
        "/admin/channels/{provider_channel_id}",
        "",
        admin("PATCH", "/admin/channels/not-a-channel", {"sink": "notes"}),
        outcomes(401, 401, 401, 404),
    ),
    Row(
        "DELETE",
        "/admin/channels/{provider_channel_id}/conversations/{conversation_id}",
        "",
        admin("DELETE", "/admin/channels/not-a-channel/conversations/none"),
        outcomes(401, 401, 401, 404),
    ),
    Row("GET", "/admin/dead-letters", "", admin("GET", "/admin/dead-letters"), ADMIN),
    Row(
        "POST",
        "/admin/dead-letters/{id}/replay",
        "",
        admin("POST", "/admin/dead-letters/987654/replay"),
        outcomes(401, 401, 401, 404),
    ),
    Row("GET", "/admin/ui", "", console("GET", "/admin/ui"), ADMIN),
    Row("GET", "/admin/ui/login", "", public("/admin/ui/login"), PUBLIC),
    Row("POST", "/admin/ui/login", "", console_login(), outcomes(401, 401, 401, 303)),
    Row("POST", "/admin/ui/logout", "", console("POST", "/admin/ui/logout"), CONSOLE_POST),
    Row("GET", UI_INST, "", console("GET", UI_INST), ADMIN),
    Row("GET", "/admin/ui/channels", "", console("GET", "/admin/ui/channels"), ADMIN),
    Row("GET", "/admin/ui/dead-letters", "", console("GET", "/admin/ui/dead-letters"), ADMIN),
    Row(
        "POST",
        "/admin/ui/dead-letters/{id}/replay",
        "",
        console("POST", "/admin/ui/dead-letters/987654/replay"),
        outcomes(401, 401, 401, 404),
    ),
    Row("GET", UI_CONV, "", console("GET", UI_CONV), ADMIN),
    Row(
        "GET",
        UI_CONV + "/{conversation_id}",
        "",
        console("GET", UI_CONV + "/987654"),
        outcomes(401, 401, 401, 404),
    ),
]


def app_routes(live_stack: Live) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves; HEAD only where a route names it
    (Starlette adds it to every GET)."""
    app = live_stack.world.http._transport.app  # type: ignore[attr-defined]
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                inner = route.app
                while not hasattr(inner, "routes") and hasattr(inner, "app"):
                    inner = inner.app  # through gates and middleware to the router
                walk(list(inner.routes), prefix + route.path)
            elif isinstance(route, Route):
                for method in route.methods or ():
                    if method != "HEAD" or route.path.startswith("/media/"):
                        found.add((method, prefix + route.path))

    walk(list(app.routes), "")
    return found


def test_every_route_is_in_the_table(live_stack: Live) -> None:
    """A route the table does not name would skip the matrix: fail until it is added."""
    served = app_routes(live_stack)
    table = {(row.method, row.template) for row in ROWS}
    assert served - table == set(), "routes missing from the auth matrix"
    assert table - served == set(), "rows for routes the app no longer serves"


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_auth_matrix(live_stack: Live, row: Row) -> None:
    live = live_stack
    world = live.world
    for way in WAYS:
        call = live.call(row.build, world, way)
        before = live.call(world.footprint)
        exchanges = sum(1 for r in world.pd.requests if r.path == "/oauth/token")

        async def go(call: Call = call) -> httpx2.Response:
            return await world.http.request(call.method, call.url, **call.kwargs)

        response = live.call(go)
        expected = row.expected[way]
        allowed = expected if isinstance(expected, tuple) else (expected,)
        assert response.status_code in allowed, (way, response.status_code, response.text[:300])
        if response.status_code in (401, 403, 404) and way != RIGHT:
            assert live.call(world.footprint) == before, (way, "a refusal changed something")
            now = sum(1 for r in world.pd.requests if r.path == "/oauth/token")
            assert now == exchanges, (way, "a refusal called Pipedrive")
        if response.status_code == 401 and row.template.startswith("/pipedrive/channels"):
            assert response.json()["success"] is False
        elif response.status_code == 401 and row.template.startswith("/admin/ui"):
            assert 'name="token"' in response.text  # a browser's page: the login form
        elif response.status_code == 401:
            assert response.json()["error"]["code"] == "UNAUTHORIZED"

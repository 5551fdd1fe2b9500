"""Hostile input on every route that takes any: never a 5xx, every refusal a 4xx with a reason
in its route family's envelope, and nothing recorded, queued or stored by a refusal.

Bodies: malformed and valid-looking JSON, forms with missing and repeated fields, wrong types,
invalid UTF-8, NUL characters, deep nesting, huge bodies, wrong content types. Each request is
authenticated where the route wants it (so the input reaches the parser, not just the auth
check; the auth matrix covers the rest).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx2
from hypothesis import example, given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from service.app import DEFAULT_BODY_LIMIT
from tests.hostile.conftest import Live
from tests.messaging.harness import serving

# --- strategies --------------------------------------------------------------------------------

NASTY_TEXT = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud7ff", "💥" * 50, "x" * 5000, "../../etc/passwd", "%00", "null"]
)
TEXT = st.one_of(st.text(max_size=60), NASTY_TEXT)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
INVALID_UTF8 = st.sampled_from([b"\xff\xfe\xfd", b"\xc3\x28", b'{"a": "\xed\xa0\x80"}', b"\x80"])


def deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


BODIES = st.one_of(
    JSON_VALUES.map(_json_bytes),
    st.binary(max_size=300),
    INVALID_UTF8,
    st.integers(min_value=2, max_value=200_000).map(deep),
    st.builds(lambda s: s.encode("utf-8", "surrogatepass"), st.text(max_size=100)),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=zz",
        "multipart/form-data",
        "",
        "\x00/\x00",
    ]
)
FORM_PAIRS = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(["From", "To", "Body", "MessageSid", "NumMedia"]), TEXT),
        TEXT,
    ),
    max_size=8,
)
BOUNDARY = "hostile-boundary-7d1f"


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def multipart(fields: list[tuple[str, str]], files: list[tuple[str, bytes, str]]) -> bytes:
    """Written by hand: a client library refuses the control characters we want to send."""
    parts = [
        b'Content-Disposition: form-data; name="' + _raw(k) + b'"\r\n\r\n' + _raw(v)
        for k, v in fields
    ]
    parts += [
        b'Content-Disposition: form-data; name="files[]"; filename="'
        + _raw(name)
        + b'"\r\nContent-Type: '
        + _raw(mime)
        + b"\r\n\r\n"
        + data
        for name, data, mime in files
    ]
    sep = b"--" + BOUNDARY.encode()
    return b"".join(sep + b"\r\n" + part + b"\r\n" for part in parts) + sep + b"--\r\n"


HUGE = b"{" + b" " * (DEFAULT_BODY_LIMIT + 10) + b"}"


# --- assertions --------------------------------------------------------------------------------


def check(live: Live, response: httpx2.Response, before: dict[str, int], family: str) -> None:
    """Never 5xx; a 4xx carries a reason in its family's envelope and changed nothing."""
    status = response.status_code
    assert status < 500, (status, response.text[:300])
    if status < 400:
        return
    assert live.call(live.world.footprint) == before, (status, response.text[:300])
    if family == "extension":
        body = response.json()
        assert body["success"] is False
        assert body["data"]["code"]
        assert body["data"]["message"]
    elif family == "service":
        body = response.json()
        assert body["error"]["code"]
        assert body["error"]["message"]
    elif family == "page":
        assert "<h1>" in response.text
    else:  # pragma: no cover - a test names its family
        raise AssertionError(family)


def send(
    live: Live, method: str, url: str, **kwargs: Any
) -> tuple[httpx2.Response, dict[str, int]]:
    """The footprint before, then the request (in the world's loop)."""
    before = live.call(live.world.footprint)

    async def go() -> httpx2.Response:
        return await live.world.http.request(method, url, **kwargs)

    return live.call(go), before


# --- provider webhooks -------------------------------------------------------------------------


@given(body=BODIES, content_type=CONTENT_TYPES)
@example(body=HUGE, content_type="application/json")
@example(body=b'{"update_id": "\x00", "message": []}', content_type="application/json")
@example(body=b'{"update_id": 1e400}', content_type="application/json")
def test_telegram_webhook(live: Live, body: bytes, content_type: str) -> None:
    w = live.world
    path = f"/webhooks/telegram/{w.pcid(w.a, 'telegram')}"
    headers = {
        "X-Telegram-Bot-Api-Secret-Token": w.a.channels["telegram"]["secret"],
        "Content-Type": content_type,
    }
    response, before = send(live, "POST", path, content=body, headers=headers)
    check(live, response, before, "service")


@given(body=BODIES, content_type=CONTENT_TYPES)
@example(body=b'{"object":"whatsapp_business_account","entry":[{"changes":[[]]}]}', content_type="")
@example(body=b'{"object":"whatsapp_business_account","entry":{"id":1}}', content_type="")
def test_whatsapp_webhook(live: Live, body: bytes, content_type: str) -> None:
    w = live.world
    headers = {**w.whatsapp_headers(body), "Content-Type": content_type}
    path = f"/webhooks/whatsapp/{w.pcid(w.a, 'whatsapp')}"
    response, before = send(live, "POST", path, content=body, headers=headers)
    check(live, response, before, "service")


@given(
    params=st.lists(
        st.tuples(st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "x"]), TEXT),
        max_size=6,
    )
)
def test_whatsapp_verification_handshake(live: Live, params: list[tuple[str, str]]) -> None:
    w = live.world
    path = f"/webhooks/whatsapp/{w.pcid(w.a, 'whatsapp')}"
    response, before = send(live, "GET", path, params=params)
    check(live, response, before, "service")
    if response.status_code == 200:  # only the right token, which hypothesis does not know
        assert ("hub.verify_token", w.wa.credentials["verify_token"]) in params


@given(pairs=FORM_PAIRS)
@example(pairs=[("NumMedia", "99999999999999999999"), ("MediaUrl0", "file:///etc/passwd")])
@example(pairs=[("MessageSid", "SM1"), ("MessageSid", "SM2"), ("Body", "\x00")])
@example(pairs=[("MessageStatus", "delivered"), ("MessageSid", "\x00")])
def test_twilio_webhook(live: Live, pairs: list[tuple[str, str]]) -> None:
    """Signed as Twilio signs (so the form reaches the parser), whatever it holds."""
    w = live.world
    path = f"/webhooks/twilio/{w.pcid(w.a, 'twilio')}"
    body = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode()
    headers = {
        **w.twilio_headers(path, dict(pairs)),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    response, before = send(live, "POST", path, content=body, headers=headers)
    check(live, response, before, "service")


@given(channel_id=TEXT, provider=st.sampled_from(["telegram", "whatsapp", "twilio", "x", "\x00"]))
def test_webhook_paths_with_hostile_ids(live: Live, channel_id: str, provider: str) -> None:
    response, before = send(
        live,
        "POST",
        f"/webhooks/{quote(provider, safe='')}/{quote(channel_id, safe='')}",
        content=b"{}",
        headers={"X-Telegram-Bot-Api-Secret-Token": "\x01"},
    )
    check(live, response, before, "service")


# --- Pipedrive -----------------------------------------------------------------------------------


@given(body=BODIES)
@example(body=b'{"meta": {"company_id": "\x00"}, "data": {}}')
@example(body=b'{"meta": {"company_id": 1e400, "version": "2.0"}}')
def test_pipedrive_webhook(live: Live, body: bytes) -> None:
    w = live.world
    headers = {
        "Authorization": _basic(w.a.webhook_user, w.a.webhook_password),
        "Content-Type": "application/json",
    }
    response, before = send(live, "POST", "/webhooks/pipedrive", content=body, headers=headers)
    check(live, response, before, "service")


def _basic(user: str, password: str) -> str:
    from tests.hostile.world import basic

    return basic(user, password)


MANIFEST_GETS = [
    "/conversations",
    "/conversations/{id}",
    "/conversations/{id}/messages",
    "/messages/{id}",
    "/senders/{id}",
    "/templates",
]


@given(
    path=st.sampled_from(MANIFEST_GETS),
    ident=TEXT,
    query=st.lists(
        st.tuples(
            st.sampled_from(["conversations_limit", "messages_limit", "limit", "after", "before"]),
            st.one_of(TEXT, st.sampled_from(["0", "-1", "1e400", "101", "99999999999999999999"])),
        ),
        max_size=4,
    ),
)
@example(path="/conversations", ident="", query=[("after", "c" + "WzFlNDAwXQ")])
def test_manifest_reads(live: Live, path: str, ident: str, query: list[tuple[str, str]]) -> None:
    w = live.world
    url = f"/pipedrive/channels/{w.pcid(w.a, 'telegram')}" + path.format(id=quote(ident, safe=""))
    response, before = send(live, "GET", url, params=query, headers=w.client_auth)
    check(live, response, before, "extension")


@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(["message", "conversationId", "senderId", "recipientIds[]", "x"]),
            TEXT,
        ),
        max_size=6,
    ),
    files=st.lists(
        st.tuples(TEXT, st.binary(max_size=200), st.sampled_from(["text/plain", "\x00", ""])),
        max_size=3,
    ),
    real_conversation=st.booleans(),
)
@example(
    fields=[("message", "hi\x00")], files=[("a.txt", b"x", "text/plain")], real_conversation=True
)
def test_post_message(
    live: Live,
    fields: list[tuple[str, str]],
    files: list[tuple[str, bytes, str]],
    real_conversation: bool,
) -> None:
    """Multipart with missing, repeated and NUL-laden fields and odd files; against a real
    conversation too, so the refusals that come after reading files are reached."""
    w = live.world
    if real_conversation:
        fields = [("conversationId", w.a.channels["telegram"]["conversation"]), *fields]
    url = f"/pipedrive/channels/{w.pcid(w.a, 'telegram')}/messages"
    headers = {**w.client_auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    body = multipart(fields, files)
    response, before = send(live, "POST", url, content=body, headers=headers)
    if response.status_code == 200:  # a valid message to the real customer: recorded and queued
        return
    check(live, response, before, "extension")


@given(body=BODIES, content_type=CONTENT_TYPES)
@example(body=HUGE, content_type="multipart/form-data; boundary=zz")
def test_post_message_raw_bodies(live: Live, body: bytes, content_type: str) -> None:
    w = live.world
    url = f"/pipedrive/channels/{w.pcid(w.a, 'telegram')}/messages"
    headers = {**w.client_auth, "Content-Type": content_type}
    response, before = send(live, "POST", url, content=body, headers=headers)
    check(live, response, before, "extension")


# --- OAuth ---------------------------------------------------------------------------------------


@given(
    params=st.lists(st.tuples(st.sampled_from(["code", "state", "error", "x"]), TEXT), max_size=5)
)
@example(params=[("code", "c"), ("code", "d"), ("state", "a.1.b")])
@example(params=[("code", "x" * 3000), ("state", "")])
def test_oauth_callback(live: Live, params: list[tuple[str, str]]) -> None:
    """No forged or garbled callback reaches Pipedrive's token endpoint."""
    w = live.world
    exchanges = sum(1 for r in w.pd.requests if r.path == "/oauth/token")
    response, before = send(live, "GET", "/oauth/callback", params=params)
    assert 400 <= response.status_code < 500, response.text[:300]
    check(live, response, before, "page")
    assert sum(1 for r in w.pd.requests if r.path == "/oauth/token") == exchanges


@given(body=BODIES)
@example(body=b'{"company_id": "1e400", "user_id": 1}')
@example(body=b'{"company_id": 99999999999999999999999, "user_id": 1}')
@example(body=b'{"company_id": [1001], "user_id": {"a": 1}}')
def test_uninstall_notice(live: Live, body: bytes) -> None:
    w = live.world
    response, before = send(live, "DELETE", "/oauth/callback", content=body, headers=w.client_auth)
    check(live, response, before, "service")
    assert live.call(w.footprint) == before  # nothing of ours is named: nothing changes


# --- admin ---------------------------------------------------------------------------------------


@given(body=BODIES)
@example(
    body=b'{"provider": "telegram", "company_id": 1001, "user_id": 2001, "name": "\x00",'
    b' "credentials": {"bot_token": "1:\x00"}}'
)
@example(body=b'{"provider": "whatsapp", "company_id": 1e400, "credentials": []}')
def test_admin_add_channel(live: Live, body: bytes) -> None:
    w = live.world
    headers = {**w.admin, "Content-Type": "application/json"}
    response, before = send(live, "POST", "/admin/channels", content=body, headers=headers)
    assert response.status_code != 201
    check(live, response, before, "service")


@given(
    call=st.sampled_from(
        [
            ("POST", "/admin/dead-letters/{}/replay"),
            ("DELETE", "/admin/channels/{}"),
            ("GET", "/admin/installations?{}"),
            ("GET", "/admin/dead-letters?{}"),
        ]
    ),
    ident=st.one_of(TEXT, st.sampled_from(["99999999999999999999999", "-1", "1e400", "0"])),
)
@example(call=("POST", "/admin/dead-letters/{}/replay"), ident="99999999999999999999999")
@example(call=("GET", "/admin/dead-letters?limit={}"), ident="-1")
@example(call=("GET", "/admin/dead-letters?limit={}"), ident="1e400")
def test_admin_ids(live: Live, call: tuple[str, str], ident: str) -> None:
    w = live.world
    method, template = call
    response, before = send(live, method, template.format(quote(ident, safe="")), headers=w.admin)
    check(live, response, before, "service")


# --- media ---------------------------------------------------------------------------------------


@given(signed=TEXT, method=st.sampled_from(["GET", "HEAD"]))
@example(signed="eyJ9.99999999999999999999999999.x", method="GET")
@example(signed="a.-1.b", method="HEAD")
def test_media_links(live: Live, signed: str, method: str) -> None:
    response, before = send(live, method, f"/media/{quote(signed, safe='')}")
    if method == "GET":
        check(live, response, before, "service")
    else:  # a HEAD answer has no body to hold an envelope
        assert response.status_code < 500


# --- a client that hangs up --------------------------------------------------------------------


def test_a_client_hanging_up_mid_body_costs_nothing(live: Live) -> None:
    """On a real socket, a webhook and a postMessage whose senders hang up half way: nothing
    recorded or stored, and the server goes on answering."""
    w = live.world

    async def run() -> None:
        before = await w.footprint()
        app = w.http._transport.app  # type: ignore[attr-defined]
        async with serving(app) as url:
            port = int(url.rsplit(":", 1)[1])
            telegram = f"/webhooks/telegram/{w.pcid(w.a, 'telegram')}"
            secret = w.a.channels["telegram"]["secret"]
            post = f"/pipedrive/channels/{w.pcid(w.a, 'telegram')}/messages"
            for path, headers in (
                (
                    telegram,
                    f"X-Telegram-Bot-Api-Secret-Token: {secret}\r\n"
                    "Content-Type: application/json\r\n",
                ),
                (
                    post,
                    f"Authorization: {w.client_auth['Authorization']}\r\n"
                    "Content-Type: multipart/form-data; boundary=zz\r\n",
                ),
            ):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 100000\r\n\r\n"
                writer.write(
                    head.encode()
                    + b'--zz\r\nContent-Disposition: form-data; name="files[]"; filename="a"\r\n'
                    b"\r\n" + b"x" * 5000
                )
                await writer.drain()
                writer.close()
                await writer.wait_closed()
            async with httpx2.AsyncClient(base_url=url) as client:
                alive = await client.get("/healthz")
            assert alive.status_code == 200
        assert await w.footprint() == before

    with capture_logs() as logs:
        live.call(run)
    answered = [e["status"] for e in logs if e["event"] == "http.request"]
    assert len(answered) == 3, logs  # both cut requests were seen through, and /healthz
    assert all(status < 500 for status in answered), answered
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []

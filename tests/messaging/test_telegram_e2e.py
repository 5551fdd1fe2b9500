"""Telegram ⇄ Pipedrive end to end: real sockets, real workers, real Redis and databases."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sandbox.pipedrive import PipedriveStandin, response_problems
from sandbox.telegram import TelegramStandin
from service.store import dead_letters, deliveries
from tests.messaging.harness import ADMIN, Stack, running_stack
from tests.pipedrive.bridge import PUBLIC_URL, standin

pytestmark = pytest.mark.anyio

SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "spec" / "pipedrive-v1-schemas.json"
FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "telegram"
CHAT = 5550001


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def tg() -> Iterator[TelegramStandin]:
    with TelegramStandin(bot_token="777001:SECRET-bot-token") as server:
        yield server


@pytest.fixture
async def stack(
    stack: tuple[str, str], pd: PipedriveStandin, tg: TelegramStandin
) -> AsyncIterator[Stack]:
    async with running_stack(stack, pd, tg) as running:
        yield running


def receive_schema() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.skip("the shared spec folder is not beside the project")
    schemas: dict[str, Any] = json.loads(SPEC.read_text())
    return (
        schemas.get("ChannelsReceiveMessageRequest")
        or schemas["components"]["schemas"]["ChannelsReceiveMessageRequest"]
    )


async def wait_callbacks(pd: PipedriveStandin, n: int) -> list[Any]:
    return await asyncio.to_thread(pd.wait_for_callbacks, n, 15.0)


async def test_text_reaches_pipedrive_once_and_its_conversation_is_valid(stack: Stack) -> None:
    """A non-ASCII text delivered three times becomes one schema-valid `receive`, and Pipedrive's
    follow-up getConversationById gets a valid conversation."""
    channel = await stack.add_channel()
    pcid = channel["provider_channel_id"]
    assert channel["webhook_url"] == f"{PUBLIC_URL}/webhooks/telegram/{pcid}"
    text = "Grüße aus Köln 👋 — ça va?"
    update = stack.tg.text_update(update_id=10, chat_id=CHAT, text=text, message_id=1)
    for _ in range(3):
        response = await stack.send_update(pcid, update)
        assert response.status_code == 200
    await stack.run_worker()
    [message] = stack.pd.received(pcid)
    assert message["message"] == text
    assert message["status"] == "sent"
    assert message["conversation_id"] == f"tg:777001:{CHAT}"
    assert message["sender_id"] == f"tg:{CHAT}"
    receives = [r for r in stack.pd.requests if r.api_path == "/v1/channels/messages/receive"]
    assert len(receives) == 1
    jsonschema.validate(receives[0].json, receive_schema())
    callbacks = await wait_callbacks(stack.pd, 2)
    assert [c.endpoint for c in callbacks] == ["getConversations", "getConversationById"]
    assert all(c.problems == [] for c in callbacks), [c.problems for c in callbacks]
    conversation = callbacks[1].body["data"]
    assert [p["role"] for p in conversation["participants"]] == ["source_user", "end_user"]
    assert conversation["messages"][0]["message"] == text
    assert await dead_letters.list_all(stack.bridge.services.db) == []


async def test_wrong_secret_token_is_refused_and_nothing_recorded(stack: Stack) -> None:
    """A wrong or missing secret header gets 401; nothing is stored or queued."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    update = stack.tg.text_update(update_id=11, chat_id=CHAT, text="hi", message_id=1)
    depth = await stack.bridge.services.queue.depth()
    assert (await stack.send_update(pcid, update, secret="wrong")).status_code == 401
    assert (await stack.send_update(pcid, update, secret="")).status_code == 401
    assert await deliveries.count(stack.bridge.services.db, "telegram") == 0
    assert await stack.bridge.services.queue.depth() == depth
    unknown = await stack.http.post("/webhooks/telegram/no-such-channel", json=update)
    assert unknown.status_code == 404


async def test_post_message_answers_at_once_and_is_sent_then_reported(stack: Stack) -> None:
    """postMessage answers before anything reaches Telegram (which holds every send here); the
    worker sends to the right chat and reports `sent` with the same id, from the conversation's
    source user. Decided by what Telegram saw, not by how long the answer took."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    await stack.send_update(
        pcid, stack.tg.text_update(update_id=20, chat_id=CHAT, text="hello?", message_id=1)
    )
    await stack.run_worker()
    held = threading.Event()
    stack.tg.hold_sends = held
    response = await asyncio.to_thread(
        stack.pd.post_message,
        pcid,
        conversation_id=f"tg:777001:{CHAT}",
        sender_id="tg:biz:777001",
        recipient_ids=[f"tg:{CHAT}"],
        message="Hi Jane, how can I help? ✅",
    )
    assert response.status_code == 200, response.text
    assert [r for r in stack.tg.requests if r.method.startswith("send")] == []
    message_id = response.json()["data"]["id"]
    held.set()
    await stack.run_worker()
    [sent] = stack.tg.sent
    assert (sent["method"], sent["chat_id"], sent["text"]) == (
        "sendMessage",
        CHAT,
        "Hi Jane, how can I help? ✅",
    )
    reported = {m["id"]: m for m in stack.pd.received(pcid)}[message_id]
    assert reported["status"] == "sent"
    assert reported["sender_id"] == "tg:biz:777001"


async def test_blocked_bot_reports_failed(stack: Stack) -> None:
    """A customer who blocked the bot makes the reply `failed` in Pipedrive, with no retries."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    await stack.send_update(
        pcid, stack.tg.text_update(update_id=30, chat_id=CHAT, text="hi", message_id=1)
    )
    await stack.run_worker()
    stack.tg.block_chat(CHAT)
    response = await asyncio.to_thread(
        stack.pd.post_message,
        pcid,
        conversation_id=f"tg:777001:{CHAT}",
        sender_id="tg:biz:777001",
        recipient_ids=[f"tg:{CHAT}"],
        message="are you there?",
    )
    message_id = response.json()["data"]["id"]
    await stack.run_worker()
    reported = {m["id"]: m for m in stack.pd.received(pcid)}[message_id]
    assert reported["status"] == "failed"
    sends = [r for r in stack.tg.requests if r.method == "sendMessage"]
    assert len(sends) == 1


async def test_photo_is_rehosted_on_our_url_without_the_bot_token(stack: Stack) -> None:
    """A photo arrives as an attachment on PUBLIC_BASE_URL that answers HEAD and serves the
    same bytes; the bot token appears nowhere in what Pipedrive got."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    picture = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40
    file = stack.tg.add_file(picture, mime_type="image/jpeg")
    update = stack.tg.photo_update(
        update_id=40, chat_id=CHAT, message_id=2, file=file, caption="the broken part"
    )
    assert (await stack.send_update(pcid, update)).status_code == 200
    await stack.run_worker()
    [message] = stack.pd.received(pcid)
    [attachment] = message["attachments"]
    assert attachment["url"].startswith(f"{PUBLIC_URL}/media/")
    assert attachment["type"] == "image/jpeg"
    assert attachment["link_expires"] is True
    receives = [r for r in stack.pd.requests if r.api_path == "/v1/channels/messages/receive"]
    assert "SECRET-bot-token" not in json.dumps([r.json for r in receives])
    path = attachment["url"].removeprefix(PUBLIC_URL)
    head = await stack.http.head(path)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(picture))
    got = await stack.http.get(path)
    assert got.content == picture


async def test_two_hundred_messages_keep_their_order_with_four_workers(stack: Stack) -> None:
    """200 messages of one chat, relayed by 4 workers at once, reach Pipedrive in order."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    for n in range(1, 201):
        update = stack.tg.text_update(update_id=1000 + n, chat_id=CHAT, text=f"m{n}", message_id=n)
        assert (await stack.send_update(pcid, update)).status_code == 200
    await stack.run_worker(workers=4)
    receives = [
        r.json["message"]
        for r in stack.pd.requests
        if r.api_path == "/v1/channels/messages/receive" and r.status == 200
    ]
    assert receives == [f"m{n}" for n in range(1, 201)]


async def test_manifest_endpoints_refuse_wrong_credentials(stack: Stack) -> None:
    """Every manifest endpoint answers 401 in the extension's envelope without the right pair."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    calls = [
        ("getConversations", {}),
        ("getConversationById", {"sourceConversationId": "x"}),
        ("getMessageById", {"sourceConversationId": "x", "sourceMessageId": "y"}),
        ("getSenderById", {"senderId": "x"}),
        ("getTemplates", {}),
        ("deleteChannelById", {}),
    ]
    for auth in (None, ("bridge-client-id", "wrong")):
        for endpoint, path_vars in calls:
            response = await asyncio.to_thread(
                stack.pd.call_manifest, endpoint, auth=auth, providerChannelId=pcid, **path_vars
            )
            assert response.status_code == 401, endpoint
            assert response.json() == {
                "success": False,
                "data": {"code": "UNAUTHORIZED", "message": "Basic client credentials required"},
            }
        posted = await asyncio.to_thread(
            stack.pd.post_message,
            pcid,
            conversation_id="x",
            sender_id="x",
            recipient_ids=["x"],
            message="x",
            auth=auth,
        )
        assert posted.status_code == 401
    assert (await stack.channel(pcid)).status == "active"


async def test_manifest_shapes_and_pagination_over_a_hundred_messages(stack: Stack) -> None:
    """With credentials every endpoint answers the documented shape, and paging through a
    conversation of 100 messages yields each message exactly once."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    for n in range(1, 101):
        update = stack.tg.text_update(update_id=2000 + n, chat_id=CHAT, text=f"t{n}", message_id=n)
        await stack.send_update(pcid, update)
    await stack.run_worker()
    conversation_id = f"tg:777001:{CHAT}"

    async def call(endpoint: str, **kwargs: Any) -> Any:
        response = await asyncio.to_thread(
            stack.pd.call_manifest, endpoint, providerChannelId=pcid, **kwargs
        )
        assert response_problems(endpoint, response) == [], (endpoint, response.text)
        return response.json()

    seen: list[str] = []
    page = await call("getConversationById", sourceConversationId=conversation_id)
    while True:
        seen = [m["message"] for m in page["data"]["messages"]] + seen
        cursor = page["data"]["next_messages_cursor"]
        if not cursor:
            break
        page = await call(
            "getConversationById", sourceConversationId=conversation_id, params={"after": cursor}
        )
    assert seen == [f"t{n}" for n in range(1, 101)]
    listing = await call("getConversations", params={"conversations_limit": 5, "messages_limit": 3})
    assert [c["id"] for c in listing["data"]] == [conversation_id]
    assert [m["message"] for m in listing["data"][0]["messages"]] == ["t98", "t99", "t100"]
    message_id = listing["data"][0]["messages"][0]["id"]
    bare = await call(
        "getMessageById", sourceConversationId=conversation_id, sourceMessageId=message_id
    )
    assert bare["id"] == message_id
    assert "success" not in bare
    sender = await call("getSenderById", senderId=f"tg:{CHAT}")
    assert sender["data"]["name"] == "Jane Doe"
    templates = await call("getTemplates")
    assert templates == {"success": True, "data": {"templates": []}}
    missing = await asyncio.to_thread(
        stack.pd.call_manifest,
        "getConversationById",
        providerChannelId=pcid,
        sourceConversationId="nope",
    )
    assert missing.status_code == 404
    assert missing.json()["data"]["code"] == "NOT_FOUND"


async def test_conversations_page_without_gaps_or_repeats(stack: Stack) -> None:
    """Seven conversations listed two at a time come back each exactly once."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    for n in range(7):
        update = stack.tg.text_update(
            update_id=3000 + n, chat_id=CHAT + n, text=f"c{n}", message_id=1, from_id=CHAT + n
        )
        await stack.send_update(pcid, update)
    await stack.run_worker()
    ids: list[str] = []
    params: dict[str, Any] = {"conversations_limit": 2}
    while True:
        response = await asyncio.to_thread(
            stack.pd.call_manifest, "getConversations", providerChannelId=pcid, params=params
        )
        body = response.json()
        ids += [c["id"] for c in body["data"]]
        after = (body.get("additional_data") or {}).get("after")
        if not after:
            break
        params = {"conversations_limit": 2, "after": after}
    assert sorted(ids) == sorted(f"tg:777001:{CHAT + n}" for n in range(7))
    assert len(ids) == 7


async def test_every_recorded_telegram_update_is_acknowledged(stack: Stack) -> None:
    """All real Telegram bodies are answered without a server error, and every private message
    of a supported kind reaches Pipedrive."""
    if not FIXTURES.is_dir():
        pytest.skip("the shared fixtures folder is not beside the project")
    pcid = (await stack.add_channel())["provider_channel_id"]
    private = 0
    for number, path in enumerate(sorted(FIXTURES.glob("*.json")), start=1):
        update = json.loads(path.read_text())
        # The captures come from many bots; as one bot's traffic their ids must not collide.
        update["update_id"] = 900_000 + number
        for kind in ("message", "edited_message"):
            if isinstance(update.get(kind), dict):
                update[kind]["message_id"] = number
        response = await stack.send_update(pcid, update)
        assert response.status_code == 200, (path.name, response.text)
        message = update.get("message") or update.get("edited_message") or {}
        chat = message.get("chat") or {}
        if chat.get("type") == "private" or (chat and "type" not in chat and chat["id"] > 0):
            private += 1
    await stack.run_worker()
    assert len(stack.pd.received(pcid)) == private
    assert await dead_letters.list_all(stack.bridge.services.db) == []


async def test_channel_removal_at_pipedrive_provider_and_here(stack: Stack) -> None:
    """DELETE /admin/channels removes it at Pipedrive, unhooks the bot, lists it no more."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    assert stack.tg.webhook is not None
    response = await stack.http.delete(f"/admin/channels/{pcid}", headers=ADMIN)
    assert response.status_code == 200
    assert stack.tg.webhook is None
    assert pcid not in {c["provider_channel_id"] for c in stack.pd.channels}
    listed = (await stack.http.get("/admin/channels", headers=ADMIN)).json()["data"]
    assert listed == []


async def test_pipedrive_deleting_the_channel_removes_it_here_and_at_telegram(stack: Stack) -> None:
    """deleteChannelById drops the channel here and unhooks the bot (twice is fine)."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    for _ in range(2):
        response = await asyncio.to_thread(
            stack.pd.call_manifest, "deleteChannelById", providerChannelId=pcid
        )
        assert response.json() == {"success": True}
    await stack.run_worker()
    assert stack.tg.webhook is None
    listed = (await stack.http.get("/admin/channels", headers=ADMIN)).json()["data"]
    assert listed == []


async def test_conversation_deletion_and_its_refusals(stack: Stack) -> None:
    """Deleting a conversation calls Pipedrive with the owner's token; FORBIDDEN_USER_REQUEST
    and unknown conversations are answered clearly."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    await stack.send_update(
        pcid, stack.tg.text_update(update_id=50, chat_id=CHAT, text="hi", message_id=1)
    )
    await stack.run_worker()
    conversation = f"tg:777001:{CHAT}"
    stack.pd.fail_next(
        f"/v1/channels/{pcid}/conversations",
        403,
        {
            "success": False,
            "error": "Only the app owner can delete conversations",
            "additional_data": {"code": "FORBIDDEN_USER_REQUEST"},
        },
    )
    refused = await stack.http.delete(
        f"/admin/channels/{pcid}/conversations/{conversation}", headers=ADMIN
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "FORBIDDEN_USER_REQUEST"
    done = await stack.http.delete(
        f"/admin/channels/{pcid}/conversations/{conversation}", headers=ADMIN
    )
    assert done.status_code == 200
    unknown = await stack.http.delete(f"/admin/channels/{pcid}/conversations/nope", headers=ADMIN)
    assert unknown.status_code == 404


async def test_channel_registration_refusals_are_clear_and_leave_nothing(stack: Stack) -> None:
    """A non-admin installer gets ADMIN_ONLY as a 403, bad credentials a 400; nothing is kept."""
    await stack.bridge.install(1001, 2999)
    stack.pd.fail_next(
        "/v1/channels",
        403,
        {
            "success": False,
            "error": "Only admins can register channels",
            "additional_data": {"code": "ADMIN_ONLY"},
        },
    )
    refused = await stack.http.post(
        "/admin/channels",
        headers=ADMIN,
        json={
            "provider": "telegram",
            "company_id": 1001,
            "user_id": 2999,
            "name": "Bot",
            "credentials": {"bot_token": stack.tg.bot_token},
        },
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "ADMIN_ONLY"
    bad = await stack.http.post(
        "/admin/channels",
        headers=ADMIN,
        json={
            "provider": "telegram",
            "company_id": 1001,
            "user_id": 2001,
            "name": "B",
            "credentials": {},
        },
    )
    assert bad.status_code == 400
    assert (await stack.http.get("/admin/channels", headers=ADMIN)).json()["data"] == []
    assert stack.tg.webhook is None


async def test_document_is_downloaded_through_get_file_and_rehosted(stack: Stack) -> None:
    """A PDF from the customer is fetched with getFile and served from our link by name."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    pdf = b"%PDF-1.7\n" + b"0" * 3000
    file = stack.tg.add_file(pdf, mime_type="application/pdf")
    update = stack.tg.document_update(
        update_id=60,
        chat_id=CHAT,
        message_id=3,
        file=file,
        file_name="Angebot März.pdf",
        mime_type="application/pdf",
    )
    await stack.send_update(pcid, update)
    await stack.run_worker()
    [attachment] = stack.pd.received(pcid)[0]["attachments"]
    assert (attachment["name"], attachment["type"], attachment["size"]) == (
        "Angebot März.pdf",
        "application/pdf",
        len(pdf),
    )
    assert [r.method for r in stack.tg.requests if r.method == "getFile"] == ["getFile"]
    got = await stack.http.get(attachment["url"].removeprefix(PUBLIC_URL))
    assert got.content == pdf
    assert "Angebot" in got.headers["content-disposition"]


async def test_a_refused_message_is_set_aside_without_blocking_its_chat(stack: Stack) -> None:
    """A message Pipedrive refuses for good becomes a dead letter; the chat's later messages
    still arrive, and replaying the dead letter delivers the refused one."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    stack.pd.fail_next(
        "/v1/channels/messages/receive",
        400,
        {
            "success": False,
            "error": "bad payload",
            "additional_data": {"code": "INVALID_RECEIVE_MESSAGE_PAYLOAD"},
        },
    )
    for n in (1, 2):
        update = stack.tg.text_update(update_id=70 + n, chat_id=CHAT, text=f"x{n}", message_id=n)
        await stack.send_update(pcid, update)
    await stack.run_worker()
    assert [m["message"] for m in stack.pd.received(pcid)] == ["x2"]
    [letter] = (await stack.http.get("/admin/dead-letters", headers=ADMIN)).json()["data"]
    assert letter["kind"] == "retry_delivery"
    assert "INVALID_RECEIVE_MESSAGE_PAYLOAD" in letter["error"] or "bad payload" in letter["error"]
    replay = await stack.http.post(f"/admin/dead-letters/{letter['id']}/replay", headers=ADMIN)
    assert replay.status_code == 202
    await stack.run_worker()
    assert sorted(m["message"] for m in stack.pd.received(pcid)) == ["x1", "x2"]


async def test_updates_waiting_for_a_removed_channel_are_dropped_not_swept_forever(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates recorded just before Pipedrive deleted the channel are acknowledged and dropped:
    nothing reaches Pipedrive, and the sweeper does not queue them again and again."""
    from jobs import maintenance

    pcid = (await stack.add_channel())["provider_channel_id"]
    for n in (1, 2):
        update = stack.tg.text_update(
            update_id=90 + n, chat_id=CHAT, text=f"late {n}", message_id=n
        )
        assert (await stack.send_update(pcid, update)).status_code == 200
    response = await asyncio.to_thread(
        stack.pd.call_manifest, "deleteChannelById", providerChannelId=pcid
    )
    assert response.json() == {"success": True}
    await stack.run_worker()
    assert stack.pd.received(pcid) == []
    svc = stack.bridge.services
    assert await deliveries.count_by_status(svc.db, "telegram") == {"dropped": 2}
    monkeypatch.setattr(maintenance, "STUCK_AFTER", timedelta(0))
    assert await maintenance.sweep_stuck_deliveries({"services": svc}) == 0


@pytest.mark.parametrize(
    ("endpoint", "cursor"),
    [
        ("getConversationById", "m" + "WzFlNDAwXQ"),  # [1e400]: infinity once parsed
        ("getConversations", "c" + "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgMV0"),  # no time zone
        ("getConversations", "c" + "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgMWU0MDBd"),
        ("getConversationById", "m" + "WzEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMF0"),  # 10**29
        ("getConversationById", "m!!"),
    ],
)
async def test_forged_cursors_are_refused_with_a_reason(
    stack: Stack, endpoint: str, cursor: str
) -> None:
    """A cursor we never gave out (an overflowing number, an id no database column holds, a
    time without a zone, garbage) is a 400 in the extension's envelope, never a 500 or 503."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    update = stack.tg.text_update(update_id=4000, chat_id=CHAT, text="x", message_id=1)
    await stack.send_update(pcid, update)
    await stack.run_worker()
    where = {"providerChannelId": pcid}
    if endpoint == "getConversationById":
        where["sourceConversationId"] = f"tg:777001:{CHAT}"
    response = await asyncio.to_thread(
        stack.pd.call_manifest, endpoint, params={"after": cursor}, **where
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "success": False,
        "data": {"code": "INVALID_BODY", "message": "the cursor is not one we gave out"},
    }


async def test_nul_characters_in_ids_and_credentials_are_refused_cleanly(stack: Stack) -> None:
    """A NUL in a channel, conversation or message id, in a Basic-auth user, or in postMessage
    fields gets a 4xx in the route's own envelope (PostgreSQL would refuse the query: never a
    5xx), and postMessage leaves no file behind."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    update = stack.tg.text_update(update_id=5000, chat_id=CHAT, text="hi", message_id=1)
    await stack.send_update(pcid, update)
    await stack.run_worker()
    for endpoint, where in [
        ("getConversations", {"providerChannelId": pcid + "\x00"}),
        ("getConversationById", {"providerChannelId": pcid, "sourceConversationId": "tg:\x00"}),
        (
            "getMessageById",
            {"providerChannelId": pcid, "sourceConversationId": "a", "sourceMessageId": "m\x00"},
        ),
        ("getSenderById", {"providerChannelId": pcid, "senderId": "\x00"}),
    ]:
        response = await asyncio.to_thread(stack.pd.call_manifest, endpoint, **where)
        assert response.status_code == 404, (endpoint, response.text)
        assert response.json()["success"] is False
    hook = await stack.http.post(
        "/webhooks/telegram/abc%00def",
        json=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": "x"},
    )
    assert hook.status_code == 404
    import base64

    nul_user = base64.b64encode(b"user\x00:password").decode()
    pipedrive = await stack.http.post(
        "/webhooks/pipedrive", json={}, headers={"Authorization": f"Basic {nul_user}"}
    )
    assert pipedrive.status_code == 401
    media = stack.bridge.services.media
    stored_before = sorted(p.name for p in media.root.iterdir()) if media.root.exists() else []
    posted = await asyncio.to_thread(
        stack.pd.post_message,
        pcid,
        conversation_id=f"tg:777001:{CHAT}",
        sender_id="tg:biz:777001",
        recipient_ids=[f"tg:{CHAT}"],
        message="bad \x00 text",
        files=[("a.txt", b"hello", "text/plain")],
    )
    assert posted.status_code == 400
    assert posted.json()["data"]["code"] == "INVALID_BODY"
    stored_after = sorted(p.name for p in media.root.iterdir()) if media.root.exists() else []
    assert stored_after == stored_before
    assert stack.tg.sent == []

"""Self-test of the Telegram Bot API stand-in: it must enforce the contract rules it claims to."""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

from sandbox.telegram import (
    MAX_DOWNLOAD_BYTES,
    MAX_TEXT_CHARS,
    SECRET_HEADER,
    TelegramStandin,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

TOKEN = "987654:AAH-test_Token"
BOT_ID = 987654
CHAT = 4242
SECRET = "s3cr3t_Tok-en"
HOOK = "https://bridge.example.com/webhooks/telegram/abc"


@pytest.fixture
def tg() -> Iterator[TelegramStandin]:
    with TelegramStandin(bot_token=TOKEN, bot_username="acme_bot") as standin:
        yield standin


@pytest.fixture
def client(tg: TelegramStandin) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=tg.api_url) as c:
        yield c


def call(client: httpx2.Client, method: str, **params: Any) -> httpx2.Response:
    return client.post(f"/{method}", json=params)


def error(status: int, description: str) -> dict[str, Any]:
    return {"ok": False, "error_code": status, "description": description}


# ---------------------------------------------------------------------- routing and auth


def test_get_me_describes_the_bot(tg: TelegramStandin, client: httpx2.Client) -> None:
    """getMe answers the bot user, with the id taken from the token's digits."""
    response = client.get("/getMe")

    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["result"]["id"] == BOT_ID == tg.bot_id
    assert body["result"]["is_bot"] is True
    assert body["result"]["username"] == "acme_bot"


def test_wrong_token_is_401_for_methods_and_files(tg: TelegramStandin) -> None:
    """A token other than the bot's gets 401 Unauthorized on the API and on file downloads."""
    file_path = "documents/x.pdf"
    tg.add_file(b"%PDF", file_path=file_path)
    with httpx2.Client(base_url=tg.base_url) as c:
        method = c.post("/bot987654:wrong/sendMessage", json={"chat_id": CHAT, "text": "hi"})
        download = c.get(f"/file/bot987654:wrong/{file_path}")

    assert method.status_code == 401
    assert method.json() == error(401, "Unauthorized")
    assert download.status_code == 401
    assert download.json() == error(401, "Unauthorized")
    assert tg.sent == []
    assert [r.status for r in tg.requests] == [401, 401]


def test_unknown_method_is_404_and_names_are_case_insensitive(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """An unserved method answers 404 'method not found'; getme and GETME both reach getMe."""
    unknown = client.post("/sendSticker", json={"chat_id": CHAT})
    assert unknown.status_code == 404
    assert unknown.json() == error(404, "Not Found: method not found")

    assert client.get("/getme").json()["ok"] is True
    assert client.get("/GETME").json()["ok"] is True
    assert [r.method for r in tg.requests] == ["sendSticker", "getMe", "getMe"]


def test_params_parse_alike_from_query_json_form_and_multipart(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """The same sendMessage sent four ways records the same typed parameters."""
    reply = {"message_id": 3, "allow_sending_without_reply": True}
    expected = {
        "chat_id": CHAT,
        "text": "hi",
        "reply_parameters": reply,
        "disable_notification": True,
    }
    as_text = {
        "chat_id": str(CHAT),
        "text": "hi",
        "reply_parameters": json.dumps(reply),
        "disable_notification": "true",
    }
    assert client.get("/sendMessage", params=as_text).status_code == 200
    assert client.post("/sendMessage", json=expected).status_code == 200
    assert client.post("/sendMessage", data=as_text).status_code == 200
    multipart = client.post(
        "/sendMessage", data=as_text, files={"unused": ("u.txt", b"x", "text/plain")}
    )
    assert multipart.status_code == 200

    records = tg.requests
    assert [r.content_type for r in records] == [
        "",
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ]
    assert all(r.params == expected for r in records)
    assert [s["reply_parameters"] for s in tg.sent] == [reply] * 4


# ---------------------------------------------------------------------- webhook


def test_set_webhook_stores_parameters_and_delete_clears_them(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """setWebhook keeps url, secret and allowed_updates; getWebhookInfo and deleteWebhook agree."""
    allowed = ["message", "edited_message", "my_chat_member"]
    response = call(client, "setWebhook", url=HOOK, secret_token=SECRET, allowed_updates=allowed)
    assert response.json() == {"ok": True, "result": True, "description": "Webhook was set"}
    assert tg.webhook == {"url": HOOK, "secret_token": SECRET, "allowed_updates": allowed}
    assert tg.webhook_headers() == {"Content-Type": "application/json", SECRET_HEADER: SECRET}

    info = client.get("/getWebhookInfo").json()["result"]
    assert info["url"] == HOOK
    assert info["allowed_updates"] == allowed
    assert info["pending_update_count"] == 0
    assert call(client, "getUpdates").status_code == 409

    # allowed_updates left out keeps the previous list (doc §2.1).
    assert client.post("/setWebhook", data={"url": HOOK + "2"}).status_code == 200
    assert tg.webhook == {"url": HOOK + "2", "allowed_updates": allowed}

    deleted = call(client, "deleteWebhook", drop_pending_updates=True)
    assert deleted.json() == {"ok": True, "result": True, "description": "Webhook was deleted"}
    assert tg.webhook is None
    assert client.get("/getWebhookInfo").json()["result"]["url"] == ""
    again = call(client, "deleteWebhook").json()
    assert again["description"] == "Webhook is already deleted"


@pytest.mark.parametrize(
    ("params", "description"),
    [
        (
            {"url": "http://bridge.example.com/hook"},
            "Bad Request: bad webhook: An HTTPS URL must be provided for webhook",
        ),
        (
            {"url": "https://bridge.example.com:8080/hook"},
            "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443",
        ),
        (
            {"url": HOOK, "secret_token": "has space"},
            "Bad Request: secret token contains unallowed characters",
        ),
        (
            {"url": HOOK, "secret_token": "a" * 257},
            "Bad Request: secret token contains unallowed characters",
        ),
        (
            {"url": HOOK, "secret_token": ""},
            "Bad Request: secret token contains unallowed characters",
        ),
    ],
)
def test_set_webhook_rejects_bad_url_and_secret(
    tg: TelegramStandin, client: httpx2.Client, params: dict[str, Any], description: str
) -> None:
    """A non-HTTPS URL, a disallowed port or a bad secret_token is a 400 and changes nothing."""
    response = call(client, "setWebhook", **params)

    assert response.status_code == 400
    assert response.json() == error(400, description)
    assert tg.webhook is None


def test_secret_token_of_256_allowed_characters_is_accepted(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """A 256-character secret of A-Z a-z 0-9 _ - is the longest valid one."""
    secret = ("Az09_-" * 43)[:256]
    assert call(client, "setWebhook", url=HOOK, secret_token=secret).status_code == 200
    assert tg.webhook is not None
    assert tg.webhook["secret_token"] == secret


# ---------------------------------------------------------------------- files


def test_get_file_and_download_round_trip(tg: TelegramStandin, client: httpx2.Client) -> None:
    """getFile gives a file_path whose download returns exactly the registered bytes."""
    content = bytes(range(256)) * 10
    file = tg.add_file(content, mime_type="application/pdf")
    assert file["file_size"] == len(content)

    response = call(client, "getFile", file_id=file["file_id"])
    assert response.status_code == 200
    result = response.json()["result"]
    assert result == {**file, "file_path": result["file_path"]}

    download = httpx2.get(tg.file_url(result["file_path"]))
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"] == "application/pdf"

    missing = httpx2.get(tg.file_url("documents/nope.pdf"))
    assert missing.status_code == 404
    assert missing.json() == error(404, "Not Found")


def test_get_file_rejects_unknown_ids_and_files_over_20_mb(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """An unknown file_id and a file over the download cap are both 400s."""
    unknown = call(client, "getFile", file_id="AgACnope")
    assert unknown.status_code == 400
    assert unknown.json() == error(400, "Bad Request: invalid file_id")

    at_cap = tg.add_file(b"\0" * MAX_DOWNLOAD_BYTES)
    assert call(client, "getFile", file_id=at_cap["file_id"]).status_code == 200
    too_big = tg.add_file(b"\0" * (MAX_DOWNLOAD_BYTES + 1))
    response = call(client, "getFile", file_id=too_big["file_id"])
    assert response.status_code == 400
    assert response.json() == error(400, "Bad Request: file is too big")


# ---------------------------------------------------------------------- sending


def test_send_message_records_chat_and_text(tg: TelegramStandin, client: httpx2.Client) -> None:
    """sendMessage keeps non-ASCII text and emoji and numbers messages per chat."""
    text = "Привет, Zoë! 👋🏽 ✓"
    first = call(client, "sendMessage", chat_id=CHAT, text=text)
    second = call(client, "sendMessage", chat_id=CHAT, text="again")
    other = call(client, "sendMessage", chat_id=-1001234567890, text="group")

    assert first.status_code == 200
    message = first.json()["result"]
    assert message["text"] == text
    assert message["chat"]["id"] == CHAT
    assert message["from"]["id"] == BOT_ID
    assert message["from"]["is_bot"] is True
    assert abs(message["date"] - time.time()) < 60
    assert second.json()["result"]["message_id"] == message["message_id"] + 1
    assert other.json()["result"]["chat"]["id"] == -1001234567890

    sent = tg.sent
    assert [(s["method"], s["chat_id"], s["text"]) for s in sent] == [
        ("sendMessage", CHAT, text),
        ("sendMessage", CHAT, "again"),
        ("sendMessage", -1001234567890, "group"),
    ]
    assert sent[0]["message_id"] == message["message_id"]
    assert sent[0]["result"] == message


@pytest.mark.parametrize(
    ("params", "description"),
    [
        ({"text": "hi"}, "Bad Request: chat_id is empty"),
        ({"chat_id": CHAT}, "Bad Request: message text is empty"),
        ({"chat_id": CHAT, "text": ""}, "Bad Request: message text is empty"),
        ({"chat_id": CHAT, "text": "  \n "}, "Bad Request: message text is empty"),
        ({"chat_id": CHAT, "text": "x" * (MAX_TEXT_CHARS + 1)}, "Bad Request: message is too long"),
        ({"chat_id": "not a chat", "text": "hi"}, "Bad Request: chat not found"),
    ],
)
def test_send_message_validation(
    tg: TelegramStandin, client: httpx2.Client, params: dict[str, Any], description: str
) -> None:
    """Missing chat_id, empty or over-long text and a malformed chat_id are 400s, not sends."""
    response = call(client, "sendMessage", **params)

    assert response.status_code == 400
    assert response.json() == error(400, description)
    assert tg.sent == []


def test_send_message_of_exactly_4096_characters_is_accepted(client: httpx2.Client) -> None:
    """The text limit is inclusive."""
    response = call(client, "sendMessage", chat_id=CHAT, text="é" * MAX_TEXT_CHARS)
    assert response.status_code == 200


def test_send_photo_multipart_upload_keeps_bytes_and_filename(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """An uploaded photo is recorded byte for byte with its filename and can be fetched again."""
    content = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    response = client.post(
        "/sendPhoto",
        data={"chat_id": str(CHAT), "caption": "Offer 📎"},
        files={"photo": ("offer photo.jpg", content, "image/jpeg")},
    )

    assert response.status_code == 200
    message = response.json()["result"]
    assert message["caption"] == "Offer 📎"
    largest = message["photo"][-1]
    assert largest["file_size"] == len(content)
    (sent,) = tg.sent
    assert sent["method"] == "sendPhoto"
    assert sent["chat_id"] == CHAT
    assert sent["caption"] == "Offer 📎"
    assert sent["file_name"] == "offer photo.jpg"
    assert sent["file_bytes"] == content
    assert sent["mime_type"] == "image/jpeg"
    assert tg.file_content(largest["file_id"]) == content


def test_send_document_upload_by_attach_file_id_and_url(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """sendDocument takes attach://, a known file_id or a URL, and refuses an unknown file_id."""
    pdf = b"%PDF-1.7 offer"
    uploaded = client.post(
        "/sendDocument",
        data={"chat_id": CHAT, "document": "attach://doc"},
        files={"doc": ("offer.pdf", pdf, "application/pdf")},
    )
    assert uploaded.status_code == 200
    document = uploaded.json()["result"]["document"]
    assert document["file_name"] == "offer.pdf"
    assert document["mime_type"] == "application/pdf"

    again = call(client, "sendDocument", chat_id=CHAT, document=document["file_id"])
    by_url = call(client, "sendDocument", chat_id=CHAT, document="https://files.test/a.zip")
    assert again.status_code == by_url.status_code == 200
    unknown = call(client, "sendDocument", chat_id=CHAT, document="BQACnope")
    assert unknown.json() == error(400, "Bad Request: wrong file identifier/HTTP URL specified")
    missing = call(client, "sendDocument", chat_id=CHAT)
    assert missing.json() == error(400, "Bad Request: there is no document in the request")

    sent = tg.sent
    assert [s["file_bytes"] for s in sent] == [pdf, pdf, None]
    assert sent[1]["file_id"] == document["file_id"]
    assert sent[2]["file_url"] == "https://files.test/a.zip"


def test_caption_over_1024_characters_is_rejected(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """A caption longer than 1024 characters is a 400 and nothing is sent."""
    file = tg.add_file(b"\xff\xd8", mime_type="image/jpeg")
    response = call(client, "sendPhoto", chat_id=CHAT, photo=file["file_id"], caption="c" * 1025)

    assert response.status_code == 400
    assert response.json() == error(400, "Bad Request: message caption is too long")
    assert tg.sent == []


# ---------------------------------------------------------------------- faults and timing


def test_fail_next_429_carries_retry_after_then_recovers(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """An injected 429 has parameters.retry_after, hits only its method, and is used up."""
    tg.fail_next("sendmessage", 429, retry_after=35, count=2)

    assert client.get("/getMe").status_code == 200
    for _ in range(2):
        response = call(client, "sendMessage", chat_id=CHAT, text="hi")
        assert response.status_code == 429
        assert response.json() == {
            **error(429, "Too Many Requests: retry after 35"),
            "parameters": {"retry_after": 35},
        }
    assert tg.sent == []
    assert call(client, "sendMessage", chat_id=CHAT, text="hi").status_code == 200
    assert [r.status for r in tg.requests] == [200, 429, 429, 200]


def test_fail_next_default_descriptions_and_blocked_chat(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """403 defaults to 'bot was blocked by the user'; block_chat makes every send to it fail."""
    tg.fail_next("*", 403)
    blocked = call(client, "sendMessage", chat_id=CHAT, text="hi")
    assert blocked.status_code == 403
    assert blocked.json() == error(403, "Forbidden: bot was blocked by the user")

    tg.fail_next("sendDocument", 500, description="Internal Server Error: restart")
    assert call(client, "sendDocument", chat_id=CHAT).json() == error(
        500, "Internal Server Error: restart"
    )

    tg.block_chat(CHAT)
    assert call(client, "sendMessage", chat_id=CHAT, text="hi").status_code == 403
    assert call(client, "sendMessage", chat_id=CHAT + 1, text="hi").status_code == 200
    tg.unblock_chat(CHAT)
    assert call(client, "sendMessage", chat_id=CHAT, text="hi").status_code == 200


def test_a_held_send_does_not_block_other_requests(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """While a send is held, other methods answer; the send answers once released. Decided by
    events, not by timings."""
    gate = threading.Event()
    tg.hold_sends = gate
    answers: list[int] = []

    def send() -> None:
        with httpx2.Client(base_url=tg.api_url) as own:
            answers.append(call(own, "sendMessage", chat_id=CHAT, text="held").status_code)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        for _ in range(1000):  # until the send is in the stand-in (bounded: 10 s)
            if any(r.method == "sendMessage" for r in tg.requests):
                break
            time.sleep(0.01)
        assert client.get("/getMe").status_code == 200
        assert sender.is_alive()  # getMe answered while the send was still held
        assert answers == []
    finally:
        gate.set()
        sender.join(timeout=10)
    assert answers == [200]


def test_send_delay_is_honoured(tg: TelegramStandin, client: httpx2.Client) -> None:
    """A send waits at least send_delay before answering (a lower bound: load only adds)."""
    tg.send_delay = 0.2
    start = time.monotonic()
    assert call(client, "sendMessage", chat_id=CHAT, text="slow").status_code == 200
    assert time.monotonic() - start >= 0.2
    tg.send_delay = 0.0
    assert call(client, "sendMessage", chat_id=CHAT, text="fast").status_code == 200


# ---------------------------------------------------------------------- update builders


def test_text_update_has_the_documented_shape(tg: TelegramStandin) -> None:
    """text_update builds a private-chat message with from, chat, date, text and entities."""
    update = tg.text_update(update_id=10, chat_id=CHAT, text="/start now", message_id=5, date=17)

    assert set(update) == {"update_id", "message"}
    message = update["message"]
    assert message["message_id"] == 5
    assert message["date"] == 17
    assert message["text"] == "/start now"
    assert message["entities"] == [{"offset": 0, "length": 6, "type": "bot_command"}]
    assert message["chat"] == {
        "id": CHAT,
        "first_name": "Jane",
        "last_name": "Doe",
        "username": "jane",
        "type": "private",
    }
    assert message["from"]["id"] == CHAT
    assert message["from"]["is_bot"] is False
    json.dumps(update)  # it is what Telegram would POST


def test_built_message_ids_advance_the_chats_counter(
    tg: TelegramStandin, client: httpx2.Client
) -> None:
    """A reply after a built update with message_id 50 gets 51, as Telegram shares ids per chat."""
    tg.text_update(update_id=1, chat_id=CHAT, text="hi", message_id=50)
    response = call(client, "sendMessage", chat_id=CHAT, text="hello")
    assert response.json()["result"]["message_id"] == 51
    assert response.json()["result"]["chat"]["username"] == "jane"


def test_photo_update_largest_size_is_the_file(tg: TelegramStandin, client: httpx2.Client) -> None:
    """photo_update lists smaller thumbnails first and the given file as the largest PhotoSize."""
    content = b"\xff\xd8" + b"J" * 50_000
    file = tg.add_file(content, mime_type="image/jpeg")
    update = tg.photo_update(update_id=11, chat_id=CHAT, message_id=6, file=file, caption="look")

    message = update["message"]
    assert message["caption"] == "look"
    photo = message["photo"]
    assert 2 <= len(photo) <= 3
    largest = max(photo, key=lambda p: p["width"] * p["height"])
    assert largest is photo[-1]
    assert {k: largest[k] for k in file} == file
    assert all(p["file_size"] < file["file_size"] for p in photo[:-1])
    for thumb in photo[:-1]:
        fetched = call(client, "getFile", file_id=thumb["file_id"]).json()["result"]
        assert httpx2.get(tg.file_url(fetched["file_path"])).content != content


def test_document_edited_and_my_chat_member_updates(tg: TelegramStandin) -> None:
    """The document, edited and my_chat_member builders carry the fields the bridge reads."""
    file = tg.add_file(b"%PDF", mime_type="application/pdf")
    document = tg.document_update(
        update_id=12,
        chat_id=CHAT,
        message_id=7,
        file=file,
        file_name="offer.pdf",
        mime_type="application/pdf",
        caption="see attached",
    )["message"]
    assert document["document"] == {
        **file,
        "file_name": "offer.pdf",
        "mime_type": "application/pdf",
    }
    assert document["caption"] == "see attached"

    edited = tg.edited_update(
        update_id=13, chat_id=CHAT, message_id=5, text="fixed", edit_date=1_700_000_100
    )
    assert "message" not in edited
    assert edited["edited_message"]["message_id"] == 5
    assert edited["edited_message"]["edit_date"] == 1_700_000_100
    assert edited["edited_message"]["date"] < 1_700_000_100
    assert edited["edited_message"]["text"] == "fixed"

    member = tg.my_chat_member_update(update_id=14, chat_id=CHAT)["my_chat_member"]
    assert member["chat"]["id"] == CHAT
    assert member["new_chat_member"]["status"] == "kicked"
    assert member["new_chat_member"]["user"]["id"] == BOT_ID

"""Twilio (SMS and WhatsApp) ⇄ Pipedrive end to end, against stand-ins on real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from jobs.backfill import backfill_channel
from sandbox.pipedrive import PipedriveStandin
from service.store import dead_letters, deliveries
from tests.messaging.harness import connect_channel, served_bridge
from tests.pipedrive.bridge import PUBLIC_URL, Bridge, standin
from tests.standins.twilio import TwilioStandin

pytestmark = pytest.mark.anyio

CUSTOMER = "+15551230001"
FIXTURES_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


@dataclass
class TwilioStack:
    bridge: Bridge
    pd: PipedriveStandin
    tw: TwilioStandin
    pcid: str

    @property
    def url(self) -> str:
        return f"{PUBLIC_URL}/webhooks/twilio/{self.pcid}"

    async def deliver(
        self, form: dict[str, str], *, signature: str | None = None
    ) -> httpx2.Response:
        """POST a form as Twilio does, signed over the public URL it was configured with."""
        headers = self.tw.webhook_headers(self.url, form)
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        return await self.bridge.http.post(
            f"/webhooks/twilio/{self.pcid}", content=self.tw.form_body(form), headers=headers
        )


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def tw() -> Iterator[TwilioStandin]:
    with TwilioStandin() as server:
        yield server


@pytest.fixture
async def twilio(
    stack: tuple[str, str], pd: PipedriveStandin, tw: TwilioStandin
) -> AsyncIterator[TwilioStack]:
    async with served_bridge(stack, pd, twilio_api_url=tw.base_url) as (bridge, _):
        channel = await connect_channel(bridge, "twilio", tw.credentials, name="SMS line")
        yield TwilioStack(bridge, pd, tw, channel["provider_channel_id"])


async def test_signed_sms_with_media_reaches_pipedrive_rehosted(twilio: TwilioStack) -> None:
    """A signed inbound MMS becomes a `receive` whose attachment is on our URL, same bytes."""
    picture = b"\xff\xd8\xff" + b"m" * 4000
    form = twilio.tw.add_inbound(
        from_=CUSTOMER, body="Photo of the meter", media=[(picture, "image/jpeg")]
    )
    response = await twilio.deliver(form)
    assert response.status_code == 200
    assert response.text == "<Response></Response>"
    assert response.headers["content-type"].startswith("text/xml")
    await twilio.bridge.run_worker()
    [message] = twilio.pd.received(twilio.pcid)
    assert message["message"] == "Photo of the meter"
    assert message["sender_id"] == f"tw:{CUSTOMER}"
    assert message["conversation_id"] == f"tw:{twilio.tw.number}:{CUSTOMER}"
    [attachment] = message["attachments"]
    assert attachment["url"].startswith(f"{PUBLIC_URL}/media/")
    assert twilio.tw.base_url not in attachment["url"]
    got = await twilio.bridge.http.get(attachment["url"].removeprefix(PUBLIC_URL))
    assert got.content == picture


async def test_wrong_signature_is_403_and_nothing_recorded(twilio: TwilioStack) -> None:
    """A bad X-Twilio-Signature gets 403 (Twilio's convention) and leaves no trace."""
    form = twilio.tw.add_inbound(from_=CUSTOMER, body="hi")
    response = await twilio.deliver(form, signature="AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    assert response.status_code == 403
    assert await deliveries.count(twilio.bridge.services.db, "twilio") == 0


async def reply(twilio: TwilioStack, text: str) -> str:
    form = twilio.tw.add_inbound(from_=CUSTOMER, body="question")
    await twilio.deliver(form)
    await twilio.bridge.run_worker()
    response = await asyncio.to_thread(
        twilio.pd.post_message,
        twilio.pcid,
        conversation_id=f"tw:{twilio.tw.number}:{CUSTOMER}",
        sender_id=f"tw:biz:{twilio.tw.number}",
        recipient_ids=[f"tw:{CUSTOMER}"],
        message=text,
    )
    assert response.status_code == 200, response.text
    await twilio.bridge.run_worker()
    return str(response.json()["data"]["id"])


async def test_reply_goes_out_through_messages_json_with_a_status_callback(
    twilio: TwilioStack,
) -> None:
    """The agent's reply is POSTed with To, From, Body and our StatusCallback URL."""
    message_id = await reply(twilio, "We will call you at 3pm")
    [sent] = twilio.tw.sent
    assert sent["to"] == CUSTOMER
    assert sent["from"] == twilio.tw.number
    assert sent["body"] == "We will call you at 3pm"
    assert sent["status_callback"] == twilio.url
    reported = {m["id"]: m for m in twilio.pd.received(twilio.pcid)}[message_id]
    assert reported["status"] == "sent"


async def test_status_callbacks_only_move_forward(twilio: TwilioStack) -> None:
    """delivered, then a late `sent`, then read: Pipedrive sees delivered and read, nothing else."""
    message_id = await reply(twilio, "status test")
    sid = twilio.tw.sent[0]["sid"]
    statuses = []
    for status in ("delivered", "sent", "delivered", "read", "undelivered"):
        response = await twilio.deliver(twilio.tw.status_form(sid, status, to=CUSTOMER))
        assert response.status_code == 200
        await twilio.bridge.run_worker()
        statuses.append({m["id"]: m for m in twilio.pd.received(twilio.pcid)}[message_id]["status"])
    assert statuses == ["delivered", "delivered", "delivered", "read", "read"]
    pushes = [
        r.json["status"]
        for r in twilio.pd.requests
        if r.api_path == "/v1/channels/messages/receive" and r.json["id"] == message_id
    ]
    assert pushes == ["sent", "delivered", "read"]


async def test_backfill_catches_up_without_duplicates(twilio: TwilioStack) -> None:
    """Messages Twilio logged while we were down are relayed by the backfill; their late
    webhooks then change nothing."""
    missed = [
        twilio.tw.add_inbound(from_=CUSTOMER, body=f"while down {n}", date_sent=datetime.now(UTC))
        for n in range(3)
    ]
    svc = twilio.bridge.services
    from service.store import channels

    channel = await channels.get(svc.db, svc.crypto, twilio.pcid)
    assert channel is not None
    assert await backfill_channel(svc, channel, datetime.now(UTC) - timedelta(hours=1)) == 3
    assert await backfill_channel(svc, channel, datetime.now(UTC) - timedelta(hours=1)) == 0
    await twilio.bridge.run_worker()
    for form in missed:
        assert (await twilio.deliver(form)).status_code == 200
    await twilio.bridge.run_worker()
    texts = sorted(m["message"] for m in twilio.pd.received(twilio.pcid))
    assert texts == [f"while down {n}" for n in range(3)]


async def test_throttled_send_is_retried(twilio: TwilioStack) -> None:
    """A 429 (code 20429) from Messages.json is retried and the reply goes out once."""
    twilio.tw.fail_next("Messages.json", 429, code=20429, retry_after=1, method="POST")
    message_id = await reply(twilio, "retry me")
    assert len(twilio.tw.sent) == 1
    reported: dict[str, Any] = {m["id"]: m for m in twilio.pd.received(twilio.pcid)}[message_id]
    assert reported["status"] == "sent"


async def test_every_recorded_twilio_body_is_acknowledged(twilio: TwilioStack) -> None:
    """All real Twilio bodies, signed for this channel, are answered 2xx without a server error;
    every inbound message reaches Pipedrive (media hosts are pointed at the stand-in, which
    does not have those files: they become a note instead of holding the message back)."""
    folder = FIXTURES_ROOT / "twilio"
    if not folder.is_dir():
        pytest.skip("the shared fixtures folder is not beside the project")
    inbound = 0
    for path in sorted(folder.glob("*.form.json")):
        form: dict[str, str] = json.loads(path.read_text())
        for key, value in list(form.items()):
            if key.startswith("MediaUrl"):
                form[key] = value.replace("https://api.twilio.com", twilio.tw.base_url)
        response = await twilio.deliver(form)
        assert response.status_code == 200, (path.name, response.text)
        status = form.get("MessageStatus") or form.get("SmsStatus")
        inbound += status in (None, "received")
    await twilio.bridge.run_worker()
    assert len(twilio.pd.received(twilio.pcid)) == inbound
    assert await dead_letters.list_all(twilio.bridge.services.db) == []


async def test_whatsapp_through_twilio_gets_a_reply_window(twilio: TwilioStack) -> None:
    """A `whatsapp:` sender on Twilio keeps WhatsApp's 24-hour window: `reply_by` is set;
    plain SMS has none."""
    channel = await connect_channel(
        twilio.bridge,
        "twilio",
        {**twilio.tw.credentials, "from": f"whatsapp:{twilio.tw.number}"},
        name="WhatsApp via Twilio",
    )
    whatsapp = TwilioStack(twilio.bridge, twilio.pd, twilio.tw, channel["provider_channel_id"])
    await whatsapp.deliver(twilio.tw.add_inbound(from_=f"whatsapp:{CUSTOMER}", body="hola"))
    await twilio.deliver(twilio.tw.add_inbound(from_=CUSTOMER, body="sms"))
    await twilio.bridge.run_worker()
    [on_whatsapp] = twilio.pd.received(whatsapp.pcid)
    created = datetime.strptime(on_whatsapp["created_at"], "%Y-%m-%d %H:%M")
    assert datetime.strptime(on_whatsapp["reply_by"], "%Y-%m-%d %H:%M") - created == timedelta(
        hours=24
    )
    [on_sms] = twilio.pd.received(twilio.pcid)
    assert "reply_by" not in on_sms

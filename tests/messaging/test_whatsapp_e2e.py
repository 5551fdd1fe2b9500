"""WhatsApp Cloud API ⇄ Pipedrive end to end, against stand-ins on real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from structlog.testing import capture_logs

from sandbox.pipedrive import PipedriveStandin, response_problems
from service.providers.base import InboundMessage
from service.store import channels, deliveries
from tests.messaging.harness import connect_channel, served_bridge
from tests.pipedrive.bridge import Bridge, standin
from tests.standins.whatsapp import GraphStandin

pytestmark = pytest.mark.anyio

CUSTOMER = "16315551181"
FIXTURES_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


@dataclass
class WhatsAppStack:
    bridge: Bridge
    pd: PipedriveStandin
    wa: GraphStandin
    pcid: str

    @property
    def conversation(self) -> str:
        return f"wa:{self.wa.phone_number_id}:{CUSTOMER}"

    async def deliver(
        self, payload: dict[str, Any], *, signature: str | None = None
    ) -> httpx2.Response:
        body = self.wa.encode(payload)
        headers = self.wa.webhook_headers(body)
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return await self.bridge.http.post(
            f"/webhooks/whatsapp/{self.pcid}", content=body, headers=headers
        )

    async def customer_says(self, wamid: str, text: str, timestamp: int | None = None) -> None:
        webhook = self.wa.text_webhook(wamid=wamid, wa_id=CUSTOMER, text=text, timestamp=timestamp)
        assert (await self.deliver(webhook)).status_code == 200
        await self.bridge.run_worker()

    async def agent_says(self, text: str) -> str:
        response = await asyncio.to_thread(
            self.pd.post_message,
            self.pcid,
            conversation_id=self.conversation,
            sender_id=f"wa:biz:{self.wa.phone_number_id}",
            recipient_ids=[f"wa:{CUSTOMER}"],
            message=text,
        )
        assert response.status_code == 200, response.text
        await self.bridge.run_worker()
        return str(response.json()["data"]["id"])

    def reported(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.pd.received(self.pcid)}


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def wa() -> Iterator[GraphStandin]:
    with GraphStandin() as server:
        yield server


@pytest.fixture
async def whatsapp(
    stack: tuple[str, str], pd: PipedriveStandin, wa: GraphStandin
) -> AsyncIterator[WhatsAppStack]:
    async with served_bridge(stack, pd, whatsapp_graph_url=wa.graph_url) as (bridge, _):
        channel = await connect_channel(bridge, "whatsapp", wa.credentials, name="WhatsApp shop")
        yield WhatsAppStack(bridge, pd, wa, channel["provider_channel_id"])


async def test_channel_is_registered_as_whatsapp_with_templates(whatsapp: WhatsAppStack) -> None:
    """The channel reaches Pipedrive with provider_type whatsapp and template_support on."""
    [channel] = whatsapp.pd.channels
    assert channel["provider_type"] == "whatsapp"
    assert channel["template_support"] is True


async def test_verification_handshake(whatsapp: WhatsAppStack) -> None:
    """The right verify token gets the challenge echoed; a wrong one gets 403."""
    token = whatsapp.wa.credentials["verify_token"]
    path = f"/webhooks/whatsapp/{whatsapp.pcid}"
    good = await whatsapp.bridge.http.get(
        path,
        params={"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "1158201444"},
    )
    assert (good.status_code, good.text) == (200, "1158201444")
    bad = await whatsapp.bridge.http.get(
        path, params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "x"}
    )
    assert bad.status_code == 403


async def test_bad_signature_is_refused_and_nothing_recorded(whatsapp: WhatsAppStack) -> None:
    """A body whose X-Hub-Signature-256 does not match is refused; nothing is stored."""
    webhook = whatsapp.wa.text_webhook(wamid="wamid.bad", wa_id=CUSTOMER, text="hi")
    response = await whatsapp.deliver(webhook, signature="sha256=" + "0" * 64)
    assert response.status_code in (401, 403)
    assert await deliveries.count(whatsapp.bridge.services.db, "whatsapp") == 0


async def test_a_batch_with_two_messages_and_a_status(whatsapp: WhatsAppStack) -> None:
    """One signed POST with two messages and one status: two `receive` calls and one update."""
    await whatsapp.customer_says("wamid.first", "first question")
    reply_id = await whatsapp.agent_says("our answer")
    [our_wamid] = whatsapp.wa.wamids
    whatsapp.pd.clear_requests()
    body = whatsapp.wa.batch(
        whatsapp.wa.text_webhook(wamid="wamid.m1", wa_id=CUSTOMER, text="thanks"),
        whatsapp.wa.text_webhook(wamid="wamid.m2", wa_id=CUSTOMER, text="one more thing"),
        whatsapp.wa.status_webhook(wamid=our_wamid, recipient_id=CUSTOMER, status="delivered"),
    )
    assert (await whatsapp.deliver(body)).status_code == 200
    await whatsapp.bridge.run_worker()
    receives = [
        r.json for r in whatsapp.pd.requests if r.api_path == "/v1/channels/messages/receive"
    ]
    assert [(r["id"], r["status"]) for r in receives] == [
        ("wamid.m1", "sent"),
        ("wamid.m2", "sent"),
        (reply_id, "delivered"),
    ]


async def test_statuses_move_forward_only(whatsapp: WhatsAppStack) -> None:
    """delivered, read, then a late delivered: Pipedrive sees delivered and read, nothing after."""
    await whatsapp.customer_says("wamid.q", "hello")
    reply_id = await whatsapp.agent_says("hi there")
    [our_wamid] = whatsapp.wa.wamids
    for status in ("delivered", "read", "delivered"):
        webhook = whatsapp.wa.status_webhook(wamid=our_wamid, recipient_id=CUSTOMER, status=status)
        assert (await whatsapp.deliver(webhook)).status_code == 200
        await whatsapp.bridge.run_worker()
    pushes = [
        r.json["status"]
        for r in whatsapp.pd.requests
        if r.api_path == "/v1/channels/messages/receive" and r.json["id"] == reply_id
    ]
    assert pushes == ["sent", "delivered", "read"]
    assert whatsapp.reported()[reply_id]["status"] == "read"


async def test_reply_by_is_24_hours_after_the_last_inbound_message(whatsapp: WhatsAppStack) -> None:
    """Every message carries reply_by = the customer's last message + 24 h."""
    first = int(time.time()) - 3600
    await whatsapp.customer_says("wamid.a", "earlier", timestamp=first)
    await whatsapp.customer_says("wamid.b", "later", timestamp=first + 600)
    reply_id = await whatsapp.agent_says("answer")
    expected = (datetime.fromtimestamp(first + 600, UTC) + timedelta(hours=24)).strftime(
        "%Y-%m-%d %H:%M"
    )
    reported = whatsapp.reported()
    assert reported["wamid.b"]["reply_by"] == expected
    assert reported[reply_id]["reply_by"] == expected


async def test_templates_are_listed_through_get_templates(whatsapp: WhatsAppStack) -> None:
    """getTemplates returns the approved templates of the business account, cached."""
    response = await asyncio.to_thread(
        whatsapp.pd.call_manifest, "getTemplates", providerChannelId=whatsapp.pcid
    )
    assert response_problems("getTemplates", response) == []
    templates = response.json()["data"]["templates"]
    approved = [t for t in whatsapp.wa.templates if t["status"] == "APPROVED"]
    assert sorted(t["name"] for t in templates) == sorted(t["name"] for t in approved)
    assert all(t["content"] for t in templates)
    lookups = len([r for r in whatsapp.wa.requests if "message_templates" in r.path])
    await asyncio.to_thread(
        whatsapp.pd.call_manifest, "getTemplates", providerChannelId=whatsapp.pcid
    )
    assert len([r for r in whatsapp.wa.requests if "message_templates" in r.path]) == lookups


async def test_a_send_outside_the_window_is_failed_with_the_reason(whatsapp: WhatsAppStack) -> None:
    """Error 131047 makes the reply `failed` in Pipedrive, the reason in the log, no retries."""
    await whatsapp.customer_says("wamid.old", "long ago")
    whatsapp.wa.fail_next("/messages", 400, code=131047, message="Re-engagement message")
    with capture_logs() as logs:
        reply_id = await whatsapp.agent_says("sorry for the wait")
    assert whatsapp.reported()[reply_id]["status"] == "failed"
    [failure] = [e for e in logs if e["event"] == "outbound.failed"]
    assert "24-hour" in failure["reason"]
    sends = [r for r in whatsapp.wa.requests if r.path.endswith("/messages")]
    assert len(sends) == 1


async def test_an_image_is_rehosted(whatsapp: WhatsAppStack) -> None:
    """A customer's image is fetched through the media id and served from our link."""
    picture = b"\xff\xd8\xff" + b"w" * 3000
    media_id = whatsapp.wa.add_media(picture, mime_type="image/jpeg")
    webhook = whatsapp.wa.image_webhook(
        wamid="wamid.img", wa_id=CUSTOMER, media_id=media_id, caption="see"
    )
    assert (await whatsapp.deliver(webhook)).status_code == 200
    await whatsapp.bridge.run_worker()
    [attachment] = whatsapp.reported()["wamid.img"]["attachments"]
    assert whatsapp.wa.base_url not in attachment["url"]
    got = await whatsapp.bridge.http.get(attachment["url"].split(".example.com", 1)[1])
    assert got.content == picture


async def test_every_recorded_whatsapp_body_is_acknowledged(whatsapp: WhatsAppStack) -> None:
    """All real WhatsApp bodies, addressed to this channel's number and signed, are answered
    2xx; every customer message the adapter reads in them reaches Pipedrive."""
    folder = FIXTURES_ROOT / "whatsapp"
    if not folder.is_dir():
        pytest.skip("the shared fixtures folder is not beside the project")
    adapter = whatsapp.bridge.services.adapter("whatsapp")
    channel = await channels.get(
        whatsapp.bridge.services.db, whatsapp.bridge.services.crypto, whatsapp.pcid
    )
    assert channel is not None
    expected = set()
    for path in sorted(folder.glob("*.json")):
        payload = json.loads(path.read_text())
        for entry in payload.get("entry", []):
            for change in entry.get("changes", []):
                metadata = change.get("value", {}).get("metadata")
                if isinstance(metadata, dict):
                    metadata["phone_number_id"] = whatsapp.wa.phone_number_id
        response = await whatsapp.deliver(payload)
        assert response.status_code == 200, (path.name, response.text)
        for delivery in adapter.split(channel, whatsapp.wa.encode(payload), "application/json"):
            if delivery.conversation_id is None:
                continue
            for event in adapter.parse(channel, delivery.payload):
                if isinstance(event, InboundMessage):
                    expected.add(event.message_id)
    await whatsapp.bridge.run_worker()
    assert expected
    assert set(whatsapp.reported()) == expected


async def test_a_status_that_overtakes_its_send_is_applied_after_it(
    whatsapp: WhatsAppStack,
) -> None:
    """A status for a wamid we have not stored yet (the send call has not returned) is kept
    and applied once the send stores the id, instead of being dropped."""
    from service import relay
    from service.providers.base import StatusEvent
    from service.store import messages

    await whatsapp.customer_says("wamid.x", "hello")
    reply_id = await whatsapp.agent_says("answer")
    svc = whatsapp.bridge.services
    channel = await channels.get(svc.db, svc.crypto, whatsapp.pcid)
    assert channel is not None
    early = StatusEvent(provider_message_id="wamid.not-yet-stored", status="read")
    assert await relay.apply_status(svc, channel, early) is False
    message = await messages.get(svc.db, channel.id, reply_id)
    assert message is not None
    await relay.apply_early_statuses(svc, channel, message, "wamid.not-yet-stored")
    assert whatsapp.reported()[reply_id]["status"] == "read"


async def test_two_numbers_of_one_app_share_the_callback_url(whatsapp: WhatsAppStack) -> None:
    """Meta sends every number of an app to one URL: a message for the second number that
    arrives at the first channel's URL reaches the second channel's conversation."""
    second_number = "106540352242999"
    whatsapp.wa.other_phone_numbers.add(second_number)
    credentials = {**whatsapp.wa.credentials, "phone_number_id": second_number}
    channel = await connect_channel(whatsapp.bridge, "whatsapp", credentials, name="Second line")
    second = channel["provider_channel_id"]
    webhook = whatsapp.wa.text_webhook(wamid="wamid.second", wa_id=CUSTOMER, text="for line two")
    for change in webhook["entry"][0]["changes"]:
        change["value"]["metadata"]["phone_number_id"] = second_number
    assert (await whatsapp.deliver(webhook)).status_code == 200
    await whatsapp.bridge.run_worker()
    [message] = whatsapp.pd.received(second)
    assert message["message"] == "for line two"
    assert message["conversation_id"] == f"wa:{second_number}:{CUSTOMER}"
    assert whatsapp.pd.received(whatsapp.pcid) == []

"""Console pages show what the store and the queue hold, and a replay from the console puts the
dead letter back on the queue, from where a worker delivers it."""

from __future__ import annotations

import re

import pytest

from service.store import conversations
from tests.console.conftest import UI, Browser
from tests.messaging.harness import Stack

pytestmark = pytest.mark.anyio

CHAT = 5550001


async def _customer_writes(world: Stack, pcid: str, text: str, n: int) -> None:
    update = world.tg.text_update(
        update_id=100 + n, chat_id=CHAT, text=text, message_id=n, first_name="Maja", last_name="Ek"
    )
    assert (await world.send_update(pcid, update)).status_code == 200


async def test_pages_show_the_installation_channel_queue_and_conversation(
    world: Stack, operator: Browser
) -> None:
    """After one message from a customer: the installation with today's API spend, the channel
    with its sink and last inbound, the job outcomes, and the conversation with its message."""
    pcid = (await world.add_channel("Support bot"))["provider_channel_id"]
    await _customer_writes(world, pcid, "Hello from Maja", 1)
    await world.run_worker()

    installations = (await operator.http.get(f"{UI}/installations")).text
    row = re.search(r"<td>1001</td>\s*<td>2001</td>(.*?)</tr>", installations, re.S)
    assert row is not None
    assert "active" in row.group(1)
    tokens = re.findall(r"<td>(\d+)</td>", row.group(1))
    assert int(tokens[0]) > 0  # the channel registration and the receive call cost tokens

    channels = (await operator.http.get(f"{UI}/channels")).text
    assert "Support bot" in channels
    assert pcid in channels
    assert "<td>channels <small" in channels  # the default sink
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</td>\s*<td>never</td>", channels)

    overview = (await operator.http.get(UI)).text
    assert re.search(r"<tr><td>relay_conversation</td><td>[1-9]", overview)
    assert '<b id="queue-depth">0</b>' in overview

    listing = (await operator.http.get(f"{UI}/conversations")).text
    assert "Maja Ek" in listing
    [conversation] = await conversations.search(world.bridge.services.db)
    page = (await operator.http.get(f"{UI}/conversations/{conversation.id}")).text
    assert "Hello from Maja" in page
    assert re.search(r'status <span class="status">(sent|delivered|read)</span>', page)
    assert '<span class="status pushed">sent</span>' in page  # Pipedrive has it


async def test_search_finds_a_conversation_by_customer(world: Stack, operator: Browser) -> None:
    """Name, address and id find the conversation, in any case; other text finds nothing."""
    pcid = (await world.add_channel())["provider_channel_id"]
    await _customer_writes(world, pcid, "hi", 1)
    await world.run_worker()
    [conversation] = await conversations.search(world.bridge.services.db)
    for query in ("maja", "EK", conversation.address, conversation.external_id[-6:]):
        found = await operator.http.get(f"{UI}/conversations", params={"q": query})
        assert f"{UI}/conversations/{conversation.id}" in found.text, query
    for query in ("nobody", "%", "M_ja"):  # wildcards are text here
        missed = await operator.http.get(f"{UI}/conversations", params={"q": query})
        assert f"{UI}/conversations/{conversation.id}" not in missed.text, query
        assert "No conversation matches" in missed.text
    assert (await operator.http.get(f"{UI}/conversations/999999")).status_code == 404
    assert (await operator.http.get(f"{UI}/conversations/x")).status_code == 404


async def test_replay_from_the_console_delivers_the_dead_letter(
    world: Stack, operator: Browser
) -> None:
    """A message Pipedrive refused for good shows as a dead letter; Replay queues it, a worker
    delivers it, and the list of waiting dead letters is empty again."""
    pcid = (await world.add_channel())["provider_channel_id"]
    world.pd.fail_next(
        "/v1/channels/messages/receive",
        400,
        {
            "success": False,
            "error": "bad payload",
            "additional_data": {"code": "INVALID_RECEIVE_MESSAGE_PAYLOAD"},
        },
    )
    await _customer_writes(world, pcid, "refused once", 1)
    await world.run_worker()
    assert world.pd.received(pcid) == []

    listing = (await operator.http.get(f"{UI}/dead-letters")).text
    [letter_id] = re.findall(rf"{UI}/dead-letters/(\d+)/replay", listing)
    assert "retry_delivery" in listing

    [conversation] = await conversations.search(world.bridge.services.db)
    waiting = (await operator.http.get(f"{UI}/conversations/{conversation.id}")).text
    assert '<span class="status pushed bad">not yet</span>' in waiting

    replayed = await operator.post(f"{UI}/dead-letters/{letter_id}/replay")
    assert replayed.status_code == 303
    assert replayed.headers["location"] == f"{UI}/dead-letters?replayed={letter_id}"
    assert await world.bridge.services.queue.depth() == 1
    await world.run_worker()

    assert [m["message"] for m in world.pd.received(pcid)] == ["refused once"]
    after = (await operator.http.get(replayed.headers["location"])).text
    assert f"Dead letter {letter_id} is back on the queue" in after
    assert "Nothing is waiting" in after
    everything = (await operator.http.get(f"{UI}/dead-letters?all=1")).text
    assert "replayed" in everything
    delivered = (await operator.http.get(f"{UI}/conversations/{conversation.id}")).text
    assert '<span class="status pushed">sent</span>' in delivered
    assert (await operator.post(f"{UI}/dead-letters/987654/replay")).status_code == 404

"""The notes sink end to end: Twilio SMS in, Pipedrive notes out, `/reply` notes back.

Real sockets (Twilio and Pipedrive stand-ins), real workers, real Redis, both databases.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from jobs.maintenance import sweep
from sandbox.pipedrive import PipedriveStandin
from service.store import dead_letters
from service.store.schema import inbound_deliveries, note_windows, utcnow
from tests.messaging.harness import ADMIN, served_bridge
from tests.pipedrive.bridge import PUBLIC_URL, Bridge, standin
from tests.standins.twilio import TwilioStandin

pytestmark = pytest.mark.anyio

CUSTOMERS = [f"+1555123{n:04d}" for n in range(10)]


@dataclass
class NotesStack:
    bridge: Bridge
    pd: PipedriveStandin
    tw: TwilioStandin
    url: str  # where the bridge listens on a real socket (for Pipedrive's webhooks)
    pcid: str = ""

    async def add_channel(self, **extra: Any) -> dict[str, Any]:
        response = await self.bridge.http.post(
            "/admin/channels",
            headers=ADMIN,
            json={
                "provider": "twilio",
                "company_id": 1001,
                "user_id": 2001,
                "name": "SMS line",
                "credentials": self.tw.credentials,
                **extra,
            },
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        self.pcid = body["provider_channel_id"]
        return body

    async def sms(self, customer: str, text: str) -> dict[str, str]:
        """The customer texts us; Twilio's signed webhook reaches the bridge."""
        form = self.tw.add_inbound(from_=customer, body=text)
        await self.deliver(form)
        return form

    async def deliver(self, form: dict[str, str]) -> None:
        url = f"{PUBLIC_URL}/webhooks/twilio/{self.pcid}"
        response = await self.bridge.http.post(
            f"/webhooks/twilio/{self.pcid}",
            content=self.tw.form_body(form),
            headers=self.tw.webhook_headers(url, form),
        )
        assert response.status_code == 200, response.text

    async def admin_channel(self) -> dict[str, Any]:
        response = await self.bridge.http.get("/admin/channels", headers=ADMIN)
        [channel] = [c for c in response.json()["data"] if c["provider_channel_id"] == self.pcid]
        return channel

    def note_calls(self) -> int:
        """Pipedrive calls the notes sink makes (searches, persons, deals, notes)."""
        calls = self.pd.calls()
        return sum(n for k, n in calls.items() if "/persons" in k or "/deals" in k or "/notes" in k)


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def tw() -> Iterator[TwilioStandin]:
    with TwilioStandin() as server:
        yield server


@pytest.fixture
async def notes(
    stack: tuple[str, str], pd: PipedriveStandin, tw: TwilioStandin
) -> AsyncIterator[NotesStack]:
    async with served_bridge(stack, pd, twilio_api_url=tw.base_url) as (bridge, url):
        yield NotesStack(bridge, pd, tw, url)


def texts_in(note: dict[str, Any]) -> str:
    return html.unescape(note["content"])


async def test_hundred_messages_become_notes_once_and_a_replay_adds_nothing(
    notes: NotesStack,
) -> None:
    """100 SMS over 10 conversations become one note per conversation on the customer's
    person (and on its single open deal); redelivering every webhook, and replaying every
    delivery through the relay, changes nothing; the calls stay within 1.2x the minimum."""
    persons = [notes.pd.add_person(f"Customer {i}", phones=(c,)) for i, c in enumerate(CUSTOMERS)]
    deal = notes.pd.add_deal(persons[0]["id"], "Solar panels")
    notes.pd.add_deal(persons[1]["id"], "Deal A")
    notes.pd.add_deal(persons[1]["id"], "Deal B")
    channel = await notes.add_channel(sink="notes")
    assert channel["sink"] == "notes"
    assert channel["pipedrive_channel_id"] is None  # no Channels API registration
    forms = []
    for n in range(10):
        for i, customer in enumerate(CUSTOMERS):
            forms.append(await notes.sms(customer, f"msg {n} from {i} <b>&"))
    await notes.bridge.run_worker()

    written = notes.pd.notes
    assert len(written) == 10
    by_person = {note["person_id"]: note for note in written}
    for i, person in enumerate(persons):
        content = texts_in(by_person[person["id"]])
        positions = [content.index(f"msg {n} from {i} <b>&") for n in range(10)]
        assert positions == sorted(positions)
        assert "<b>&" not in by_person[person["id"]]["content"].split("</b>:", 1)[1]
    assert by_person[persons[0]["id"]]["deal_id"] == deal["id"]
    assert by_person[persons[1]["id"]]["deal_id"] is None  # two open deals: the person only
    # Minimum for one window per conversation: a search, a deal lookup and one note each.
    minimum = 10 * 3
    spent = notes.note_calls()
    assert spent <= 1.2 * minimum, notes.pd.calls()

    for form in forms:  # Twilio redelivers everything
        await notes.deliver(form)
    async with notes.bridge.services.db.write() as conn:  # and every delivery is replayed
        await conn.execute(
            sa.update(inbound_deliveries)
            .where(inbound_deliveries.c.source == "twilio")
            .values(status="received")
        )
    await sweep(notes.bridge.services, older_than=utcnow() + timedelta(seconds=1))
    await notes.bridge.run_worker()
    assert notes.pd.notes == written
    assert notes.note_calls() == spent
    assert await dead_letters.list_all(notes.bridge.services.db) == []


async def test_a_lost_note_answer_is_adopted_not_duplicated(notes: NotesStack) -> None:
    """Pipedrive stores the note but its answer is lost: the retry finds the note by its
    marker and updates it; one note, every line."""
    [person] = [notes.pd.add_person("Jane", phones=(CUSTOMERS[0],))]
    await notes.add_channel(sink="notes")
    notes.pd.lose_note_answers = 1
    for n in range(3):
        await notes.sms(CUSTOMERS[0], f"line {n}")
    await notes.bridge.run_worker()
    [note] = notes.pd.notes_of(person["id"])
    assert all(f"line {n}" in note["content"] for n in range(3))
    assert notes.pd.calls()["POST /v1/notes"] == 1
    assert await dead_letters.list_all(notes.bridge.services.db) == []


async def test_auto_channel_moves_to_notes_when_the_channels_api_answers_410(
    notes: NotesStack,
) -> None:
    """On `auto`, the first `receive` answered 410 moves the channel to notes: that message is
    in a note, the move is logged once, shown by the admin API and counted in /metrics."""
    person = notes.pd.add_person("Jane", phones=(CUSTOMERS[0],))
    channel = await notes.add_channel()
    assert channel["sink"] == "channels"
    assert channel["sink_setting"] is None
    notes.pd.retire_channels_api()
    with capture_logs() as logs:
        await notes.sms(CUSTOMERS[0], "first after the shutdown")
        await notes.bridge.run_worker()
        await notes.sms(CUSTOMERS[0], "second")
        await notes.bridge.run_worker()
    moves = [e for e in logs if e["event"] == "sink.moved_to_notes"]
    assert len(moves) == 1
    assert moves[0]["log_level"] == "warning"
    [note] = notes.pd.notes_of(person["id"])
    assert "first after the shutdown" in note["content"]
    assert "second" in note["content"]
    shown = await notes.admin_channel()
    assert shown["sink"] == "notes"
    assert shown["sink_moved_at"] is not None
    metrics = (await notes.bridge.http.get("/metrics")).text
    assert "pdbridge_sink_moves_total 1.0" in metrics
    assert await dead_letters.list_all(notes.bridge.services.db) == []


async def test_auto_channel_registered_against_a_gone_api_starts_on_notes(
    notes: NotesStack,
) -> None:
    """POST /admin/channels with the Channels API at 410 still connects the channel, on notes.
    Without person creation an unknown customer's lines wait (logged) until a person matches.
    An operator moves a channel between sinks with PATCH; an unknown sink is a 400."""
    refused = await notes.bridge.http.post(
        "/admin/channels",
        headers=ADMIN,
        json={"provider": "twilio", "company_id": 1001, "user_id": 2001, "name": "SMS",
              "credentials": notes.tw.credentials, "sink": "fax"},
    )  # fmt: skip
    assert refused.status_code == 400
    notes.pd.retire_channels_api()
    channel = await notes.add_channel(create_persons=False)
    assert (channel["sink"], channel["pipedrive_channel_id"]) == ("notes", None)
    assert (channel["sink_moved_at"] is not None, channel["create_persons"]) == (True, False)
    with capture_logs() as logs:
        await notes.sms(CUSTOMERS[0], "anyone there?")
        await notes.bridge.run_worker()
    assert [e["event"] for e in logs if e["event"] == "notes.person_unmatched"]
    assert (notes.pd.notes, notes.pd.persons) == ([], [])
    person = notes.pd.add_person("Jane", phones=(CUSTOMERS[0],))
    await notes.sms(CUSTOMERS[0], "hello?")
    await notes.bridge.run_worker()
    [note] = notes.pd.notes_of(person["id"])
    assert "anyone there?" in note["content"]
    assert "hello?" in note["content"]

    response = await notes.bridge.http.patch(
        f"/admin/channels/{notes.pcid}", headers=ADMIN, json={"sink": "channels"}
    )
    assert response.status_code == 200
    assert (response.json()["sink"], response.json()["sink_setting"]) == ("channels", "channels")
    bad = await notes.bridge.http.patch(
        f"/admin/channels/{notes.pcid}", headers=ADMIN, json={"sink": "email"}
    )
    assert bad.status_code == 400
    assert (await notes.admin_channel())["sink"] == "channels"


async def test_a_reply_note_reaches_the_customer_once_even_delivered_three_times(
    notes: NotesStack,
) -> None:
    """An agent's `/reply` note goes to the customer exactly once with the webhook delivered
    three times, and its statuses show in the conversation's note while its window is open;
    our own notes and notes without the marker send nothing."""
    person = notes.pd.add_person("Jane", phones=(CUSTOMERS[0],))
    await notes.add_channel(sink="notes")
    await notes.sms(CUSTOMERS[0], "When does it ship?")
    await notes.bridge.run_worker()
    [ours] = notes.pd.notes_of(person["id"])
    reply = notes.pd.add_user_note(
        "<p>/reply It ships tomorrow &amp; arrives Friday</p>", person_id=person["id"]
    )
    plain = notes.pd.add_user_note("<p>Called her, no answer</p>", person_id=person["id"])
    for note in (reply, plain, ours):
        statuses = await asyncio.to_thread(
            notes.pd.deliver_note_webhooks, notes.url, note["id"], times=3
        )
        assert statuses == [200, 200, 200]
    await notes.bridge.run_worker()
    sent = [m for m in notes.tw.sent if m["to"] == CUSTOMERS[0]]
    assert [m["body"] for m in sent] == ["It ships tomorrow & arrives Friday"]
    [ours] = [n for n in notes.pd.notes_of(person["id"]) if n["id"] == ours["id"]]
    content = texts_in(ours)
    assert "It ships tomorrow & arrives Friday" in content
    assert "[sent]" in content

    # Its statuses update its line while the note's window is open, and are dropped after.
    await notes.deliver(notes.tw.status_form(sent[0]["sid"], "delivered", to=CUSTOMERS[0]))
    await notes.bridge.run_worker()
    [ours] = [n for n in notes.pd.notes_of(person["id"]) if n["id"] == ours["id"]]
    assert "[delivered]" in ours["content"]
    async with notes.bridge.services.db.write() as conn:  # the window's time runs out
        await conn.execute(
            sa.update(note_windows).values(closes_at=utcnow() - timedelta(seconds=1))
        )
    with capture_logs() as logs:
        await notes.deliver(notes.tw.status_form(sent[0]["sid"], "read", to=CUSTOMERS[0]))
        await notes.bridge.run_worker()
    assert [e["status"] for e in logs if e["event"] == "notes.status_dropped"] == ["read"]
    assert [n for n in notes.pd.notes_of(person["id"]) if n["id"] == ours["id"]] == [ours]


async def test_bad_input_is_logged_and_loses_nothing(notes: NotesStack) -> None:
    """Two persons with the customer's phone: the best match is taken and the log says so.
    The person deleted in Pipedrive: a new person gets a note with every line. A note webhook
    naming another company: refused, logged, nothing sent."""
    first = notes.pd.add_person("Jane", phones=(CUSTOMERS[0],))
    notes.pd.add_person("Jane (duplicate)", phones=(CUSTOMERS[0],))
    await notes.add_channel(sink="notes")
    with capture_logs() as logs:
        await notes.sms(CUSTOMERS[0], "hello")
        await notes.bridge.run_worker()
        notes.pd.delete_person(first["id"])
        await notes.sms(CUSTOMERS[0], "still there?")
        await notes.bridge.run_worker()
    [ambiguous] = [e for e in logs if e["event"] == "notes.person_ambiguous"]
    assert ambiguous["chosen"] == first["id"]
    [deleted] = [e for e in logs if e["event"] == "notes.person_deleted"]
    assert deleted["person_id"] == first["id"]
    [note] = notes.pd.notes
    assert note["person_id"] != first["id"]
    assert "hello" in note["content"]
    assert "still there?" in note["content"]

    agent_note = notes.pd.add_user_note("<p>/reply hi</p>", person_id=note["person_id"])
    with capture_logs() as logs:
        statuses = await asyncio.to_thread(
            notes.pd.deliver_note_webhooks, notes.url, agent_note["id"], company_id=999
        )
        await notes.bridge.run_worker()
    assert statuses == [403]
    assert [e["event"] for e in logs if e["event"] == "pipedrive_webhook.company_mismatch"]
    assert notes.tw.sent == []
    assert await dead_letters.list_all(notes.bridge.services.db) == []

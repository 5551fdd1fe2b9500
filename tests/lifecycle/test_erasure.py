"""Erasure: a conversation deleted through Pipedrive's Channels API, or the person it is linked
to deleted in Pipedrive (v2 `delete`, v1 `deleted.person`), leaves no message, media file or
webhook body behind, and no redelivery brings it back. Stand-ins on real sockets, real
workers, SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from service import erasure
from service.media import LocalMediaStore
from service.store import conversations, dead_letters, installations, person_links
from service.store.schema import inbound_deliveries, messages, participants, utcnow
from tests.messaging.harness import ADMIN, Stack, running_stack
from tests.pipedrive.bridge import standin

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "pipedrive"
COMPANY, USER = 1001, 2001
ALICE, BOB = 5550001, 5550002


def conversation_of(chat: int) -> str:
    return f"tg:777001:{chat}"


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


def fixture(name: str) -> dict[str, Any]:
    if not FIXTURES.is_dir():
        pytest.skip("the shared fixtures folder is not beside the project")
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return body


async def chat(stack: Stack, pcid: str, chat_id: int, first_update: int) -> list[dict[str, Any]]:
    """A text and a photo from `chat_id`, relayed; returns the updates as Telegram sent them."""
    photo = stack.tg.add_file(
        b"\xff\xd8\xff\xe0" + bytes([chat_id % 256]) * 500, mime_type="image/jpeg"
    )
    updates = [
        stack.tg.text_update(
            update_id=first_update, chat_id=chat_id, text="my secret", message_id=1
        ),
        stack.tg.photo_update(
            update_id=first_update + 1, chat_id=chat_id, message_id=2, file=photo
        ),
    ]
    for update in updates:
        assert (await stack.send_update(pcid, update)).status_code == 200
    await stack.run_worker()
    return updates


def receives(stack: Stack) -> int:
    """`receive` calls Pipedrive got (its store forgets a deleted conversation's messages)."""
    return sum(r.api_path == "/v1/channels/messages/receive" for r in stack.pd.requests)


def media_files() -> list[Path]:
    root = LocalMediaStore().root
    return sorted(root.iterdir()) if root.exists() else []


async def stored(stack: Stack, chat_id: int) -> tuple[int, int]:
    """(messages, participants) stored for the chat's conversation."""
    db = stack.bridge.services.db
    async with db.engine.connect() as conn:
        found = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(messages)
                .where(messages.c.external_id.like(f"tg:777001:{chat_id}:%"))
            )
        ).scalar_one()
        people = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(participants)
                .where(participants.c.external_id == f"tg:{chat_id}")
            )
        ).scalar_one()
    return int(found), int(people)


async def bodies_mentioning(stack: Stack, text: str) -> int:
    async with stack.bridge.services.db.engine.connect() as conn:
        rows = (await conn.execute(sa.select(inbound_deliveries.c.payload))).scalars().all()
    return sum(text in json.dumps(row) for row in rows)


async def test_a_deleted_conversation_is_erased_and_stays_erased(stack: Stack) -> None:
    """Deleting a conversation (Channels API) removes its messages, participants, media files
    and webhook bodies; Telegram redelivering the same updates, or a copy under a new update id,
    brings nothing back; the other chat is untouched and a new message starts afresh."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    alice = await chat(stack, pcid, ALICE, 100)
    await chat(stack, pcid, BOB, 200)
    assert len(media_files()) == 2
    told = receives(stack)

    response = await stack.http.delete(
        f"/admin/channels/{pcid}/conversations/{conversation_of(ALICE)}", headers=ADMIN
    )
    assert response.status_code == 200, response.text
    assert await stored(stack, ALICE) == (0, 0)
    assert await stored(stack, BOB) == (2, 1)
    assert len(media_files()) == 1
    assert await bodies_mentioning(stack, str(ALICE)) == 0
    assert await bodies_mentioning(stack, str(BOB)) == 2

    for update in alice:  # Telegram's redelivery: the same update ids
        assert (await stack.send_update(pcid, update)).status_code == 200
    copy = dict(alice[0], update_id=150)  # the same message under another update id
    assert (await stack.send_update(pcid, copy)).status_code == 200
    await stack.run_worker()
    assert await stored(stack, ALICE) == (0, 0)
    assert receives(stack) == told
    assert len(media_files()) == 1

    fresh = stack.tg.text_update(update_id=300, chat_id=ALICE, text="new start", message_id=3)
    assert (await stack.send_update(pcid, fresh)).status_code == 200
    await stack.run_worker()
    assert await stored(stack, ALICE) == (1, 1)
    assert stack.pd.received(pcid)[-1]["message"] == "new start"
    assert await dead_letters.list_all(stack.bridge.services.db) == []


async def link(stack: Stack, pcid: str, chat_id: int, person_id: int) -> None:
    """Link the chat's conversation to a Pipedrive person, as the person matching does."""
    channel = await stack.channel(pcid)
    await person_links.link_conversation(
        stack.bridge.services.db,
        company_id=COMPANY,
        person_id=person_id,
        channel_id=channel.id,
        conversation_id=conversation_of(chat_id),
    )


async def pipedrive_webhook(stack: Stack, body: dict[str, Any]) -> None:
    inst = await installations.find(stack.bridge.services.db, COMPANY, USER)
    assert inst is not None
    assert inst.webhook_user
    assert inst.webhook_password_encrypted
    password = stack.bridge.services.crypto.decrypt(inst.webhook_password_encrypted)
    pair = base64.b64encode(f"{inst.webhook_user}:{password}".encode()).decode()
    response = await stack.http.post(
        "/webhooks/pipedrive", json=body, headers={"Authorization": f"Basic {pair}"}
    )
    assert response.status_code == 200, response.text


def v2_person_deleted(person_id: int) -> dict[str, Any]:
    body = fixture("v2-docs-person-change.json")
    body["meta"].update(
        action="delete", entity_id=str(person_id), company_id=str(COMPANY), user_id=str(USER)
    )
    body["previous"], body["data"] = dict(body["data"], id=person_id), None
    return body


def v1_person_deleted(person_id: int) -> dict[str, Any]:
    body = fixture("v1-django-pipedrive-organization-deleted.json")
    body["meta"].update(object="person", id=person_id, company_id=COMPANY, user_id=USER)
    body["previous"]["id"] = person_id
    body["event"] = "deleted.person"
    return body


def v1_person_merged(survivor: int, merged_away: int) -> dict[str, Any]:
    body = fixture("v1-django-pipedrive-organization-merged.json")
    body["meta"].update(object="person", id=survivor, company_id=COMPANY, user_id=USER)
    body["current"].update(id=survivor, merge_what_id=merged_away)
    body["previous"]["id"] = merged_away
    body["event"] = "merged.person"
    return body


async def test_a_v2_person_deletion_erases_the_linked_conversations(stack: Stack) -> None:
    """A v2 `delete` of a person erases the conversations linked to it, and no other."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    await chat(stack, pcid, ALICE, 100)
    await chat(stack, pcid, BOB, 200)
    await link(stack, pcid, ALICE, 42)
    await link(stack, pcid, BOB, 43)
    await pipedrive_webhook(stack, v2_person_deleted(42))
    await stack.run_worker()
    assert await stored(stack, ALICE) == (0, 0)
    assert await stored(stack, BOB) == (2, 1)
    assert len(media_files()) == 1
    db = stack.bridge.services.db
    channel = await stack.channel(pcid)
    assert await conversations.get(db, channel.id, conversation_of(ALICE)) is None
    assert (
        await person_links.person_for(
            db, company_id=COMPANY, ref_kind="conversation", ref_id=f"{channel.id}:tg:777001:{BOB}"
        )
        == 43
    )


async def test_a_v1_person_deletion_waits_out_a_merge(stack: Stack) -> None:
    """A v1 `deleted.person` erases after the grace period; one that a `merged.person` explains
    (the merged-away person) erases nothing, and the links follow the survivor."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    await chat(stack, pcid, ALICE, 100)
    await chat(stack, pcid, BOB, 200)
    await link(stack, pcid, ALICE, 42)
    await link(stack, pcid, BOB, 43)
    await pipedrive_webhook(stack, v1_person_deleted(42))
    await pipedrive_webhook(stack, v1_person_deleted(43))
    await stack.run_worker()
    assert await stored(stack, ALICE) == (2, 1)  # nothing yet: a merge may explain it
    await pipedrive_webhook(stack, v1_person_merged(survivor=44, merged_away=43))
    await stack.run_worker()

    svc = stack.bridge.services
    assert await erasure.erase_due_persons(svc) == 0  # the grace has not passed
    later = utcnow() + erasure.V1_MERGE_GRACE
    assert await erasure.erase_due_persons(svc, now=later) == 1
    assert await stored(stack, ALICE) == (0, 0)
    assert await stored(stack, BOB) == (2, 1)
    channel = await stack.channel(pcid)
    assert (
        await person_links.person_for(
            svc.db,
            company_id=COMPANY,
            ref_kind="conversation",
            ref_id=f"{channel.id}:tg:777001:{BOB}",
        )
        == 44
    )

"""Erasure: history deleted in Pipedrive is deleted here too, and stays deleted.

Two things start it. A conversation deleted through the Channels API (the admin call, which
asks Pipedrive first) erases that conversation; a person deleted in Pipedrive erases the
conversations linked to that person (`person_links`, ref kind `conversation`). Erasing removes the
messages, their media files, the participants, the conversation, and the raw webhook bodies it
was recorded from (see `service.store.erasures` for how a redelivery is still turned away).

A v2 person `delete` without `merged_to_id` is a deletion, and is acted on at once. A v1
`deleted.person` may be half of a merge (v1 reports the merged-away person as deleted, possibly
before the `merged` event of the survivor), so it is only scheduled: after `V1_MERGE_GRACE` the
maintenance job erases what is still linked to that person, and a merge meanwhile has moved the
links to the survivor (and cancelled the erasure).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from service.context import Services
from service.ingest import conversation_key
from service.logging import get_logger
from service.store import erasures, person_links
from service.store.erasures import Erased
from service.store.schema import utcnow

log = get_logger(__name__)

#: How long a v1 person deletion waits for the `merged` event that would explain it.
V1_MERGE_GRACE = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class PersonErased:
    conversations: int
    messages: int
    media_files: int


async def erase_conversation(svc: Services, conversation_id: int) -> Erased | None:
    """Erase one conversation (by row id); None when it was gone already. Media files go first:
    a crash after that leaves rows that the next try erases, never files nothing points at."""
    rows = await erasures.conversation_rows(svc.db, conversation_id)
    if rows is None:
        return None
    for key in rows.media_keys:
        await svc.media.delete(key)
    erased = await erasures.erase_conversation(
        svc.db, rows, conversation_key(rows.channel_id, rows.external_id)
    )
    log.info(
        "erasure.conversation_erased",
        channel_id=rows.channel_id,
        conversation_id=conversation_id,
        messages=erased.messages,
        deliveries=erased.deliveries,
        media_files=erased.media_files,
    )
    return erased


async def erase_person(svc: Services, company_id: int, person_id: int) -> PersonErased:
    """Erase every conversation linked to the person, then the person's links."""
    totals = [0, 0, 0]
    for conversation_id, _ in await erasures.conversations_of_person(svc.db, company_id, person_id):
        erased = await erase_conversation(svc, conversation_id)
        if erased is not None:
            totals[0] += 1
            totals[1] += erased.messages
            totals[2] += erased.media_files
    await person_links.unlink_person(svc.db, company_id=company_id, person_id=person_id)
    await erasures.cancel_person(svc.db, company_id, person_id)
    result = PersonErased(*totals)
    log.info(
        "erasure.person_erased",
        company_id=company_id,
        person_id=person_id,
        conversations=result.conversations,
        messages=result.messages,
    )
    return result


async def person_deleted(
    svc: Services, company_id: int, person_id: int, *, version: int, now: datetime | None = None
) -> None:
    """A person deletion from Pipedrive (not a merge): v2 erases now, v1 after the grace."""
    if version >= 2:
        await erase_person(svc, company_id, person_id)
        return
    due = (now or utcnow()) + V1_MERGE_GRACE
    await erasures.schedule_person(svc.db, company_id, person_id, due)
    log.info("erasure.person_scheduled", company_id=company_id, person_id=person_id, due_at=due)


async def person_merged(svc: Services, company_id: int, merged_away: int) -> None:
    """The person was merged into another: a scheduled erasure of it is called off."""
    if await erasures.cancel_person(svc.db, company_id, merged_away):
        log.info("erasure.person_kept", company_id=company_id, person_id=merged_away)


async def erase_due_persons(svc: Services, *, now: datetime | None = None) -> int:
    """Run the person erasures whose grace has passed; returns how many persons."""
    due = await erasures.due_persons(svc.db, now or utcnow())
    for company_id, person_id in due:
        await erase_person(svc, company_id, person_id)
    return len(due)

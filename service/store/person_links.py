"""The bridge's references to Pipedrive persons, kept in step with merges."""

from __future__ import annotations

import sqlalchemy as sa

from service.store.engine import Database
from service.store.schema import person_links, utcnow


async def link(
    db: Database, *, company_id: int, person_id: int, ref_kind: str, ref_id: str
) -> None:
    """Point (ref_kind, ref_id) at a person, replacing an earlier link of the same reference."""
    async with db.write() as conn:
        updated = await conn.execute(
            person_links.update()
            .where(
                person_links.c.company_id == company_id,
                person_links.c.ref_kind == ref_kind,
                person_links.c.ref_id == ref_id,
            )
            .values(person_id=person_id, updated_at=utcnow())
        )
        if not updated.rowcount:
            await conn.execute(
                person_links.insert().values(
                    company_id=company_id,
                    person_id=person_id,
                    ref_kind=ref_kind,
                    ref_id=ref_id,
                    updated_at=utcnow(),
                )
            )


async def person_for(db: Database, *, company_id: int, ref_kind: str, ref_id: str) -> int | None:
    query = sa.select(person_links.c.person_id).where(
        person_links.c.company_id == company_id,
        person_links.c.ref_kind == ref_kind,
        person_links.c.ref_id == ref_id,
    )
    async with db.engine.connect() as conn:
        found = (await conn.execute(query)).scalar_one_or_none()
    return int(found) if found is not None else None


async def repoint(db: Database, *, company_id: int, from_person: int, to_person: int) -> int:
    """After a merge, every link to the merged-away person points at the survivor."""
    async with db.write() as conn:
        result = await conn.execute(
            person_links.update()
            .where(person_links.c.company_id == company_id, person_links.c.person_id == from_person)
            .values(person_id=to_person, updated_at=utcnow())
        )
        return int(result.rowcount)


async def unlink_person(db: Database, *, company_id: int, person_id: int) -> int:
    """A person deleted for good: drop the links, the next message creates a new one."""
    async with db.write() as conn:
        result = await conn.execute(
            person_links.delete().where(
                person_links.c.company_id == company_id, person_links.c.person_id == person_id
            )
        )
        return int(result.rowcount)


#: The link kind of a conversation; its `ref_id` is "<channel row id>:<conversation id>", the
#: conversation's delivery key (`ingest.conversation_key`). A person deleted in Pipedrive erases
#: the conversations linked to it (service/erasure.py).
CONVERSATION = "conversation"


async def link_conversation(
    db: Database, *, company_id: int, person_id: int, channel_id: int, conversation_id: str
) -> None:
    """Link a conversation (by its channel's row id and our conversation id) to a person."""
    await link(
        db,
        company_id=company_id,
        person_id=person_id,
        ref_kind=CONVERSATION,
        ref_id=f"{channel_id}:{conversation_id}",
    )

"""The `pipedrive_event` job and the registry of what to do for each (entity, action).

Handlers keep the bridge's own references in step with Pipedrive; later features register more
with `@on(entity, action)`. Each handler must be idempotent: an event can be processed again after
a retry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from service import erasure
from service.context import Services
from service.logging import get_logger
from service.pipedrive.webhooks import PipedriveEvent
from service.queue import JobContext
from service.sinks import replies
from service.store import deliveries, installations, person_links
from service.store.installations import Installation

log = get_logger(__name__)

EventHandler = Callable[[Services, Installation, PipedriveEvent], Awaitable[None]]
_REGISTRY: dict[tuple[str, str], list[EventHandler]] = defaultdict(list)


def on(entity: str, *actions: str) -> Callable[[EventHandler], EventHandler]:
    """Register a handler for `entity` events with any of `actions` (v2 words)."""

    def register(handler: EventHandler) -> EventHandler:
        for action in actions:
            _REGISTRY[(entity, action)].append(handler)
        return handler

    return register


def handlers_for(event: PipedriveEvent) -> list[EventHandler]:
    return list(_REGISTRY.get((event.entity, event.action), ()))


async def pipedrive_event(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Run the registered handlers for one webhook event; returns how many ran."""
    svc: Services = ctx["services"]
    event = PipedriveEvent.from_job_payload(payload["event"])
    inst = await installations.get(svc.db, int(payload["installation_id"]))
    handlers = handlers_for(event)
    if inst is None or inst.status == "uninstalled":
        log.info("pipedrive_event.skipped", installation_id=payload["installation_id"])
        handlers = []
    for handler in handlers:
        assert inst is not None
        await handler(svc, inst, event)
    await deliveries.mark_done(svc.db, source="pipedrive", dedupe_key=payload["dedupe_key"])
    log.info(
        "pipedrive_event.processed",
        entity=event.entity,
        action=event.action,
        entity_id=event.entity_id,
        handlers=[h.__name__ for h in handlers],
    )
    return len(handlers)


@on("person", "change", "delete")
async def follow_person_merges(svc: Services, inst: Installation, event: PipedriveEvent) -> None:
    """A merge moves our links from the merged-away person to the survivor. A plain delete
    keeps them: a v1 merge also sends a `deleted` for the merged-away person, possibly before
    the `merged` event, and unlinking then would lose what the merge must move."""
    if event.action == "change" and event.merged_from_id:
        source, target = int(event.merged_from_id), int(event.entity_id)
    elif event.action == "delete" and event.merged_to_id:
        source, target = int(event.entity_id), int(event.merged_to_id)
    else:
        return
    moved = await person_links.repoint(
        svc.db, company_id=event.company_id, from_person=source, to_person=target
    )
    log.info("person.merged", merged_away=source, survivor=target, links_moved=moved)


@on("person", "change", "delete")
async def erase_deleted_persons(svc: Services, inst: Installation, event: PipedriveEvent) -> None:
    """A person deleted in Pipedrive takes its linked conversations with it (service/erasure.py:
    v2 at once, v1 after a grace that lets a merge explain it); a merge calls that off."""
    if event.action == "change" and event.merged_from_id:
        await erasure.person_merged(svc, event.company_id, int(event.merged_from_id))
    elif event.action == "delete" and not event.merged_to_id and event.entity_id.isdigit():
        await erasure.person_deleted(
            svc, event.company_id, int(event.entity_id), version=event.version
        )


@on("user", "change", "delete")
async def follow_user_deactivation(
    svc: Services, inst: Installation, event: PipedriveEvent
) -> None:
    """A deactivated (or deleted) user's installation stops working until they install again."""
    active = (event.data or {}).get("active_flag", True)
    if event.action == "change" and active is not False:
        return
    target = await installations.find(svc.db, event.company_id, int(event.entity_id))
    if target is None:
        return
    if await installations.set_status(
        svc.db, target.id, "needs_reauth", "user deactivated in Pipedrive"
    ):
        log.warning("installation.user_deactivated", installation=target.key)


@on("note", "create")
async def reply_from_note(svc: Services, inst: Installation, event: PipedriveEvent) -> None:
    """An agent's `/reply` note on a linked person or deal goes to the customer (notes sink)."""
    await replies.handle_note(svc, inst, event)

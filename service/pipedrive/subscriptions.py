"""The app's own webhooks in Pipedrive: created after install, reconciled periodically.

Each installation gets one Basic-auth pair (random, stored encrypted) that Pipedrive sends with
every delivery, and one v2 webhook per event the bridge acts on. Pipedrive deletes a webhook after
three days without a successful delivery and bans it for a while after failures, so `ensure`
is also the reconcile step: it recreates what is missing or inactive and leaves the rest.
"""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa

from service.context import Services
from service.logging import get_logger
from service.store import installations
from service.store.installations import Installation
from service.store.schema import pipedrive_webhooks, utcnow

log = get_logger(__name__)

#: (event_action, event_object) in v2 words. A v2 merge arrives as a person `delete` (with
#: `merged_to_id`) plus a `change` (with `merged_from_id`), so these two also cover merges; a
#: deactivated user arrives as a user `change`.
WANTED: tuple[tuple[str, str], ...] = (
    ("change", "person"),
    ("delete", "person"),
    ("change", "user"),
    # The notes sink: an agent's `/reply` note is sent to the customer (service.sinks.replies).
    ("create", "note"),
)


def subscription_url(services: Services) -> str:
    return f"{services.settings.base_url}/webhooks/pipedrive"


async def credentials(services: Services, inst: Installation) -> tuple[str, str]:
    """The installation's Basic pair for deliveries, created once."""
    if inst.webhook_user and inst.webhook_password_encrypted:
        return inst.webhook_user, services.crypto.decrypt(inst.webhook_password_encrypted)
    user = f"pdb{inst.id}-{secrets.token_hex(6)}"
    password = secrets.token_urlsafe(32)
    await installations.set_webhook_credentials(
        services.db, services.crypto, inst.id, user, password
    )
    return user, password


async def ensure(services: Services, inst: Installation) -> list[tuple[str, str]]:
    """Create the wanted webhooks that are missing or inactive; returns those (re)created."""
    user, password = await credentials(services, inst)
    url = subscription_url(services)
    existing: list[dict[str, Any]] = await services.pipedrive.get(inst, "/webhooks") or []
    ours = {
        (w.get("event_action"), w.get("event_object")): w
        for w in existing
        if w.get("subscription_url") == url and str(w.get("version")) == "2.0"
    }
    created = []
    for action, entity in WANTED:
        found = ours.get((action, entity))
        if found is not None and _active(found) and found.get("http_auth_user") in (None, user):
            await _remember(services, inst, int(found["id"]), action, entity)
            continue
        if found is not None:
            await services.pipedrive.delete(inst, f"/webhooks/{int(found['id'])}")
        webhook = await services.pipedrive.post(
            inst,
            "/webhooks",
            {
                "subscription_url": url,
                "event_action": action,
                "event_object": entity,
                "version": "2.0",
                "name": f"pdbridge {entity}.{action}",
                "http_auth_user": user,
                "http_auth_password": password,
            },
        )
        await _remember(services, inst, int(webhook["id"]), action, entity)
        created.append((action, entity))
    log.info("webhooks.ensured", installation=inst.key, created=created)
    return created


def _active(webhook: dict[str, Any]) -> bool:
    return webhook.get("is_active") in (True, 1, "1", None)


async def _remember(
    services: Services, inst: Installation, webhook_id: int, action: str, entity: str
) -> None:
    async with services.db.write() as conn:
        await conn.execute(
            pipedrive_webhooks.delete().where(
                pipedrive_webhooks.c.installation_id == inst.id,
                pipedrive_webhooks.c.event_action == action,
                pipedrive_webhooks.c.event_object == entity,
            )
        )
        await conn.execute(
            pipedrive_webhooks.insert().values(
                installation_id=inst.id,
                pipedrive_webhook_id=webhook_id,
                event_action=action,
                event_object=entity,
                created_at=utcnow(),
            )
        )


async def forget(services: Services, inst: Installation) -> None:
    """Drop local records (after an uninstall Pipedrive has already deleted the webhooks)."""
    async with services.db.write() as conn:
        await conn.execute(
            sa.delete(pipedrive_webhooks).where(pipedrive_webhooks.c.installation_id == inst.id)
        )

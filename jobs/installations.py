"""Jobs that set an installation up with Pipedrive: its app webhooks, now and periodically."""

from __future__ import annotations

from typing import Any

from service import queue
from service.context import Services
from service.logging import get_logger
from service.pipedrive import subscriptions
from service.queue import JobContext
from service.store import installations
from service.store.schema import utcnow

log = get_logger(__name__)


async def setup_installation(ctx: JobContext, payload: dict[str, Any]) -> list[tuple[str, str]]:
    """Create (or recreate) the installation's app webhooks."""
    svc: Services = ctx["services"]
    inst = await installations.get(svc.db, int(payload["installation_id"]))
    if inst is None or inst.status != "active":
        log.info("setup.skipped", installation_id=payload["installation_id"])
        return []
    return await subscriptions.ensure(svc, inst)


async def setup_single_company(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Single-company mode: learn who the API token belongs to, store the implicit
    installation, and create its webhooks; returns the installation id."""
    svc: Services = ctx["services"]
    inst = await svc.pipedrive.single_company_installation()
    await subscriptions.ensure(svc, inst)
    return inst.id


async def reconcile_webhooks(ctx: JobContext) -> int:
    """Hourly: queue a setup for every active installation (each fails or succeeds alone)."""
    svc: Services = ctx["services"]
    hour = utcnow().strftime("%Y%m%d%H")
    count = 0
    for inst in await installations.list_all(svc.db):
        if inst.status == "active":
            await svc.queue.enqueue(
                queue.SETUP_INSTALLATION,
                {"installation_id": inst.id, "company_id": inst.company_id},
                key=f"reconcile:{inst.id}:{hour}",
            )
            count += 1
    log.info("webhooks.reconcile_queued", installations=count)
    return count

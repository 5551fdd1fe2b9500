"""The worker process: which jobs it runs and the shared objects each job gets in `ctx`."""

from __future__ import annotations

import time
from collections.abc import Sequence

from jobs import backfill, inbound, installations, maintenance, notes, outbound, pipedrive_events
from service import queue
from service.config import Settings
from service.context import Services
from service.logging import get_logger
from service.store import Database
from service.store.schema import utcnow

log = get_logger(__name__)

#: Every job the workers run; enqueue them by these function names.
FUNCTIONS: list[queue.RegisteredJob] = [
    queue.job(pipedrive_events.pipedrive_event, queue.PIPEDRIVE_EVENT),
    queue.job(installations.setup_installation, queue.SETUP_INSTALLATION),
    queue.job(installations.setup_single_company, queue.SETUP_SINGLE_COMPANY),
    queue.job(inbound.relay_conversation, queue.RELAY_CONVERSATION),
    queue.job(inbound.retry_delivery, queue.RETRY_DELIVERY),
    queue.job(outbound.send_conversation, queue.SEND_CONVERSATION),
    queue.job(notes.notes_flush, queue.NOTES_FLUSH),
    queue.job(outbound.deliver_outbound, queue.DELIVER_OUTBOUND),
    queue.job(outbound.remove_provider_webhook, queue.REMOVE_PROVIDER_WEBHOOK),
]


async def startup(ctx: queue.JobContext) -> None:
    """Build the shared objects; after a Redis outage (arq runs this again on reconnect) keep
    them, and queue at once what was recorded meanwhile instead of waiting for the sweeper."""
    lost_at = ctx.pop("redis_lost_at", None)
    if "services" in ctx:
        if lost_at is not None:
            log.warning("worker.redis_back", outage_seconds=round(time.monotonic() - lost_at, 1))
            await maintenance.sweep(ctx["services"], older_than=utcnow())
        return
    settings: Settings = ctx["settings"]
    services = Services.create(
        settings,
        db=Database(settings.database_url),
        queue=queue.Queue(ctx["redis"]),
        owns_queue=False,
    )
    services.follow_invalidations()
    ctx["services"] = services
    ctx["db"] = services.db
    log.info("worker.started", functions=[f.name for f in FUNCTIONS])


async def shutdown(ctx: queue.JobContext) -> None:
    services: Services | None = ctx.get("services")
    if services is not None:
        await services.close()
    log.info("worker.stopped")


def build_worker(
    settings: Settings,
    *,
    burst: bool = False,
    extra_functions: Sequence[queue.RegisteredJob] = (),
    handle_signals: bool = True,
) -> queue.WorkerProcess:
    """The arq worker for these settings; tests pass `burst=True` and their own functions."""
    if settings.redis_url is None:
        raise RuntimeError("REDIS_URL is unset: `pdbridge run` starts an embedded Redis")
    return queue.create_worker(
        redis_url=settings.redis_url,
        functions=[*FUNCTIONS, *extra_functions],
        cron_jobs=[
            queue.cron_job(maintenance.prune_storage, minute={17}, hour=None),
            queue.cron_job(maintenance.erase_due_persons, minute=None, hour=None),
            queue.cron_job(maintenance.sweep_stuck_deliveries, minute=None, hour=None),
            queue.cron_job(installations.reconcile_webhooks, minute={41}, hour=None),
            queue.cron_job(backfill.backfill, minute=set(range(2, 60, 5)), hour=None),
        ],
        on_startup=startup,
        on_shutdown=shutdown,
        burst=burst,
        handle_signals=handle_signals,
        ctx={"settings": settings},
    )

"""`POST /webhooks/pipedrive`: Pipedrive's own webhooks (v1 and v2), verified, recorded, queued.

Pipedrive bans a webhook after ten failed first attempts and drops events meanwhile, so this
answers 2xx for anything it has stored, fast, and leaves all work to the `pipedrive_event` job.
Non-2xx is kept for what really is one: bad credentials (401), a body that is not a Pipedrive
event (400), and a failure to store it (503, so that Pipedrive retries).
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers import error_response, services
from handlers.basic_auth import basic_credentials, matches
from service import ingest, queue
from service.logging import get_logger
from service.pipedrive.webhooks import WebhookPayloadError, parse_event
from service.store import installations

log = get_logger(__name__)

#: Compared against when the user is unknown, so an unknown user costs the same time.
_DUMMY_PASSWORD = "x" * 43


async def receive(request: Request) -> Response:
    svc = services(request)
    given = basic_credentials(request)
    inst = await installations.find_by_webhook_user(svc.db, given[0]) if given else None
    expected = (
        svc.crypto.decrypt(inst.webhook_password_encrypted)
        if inst is not None and inst.webhook_password_encrypted
        else _DUMMY_PASSWORD
    )
    if inst is None or not matches(given, inst.webhook_user or "", expected):
        log.warning("pipedrive_webhook.unauthorized", has_credentials=given is not None)
        return error_response(401, "UNAUTHORIZED", "webhook credentials do not match")
    try:
        event = parse_event(await request.body())
    except WebhookPayloadError as error:
        log.warning("pipedrive_webhook.invalid", installation=inst.key, reason=str(error))
        return error_response(400, "INVALID_PAYLOAD", str(error))
    if event.company_id != inst.company_id:
        log.warning(
            "pipedrive_webhook.company_mismatch",
            installation=inst.key,
            event_company=event.company_id,
        )
        return error_response(403, "FORBIDDEN", "event company does not match these credentials")
    if inst.status == "uninstalled":
        log.info("pipedrive_webhook.ignored", installation=inst.key, reason="uninstalled")
        return JSONResponse({"status": "ignored"})
    payload = {
        "installation_id": inst.id,
        "company_id": inst.company_id,
        "dedupe_key": event.dedupe_key,
        "event": event.as_job_payload(),
    }
    try:
        accepted = await ingest.accept(
            svc,
            source="pipedrive",
            dedupe_key=event.dedupe_key,
            job=queue.PIPEDRIVE_EVENT,
            payload=payload,
        )
    except (SQLAlchemyError, OSError) as error:
        log.error("pipedrive_webhook.not_stored", installation=inst.key, error=str(error))
        return error_response(503, "UNAVAILABLE", "the event could not be stored; retry later")
    log.info(
        "pipedrive_webhook.received",
        installation=inst.key,
        entity=event.entity,
        action=event.action,
        entity_id=event.entity_id,
        attempt=event.attempt,
        duplicate=not accepted,
    )
    return JSONResponse({"status": "accepted" if accepted else "duplicate"})


routes = [Route("/webhooks/pipedrive", receive, methods=["POST"])]

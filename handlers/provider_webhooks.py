"""`POST /webhooks/{provider}/{provider_channel_id}`: chat providers' webhooks.

Verify (401, or 403 where the provider's convention says so, and nothing recorded), split into
deliveries, record each with its dedupe key, queue a relay of its conversation, answer 2xx.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from handlers import error_response, services
from service import ingest
from service.logging import get_logger
from service.providers import PROVIDERS
from service.providers.base import InvalidWebhook
from service.store import channels

log = get_logger(__name__)

#: Providers whose convention answers a bad signature with 403 rather than 401.
_FORBIDDEN_ON_BAD_SIGNATURE = frozenset({"twilio"})


async def receive(request: Request) -> Response:
    svc = services(request)
    provider = request.path_params["provider"]
    provider_channel_id = request.path_params["provider_channel_id"]
    try:
        channel = await channels.get(svc.db, svc.crypto, provider_channel_id, include_deleted=True)
    except (SQLAlchemyError, OSError) as error:
        log.error("provider_webhook.store_unavailable", provider=provider, error=str(error))
        return error_response(503, "UNAVAILABLE", "try again later")
    if channel is not None and channel.status == "uninstalled" and channel.provider == provider:
        # The app was uninstalled: the provider may call until our unhook job reaches it (or
        # for ever, where the webhook is set by hand). Acknowledge so it stops retrying, and drop:
        # nothing is read, recorded or queued, so there is nothing to authenticate.
        log.info("provider_webhook.dropped", provider=provider, channel=provider_channel_id)
        return _acknowledge(provider)
    if channel is not None and channel.status != "active":
        channel = None
    if provider not in PROVIDERS or channel is None or channel.provider != provider:
        return error_response(404, "NOT_FOUND", "no such channel")
    adapter = svc.adapter(provider)
    body = await request.body()
    url = f"{svc.settings.base_url}{request.url.path}"
    if request.url.query:
        url += f"?{request.url.query}"
    if not adapter.verify(channel, request.headers, body, url):
        log.warning("provider_webhook.unauthorized", provider=provider, channel=provider_channel_id)
        status = 403 if provider in _FORBIDDEN_ON_BAD_SIGNATURE else 401
        return error_response(status, "UNAUTHORIZED", "webhook authentication failed")
    try:
        found = adapter.split(channel, body, request.headers.get("content-type", ""))
    except (InvalidWebhook, TypeError, KeyError, ValueError, AttributeError) as error:
        log.warning("provider_webhook.invalid", provider=provider, reason=str(error))
        return error_response(400, "INVALID_PAYLOAD", str(error))
    try:
        batch = [(channel, delivery) for delivery in found]
        if adapter.may_share_webhooks:
            for other in await channels.list_active(svc.db, svc.crypto):
                if other.id != channel.id and adapter.shares_webhooks(channel, other):
                    # their share of the body, cut by their own adapter view
                    content_type = request.headers.get("content-type", "")
                    batch += [
                        (other, d)
                        for d in adapter.split(other, body, content_type)
                        if d.conversation_id is not None
                    ]
        fresh = await ingest.accept_chat_deliveries(svc, batch)
    except (SQLAlchemyError, OSError) as error:
        log.error("provider_webhook.not_stored", provider=provider, error=str(error))
        return error_response(503, "UNAVAILABLE", "the update could not be stored; retry later")
    log.info(
        "provider_webhook.received",
        provider=provider,
        channel=provider_channel_id,
        deliveries=len(found),
        new=sum(fresh[: len(found)]),
    )
    return _acknowledge(provider)


def _acknowledge(provider: str) -> Response:
    if provider == "twilio":  # Twilio expects TwiML; an empty Response sends no reply
        return Response("<Response></Response>", media_type="text/xml")
    return Response(status_code=200)


async def handshake(request: Request) -> Response:
    """GET verification (Meta): echo the challenge when the verify token matches, else 403."""
    svc = services(request)
    provider = request.path_params["provider"]
    channel = await channels.get(svc.db, svc.crypto, request.path_params["provider_channel_id"])
    if provider not in PROVIDERS or channel is None or channel.provider != provider:
        return error_response(404, "NOT_FOUND", "no such channel")
    answer = svc.adapter(provider).handshake(channel, request.query_params)
    if answer is None:
        log.warning("provider_webhook.handshake_refused", provider=provider)
        return error_response(403, "FORBIDDEN", "verification failed")
    return PlainTextResponse(answer)


routes = [
    Route("/webhooks/{provider}/{provider_channel_id}", receive, methods=["POST"]),
    Route("/webhooks/{provider}/{provider_channel_id}", handshake, methods=["GET"]),
]

"""The operators' JSON API under `/admin`, behind `Authorization: Bearer $ADMIN_TOKEN`.

With no `ADMIN_TOKEN` configured the whole mount answers 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from handlers import as_id, data_response, error_response, services
from service import channel_lifecycle, replay, sinks
from service.context import Services
from service.crypto import constant_time_equals
from service.logging import get_logger
from service.models import Channel
from service.pipedrive.errors import PipedriveError
from service.store import channels, dead_letters, installations

log = get_logger(__name__)


class AdminGate:
    """Checks the bearer token before any admin route runs."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}" if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.expected is None:
            response: Response = error_response(404, "NOT_FOUND", "Not Found")
        else:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if constant_time_equals(given, self.expected.encode()):
                await self.app(scope, receive, send)
                return
            log.warning("admin.unauthorized", path=scope["path"])
            response = error_response(
                401,
                "UNAUTHORIZED",
                "a valid admin bearer token is required",
                **{"www-authenticate": "Bearer"},
            )
        await response(scope, receive, send)


async def list_dead_letters(request: Request) -> Response:
    pending_only = request.query_params.get("pending") in ("1", "true")
    try:
        limit = min(as_id(request.query_params.get("limit", "100")), 1000)
    except ValueError:
        return error_response(400, "INVALID_QUERY", "limit must be a whole number from 1")
    found = await dead_letters.list_all(
        services(request).db, limit=limit, pending_only=pending_only
    )
    return data_response([d.as_json() for d in found])


async def replay_dead_letter(request: Request) -> Response:
    try:
        dead_letter_id = as_id(request.path_params["id"])
    except ValueError:
        return error_response(404, "NOT_FOUND", "no such dead letter")
    svc = services(request)
    try:
        await replay.replay_one(svc.db, svc.queue, dead_letter_id)
    except replay.UnknownDeadLetter:
        return error_response(404, "NOT_FOUND", f"no dead letter {dead_letter_id}")
    return JSONResponse({"id": dead_letter_id, "status": "enqueued"}, status_code=202)


async def add_channel(request: Request) -> Response:
    """Store, register at Pipedrive, hook at the provider; 201 with the webhook URL."""
    svc = services(request)
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("not an object")
        provider, name = str(body["provider"]), str(body.get("name") or "").strip()
        credentials = body.get("credentials")
        if not name or not isinstance(credentials, dict):
            raise ValueError("name and credentials are required")
        sink, create_persons = body.get("sink"), body.get("create_persons")
        if sink is not None and sink not in sinks.SINKS:
            raise ValueError(f"sink must be one of {', '.join(sinks.SINKS)} (or null)")
        if create_persons is not None and not isinstance(create_persons, bool):
            raise ValueError("create_persons must be true, false or null")
        company_id = as_id(body["company_id"]) if body.get("company_id") is not None else None
        user_id = as_id(body["user_id"]) if body.get("user_id") is not None else None
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        return error_response(400, "INVALID_BODY", f"expected provider, name, credentials: {error}")
    try:
        channel = await channel_lifecycle.add(
            svc,
            provider=provider,
            name=name,
            credentials=credentials,
            company_id=company_id,
            user_id=user_id,
            sink=sink,
            create_persons=create_persons,
        )
    except channel_lifecycle.ChannelError as error:
        return error_response(error.status, error.code, error.message)
    return JSONResponse(_channel_json(svc, channel), status_code=201)


def _channel_json(svc: Services, channel: Channel) -> dict[str, Any]:
    """A channel as the admin API shows it: no credentials; the sink it writes to now."""
    shown = channel.as_json(channel_lifecycle.webhook_url(svc, channel))
    shown.update(sinks.describe(svc.settings, channel))
    return shown


async def list_channels(request: Request) -> Response:
    svc = services(request)
    found = await channels.list_active(svc.db, svc.crypto)
    return data_response([_channel_json(svc, c) for c in found])


async def update_channel(request: Request) -> Response:
    """`PATCH /admin/channels/{id}` with `{"sink": "notes"|"channels"|null}`: move a channel
    between sinks (null: follow PIPEDRIVE_SINK)."""
    svc = services(request)
    channel = await channels.get(svc.db, svc.crypto, request.path_params["provider_channel_id"])
    if channel is None:
        return error_response(404, "NOT_FOUND", "no such channel")
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or set(body) != {"sink"}:
        return error_response(400, "INVALID_BODY", 'expected {"sink": "channels"|"notes"|null}')
    try:
        updated = await channel_lifecycle.set_sink(svc, channel, body["sink"])
    except channel_lifecycle.ChannelError as error:
        return error_response(error.status, error.code, error.message)
    return JSONResponse(_channel_json(svc, updated))


async def remove_channel(request: Request) -> Response:
    svc = services(request)
    channel = await channels.get(svc.db, svc.crypto, request.path_params["provider_channel_id"])
    if channel is None:
        return error_response(404, "NOT_FOUND", "no such channel")
    try:
        await channel_lifecycle.remove(svc, channel, at_pipedrive=True)
    except PipedriveError as error:
        return error_response(502, "PIPEDRIVE_UNAVAILABLE", str(error))
    return JSONResponse({"provider_channel_id": channel.provider_channel_id, "status": "deleted"})


async def delete_conversation(request: Request) -> Response:
    svc = services(request)
    channel = await channels.get(svc.db, svc.crypto, request.path_params["provider_channel_id"])
    if channel is None:
        return error_response(404, "NOT_FOUND", "no such channel")
    try:
        await channel_lifecycle.delete_conversation(
            svc, channel, request.path_params["conversation_id"]
        )
    except channel_lifecycle.ChannelError as error:
        return error_response(error.status, error.code, error.message)
    return JSONResponse({"status": "deleted"})


async def list_installations(request: Request) -> Response:
    """Each installation with its company's Pipedrive API spend today (`api_usage_today`:
    tokens, calls, and the daily budget and what is left of it, null when unknown)."""
    svc = services(request)
    found = await installations.list_all(svc.db)
    usage = await svc.pipedrive.ledger.usage(svc.db, {i.company_id for i in found})
    return data_response(
        [{**i.as_json(), "api_usage_today": usage[i.company_id].as_json()} for i in found]
    )


def admin_app(token: str | None) -> ASGIApp:
    router = Router(
        routes=[
            Route("/installations", list_installations, methods=["GET"]),
            Route("/channels", add_channel, methods=["POST"]),
            Route("/channels", list_channels, methods=["GET"]),
            Route("/channels/{provider_channel_id}", remove_channel, methods=["DELETE"]),
            Route("/channels/{provider_channel_id}", update_channel, methods=["PATCH"]),
            Route(
                "/channels/{provider_channel_id}/conversations/{conversation_id}",
                delete_conversation,
                methods=["DELETE"],
            ),
            Route("/dead-letters", list_dead_letters, methods=["GET"]),
            Route("/dead-letters/{id}/replay", replay_dead_letter, methods=["POST"]),
        ]
    )
    return AdminGate(router, token)

"""The manifest endpoints Pipedrive calls (messaging contract §3), under /pipedrive/channels.

Every call carries Basic `client_id:client_secret`, checked in constant time. Errors use the
extension's own envelope, `{"success": false, "data": {"code", "message"}}`, which Pipedrive
turns into friendly notices (not the `{"error": ...}` of the admin API). The GETs read the store
only; postMessage records the message and queues its delivery, answering before the provider does.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers import services
from handlers.basic_auth import basic_credentials, matches
from service import outbox, queue
from service.context import Services
from service.logging import get_logger
from service.media import (
    CHUNK_BYTES,
    MediaTooLarge,
    clean_file_name,
    new_media_key,
    normalize_mime_type,
)
from service.middleware import BodyTooLarge
from service.models import Channel, Conversation, Message, StoredAttachment
from service.pipedrive import shapes
from service.pipedrive.manifest import PREFIX
from service.providers.base import ProviderError
from service.store import channels, conversations, messages
from service.store.schema import utcnow

log = get_logger(__name__)

DEFAULT_LIMIT = 30
MAX_LIMIT = 100
MAX_FILES = 10
MAX_TEXT = 20_000
#: Our ids (channel, conversation, message, sender) fit the 200-character columns.
MAX_ID = 200

Handler = Callable[[Request, Services, Channel], Awaitable[Response]]


class ManifestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def envelope_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"success": False, "data": {"code": code, "message": message}}, status_code=status
    )


def _authorized(request: Request, svc: Services) -> bool:
    client_id = svc.settings.pipedrive_client_id
    secret = svc.settings.pipedrive_client_secret
    if not client_id or secret is None:
        return False
    return matches(basic_credentials(request), client_id, secret.get_secret_value())


def endpoint(
    handler: Handler, *, channel_required: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate, find the channel, run, and turn ManifestError into the envelope."""

    async def run(request: Request) -> Response:
        svc = services(request)
        if not _authorized(request, svc):
            log.warning("manifest.unauthorized", path_template=handler.__name__)
            return envelope_error(401, "UNAUTHORIZED", "Basic client credentials required")
        if any("\x00" in str(v) or len(str(v)) > MAX_ID for v in request.path_params.values()):
            return envelope_error(404, "NOT_FOUND", "no such resource")  # none of ours looks so
        provider_channel_id = request.path_params["provider_channel_id"]
        channel = await channels.get(svc.db, svc.crypto, provider_channel_id)
        if channel is None and channel_required:
            return envelope_error(404, "NOT_FOUND", "channel not found")
        try:
            return await handler(request, svc, channel)  # type: ignore[arg-type]
        except ManifestError as error:
            return envelope_error(error.status, error.code, str(error))
        except (RedisError, SQLAlchemyError, OSError) as error:
            log.error("manifest.unavailable", endpoint=handler.__name__, error=str(error))
            return envelope_error(503, "UNAVAILABLE", "temporarily unavailable; try again")

    run.__name__ = handler.__name__
    return run


# --- paging --------------------------------------------------------------------------------


def _limit(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ManifestError(
            400, "INVALID_BODY", f"{name} must be a whole number from 1 to {MAX_LIMIT}"
        )
    return int(raw)


def _encode(kind: str, value: list[Any]) -> str:
    return kind + base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _decode(kind: str, cursor: str) -> list[Any]:
    try:
        if not cursor.startswith(kind):
            raise ValueError(cursor)
        raw = cursor[len(kind) :]
        value = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(value, list) or not value:
            raise ValueError(cursor)
        return value
    except (ValueError, RecursionError):
        raise ManifestError(400, "INVALID_BODY", "the cursor is not one we gave out") from None


def _conversation_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        at, last_id = _decode("c", cursor)
        when = datetime.fromisoformat(str(at))
        if when.tzinfo is None:  # ours always carry their zone
            raise ValueError(cursor)
        return when, _row_id(last_id)
    except (ValueError, TypeError, OverflowError):
        raise ManifestError(400, "INVALID_BODY", "the cursor is not one we gave out") from None


def _row_id(value: Any) -> int:
    """A row id from a cursor: a whole number the database can hold."""
    number = int(value)
    if not 0 < number < 2**63:
        raise ValueError(value)
    return number


def _message_cursor(cursor: str) -> int:
    try:
        return _row_id(_decode("m", cursor)[0])
    except (ValueError, TypeError, OverflowError):
        raise ManifestError(400, "INVALID_BODY", "the cursor is not one we gave out") from None


async def _messages_page(
    svc: Services, conversation: Conversation, limit: int, before: int | None
) -> tuple[list[Message], str | None]:
    page = await messages.page(svc.db, conversation.id, limit=limit + 1, before_id=before)
    if len(page) > limit:
        page = page[1:]
        return page, _encode("m", [page[0].id])
    return page, None


# --- endpoints ------------------------------------------------------------------------------


async def get_conversations(request: Request, svc: Services, channel: Channel) -> Response:
    """Newest conversations first, each with its latest messages; `after` pages on."""
    limit = _limit(request, "conversations_limit")
    messages_limit = _limit(request, "messages_limit")
    after = request.query_params.get("after")
    position = None
    if after:
        position = _conversation_cursor(after)
    found = await conversations.page(svc.db, channel.id, limit=limit + 1, after=position)
    data = []
    for conversation in found[:limit]:
        page, cursor = await _messages_page(svc, conversation, messages_limit, None)
        data.append(shapes.conversation(svc, conversation, page, cursor))
    body: dict[str, Any] = {"success": True, "data": data}
    if len(found) > limit:
        last = found[limit - 1]
        body["additional_data"] = {
            "after": _encode("c", [last.last_activity_at.isoformat(), last.id])
        }
    return JSONResponse(body)


async def _conversation(svc: Services, channel: Channel, conversation_id: str) -> Conversation:
    conversation = await conversations.get(svc.db, channel.id, conversation_id)
    if conversation is None:
        raise ManifestError(404, "NOT_FOUND", "conversation not found")
    return conversation


async def get_conversation(request: Request, svc: Services, channel: Channel) -> Response:
    """One conversation; `after` (our next_messages_cursor) pages back through older messages."""
    conversation = await _conversation(svc, channel, request.path_params["conversation_id"])
    limit = _limit(request, "messages_limit")
    after = request.query_params.get("after")
    before = _message_cursor(after) if after else None
    page, cursor = await _messages_page(svc, conversation, limit, before)
    body: dict[str, Any] = {
        "success": True,
        "data": shapes.conversation(svc, conversation, page, cursor),
    }
    if cursor:
        body["additional_data"] = {"after": cursor}
    return JSONResponse(body)


async def get_message(request: Request, svc: Services, channel: Channel) -> Response:
    """A bare message (no envelope, as documented), with freshly signed attachment links."""
    message = await messages.get(svc.db, channel.id, request.path_params["message_id"])
    conversation_id = request.path_params.get("conversation_id")
    if message is not None and conversation_id is not None:
        conversation = await conversations.get(svc.db, channel.id, conversation_id)
        if conversation is None or conversation.id != message.conversation_id:
            message = None
    if message is None:
        raise ManifestError(404, "NOT_FOUND", "message not found")
    return JSONResponse(shapes.message(svc, message))


async def get_sender(request: Request, svc: Services, channel: Channel) -> Response:
    person = await conversations.find_participant(
        svc.db, channel.id, request.path_params["sender_id"]
    )
    if person is None:
        raise ManifestError(404, "NOT_FOUND", "sender not found")
    return JSONResponse(
        {
            "success": True,
            "data": {
                "id": person.external_id,
                "name": person.name,
                "avatar_url": person.avatar_url or "",
            },
        }
    )


async def get_templates(request: Request, svc: Services, channel: Channel) -> Response:
    """Approved templates (WhatsApp only; other providers answer an empty list)."""
    try:
        found = await svc.coordination.cached_templates(
            channel.id, lambda: svc.adapter(channel.provider).list_templates(channel)
        )
    except ProviderError as error:
        log.warning("templates.unavailable", channel=channel.provider_channel_id, error=str(error))
        raise ManifestError(503, "UNAVAILABLE", "the provider did not list its templates") from None
    return JSONResponse({"success": True, "data": {"templates": found}})


def _recipients(form: Any) -> list[str]:
    """Every documented spelling: `recipientIds[]`, `recipientIds`, `recipientIds[N]`, each
    possibly comma-joined."""
    values: list[str] = []
    for key, value in form.multi_items():
        if isinstance(value, str) and (key == "recipientIds" or key.startswith("recipientIds[")):
            values.extend(v.strip() for v in value.split(",") if v.strip())
    return values


async def post_message(request: Request, svc: Services, channel: Channel) -> Response:
    """Record the agent's message and queue its delivery; answer with our stable id at once."""
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=100)
    except BodyTooLarge:
        raise  # the middleware answers 413
    except Exception as error:  # noqa: BLE001 -- python-multipart's errors are many; all are 400
        raise ManifestError(400, "INVALID_BODY", f"unreadable multipart body: {error}") from None
    try:
        text = form.get("message")
        conversation_id = form.get("conversationId")
        sender_id = form.get("senderId")
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ManifestError(400, "INVALID_BODY", "conversationId is required")
        nul = [k for k, v in form.multi_items() if isinstance(v, str) and "\x00" in v]
        if nul:  # refused before any file is stored: nothing is left behind
            raise ManifestError(400, "INVALID_BODY", f"NUL characters are not allowed in {nul}")
        text = text if isinstance(text, str) else ""
        if not text and not uploads:
            raise ManifestError(400, "INVALID_BODY", "a message needs text or files")
        if len(text) > MAX_TEXT:
            raise ManifestError(
                400, "INVALID_BODY", f"message is longer than {MAX_TEXT} characters"
            )
        conversation = await _conversation(svc, channel, conversation_id)
        if isinstance(sender_id, str) and sender_id and sender_id != channel.source_user_id:
            raise ManifestError(400, "INVALID_BODY", "senderId is not this channel's source user")
        end_users = {p.external_id for p in conversation.participants if p.role == "end_user"}
        unknown = [r for r in _recipients(form) if r not in end_users]
        if unknown:
            raise ManifestError(
                400, "INVALID_BODY", f"recipients not in the conversation: {unknown}"
            )
        attachments: list[StoredAttachment] = []
        external_id = f"pdb:{uuid.uuid4().hex}"
        for index, upload in enumerate(uploads):
            mime = normalize_mime_type(upload.content_type)
            key = new_media_key(mime)
            try:  # streamed into the store, chunk by chunk: never held whole
                size = await svc.media.put_stream(key, _chunks_of(upload))
            except MediaTooLarge:
                for stored in attachments:  # the message is refused: keep none of its files
                    await svc.media.delete(stored.key)
                raise ManifestError(
                    400, "INVALID_BODY", f"file {upload.filename!r} is over 20 MB"
                ) from None
            attachments.append(
                StoredAttachment(
                    id=f"{external_id}:a{index}",
                    key=key,
                    mime_type=mime,
                    name=clean_file_name(upload.filename) or f"file{index}",
                    size=size,
                )
            )
    finally:
        await form.close()
    await messages.insert_many(
        svc.db,
        [
            messages.NewMessage(
                channel_id=channel.id,
                conversation_id=conversation.id,
                external_id=external_id,
                provider_message_id=None,
                direction="out",
                sender_id=channel.source_user_id,
                text=text,
                attachments=attachments,
                status="pending",
                created_at=utcnow(),
            )
        ],
    )
    # Recorded: the answer is success whatever Redis does now (the sweeper covers the outbox).
    try:
        await outbox.schedule(svc, channel, conversation.id)
    except (RedisError, OSError) as error:
        svc.metrics.queue_unavailable()
        log.warning(
            "post_message.not_queued",
            message_id=external_id,
            error=str(error),
            action="recorded; the sweeper sends it once Redis answers",
        )
    log.info("post_message.accepted", channel=channel.provider_channel_id, message_id=external_id)
    return JSONResponse({"success": True, "data": {"id": external_id}})


async def delete_channel(request: Request, svc: Services, channel: Channel | None) -> Response:
    """Pipedrive removed the channel: drop it here and at the provider (idempotent)."""
    if channel is not None and await channels.mark_deleted(svc.db, channel.id):
        await svc.queue.enqueue(
            queue.REMOVE_PROVIDER_WEBHOOK,
            {"channel_id": channel.id, "channel": channel.provider_channel_id},
        )
        log.info("channel.deleted_by_pipedrive", channel=channel.provider_channel_id)
    return JSONResponse({"success": True})


_C = f"{PREFIX}/{{provider_channel_id}}"
routes = [
    Route(f"{_C}/conversations", endpoint(get_conversations), methods=["GET"]),
    Route(f"{_C}/conversations/{{conversation_id}}", endpoint(get_conversation), methods=["GET"]),
    Route(
        f"{_C}/conversations/{{conversation_id}}/messages/{{message_id}}",
        endpoint(get_message),
        methods=["GET"],
    ),
    Route(f"{_C}/messages/{{message_id}}", endpoint(get_message), methods=["GET"]),
    Route(f"{_C}/senders/{{sender_id}}", endpoint(get_sender), methods=["GET"]),
    Route(f"{_C}/templates", endpoint(get_templates), methods=["GET"]),
    Route(f"{_C}/messages", endpoint(post_message), methods=["POST"]),
    Route(_C, endpoint(delete_channel, channel_required=False), methods=["DELETE"]),
]


async def _chunks_of(upload: UploadFile) -> AsyncIterator[bytes]:
    """An uploaded file (spooled to disk by the form parser when large), chunk by chunk."""
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk

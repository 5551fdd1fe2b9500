"""Telegram Bot API (chat-providers.md §2).

Webhooks carry no signature: the secret we register with `setWebhook` comes back in
`X-Telegram-Bot-Api-Secret-Token`, checked in constant time. One update is one delivery, deduped
on `update_id`. Private chats only: Pipedrive conversations have exactly two parties, so group,
supergroup and channel traffic is acknowledged and not relayed. Every API URL contains the bot
token, so no URL of this module is ever logged or handed to Pipedrive.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2

from service.crypto import constant_time_equals
from service.logging import get_logger
from service.models import Channel, Participant
from service.providers.base import (
    Delivery,
    Event,
    InboundMessage,
    InvalidCredentials,
    InvalidWebhook,
    MediaRef,
    OutgoingFile,
    ProviderAuthError,
    ProviderPermanent,
    ProviderTransient,
    RecipientUnreachable,
    SendProgress,
)

log = get_logger(__name__)

SECRET_HEADER = "x-telegram-bot-api-secret-token"  # noqa: S105 -- a header name, not a secret
MAX_TEXT = 4096
MAX_CAPTION = 1024
#: The cloud Bot API serves files up to 20 MB (§2.5).
MAX_DOWNLOAD = 20 * 1024 * 1024
PHOTO_UPLOAD_LIMIT = 10 * 1024 * 1024
ALLOWED_UPDATES = ["message", "edited_message", "my_chat_member"]
#: What a message can carry, in the order we look for it, with how to describe it as a file.
_FILE_KINDS = ("document", "video", "audio", "voice", "video_note", "animation")


class TelegramProvider:
    """The Telegram adapter (satisfies `ProviderAdapter`)."""

    name = "telegram"
    pipedrive_provider_type = "other"
    template_support = False
    reply_window: timedelta | None = None
    may_share_webhooks = False
    sends_files_by_url = False

    def __init__(self, api_url: str, http: httpx2.AsyncClient) -> None:
        self.api_url = api_url
        self.http = http

    # --- credentials and webhook registration ---------------------------------------------

    def check_credentials(self, credentials: Mapping[str, Any]) -> dict[str, Any]:
        token = credentials.get("bot_token")
        if not isinstance(token, str) or ":" not in token or not token.split(":")[0].isdigit():
            raise InvalidCredentials("telegram needs credentials.bot_token like '123456:ABC...'")
        return {"bot_token": token}

    async def describe_account(self, credentials: Mapping[str, Any]) -> tuple[str, str]:
        try:
            me = await self._call(str(credentials["bot_token"]), "getMe", {})
        except ProviderAuthError:
            raise InvalidCredentials("Telegram refused the bot token") from None
        return str(me["id"]), str(me.get("username") or me.get("first_name") or "Telegram bot")

    def new_webhook_secret(self) -> str | None:
        return secrets.token_urlsafe(48)[:64]

    async def register_webhook(self, channel: Channel, url: str) -> None:
        await self._call(
            self._token(channel),
            "setWebhook",
            {
                "url": url,
                "secret_token": channel.webhook_secret,
                "allowed_updates": ALLOWED_UPDATES,
                "max_connections": 40,
            },
        )

    async def remove_webhook(self, channel: Channel) -> None:
        await self._call(self._token(channel), "deleteWebhook", {"drop_pending_updates": False})

    def handshake(self, channel: Channel, params: Mapping[str, str]) -> str | None:
        return None  # Telegram verifies nothing by GET

    async def list_templates(self, channel: Channel) -> list[dict[str, str]]:
        return []  # Pipedrive supports templates for WhatsApp only

    def reply_window_for(self, channel: Channel) -> timedelta | None:
        return self.reply_window

    def shares_webhooks(self, channel: Channel, other: Channel) -> bool:
        return False  # every channel has its own webhook URL

    async def backfill(self, channel: Channel, since: datetime) -> list[Delivery]:
        # getUpdates does not work while a webhook is set, and Telegram itself keeps undelivered
        # updates for 24 h and redelivers them: nothing to fetch.
        return []

    # --- inbound ----------------------------------------------------------------------------

    def verify(self, channel: Channel, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        given = headers.get(SECRET_HEADER, "")
        return channel.webhook_secret is not None and constant_time_equals(
            given, channel.webhook_secret
        )

    def split(self, channel: Channel, body: bytes, content_type: str) -> list[Delivery]:
        try:
            update = json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidWebhook("body is not JSON") from None
        if not isinstance(update, dict):
            raise InvalidWebhook("an update is a JSON object")
        update_id = update.get("update_id")
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            raise InvalidWebhook("update_id must be an integer")
        message = update.get("message") or update.get("edited_message")
        conversation = None
        if isinstance(message, dict) and _is_private(message):
            conversation = self._conversation_id(channel, message)
        return [
            Delivery(
                dedupe_key=f"{channel.provider_channel_id}:{update_id}",
                conversation_id=conversation,
                payload=update,
            )
        ]

    def parse(self, channel: Channel, payload: dict[str, Any]) -> list[Event]:
        edited = "message" not in payload and "edited_message" in payload
        message = payload.get("message") or payload.get("edited_message")
        if not isinstance(message, dict) or not _is_private(message):
            return []
        chat = message["chat"]
        sender = message.get("from") or {}
        message_id = int(message["message_id"])
        text, media = _content(message)
        external_id = f"tg:{channel.account_id}:{chat['id']}:{message_id}"
        when = int(message.get("date") or 0)
        if edited:
            edit_date = int(message.get("edit_date") or when)
            external_id = f"{external_id}:e{edit_date}"
            text = f"(edited) {text}"
            when = edit_date
        username = chat.get("username") or sender.get("username")
        return [
            InboundMessage(
                conversation_id=self._conversation_id(channel, message),
                address=str(chat["id"]),
                message_id=external_id,
                provider_message_id=str(message_id),
                sender=Participant(
                    external_id=f"tg:{sender.get('id', chat['id'])}",
                    name=_display_name(sender or chat),
                    role="end_user",
                ),
                text=text,
                created_at=datetime.fromtimestamp(when, UTC),
                media=media,
                link=f"https://t.me/{username}" if username else "",
            )
        ]

    def _conversation_id(self, channel: Channel, message: Mapping[str, Any]) -> str:
        conversation = f"tg:{channel.account_id}:{message['chat']['id']}"
        if message.get("is_topic_message") and message.get("message_thread_id"):
            conversation += f":{message['message_thread_id']}"
        return conversation

    async def fetch_media(self, channel: Channel, media: MediaRef) -> bytes:
        token = self._token(channel)
        info = await self._call(token, "getFile", {"file_id": media.ref})
        if int(info.get("file_size") or 0) > MAX_DOWNLOAD or "file_path" not in info:
            raise ProviderPermanent(f"file {media.name} is over Telegram's 20 MB download limit")
        try:
            response = await self.http.get(f"{self.api_url}/file/bot{token}/{info['file_path']}")
        except httpx2.TransportError as error:
            raise ProviderTransient(
                f"Telegram file download failed: {type(error).__name__}"
            ) from None
        if response.status_code != 200:
            raise _error(response.status_code, {"description": "file download failed"})
        return response.content

    # --- outbound ---------------------------------------------------------------------------

    async def send(
        self,
        channel: Channel,
        address: str,
        text: str,
        files: Sequence[OutgoingFile],
        progress: SendProgress | None = None,
    ) -> str:
        """Text alone goes with sendMessage; files each with sendPhoto or sendDocument, the text
        as the first file's caption when it fits, else as a message of its own first."""
        progress = progress or SendProgress()
        token = self._token(channel)
        chat_id = int(address) if address.lstrip("-").isdigit() else address
        caption: str | None = text if files and len(text) <= MAX_CAPTION else None
        sends: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        if text and caption is None:
            sends += [
                ("sendMessage", {"chat_id": chat_id, "text": c}, None)
                for c in _chunks(text, MAX_TEXT)
            ]
        for index, file in enumerate(files):
            photo = (
                file.mime_type in ("image/jpeg", "image/png")
                and len(file.content) < PHOTO_UPLOAD_LIMIT
            )
            method, field = ("sendPhoto", "photo") if photo else ("sendDocument", "document")
            form: dict[str, Any] = {"chat_id": str(chat_id)}
            if index == 0 and caption:
                form["caption"] = caption
            sends.append((method, form, {field: (file.name, file.content, file.mime_type)}))
        if not sends:
            raise ProviderPermanent("nothing to send: the message has no text and no files")
        ids = [
            await progress.part(index, functools.partial(self._send_one, token, *call))
            for index, call in enumerate(sends)
        ]
        return ids[0]

    async def _send_one(
        self, token: str, method: str, params: dict[str, Any], files: dict[str, Any] | None
    ) -> str:
        sent = await self._call(token, method, params, files=files)
        return str(sent["message_id"])

    # --- the HTTP call ----------------------------------------------------------------------

    def _token(self, channel: Channel) -> str:
        return str(channel.credentials["bot_token"])

    async def _call(
        self,
        token: str,
        method: str,
        params: dict[str, Any],
        *,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> Any:
        url = f"{self.api_url}/bot{token}/{method}"
        try:
            if files:
                response = await self.http.post(url, data=params, files=files)
            else:
                response = await self.http.post(url, json=params)
        except httpx2.TransportError as error:
            # The exception text may contain the URL, and with it the token: name the type only.
            unsent = isinstance(error, (httpx2.ConnectError, httpx2.ConnectTimeout))
            raise ProviderTransient(
                f"Telegram {method}: {type(error).__name__}", maybe_delivered=not unsent
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        log.info("telegram.call", method=method, status=response.status_code)
        if response.status_code == 200 and isinstance(body, dict) and body.get("ok"):
            return body.get("result")
        raise _error(response.status_code, body if isinstance(body, dict) else {}, method)


def _error(status: int, body: Mapping[str, Any], method: str = "") -> Exception:
    """Telegram's answer mapped onto the provider error tree (python-telegram-bot's scheme)."""
    description = str(body.get("description") or f"HTTP {status}")
    parameters = body.get("parameters") or {}
    message = f"Telegram {method}: {description}".strip()
    if isinstance(parameters, dict) and "retry_after" in parameters:
        return ProviderTransient(message, retry_after=float(parameters["retry_after"]))
    if status == 403:
        return RecipientUnreachable(message)
    if status in (401, 404):
        return ProviderAuthError(message)
    if status == 429:
        return ProviderTransient(message)
    if status >= 500:
        return ProviderTransient(message, maybe_delivered=True)
    return ProviderPermanent(message)


def _is_private(message: Mapping[str, Any]) -> bool:
    chat = message.get("chat")
    if not isinstance(chat, dict) or "id" not in chat or "message_id" not in message:
        return False
    # Older captures leave out `type`; a private chat's id is the user's (positive).
    kind = chat.get("type")
    return kind == "private" or (kind is None and int(chat["id"]) > 0)


def _display_name(person: Mapping[str, Any]) -> str:
    name = " ".join(str(p) for p in (person.get("first_name"), person.get("last_name")) if p)
    if name:
        return name
    if person.get("username"):
        return f"@{person['username']}"
    return str(person.get("title") or "Telegram user")


def _content(message: Mapping[str, Any]) -> tuple[str, tuple[MediaRef, ...]]:
    """The text Pipedrive shows and the files to re-host, for every kind we relay."""
    text = str(message.get("text") or message.get("caption") or "")
    if message.get("photo"):
        sizes = [p for p in message["photo"] if isinstance(p, dict) and "file_id" in p]
        best = max(sizes, key=lambda p: int(p.get("width", 0)) * int(p.get("height", 0)))
        name = f"photo_{best.get('file_unique_id', best['file_id'])}.jpg"
        return text, (MediaRef(best["file_id"], "image/jpeg", name, best.get("file_size")),)
    for kind in _FILE_KINDS:
        item = message.get(kind)
        if isinstance(item, dict) and "file_id" in item:
            mime = str(item.get("mime_type") or _DEFAULT_MIME[kind])
            name = str(item.get("file_name") or f"{kind}_{item.get('file_unique_id', 'file')}")
            return text, (MediaRef(item["file_id"], mime, name, item.get("file_size")),)
    sticker = message.get("sticker")
    if isinstance(sticker, dict):
        return f"[sticker {sticker.get('emoji', '')}]".replace(" ]", "]"), ()
    contact = message.get("contact")
    if isinstance(contact, dict):
        who = " ".join(str(contact.get(k)) for k in ("first_name", "last_name") if contact.get(k))
        return f"[contact] {who} {contact.get('phone_number', '')}".strip(), ()
    location = message.get("venue", {}).get("location") or message.get("location")
    if isinstance(location, dict):
        lat, lon = location.get("latitude"), location.get("longitude")
        title = message.get("venue", {}).get("title", "")
        return f"[location] {title} https://maps.google.com/?q={lat},{lon}".replace("  ", " "), ()
    if "dice" in message:
        return f"[dice {message['dice'].get('emoji', '')} {message['dice'].get('value', '')}]", ()
    return text or "[unsupported message]", ()


_DEFAULT_MIME = {
    "document": "application/octet-stream",
    "video": "video/mp4",
    "audio": "audio/mpeg",
    "voice": "audio/ogg",
    "video_note": "video/mp4",
    "animation": "video/mp4",
}


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]

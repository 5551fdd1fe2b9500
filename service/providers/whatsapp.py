"""WhatsApp Business Cloud API, Meta's Graph API (chat-providers.md §3).

Webhooks: Meta checks the callback URL once with a GET (`hub.challenge` is echoed when
`hub.verify_token` matches the channel's `verify_token`) and signs every POST with
`X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body with the app secret>`. One POST may
batch several entries, changes, messages and statuses: each message and each status is a
delivery of its own, deduped on its wamid (a status on wamid and status, §1.3), and its payload
carries the message with its `contacts` entry and `metadata`, so `parse` needs nothing else.

Customers are keyed on `wa_id`, or on the business-scoped user id (BSUID, `user_id`) when Meta
leaves the phone number out (§3.4): conversation `wa:{phone_number_id}:{key}`, sender `wa:{key}`,
and the key is also the address replies are sent to.

Acknowledged and not relayed (a delivery without a conversation): changes of other fields
(template status updates, ...), values that only carry `errors`, changes for another phone
number of the same Meta app (one callback URL serves the whole app; relaying them here would
answer from the wrong number), `system` messages (`user_changed_number`: the new number starts a
conversation of its own), group messages and group statuses (a Pipedrive conversation has two
parties, and we only ever send to individuals), and statuses other than sent, delivered, read
and failed. A customer message of a kind we cannot show is relayed as a short description
("[unsupported message]") so the agent knows something arrived.

Edits (`type: edit`) become a new message "(edited) ..." with id `{original wamid}:e{timestamp}`;
revoked messages (`type: revoke`) become "(message deleted)" with id `{original wamid}:deleted`,
so the agent sees that the customer took a message back (Pipedrive offers no way to change or
remove a message it has). Both are deduped on their own wamid plus a suffix, so that a webhook
which reuses the original wamid is not mistaken for a redelivery of the original.

Media URLs need the bearer token and expire within minutes; they are fetched only from Meta's
media hosts (`check_fetch_url`), and neither URLs nor tokens appear in logs or error texts.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import mimetypes
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx2

from service.crypto import constant_time_equals
from service.logging import get_logger
from service.media import clean_file_name
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
    StatusEvent,
)
from service.providers.urls import UntrustedURL, check_fetch_url, host_of

log = get_logger(__name__)

SIGNATURE_HEADER = "x-hub-signature-256"
REQUIRED_CREDENTIALS = ("phone_number_id", "access_token", "app_secret", "verify_token", "waba_id")
MAX_TEXT = 4096
MAX_CAPTION = 1024
#: Files larger than this are not downloaded (the shared layer keeps no bigger file either).
MAX_DOWNLOAD = 20 * 1024 * 1024
MAX_TEMPLATE_PAGES = 10
#: Where Meta serves media from (§3.9); the Graph host itself is added per instance.
MEDIA_HOSTS = ("lookaside.fbsbx.com", "*.fbcdn.net", "*.whatsapp.net")
#: Upload limits per kind (§3.6 [P]); a file over its kind's limit is sent as a document.
UPLOAD_LIMITS = {
    "image": 5 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "audio": 16 * 1024 * 1024,
    "document": 100 * 1024 * 1024,
}
_KIND_BY_MIME = {
    "image/jpeg": "image",
    "image/png": "image",
    "video/mp4": "video",
    "video/3gpp": "video",
    "audio/aac": "audio",
    "audio/amr": "audio",
    "audio/mpeg": "audio",
    "audio/mp4": "audio",
    "audio/ogg": "audio",
}
#: Kinds that take a caption (audio does not).
_CAPTIONED = frozenset({"image", "video", "document"})
_MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
_DEFAULT_MIME = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg",
    "document": "application/octet-stream",
    "sticker": "image/webp",
}
#: Extensions where `mimetypes` has none or an unusual one.
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "audio/ogg": ".ogg",
    "audio/amr": ".amr",
    "video/3gpp": ".3gp",
    "audio/mpeg": ".mp3",
}
STATUSES = frozenset({"sent", "delivered", "read", "failed"})
#: Message types that are not a customer writing to us: acknowledged only.
_NOT_RELAYED_TYPES = frozenset({"system", "request_welcome"})
_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")

# Graph error codes (§3.10). The code decides, never the text.
RE_ENGAGEMENT = 131047
#: The customer cannot be reached by this message: undeliverable, experiment, opted out.
_UNREACHABLE_CODES = frozenset({131026, 131021, 131049, 131050, 130472})
#: Throughput and call-rate limits, and "try again" failures: worth another try later.
_RETRY_CODES = frozenset({1, 2, 4, 17, 32, 613, 80007, 130429, 131000, 131056})
#: The token is refused or lacks a permission (3, 10 and 200-299 are permission errors).
_AUTH_CODES = frozenset({0, 3, 10, 190})


class UntrustedMediaURL(UntrustedURL, ProviderPermanent):
    """Meta named a media URL on a host it does not serve files from: refused, never fetched.

    Both an `UntrustedURL` and a `ProviderPermanent`, so the shared layer treats the file as
    unavailable (named in the message text) instead of failing the whole delivery."""


class WhatsAppProvider:
    """The WhatsApp Cloud API adapter (satisfies `ProviderAdapter`)."""

    name = "whatsapp"
    pipedrive_provider_type = "whatsapp"
    template_support = True
    reply_window: timedelta | None = timedelta(hours=24)
    may_share_webhooks = True
    sends_files_by_url = False

    def __init__(self, graph_url: str, http: httpx2.AsyncClient) -> None:
        self.graph_url = graph_url.rstrip("/")
        self.http = http
        self.graph_host = host_of(self.graph_url)
        self.media_hosts = (*MEDIA_HOSTS, self.graph_host)

    # --- credentials and webhook registration ---------------------------------------------

    def check_credentials(self, credentials: Mapping[str, Any]) -> dict[str, Any]:
        missing = [
            key
            for key in REQUIRED_CREDENTIALS
            if not isinstance(credentials.get(key), str) or not credentials[key].strip()
        ]
        if missing:
            raise InvalidCredentials(
                f"whatsapp needs credentials.{', credentials.'.join(missing)} (strings)"
            )
        found = {key: str(credentials[key]).strip() for key in REQUIRED_CREDENTIALS}
        not_ids = [key for key in ("phone_number_id", "waba_id") if not found[key].isdigit()]
        if not_ids:
            raise InvalidCredentials(
                f"whatsapp credentials.{', credentials.'.join(not_ids)} must be numeric ids"
            )
        return found

    async def describe_account(self, credentials: Mapping[str, Any]) -> tuple[str, str]:
        phone_number_id = str(credentials["phone_number_id"])
        try:
            info = await self._call(
                str(credentials["access_token"]),
                "GET",
                f"{self.graph_url}/{phone_number_id}",
                what="phone number lookup",
                params={"fields": "display_phone_number,verified_name"},
            )
        except ProviderAuthError:
            raise InvalidCredentials("WhatsApp refused the access token") from None
        except ProviderPermanent as error:
            raise InvalidCredentials(f"WhatsApp refused the phone_number_id: {error}") from None
        name = info.get("verified_name") or info.get("display_phone_number") or "WhatsApp"
        return phone_number_id, str(name)

    def new_webhook_secret(self) -> str | None:
        return None  # Meta checks the verify_token and signs with the app secret

    async def register_webhook(self, channel: Channel, url: str) -> None:
        log.info(
            "whatsapp.webhook_manual",
            channel=channel.provider_channel_id,
            note="set this callback URL and the channel's verify_token in the Meta app "
            "dashboard (WhatsApp > Configuration) and subscribe the `messages` field",
            url=url,
        )

    async def remove_webhook(self, channel: Channel) -> None:
        log.info(
            "whatsapp.webhook_manual_removal",
            channel=channel.provider_channel_id,
            note="remove the callback URL in the Meta app dashboard if nothing else uses it",
        )

    def handshake(self, channel: Channel, params: Mapping[str, str]) -> str | None:
        expected = channel.credentials.get("verify_token")
        given = params.get("hub.verify_token")
        challenge = params.get("hub.challenge")
        if params.get("hub.mode") != "subscribe" or not challenge:
            return None
        if not isinstance(expected, str) or not expected or given is None:
            return None
        return challenge if constant_time_equals(given, expected) else None

    def reply_window_for(self, channel: Channel) -> timedelta | None:
        return self.reply_window

    def shares_webhooks(self, channel: Channel, other: Channel) -> bool:
        """One Meta app has one callback URL for all its numbers: a body signed with this
        channel's app secret may carry another number's traffic when that number belongs to
        the same app (the same app secret)."""
        return (
            other.provider == self.name
            and other.id != channel.id
            and hmac.compare_digest(
                str(other.credentials.get("app_secret", "")),
                str(channel.credentials.get("app_secret", "")),
            )
            and other.credentials.get("phone_number_id")
            != channel.credentials.get("phone_number_id")
        )

    async def backfill(self, channel: Channel, since: datetime) -> list[Delivery]:
        return []  # the Cloud API lists no messages; Meta itself redelivers for days (§3.3)

    # --- inbound ----------------------------------------------------------------------------

    def verify(self, channel: Channel, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        secret = channel.credentials.get("app_secret")
        match = _SIGNATURE.fullmatch(_header(headers, SIGNATURE_HEADER).strip())
        if not isinstance(secret, str) or not secret or match is None:
            return False
        expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        return hmac.compare_digest(expected, bytes.fromhex(match.group(1)))

    def split(self, channel: Channel, body: bytes, content_type: str) -> list[Delivery]:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidWebhook("body is not JSON") from None
        if not isinstance(document, dict):
            raise InvalidWebhook("a webhook body is a JSON object")
        entries = document.get("entry")
        if not isinstance(entries, list):
            raise InvalidWebhook("the body has no `entry` list")
        number = self._phone_number_id(channel)
        kind = document.get("object")
        if kind is not None and kind != "whatsapp_business_account":
            return [_ignored(number, f"object {kind!r} is not whatsapp_business_account", document)]
        found: list[Delivery] = []
        for entry in entries:
            changes = entry.get("changes") if isinstance(entry, dict) else None
            if not isinstance(changes, list):
                found.append(_ignored(number, "an entry without a `changes` list", entry))
                continue
            for change in changes:
                found.extend(_split_change(number, change))
        return found

    def parse(self, channel: Channel, payload: dict[str, Any]) -> list[Event]:
        kind = payload.get("kind")
        if kind == "status":
            return _parse_status(payload.get("status"))
        message = payload.get("message")
        if kind != "message" or not isinstance(message, dict):
            return []
        contact = payload.get("contact")
        contact = contact if isinstance(contact, dict) else None
        wa_id, user_id = _identity(message, contact)
        key = wa_id or user_id
        if key is None or _not_relayed(message) is not None:
            return []
        number = str(payload.get("phone_number_id") or self._phone_number_id(channel))
        wamid = str(message["id"])
        kind_of = message.get("type")
        stamp = str(message.get("timestamp") or "")
        message_id = wamid
        if kind_of == "edit":
            edit = _dict(message.get("edit"))
            original = edit.get("original_message_id") or wamid
            inner = _dict(edit.get("message"))
            text, media = _content(inner)
            text = f"(edited) {text}".strip()
            message_id = f"{original}:e{stamp}"
        elif kind_of == "revoke":
            revoke = _dict(message.get("revoke"))
            text, media = "(message deleted)", ()
            message_id = f"{revoke.get('original_message_id') or wamid}:deleted"
        else:
            text, media = _content(message)
            text = _with_referral(text, message.get("referral"))
        return [
            InboundMessage(
                conversation_id=f"wa:{number}:{key}",
                address=key,
                message_id=message_id,
                provider_message_id=wamid,
                sender=Participant(
                    external_id=f"wa:{key}",
                    name=_display_name(contact, wa_id, key),
                    role="end_user",
                ),
                text=text,
                created_at=_time(stamp),
                media=media,
                link=f"https://wa.me/{wa_id}" if wa_id and wa_id.isdigit() else "",
            )
        ]

    async def fetch_media(self, channel: Channel, media: MediaRef) -> bytes:
        """Look the media id up (JSON with a short-lived URL), then download that URL with the
        same bearer token (§3.9). The URL must be on one of Meta's media hosts. A refused
        download is looked up once more (the URL lives five minutes); a second refusal means
        the file is gone, and the message goes on without it rather than waiting."""
        try:
            return await self._fetch_once(channel, media)
        except ProviderTransient as first:
            if "media download" not in str(first):
                raise
            log.info("whatsapp.media_refetch", name=media.name, reason=str(first))
        try:
            return await self._fetch_once(channel, media)
        except ProviderTransient as second:
            if "media download" not in str(second) or "HTTP 5" in str(second):
                raise
            raise ProviderPermanent(f"{second} (after a fresh lookup)") from None

    async def _fetch_once(self, channel: Channel, media: MediaRef) -> bytes:
        if not _MEDIA_ID.fullmatch(media.ref):
            raise ProviderPermanent(f"file {media.name}: not a WhatsApp media id")
        token = self._token(channel)
        info = await self._call(token, "GET", f"{self.graph_url}/{media.ref}", what="media lookup")
        size = _int(info.get("file_size"))
        if size is not None and size > MAX_DOWNLOAD:
            raise ProviderPermanent(f"file {media.name} is over the 20 MB download limit")
        url = info.get("url")
        if not isinstance(url, str) or not url:
            raise ProviderPermanent(f"file {media.name}: WhatsApp gave no download URL")
        try:
            self._check_url(url, self.media_hosts)
        except UntrustedURL as error:
            log.warning("whatsapp.media_url_refused", name=media.name, reason=str(error))
            raise UntrustedMediaURL(f"file {media.name}: {error}") from None
        data = await self._download(token, url, media.name)
        _check_digest(data, info.get("sha256"), media.name)
        return data

    async def _download(self, token: str, url: str, name: str) -> bytes:
        chunks: list[bytes] = []
        total = 0
        try:
            async with self.http.stream(
                "GET", url, headers=_bearer(token), follow_redirects=False
            ) as response:
                log.info("whatsapp.call", what="media download", status=response.status_code)
                if response.status_code != 200:
                    # The URL lives 5 minutes (§3.9): a refusal is most likely an expired link,
                    # and the next try looks the media id up again.
                    if response.status_code in (401, 403, 404, 410, 429) or (
                        response.status_code >= 500
                    ):
                        raise ProviderTransient(
                            f"WhatsApp media download of {name}: HTTP {response.status_code}"
                        )
                    raise ProviderPermanent(
                        f"WhatsApp media download of {name}: HTTP {response.status_code}"
                    )
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > MAX_DOWNLOAD:
                        raise ProviderPermanent(f"file {name} is over the 20 MB download limit")
                    chunks.append(chunk)
        except httpx2.TransportError as error:
            raise ProviderTransient(f"WhatsApp media download: {type(error).__name__}") from None
        return b"".join(chunks)

    # --- outbound ---------------------------------------------------------------------------

    async def send(
        self,
        channel: Channel,
        address: str,
        text: str,
        files: Sequence[OutgoingFile],
        progress: SendProgress | None = None,
    ) -> str:
        """Files not sent yet are uploaded first (an upload that fails sends nothing), then sent
        as image, video, audio or document by MIME type, the text as the first file's caption
        when that file takes one and the text fits; otherwise the text goes first, in 4096-char
        parts."""
        progress = progress or SendProgress()
        token = self._token(channel)
        number = self._phone_number_id(channel)
        has_text = bool(text.strip())
        first_kind = _kind_of(files[0]) if files else None
        captioned = has_text and first_kind in _CAPTIONED and len(text) <= MAX_CAPTION
        chunks = list(_chunks(text, MAX_TEXT)) if has_text and not captioned else []
        uploaded = {
            offset: await self._upload(token, number, file)
            for offset, file in enumerate(files)
            if not progress.done(len(chunks) + offset)
        }
        ids: list[str] = []
        for index, chunk in enumerate(chunks):
            content = {"type": "text", "text": {"body": chunk, "preview_url": False}}
            ids.append(
                await progress.part(
                    index, functools.partial(self._send, token, number, address, content)
                )
            )
        for offset, file in enumerate(files):
            index = len(chunks) + offset
            if progress.done(index):
                ids.append(progress.sent[index])
                continue
            media_id, kind = uploaded[offset]
            item: dict[str, Any] = {"id": media_id}
            if offset == 0 and captioned:
                item["caption"] = text
            if kind == "document":
                item["filename"] = file.name
            content = {"type": kind, kind: item}
            ids.append(
                await progress.part(
                    index, functools.partial(self._send, token, number, address, content)
                )
            )
        if not ids:
            raise ProviderPermanent("nothing to send: the message has no text and no files")
        return ids[0]

    async def send_template(
        self, channel: Channel, address: str, name: str, language: str, parameters: list[str]
    ) -> str:
        """Send an approved template (the only thing allowed outside the 24-hour window), its
        body placeholders filled in order; returns the wamid."""
        template: dict[str, Any] = {"name": name, "language": {"code": language}}
        if parameters:
            template["components"] = [
                {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}
            ]
        return await self._send(
            self._token(channel),
            self._phone_number_id(channel),
            address,
            {"type": "template", "template": template},
        )

    async def list_templates(self, channel: Channel) -> list[dict[str, str]]:
        """Approved templates as `{id, name, content (the BODY text), language}`, following
        `paging.next` on the Graph host only, for at most `MAX_TEMPLATE_PAGES` pages."""
        token = self._token(channel)
        waba_id = channel.credentials.get("waba_id")
        if not isinstance(waba_id, str) or not waba_id.isdigit():
            raise ProviderPermanent("the WhatsApp channel has no waba_id to list templates of")
        url = f"{self.graph_url}/{waba_id}/message_templates"
        params: dict[str, str] | None = {"status": "APPROVED", "limit": "100"}
        found: list[dict[str, str]] = []
        for _ in range(MAX_TEMPLATE_PAGES):
            page = await self._call(token, "GET", url, what="template listing", params=params)
            data = page.get("data")
            for template in data if isinstance(data, list) else []:
                if isinstance(template, dict) and template.get("status") == "APPROVED":
                    found.append(_template(template))
            paging = page.get("paging")
            following = paging.get("next") if isinstance(paging, dict) else None
            if not isinstance(following, str) or not following:
                break
            try:
                url = self._check_url(following, [self.graph_host])
            except UntrustedURL as error:
                log.warning("whatsapp.templates_paging_refused", reason=str(error))
                break
            params = None  # the next URL carries its own query
        return found

    async def _upload(self, token: str, number: str, file: OutgoingFile) -> tuple[str, str]:
        """Upload one file; returns (media id, the kind to send it as)."""
        mime = _mime_of(file)
        kind = _kind_of(file)
        if len(file.content) > UPLOAD_LIMITS["document"]:
            raise ProviderPermanent(f"file {file.name} is over WhatsApp's 100 MB limit")
        answer = await self._call(
            token,
            "POST",
            f"{self.graph_url}/{number}/media",
            what="media upload",
            data={"messaging_product": "whatsapp", "type": mime},
            files={"file": (file.name, file.content, mime)},
        )
        media_id = answer.get("id")
        if not isinstance(media_id, str | int) or not str(media_id):
            raise ProviderPermanent(f"WhatsApp media upload of {file.name}: no media id returned")
        return str(media_id), kind

    async def _send(self, token: str, number: str, address: str, content: dict[str, Any]) -> str:
        """POST one message; returns its wamid."""
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": address,
            **content,
        }
        answer = await self._call(
            token, "POST", f"{self.graph_url}/{number}/messages", what="send", json_body=body
        )
        messages = answer.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        if not isinstance(first, dict) or not first.get("id"):
            raise ProviderPermanent("WhatsApp send: the answer names no message id")
        if first.get("message_status") not in (None, "accepted"):
            log.warning("whatsapp.send_held", message_status=first.get("message_status"))
        return str(first["id"])

    # --- the HTTP call ----------------------------------------------------------------------

    def _token(self, channel: Channel) -> str:
        token = channel.credentials.get("access_token")
        if not isinstance(token, str) or not token:
            raise ProviderAuthError("the WhatsApp channel has no access_token")
        return token

    def _check_url(self, url: str, hosts: Sequence[str]) -> str:
        """`check_fetch_url`, and https only (the bearer token goes with the request) except
        on the configured Graph host itself (a stand-in on http)."""
        checked = check_fetch_url(url, hosts)
        if urlsplit(url).scheme != "https" and host_of(url) != self.graph_host:
            raise UntrustedURL("plain http is not fetched with the access token")
        return checked

    def _phone_number_id(self, channel: Channel) -> str:
        return str(channel.credentials.get("phone_number_id") or channel.account_id)

    async def _call(
        self,
        token: str,
        method: str,
        url: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> dict[str, Any]:
        try:
            response = await self.http.request(
                method,
                url,
                params=params,
                json=json_body,
                data=data,
                files=files,
                headers=_bearer(token),
            )
        except httpx2.TransportError as error:
            # The exception text may quote the URL: name the type only.
            unsent = isinstance(error, (httpx2.ConnectError, httpx2.ConnectTimeout))
            raise ProviderTransient(
                f"WhatsApp {what}: {type(error).__name__}", maybe_delivered=not unsent
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        answer: dict[str, Any] = body if isinstance(body, dict) else {}
        log.info(
            "whatsapp.call",
            what=what,
            status=response.status_code,
            fbtrace_id=_dict(answer.get("error")).get("fbtrace_id"),
        )
        if 200 <= response.status_code < 300 and "error" not in answer:
            return answer
        raise graph_error(response.status_code, answer, response.headers, what)


def graph_error(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str], what: str
) -> Exception:
    """A Graph API failure mapped onto the provider error tree (§3.10), by code, never by text."""
    details = _dict(body.get("error"))
    raw_code = details.get("code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    reason = _error_text(details) or f"HTTP {status}"
    if code == RE_ENGAGEMENT:
        return RecipientUnreachable(
            f"WhatsApp {what}: outside the 24-hour window: {reason}; only a template can reach "
            "the customer now"
        )
    message = f"WhatsApp {what}: {reason}"
    if code in _UNREACHABLE_CODES:
        return RecipientUnreachable(message)
    if code in _RETRY_CODES or status == 429:
        return ProviderTransient(message, retry_after=_retry_after(headers))
    if code in _AUTH_CODES or (code is not None and 200 <= code <= 299) or status == 401:
        return ProviderAuthError(message)
    if status >= 500:
        return ProviderTransient(message, retry_after=_retry_after(headers), maybe_delivered=True)
    return ProviderPermanent(message)


def _error_text(error: Mapping[str, Any]) -> str:
    """`code title: details` from a Graph error or a webhook `errors[]` item."""
    code = error.get("code")
    title = str(error.get("title") or error.get("message") or "").strip()
    title = re.sub(r"^\(#\d+\)\s*", "", title)  # Graph repeats the code: "(#131047) Re-eng..."
    data = error.get("error_data")
    details = str(data.get("details") or "").strip() if isinstance(data, dict) else ""
    text = " ".join(str(p) for p in (code, title) if p not in (None, ""))
    if details and details != title:
        text = f"{text}: {details}" if text else details
    return text


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `Retry-After` or from Meta's usage header (minutes, §3.10)."""
    value = headers.get("retry-after", "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    usage = headers.get("x-business-use-case-usage", "")
    if not usage:
        return None
    try:
        parsed = json.loads(usage)
    except ValueError:
        return None
    minutes = [
        float(item.get("estimated_time_to_regain_access") or 0)
        for items in (parsed.values() if isinstance(parsed, dict) else [])
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict)
    ]
    longest = max(minutes, default=0.0)
    return longest * 60 if longest > 0 else None


# --- splitting ------------------------------------------------------------------------------


def _mime_of(file: OutgoingFile) -> str:
    return file.mime_type.split(";", 1)[0].strip().lower() or "application/octet-stream"


def _kind_of(file: OutgoingFile) -> str:
    """What WhatsApp sends a file as: by MIME type, a document when too large for that kind."""
    kind = _KIND_BY_MIME.get(_mime_of(file), "document")
    return "document" if len(file.content) > UPLOAD_LIMITS[kind] else kind


def _split_change(number: str, change: Any) -> list[Delivery]:
    if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
        return [_ignored(number, "a change without a `value` object", change)]
    field = change.get("field")
    value: dict[str, Any] = change["value"]
    if field != "messages":
        return [_ignored(number, f"field {field!r} is not relayed", change)]
    metadata = _dict(value.get("metadata"))
    theirs = metadata.get("phone_number_id")
    if theirs is not None and str(theirs) != number:
        log.warning("whatsapp.other_phone_number", expected=number, received=str(theirs))
        return [_ignored(number, f"for phone number {theirs}, not this channel's", change)]
    contacts = [c for c in _list(value.get("contacts")) if isinstance(c, dict)]
    found = [_message_delivery(number, metadata, contacts, m) for m in _list(value.get("messages"))]
    found += [_status_delivery(number, metadata, s) for s in _list(value.get("statuses"))]
    errors = [e for e in _list(value.get("errors")) if isinstance(e, dict)]
    if errors:
        log.warning("whatsapp.webhook_errors", errors=[_error_text(e) for e in errors])
    if not found:
        reason = "errors only" if errors else "no messages and no statuses"
        found.append(_ignored(number, reason, change))
    return found


def _message_delivery(
    number: str, metadata: dict[str, Any], contacts: list[dict[str, Any]], message: Any
) -> Delivery:
    if not isinstance(message, dict) or not isinstance(message.get("id"), str):
        return _ignored(number, "a message without an id", message)
    wamid: str = message["id"]
    contact = _contact_for(message, contacts)
    wa_id, user_id = _identity(message, contact)
    key = wa_id or user_id
    dedupe = f"wa:{number}:{wamid}"
    if message.get("type") == "edit":
        dedupe += f":e{message.get('timestamp', '')}"
    elif message.get("type") == "revoke":
        dedupe += ":revoke"
    payload = {
        "kind": "message",
        "phone_number_id": number,
        "metadata": metadata,
        "contact": contact,
        "message": message,
    }
    reason = "no wa_id and no user id" if key is None else _not_relayed(message)
    if reason is not None:
        log.info("whatsapp.message_not_relayed", type=message.get("type"), reason=reason)
        return Delivery(dedupe, None, payload)
    return Delivery(dedupe, f"wa:{number}:{key}", payload)


def _status_delivery(number: str, metadata: dict[str, Any], status: Any) -> Delivery:
    if (
        not isinstance(status, dict)
        or not isinstance(status.get("id"), str)
        or not isinstance(status.get("status"), str)
    ):
        return _ignored(number, "a status without an id or a status", status)
    payload = {"kind": "status", "phone_number_id": number, "metadata": metadata, "status": status}
    dedupe = f"wa:{number}:{status['id']}:{status['status']}"
    recipient = status.get("recipient_id") or status.get("recipient_user_id")
    if (
        status["status"] not in STATUSES
        or not recipient
        or status.get("recipient_type", "individual") != "individual"
    ):
        return Delivery(dedupe, None, payload)
    return Delivery(dedupe, f"wa:{number}:{recipient}", payload)


def _ignored(number: str, reason: str, item: Any) -> Delivery:
    """A piece acknowledged and not relayed, deduped on a digest of its content."""
    digest = hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()
    return Delivery(
        f"wa:{number}:ignored:{digest[:32]}",
        None,
        {"kind": "ignored", "reason": reason, "item": item},
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _contact_for(
    message: Mapping[str, Any], contacts: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The `contacts[]` entry of the message's sender: by wa_id or by user id; the only entry
    when the message names no sender at all."""
    sender, sender_user = message.get("from"), message.get("from_user_id")
    for contact in contacts:
        if sender and contact.get("wa_id") == sender:
            return contact
        if sender_user and contact.get("user_id") == sender_user:
            return contact
    if not sender and not sender_user and len(contacts) == 1:
        return contacts[0]
    return None


def _identity(
    message: Mapping[str, Any], contact: Mapping[str, Any] | None
) -> tuple[str | None, str | None]:
    """(wa_id, BSUID) of the sender; either may be missing (§3.4)."""
    contact = contact or {}
    wa_id = message.get("from") or contact.get("wa_id")
    user_id = message.get("from_user_id") or contact.get("user_id")
    return (str(wa_id) if wa_id else None), (str(user_id) if user_id else None)


def _not_relayed(message: Mapping[str, Any]) -> str | None:
    """Why a customer message is acknowledged only, or None to relay it."""
    kind = message.get("type")
    if isinstance(kind, str) and kind in _NOT_RELAYED_TYPES:
        return f"{message.get('type')} message"
    if message.get("group_id"):
        return "group message"
    return None


# --- parsing --------------------------------------------------------------------------------


def _parse_status(status: Any) -> list[Event]:
    if not isinstance(status, dict) or status.get("status") not in STATUSES:
        return []
    if status.get("recipient_type", "individual") != "individual":
        return []
    error = None
    if status["status"] == "failed":
        errors = [e for e in _list(status.get("errors")) if isinstance(e, dict)]
        error = _status_error(errors[0]) if errors else "failed (no reason given)"
    return [StatusEvent(str(status["id"]), str(status["status"]), error)]


def _status_error(error: Mapping[str, Any]) -> str:
    text = _error_text(error) or "failed"
    return f"outside the 24-hour window: {text}" if error.get("code") == RE_ENGAGEMENT else text


def _display_name(contact: Mapping[str, Any] | None, wa_id: str | None, key: str) -> str:
    profile = (contact or {}).get("profile")
    if isinstance(profile, dict):
        for field in ("name", "username"):
            if isinstance(profile.get(field), str) and profile[field].strip():
                return str(profile[field]).strip()
    return f"+{wa_id}" if wa_id and wa_id.isdigit() else key


def _time(stamp: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(float(stamp)), UTC)
    except (ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _content(message: Mapping[str, Any]) -> tuple[str, tuple[MediaRef, ...]]:
    """The text Pipedrive shows and the files to re-host, for every kind we relay."""
    kind = message.get("type")
    item = message.get(kind) if isinstance(kind, str) else None
    if kind == "text":
        return (str(item.get("body") or "") if isinstance(item, dict) else ""), ()
    if kind in _MEDIA_KINDS and isinstance(item, dict) and item.get("id"):
        return str(item.get("caption") or ""), (_media(str(kind), item),)
    if kind == "reaction" and isinstance(item, dict):
        emoji = item.get("emoji")
        return (f"[reaction {emoji}]" if emoji else "[reaction removed]"), ()
    if kind == "location" and isinstance(item, dict):
        return _location(item), ()
    if kind == "contacts" and isinstance(item, list):
        cards = [_contact_card(card) for card in item if isinstance(card, dict)]
        return "\n".join(cards) or "[contact]", ()
    if kind == "button" and isinstance(item, dict):
        return str(item.get("text") or item.get("payload") or "[button]"), ()
    if kind == "interactive" and isinstance(item, dict):
        return _interactive(item), ()
    if kind == "order" and isinstance(item, dict):
        return _order(item), ()
    if kind == "unsupported" and isinstance(item, dict) and item.get("type"):
        return f"[unsupported message: {item['type']}]", ()
    if kind in ("unsupported", "unknown", None):
        return "[unsupported message]", ()
    return f"[unsupported message: {kind}]", ()


def _media(kind: str, item: Mapping[str, Any]) -> MediaRef:
    mime = str(item.get("mime_type") or _DEFAULT_MIME[kind]).split(";", 1)[0].strip().lower()
    label = "voice" if kind == "audio" and item.get("voice") else kind
    extension = _EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ""
    name = clean_file_name(str(item["filename"])) if item.get("filename") else None
    return MediaRef(str(item["id"]), mime, name or f"{label}_{item['id']}{extension}", None)


def _location(item: Mapping[str, Any]) -> str:
    lat, lon = item.get("latitude"), item.get("longitude")
    parts = ["[location]", item.get("name"), item.get("address")]
    if lat is not None and lon is not None:
        parts.append(f"https://maps.google.com/?q={lat},{lon}")
    return " ".join(str(p).strip() for p in parts if p)


def _contact_card(card: Mapping[str, Any]) -> str:
    name = _dict(card.get("name"))
    who = name.get("formatted_name") or " ".join(
        str(name[k]) for k in ("first_name", "last_name") if name.get(k)
    )
    phones = [
        str(p.get("phone") or p.get("wa_id"))
        for p in _list(card.get("phones"))
        if isinstance(p, dict) and (p.get("phone") or p.get("wa_id"))
    ]
    return " ".join(p for p in ("[contact]", str(who or ""), ", ".join(phones)) if p)


def _interactive(item: Mapping[str, Any]) -> str:
    kind = item.get("type")
    reply = item.get(kind) if isinstance(kind, str) else None
    if kind in ("button_reply", "list_reply") and isinstance(reply, dict):
        return str(reply.get("title") or reply.get("id") or "[reply]")
    if kind == "nfm_reply" and isinstance(reply, dict):
        lines = [f"[form response] {reply.get('body') or reply.get('name') or ''}".strip()]
        try:
            answers = json.loads(str(reply.get("response_json") or "{}"))
        except ValueError:
            answers = {}
        if isinstance(answers, dict):
            lines += [f"{k}: {v}" for k, v in answers.items() if k != "flow_token"]
        return "\n".join(lines)
    return f"[interactive {kind}]" if kind else "[unsupported message: interactive]"


def _order(item: Mapping[str, Any]) -> str:
    lines = ["[order]"]
    for product in _list(item.get("product_items")):
        if isinstance(product, dict):
            line = f"{product.get('quantity', 1)} x {product.get('product_retailer_id')}"
            if product.get("item_price") is not None:
                line += f" ({product['item_price']} {product.get('currency') or ''}".rstrip() + ")"
            lines.append(line)
    if item.get("text"):
        lines.append(str(item["text"]))
    return "\n".join(lines)


def _with_referral(text: str, referral: Any) -> str:
    """A click-to-WhatsApp ad the customer came from is worth a line to a salesperson."""
    if not isinstance(referral, dict):
        return text
    about = " ".join(str(referral[k]) for k in ("headline", "source_url") if referral.get(k))
    return f"{text}\n[via ad: {about}]".strip() if about else text


def _template(template: Mapping[str, Any]) -> dict[str, str]:
    body = next(
        (
            c.get("text")
            for c in _list(template.get("components"))
            if isinstance(c, dict) and str(c.get("type", "")).upper() == "BODY"
        ),
        "",
    )
    return {
        "id": str(template.get("id") or ""),
        "name": str(template.get("name") or ""),
        "content": str(body or ""),
        "language": str(template.get("language") or ""),
    }


def _check_digest(data: bytes, expected: Any, name: str) -> None:
    """Compare the download with the lookup's `sha256`, given as hex or base64 (§3.9 [U]); a
    value in neither form is not checked."""
    if not isinstance(expected, str) or not expected:
        return
    digest = hashlib.sha256(data).digest()
    value = expected.strip()
    try:
        if re.fullmatch(r"[0-9a-fA-F]{64}", value):
            given = bytes.fromhex(value)
        else:  # standard or URL-safe alphabet, padded or not
            given = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return
    if len(given) != len(digest):
        return
    if not hmac.compare_digest(given, digest):
        raise ProviderTransient(f"WhatsApp media download of {name}: checksum mismatch")


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value or ""


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _chunks(text: str, size: int) -> list[str]:
    """Parts of at most `size` characters, cut at a line break or a space where one is near."""
    parts: list[str] = []
    while len(text) > size:
        cut = max(text.rfind("\n", size // 2, size), text.rfind(" ", size // 2, size))
        cut = cut + 1 if cut > 0 else size
        parts.append(text[:cut])
        text = text[cut:]
    if text:
        parts.append(text)
    return parts

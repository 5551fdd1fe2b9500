"""Twilio Programmable Messaging: SMS/MMS and WhatsApp through Twilio (chat-providers.md §4).

A channel is one Twilio sender (`from`: `+E164` or `whatsapp:+E164`) of one account (`account_sid`
+ `auth_token`). Webhooks are form posts signed with `X-Twilio-Signature` (§4.2): HMAC-SHA1 of
the URL Twilio requested plus every sorted `name+value` pair, keyed with the auth token. The
incoming-message webhook and the `StatusCallback` we pass at send time both come to
`{PUBLIC_BASE_URL}/webhooks/twilio/{provider_channel_id}`.

Deliveries (§1.2, §1.3):

- an incoming message: dedupe `tw:{MessageSid}`, conversation `tw:{To}:{From}` (our address :
  the customer's, `whatsapp:` prefix kept);
- a status callback: dedupe `tw:{MessageSid}:{status}`, conversation `tw:{From}:{To}` (the same
  conversation key, since From is our address here; `To` may be missing, §4.4 minimal callback);
- anything else with a MessageSid (e.g. `receiving`, `partially_delivered`): acknowledged only.

The payload of a delivery is the form as a flat `{name: value}` dict (Twilio never repeats a
name in these webhooks; the first value is kept), plus `RECEIVED_AT` — when we received it, or for
backfilled messages Twilio's `date_sent` — because the webhook itself carries no timestamp (§4.1).
A payload without it (a fixture, an older record) is dated when parsed.

Not modelled: Twilio numbers are configured in the console (or the IncomingPhoneNumbers API), so
`register_webhook` only logs the URL to set; Messaging Services (`MG…` senders) and Content API
templates; the `I-Twilio-Idempotency-Token` header. The auth token never appears in a log line
or an exception text; URLs only carry the account SID, which is not a secret.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import math
import mimetypes
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from itertools import zip_longest
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, parse_qsl, urljoin, urlsplit

import httpx2

from service.logging import get_logger
from service.media import normalize_mime_type
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

if TYPE_CHECKING:
    from service.providers.base import ProviderAdapter

log = get_logger(__name__)

SIGNATURE_HEADER = "x-twilio-signature"
API_VERSION = "2010-04-01"
#: Payload key holding the receipt time (ISO 8601); Twilio's own names are CamelCase.
RECEIVED_AT = "_received_at"
#: `Body` limit of the Messages API (error 21617 beyond it, §4.5).
MAX_BODY = 1600
#: `MediaUrl`s per message: 10 for MMS; WhatsApp takes one file per message (§4.5 [U]).
MAX_MEDIA_MMS = 10
MAX_MEDIA_WHATSAPP = 1
#: Same cap as the other providers' downloads.
MAX_DOWNLOAD = 20 * 1024 * 1024
MAX_REDIRECTS = 3
MAX_PAGES = 20
PAGE_SIZE = 100
#: The most form fields a webhook body may have before we refuse to read it.
MAX_FIELDS = 1000
#: Hosts Twilio serves media from: the API, which redirects to its CDN (§4.1).
MEDIA_HOSTS = ("api.twilio.com", "*.twiliocdn.com", "media.twiliocdn.com")

#: Twilio status → Pipedrive status (§1.5). Other values (`receiving`, `received`,
#: `partially_delivered`) are not statuses of our outgoing messages.
STATUS_MAP = {
    "accepted": "sent",
    "scheduled": "sent",
    "queued": "sent",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "undelivered": "failed",
    "canceled": "failed",
}
#: Error codes that mean this customer cannot be reached (rather than a fault of ours):
#: invalid To (21211), not a mobile / not reachable (21614, 21612), unsubscribed with STOP
#: (21610), WhatsApp address unknown (63003) or not a valid recipient (63024), outside the
#: WhatsApp 24-hour window (63016).
UNREACHABLE_CODES = frozenset({21211, 21610, 21612, 21614, 63003, 63016, 63024})

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_ADDRESS = re.compile(r"(?:whatsapp:)?\+[1-9][0-9]{1,14}")
_MEDIA_SID = re.compile(r"ME[0-9A-Za-z]{1,62}")
_DEFAULT_PORTS = {"https": 443, "http": 80}


class TwilioProvider:
    """The Twilio adapter (satisfies `ProviderAdapter`).

    `pipedrive_provider_type` stays "other" even for `whatsapp:` senders (it is class-wide in
    the Protocol); the 24-hour window of WhatsApp through Twilio comes from `reply_window_for`.
    """

    name = "twilio"
    pipedrive_provider_type = "other"
    template_support = False
    reply_window: timedelta | None = None
    may_share_webhooks = False
    sends_files_by_url = True

    def __init__(self, api_url: str, http: httpx2.AsyncClient, public_base_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.http = http
        self.public_base_url = public_base_url.rstrip("/")

    # --- credentials and webhook registration ---------------------------------------------

    def check_credentials(self, credentials: Mapping[str, Any]) -> dict[str, Any]:
        sid, token, sender = (
            _text(credentials.get(key)) for key in ("account_sid", "auth_token", "from")
        )
        problems = []
        if not _ACCOUNT_SID.fullmatch(sid):
            problems.append("account_sid must be 'AC' followed by 32 hex digits")
        if not token or any(c.isspace() for c in token):
            problems.append("auth_token is missing or has blanks in it")
        if not _ADDRESS.fullmatch(sender):
            problems.append("from must be an E.164 number like '+14155550100' or 'whatsapp:+...'")
        if problems:
            raise InvalidCredentials("twilio credentials: " + "; ".join(problems))
        return {"account_sid": sid, "auth_token": token, "from": sender}

    async def describe_account(self, credentials: Mapping[str, Any]) -> tuple[str, str]:
        creds = self.check_credentials(credentials)
        url = f"{self.api_url}/{API_VERSION}/Accounts/{creds['account_sid']}.json"
        try:
            account = await self._call("GET", url, creds, what="account")
        except ProviderAuthError:
            raise InvalidCredentials("Twilio refused the account SID and auth token") from None
        except ProviderPermanent as error:
            raise InvalidCredentials(str(error)) from None
        status = str(account.get("status") or "active")
        if status in ("suspended", "closed"):
            raise InvalidCredentials(f"the Twilio account is {status}")
        sender = str(creds["from"])
        return sender, str(account.get("friendly_name") or sender)

    def new_webhook_secret(self) -> str | None:
        return None  # Twilio signs with the auth token

    async def register_webhook(self, channel: Channel, url: str) -> None:
        # The webhook belongs to the number (console, or the IncomingPhoneNumbers API), or to the
        # WhatsApp sender; status callbacks need nothing: each send names its StatusCallback.
        log.info(
            "twilio.webhook_manual",
            channel=channel.provider_channel_id,
            number=channel.credentials.get("from"),
            url=url,
            hint="set as 'A message comes in' (HTTP POST) on the number in the Twilio console",
        )

    async def remove_webhook(self, channel: Channel) -> None:
        log.info(
            "twilio.webhook_manual_removal",
            channel=channel.provider_channel_id,
            number=channel.credentials.get("from"),
            hint="remove this channel's URL from the number in the Twilio console",
        )

    def handshake(self, channel: Channel, params: Mapping[str, str]) -> str | None:
        return None  # Twilio verifies nothing by GET

    async def list_templates(self, channel: Channel) -> list[dict[str, str]]:
        return []  # Content API templates are not supported (template_support = False)

    # --- inbound ----------------------------------------------------------------------------

    def verify(self, channel: Channel, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        """`X-Twilio-Signature` over `url` (what Twilio requested: PUBLIC_BASE_URL + path + raw
        query) and the form parameters; like twilio-python's RequestValidator, the URL is also
        tried without its port and, when it has none, with the scheme's default port. A URL with
        `bodySHA256` is a JSON-body webhook: the signature covers the URL alone and the body
        must hash to that value."""
        given = _header(headers, SIGNATURE_HEADER)
        token = channel.credentials.get("auth_token")
        if not given or not isinstance(token, str) or not token:
            return False
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        body_ok = True
        if "bodySHA256" in query:
            digest = hashlib.sha256(body).hexdigest()
            body_ok = hmac.compare_digest(digest.encode(), query["bodySHA256"][0].encode())
            params: list[tuple[str, str]] = []
        else:
            try:
                params = _form_pairs(body)
            except ValueError:
                return False
        matched = False
        for candidate in _url_variants(url):
            expected = signature(token, candidate, params)
            matched |= hmac.compare_digest(expected.encode(), given.encode())
        return matched and body_ok

    def split(self, channel: Channel, body: bytes, content_type: str) -> list[Delivery]:
        if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            raise InvalidWebhook("Twilio webhooks are application/x-www-form-urlencoded")
        try:
            pairs = _form_pairs(body)
        except ValueError as error:
            raise InvalidWebhook(f"unreadable form body: {error}") from None
        form: dict[str, Any] = {}
        for key, value in pairs:
            form.setdefault(key, value)
        form[RECEIVED_AT] = datetime.now(UTC).isoformat()
        return [_delivery(form)]

    def parse(self, channel: Channel, payload: dict[str, Any]) -> list[Event]:
        form = _flat(payload)
        kind, status = _kind(form)
        sid = form.get("MessageSid", "")
        if not sid:
            return []
        if kind == "status":
            mapped = STATUS_MAP[status]
            return [
                StatusEvent(
                    sid, mapped, _status_error(form, status) if mapped == "failed" else None
                )
            ]
        if kind != "inbound" or not form.get("From") or not form.get("To"):
            return []
        sender = form["From"]
        text, media = _content(form, sid)
        return [
            InboundMessage(
                conversation_id=f"tw:{form['To']}:{sender}",
                address=sender,
                message_id=sid,
                provider_message_id=sid,
                sender=Participant(
                    external_id=f"tw:{sender}",
                    name=form.get("ProfileName") or _number(sender),
                    role="end_user",
                ),
                text=text,
                created_at=_received_at(form),
                media=media,
            )
        ]

    async def fetch_media(self, channel: Channel, media: MediaRef) -> bytes:
        """GET the media URL with Basic auth (only to the API itself, never to the CDN), following
        at most `MAX_REDIRECTS` redirects by hand, each target checked like the first URL."""
        creds = channel.credentials
        allowed = {*MEDIA_HOSTS, host_of(self.api_url)}
        url = media.ref
        for _ in range(MAX_REDIRECTS + 1):
            try:
                check_fetch_url(url, allowed)
            except UntrustedURL as error:
                raise ProviderPermanent(f"Twilio media {media.name}: {error}") from None
            auth = _basic(creds) if self._sends_credentials(url) else None
            try:
                async with self.http.stream(
                    "GET", url, auth=auth, follow_redirects=False
                ) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        body = await _read_capped(response, 64 * 1024)
                        raise _error(response, _json_object(body), f"media {media.name}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > MAX_DOWNLOAD:
                        raise ProviderPermanent(f"Twilio media {media.name} is over 20 MB")
                    data = await _read_capped(response, MAX_DOWNLOAD)
                    if data is None:
                        raise ProviderPermanent(f"Twilio media {media.name} is over 20 MB")
                    return data
            except httpx2.TransportError as error:
                raise ProviderTransient(
                    f"Twilio media download failed: {type(error).__name__}"
                ) from None
        raise ProviderPermanent(f"Twilio media {media.name}: more than {MAX_REDIRECTS} redirects")

    def reply_window_for(self, channel: Channel) -> timedelta | None:
        """WhatsApp through Twilio keeps WhatsApp's 24-hour window (error 63016); SMS has none."""
        sender = str(channel.credentials.get("from", ""))
        return timedelta(hours=24) if sender.startswith("whatsapp:") else None

    def shares_webhooks(self, channel: Channel, other: Channel) -> bool:
        return False  # every channel has its own webhook URL

    async def backfill(self, channel: Channel, since: datetime) -> list[Delivery]:
        """Inbound messages to our address since `since`, oldest first, as the deliveries their
        webhooks would have produced (same dedupe keys, payloads shaped like the form)."""
        creds = channel.credentials
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        url: str | None = f"{self._account_url(creds)}/Messages.json"
        params: dict[str, str] | None = {
            "To": str(creds["from"]),
            "DateSent>": since.astimezone(UTC).date().isoformat(),
            "PageSize": str(PAGE_SIZE),
        }
        found: list[tuple[datetime, Delivery]] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            page = await self._call("GET", url, creds, what="list messages", params=params)
            for item in page.get("messages") or []:
                if not isinstance(item, dict) or item.get("direction") != "inbound":
                    continue
                when = _twilio_date(item.get("date_created")) or _twilio_date(item.get("date_sent"))
                if when is None or when < since or not item.get("sid"):
                    continue
                form = await self._backfill_form(creds, item, when)
                try:
                    found.append((when, _delivery(form)))
                except InvalidWebhook as error:
                    log.warning(
                        "twilio.backfill_item_skipped", sid=item.get("sid"), reason=str(error)
                    )
            next_uri = page.get("next_page_uri")
            url, params = (self._api_url_for(str(next_uri)) if next_uri else None), None
        found.sort(key=lambda pair: pair[0])
        return [delivery for _, delivery in found]

    async def _backfill_form(
        self, creds: Mapping[str, Any], item: Mapping[str, Any], when: datetime
    ) -> dict[str, Any]:
        sid = str(item["sid"])
        form: dict[str, Any] = {
            "MessageSid": sid,
            "AccountSid": str(item.get("account_sid") or creds["account_sid"]),
            "From": str(item.get("from") or ""),
            "To": str(item.get("to") or ""),
            "Body": str(item.get("body") or ""),
            "NumMedia": "0",
            "SmsStatus": "received",
            "ApiVersion": API_VERSION,
            RECEIVED_AT: when.isoformat(),
        }
        if _int(item.get("num_media")) > 0:
            uris = item.get("subresource_uris")
            media_uri = uris.get("media") if isinstance(uris, dict) else None
            list_url = (
                self._api_url_for(str(media_uri))
                if media_uri
                else f"{self._account_url(creds)}/Messages/{sid}/Media.json"
            )
            listing = (
                await self._call("GET", list_url, creds, what="list media") if list_url else {}
            )
            media = [m for m in listing.get("media_list") or [] if isinstance(m, dict)]
            media = [m for m in media if m.get("uri")][:MAX_MEDIA_MMS]
            for index, item_media in enumerate(media):
                form[f"MediaUrl{index}"] = self.api_url + str(item_media["uri"]).removesuffix(
                    ".json"
                )
                form[f"MediaContentType{index}"] = str(item_media.get("content_type") or "")
            form["NumMedia"] = str(len(media))
        return form

    # --- outbound ---------------------------------------------------------------------------

    async def send(
        self,
        channel: Channel,
        address: str,
        text: str,
        files: Sequence[OutgoingFile],
        progress: SendProgress | None = None,
    ) -> str:
        """POST Messages.json with To, From, Body, StatusCallback and one MediaUrl per file (Twilio
        fetches our signed links itself). Text over 1600 characters, or more files than a message
        takes (10 for MMS, 1 on WhatsApp), go as several messages; the first one's sid is
        returned, and every one reports to the same StatusCallback."""
        creds = channel.credentials
        unlinked = [f.name for f in files if not f.url]
        if unlinked:
            raise ProviderPermanent(
                f"Twilio fetches files by URL and none was given for: {', '.join(unlinked)}"
            )
        sender = str(creds["from"])
        per_message = MAX_MEDIA_WHATSAPP if sender.startswith("whatsapp:") else MAX_MEDIA_MMS
        urls = [str(f.url) for f in files]
        batches = [urls[i : i + per_message] for i in range(0, len(urls), per_message)]
        chunks = [text[i : i + MAX_BODY] for i in range(0, len(text), MAX_BODY)] if text else []
        if not chunks and not batches:
            raise ProviderPermanent("nothing to send: the message has no text and no files")
        url = f"{self._account_url(creds)}/Messages.json"
        callback = f"{self.public_base_url}/webhooks/twilio/{channel.provider_channel_id}"
        progress = progress or SendProgress()
        ids: list[str] = []
        for index, (chunk, batch) in enumerate(zip_longest(chunks, batches)):
            form: dict[str, Any] = {"To": address, "From": sender, "StatusCallback": callback}
            if chunk:
                form["Body"] = chunk
            if batch:
                form["MediaUrl"] = batch
            ids.append(
                await progress.part(index, functools.partial(self._send_one, url, creds, form))
            )
        return ids[0]

    async def _send_one(self, url: str, creds: Mapping[str, Any], form: dict[str, Any]) -> str:
        answer = await self._call("POST", url, creds, what="send", data=form)
        sid = answer.get("sid")
        if not isinstance(sid, str) or not sid:
            raise ProviderPermanent("Twilio accepted the message but answered no sid")
        return sid

    # --- the HTTP call ----------------------------------------------------------------------

    def _account_url(self, creds: Mapping[str, Any]) -> str:
        return f"{self.api_url}/{API_VERSION}/Accounts/{creds['account_sid']}"

    def _api_url_for(self, uri: str) -> str | None:
        """A `next_page_uri` / `subresource_uris` path as a URL on our API host; an absolute URL
        elsewhere is not followed (None)."""
        if uri.startswith("/"):
            return self.api_url + uri
        if _origin(uri) == _origin(self.api_url):
            return uri
        log.warning("twilio.foreign_uri_ignored", host=host_of(uri))
        return None

    def _sends_credentials(self, url: str) -> bool:
        """Basic auth goes to the configured API origin and to Twilio's API over HTTPS only."""
        return _origin(url) in (_origin(self.api_url), ("https", "api.twilio.com", 443))

    async def _call(
        self,
        method: str,
        url: str,
        creds: Mapping[str, Any],
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            response = await self.http.request(
                method, url, auth=_basic(creds), params=params, data=data
            )
        except httpx2.TransportError as error:
            # Name the type only: the text may carry the URL, and we keep one rule for all.
            unsent = isinstance(error, (httpx2.ConnectError, httpx2.ConnectTimeout))
            raise ProviderTransient(
                f"Twilio {what}: {type(error).__name__}", maybe_delivered=not unsent
            ) from None
        log.info("twilio.call", what=what, status=response.status_code)
        body = _json_object(response.content)
        if 200 <= response.status_code < 300:
            return body
        raise _error(response, body, what)


# --- signatures -------------------------------------------------------------------------------


def signature(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """base64(HMAC-SHA1(auth_token, url + every name+value, sorted by name then value)) (§4.2)."""
    signed = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> list[str]:
    """`url` as given, plus twilio-python's alternative: without the port when it has one, with
    the scheme's default port when it has none. Nothing else in the URL is re-encoded."""
    parts = urlsplit(url)
    prefix = f"{parts.scheme}://{parts.netloc}"
    if not url.startswith(prefix):
        return [url]
    rest = url[len(prefix) :]
    try:
        port = parts.port
    except ValueError:
        return [url]
    userinfo, _, hostport = parts.netloc.rpartition("@")
    userinfo = f"{userinfo}@" if userinfo else ""
    if port is not None:
        host = hostport[: hostport.rfind(":")]
        return [url, f"{parts.scheme}://{userinfo}{host}{rest}"]
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    if default is None:
        return [url]
    return [url, f"{parts.scheme}://{userinfo}{hostport}:{default}{rest}"]


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    """The form's (name, value) pairs, blank values kept (an empty `Body=` is signed too)."""
    return parse_qsl(
        body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict"
    )


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is not None:
        return value
    for key, found in headers.items():
        if key.lower() == name:
            return found
    return ""


# --- webhook bodies -------------------------------------------------------------------------


def _flat(payload: Mapping[str, Any]) -> dict[str, str]:
    """A payload as `{name: value}` strings; a list (a form parsed with repeats) gives its first."""
    form: dict[str, str] = {}
    for key, value in payload.items():
        if isinstance(value, list | tuple):
            value = value[0] if value else ""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            form[str(key)] = str(value)
    return form


def _kind(form: Mapping[str, str]) -> tuple[str, str]:
    """("inbound" | "status" | "other", the lower-cased MessageStatus or SmsStatus)."""
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
    if status in STATUS_MAP:
        return "status", status
    if status in ("", "received") and ("Body" in form or "NumMedia" in form):
        return "inbound", status
    return "other", status


def _delivery(payload: dict[str, Any]) -> Delivery:
    form = _flat(payload)
    sid = form.get("MessageSid", "").strip()
    if not sid or len(sid) > 64 or not sid.isprintable() or " " in sid:
        raise InvalidWebhook("MessageSid is missing or malformed")
    kind, status = _kind(form)
    if kind == "inbound":
        if not form.get("From") or not form.get("To"):
            raise InvalidWebhook("an incoming message needs From and To")
        return Delivery(f"tw:{sid}", f"tw:{form['To']}:{form['From']}", payload)
    if kind == "status":
        conversation = f"tw:{form.get('From', '')}:{form.get('To', '')}"
        return Delivery(f"tw:{sid}:{status}", conversation, payload)
    return Delivery(f"tw:{sid}:{status or 'other'}", None, payload)


def _status_error(form: Mapping[str, str], status: str) -> str:
    code = form.get("ErrorCode", "").strip()
    message = (form.get("ErrorMessage") or form.get("ChannelStatusMessage") or "").strip()
    reason = f"Twilio: message {status}"
    if code:
        reason += f" (error {code})"
    if message:
        reason += f": {message}"
    return reason


def _content(form: Mapping[str, str], sid: str) -> tuple[str, tuple[MediaRef, ...]]:
    """Text (Body, a button's text, a location line) and the media of an incoming message."""
    media: list[MediaRef] = []
    for index in range(min(_int(form.get("NumMedia")), MAX_MEDIA_MMS)):
        url = form.get(f"MediaUrl{index}", "").strip()
        if not url:
            continue
        mime = normalize_mime_type(form.get(f"MediaContentType{index}"))
        media.append(MediaRef(url, mime, _media_name(url, mime, sid, index), None))
    parts = [form.get("Body") or form.get("ButtonText") or ""]
    lat, lon = form.get("Latitude", "").strip(), form.get("Longitude", "").strip()
    if _is_coordinate(lat) and _is_coordinate(lon):
        title = ", ".join(p for p in (form.get("Label"), form.get("Address")) if p)
        parts.append(
            f"[location] {title} https://maps.google.com/?q={lat},{lon}".replace("  ", " ")
        )
    text = "\n".join(p for p in parts if p)
    if not text and not media:
        kind = form.get("MessageType", "").strip()
        text = f"[unsupported {kind} message]" if kind else "[unsupported message]"
    return text, tuple(media)


def _media_name(url: str, mime: str, sid: str, index: int) -> str:
    """Twilio gives no file name: the media SID (last URL segment) with an extension."""
    last = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    stem = last if _MEDIA_SID.fullmatch(last) else f"{sid}_{index}"
    extension = mimetypes.guess_extension(mime.split(";")[0]) or ".bin"
    return stem + extension


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _number(address: str) -> str:
    """`whatsapp:+31612345678` → `+31612345678`: the display name when no ProfileName came."""
    return address.split(":", 1)[1] if ":" in address else address


def _received_at(form: Mapping[str, str]) -> datetime:
    stamp = form.get(RECEIVED_AT)
    if stamp:
        try:
            when = datetime.fromisoformat(stamp)
        except ValueError:
            pass
        else:
            return when if when.tzinfo else when.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _is_coordinate(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _int(value: Any) -> int:
    try:
        return max(0, int(str(value).strip()))
    except ValueError:
        return 0


def _twilio_date(value: Any) -> datetime | None:
    """Twilio's RFC 2822 dates (`Thu, 30 Jul 2015 20:12:31 +0000`), aware."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# --- HTTP helpers -----------------------------------------------------------------------------


def _basic(creds: Mapping[str, Any]) -> tuple[str, str]:
    return str(creds["account_sid"]), str(creds["auth_token"])


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def _json_object(content: bytes | None) -> dict[str, Any]:
    if not content:
        return {}
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


async def _read_capped(response: httpx2.Response, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error(response: httpx2.Response, body: Mapping[str, Any], what: str) -> Exception:
    """Twilio's answer mapped onto the provider error tree (§4.5)."""
    status = response.status_code
    code = _int(body.get("code")) or None
    message = str(body.get("message") or f"HTTP {status}")
    text = f"Twilio {what}: {message}" + (f" (error {code})" if code else "")
    if status == 429 or code == 20429:
        return ProviderTransient(text, retry_after=_retry_after(response))
    if status == 401 or code == 20003:
        return ProviderAuthError(text)
    if code in UNREACHABLE_CODES:
        return RecipientUnreachable(text)
    if status >= 500:
        return ProviderTransient(text, maybe_delivered=True)
    return ProviderPermanent(text)


if TYPE_CHECKING:

    def _satisfies_protocol(provider: TwilioProvider) -> ProviderAdapter:
        return provider

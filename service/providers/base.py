"""What every chat provider implements, and the normalized events they produce.

A provider is one module with one class that satisfies `ProviderAdapter`: it checks a channel's
credentials, verifies and splits incoming webhooks, parses them into `InboundMessage` and
`StatusEvent`, fetches media, sends messages and (un)registers its webhook. Everything else
(dedupe, ordering, media re-hosting, statuses, Pipedrive) lives once in the shared layer.

Errors, drawn as a tree:

    ProviderError
    ├── ProviderTransient (TransientError)   retry: 429 with `retry_after`, 5xx, timeouts
    └── ProviderPermanent (PermanentError)   no retry: the message fails
        ├── RecipientUnreachable             blocked the bot, outside a reply window, ...
        └── ProviderAuthError                the channel's credentials are refused
    InvalidWebhook (ValueError)              the body is not a webhook we can read: 400
    InvalidCredentials (ValueError)          `channels add` with unusable credentials: 400
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from service.errors import PdbridgeError, PermanentError, TransientError
from service.models import Channel, Participant


class ProviderError(PdbridgeError):
    """A provider API call failed."""


class ProviderTransient(ProviderError, TransientError):
    """`maybe_delivered`: the request may have been processed (a timeout after sending, a 5xx),
    so resending could duplicate a message; False only when it certainly was not (a 429, a
    refused connection)."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, maybe_delivered: bool = False
    ) -> None:
        TransientError.__init__(self, message, retry_after=retry_after)
        self.maybe_delivered = maybe_delivered


class ProviderPermanent(ProviderError, PermanentError):
    """The provider refused for good; the reason is fit to show next to the failed message."""


class RecipientUnreachable(ProviderPermanent):
    """The customer cannot be reached (blocked the bot, left, outside the reply window)."""


class ProviderAuthError(ProviderPermanent):
    """The channel's credentials are no longer accepted."""


class InvalidWebhook(ValueError):
    """A webhook body we cannot read; the message is the reason (for a 400)."""


class InvalidCredentials(ValueError):
    """Channel credentials that are missing fields or refused by the provider."""


@dataclass(frozen=True, slots=True)
class MediaRef:
    """A file at the provider, to be downloaded by the worker and re-hosted."""

    ref: str
    mime_type: str
    name: str
    size: int | None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A customer's message, normalized. Ids are namespaced (chat-providers.md §1.2)."""

    conversation_id: str
    address: str
    message_id: str
    provider_message_id: str
    sender: Participant
    text: str
    created_at: datetime
    media: tuple[MediaRef, ...] = ()
    link: str = ""


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A delivery status for one of our outgoing messages."""

    provider_message_id: str
    status: str
    error: str | None = None


Event = InboundMessage | StatusEvent


@dataclass(frozen=True, slots=True)
class Delivery:
    """One unit of a webhook body to record and relay: its dedupe key, the conversation it
    belongs to (None: nothing to relay), and the raw piece the worker will parse."""

    dedupe_key: str
    conversation_id: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutgoingFile:
    """A file to send; `url` is our signed, expiring link to it, for providers that fetch files
    themselves (Twilio's MediaUrl) instead of taking an upload. `data` is None when the
    adapter said it only needs the link (`sends_files_by_url`): the file is never read then."""

    name: str
    mime_type: str
    data: bytes | None
    url: str | None = None

    @property
    def content(self) -> bytes:
        """The bytes to upload; a file passed by link only has none to give."""
        if self.data is None:
            raise ProviderPermanent(f"file {self.name} was passed by link only, not read")
        return self.data


@dataclass
class SendProgress:
    """The parts of one outgoing message the provider has already accepted.

    An adapter sends a message as numbered parts (a long text split, then each file) in an order
    that depends only on the message, and passes each through `part`: a part already sent is
    skipped (its id comes back), a new one is sent and then `record`ed at once. So a send that
    stops half-way (a 429 on the third part) resumes at that part and never repeats the others.
    """

    sent: list[str] = field(default_factory=list)
    record: Callable[[int, str], Awaitable[None]] | None = None

    async def part(self, index: int, send: Callable[[], Awaitable[str]]) -> str:
        if index < len(self.sent):
            return self.sent[index]
        provider_id = await send()
        if self.record is not None:
            await self.record(index, provider_id)
        self.sent.append(provider_id)
        return provider_id

    def done(self, index: int) -> bool:
        """Was part `index` sent already (so its preparation, an upload, can be skipped)?"""
        return index < len(self.sent)


class ProviderAdapter(Protocol):
    """One chat provider. Implementations are stateless apart from an HTTP client."""

    name: str
    #: Pipedrive's `provider_type` for the channel (`whatsapp`, `facebook` or `other`).
    pipedrive_provider_type: str
    template_support: bool
    #: How long after the customer's last message a reply is allowed (WhatsApp: 24 h); None
    #: when there is no window. Becomes `reply_by` on every message of the conversation.
    #: `reply_window_for` may refine it per channel (Twilio: only its WhatsApp senders).
    reply_window: timedelta | None
    #: True when one webhook URL can carry several channels' traffic (see `shares_webhooks`).
    may_share_webhooks: bool
    #: True when the provider fetches every file from our signed link itself (Twilio): the
    #: worker then passes `OutgoingFile.url` only and never reads the file from the store.
    sends_files_by_url: bool

    def check_credentials(self, credentials: Mapping[str, Any]) -> dict[str, Any]:
        """The credentials to store, or InvalidCredentials naming what is missing."""
        ...

    async def describe_account(self, credentials: Mapping[str, Any]) -> tuple[str, str]:
        """(account id, display name) as the provider knows them; checks the credentials."""
        ...

    def new_webhook_secret(self) -> str | None:
        """A secret to register with the webhook, when the provider takes one (Telegram)."""
        ...

    def verify(self, channel: Channel, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        """Is this request really from the provider for this channel? Constant time."""
        ...

    def split(self, channel: Channel, body: bytes, content_type: str) -> list[Delivery]:
        """Cut a verified body into deliveries; InvalidWebhook when it cannot be read."""
        ...

    def parse(self, channel: Channel, payload: dict[str, Any]) -> list[Event]:
        """Turn one recorded delivery into events (may be empty: unsupported kinds)."""
        ...

    async def fetch_media(self, channel: Channel, media: MediaRef) -> bytes: ...

    async def send(
        self,
        channel: Channel,
        address: str,
        text: str,
        files: Sequence[OutgoingFile],
        progress: SendProgress | None = None,
    ) -> str:
        """Send to the customer at `address`, part by part through `progress` (see
        SendProgress); returns the provider's id of the first part."""
        ...

    async def register_webhook(self, channel: Channel, url: str) -> None:
        """Point the provider at `url`; a provider configured by hand (Meta) does nothing."""
        ...

    async def remove_webhook(self, channel: Channel) -> None: ...

    def handshake(self, channel: Channel, params: Mapping[str, str]) -> str | None:
        """Answer to a GET verification request (Meta's hub.challenge), None to refuse (403)."""
        ...

    async def list_templates(self, channel: Channel) -> list[dict[str, str]]:
        """Approved message templates as `{id, name, content, language}`; [] when none."""
        ...

    def reply_window_for(self, channel: Channel) -> timedelta | None:
        """The reply window of this channel (usually `reply_window`)."""
        ...

    def shares_webhooks(self, channel: Channel, other: Channel) -> bool:
        """Can a webhook sent to `channel`'s URL carry traffic for `other`? (Meta sends every
        number of one app to the app's single callback URL.)"""
        ...

    async def backfill(self, channel: Channel, since: datetime) -> list[Delivery]:
        """Inbound traffic since `since` fetched from the provider (after downtime), as the same
        deliveries its webhooks would have produced; [] where the provider offers no listing."""
        ...

"""Every body pdbridge sends to Pipedrive about messages, built in one place.

The `receive` call (ChannelsReceiveMessageRequest) and the manifest answers (getConversations,
getConversationById, getMessageById) show the same message the same way: one status mapping,
one attachment shape, one time format each. Our internal statuses never leak: Pipedrive's enum is
`sent`, `delivered`, `read`, `failed`, and an outgoing message we are still handing to the provider
(`pending`, `sending`) is shown as `sent`, which is what postMessage's answer already told it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from service.media import media_url
from service.models import Channel, Conversation, Message, StoredAttachment

if TYPE_CHECKING:
    from service.context import Services

#: The documented `created_at`/`reply_by` form for `receive` (UTC, minutes; contract §7.3).
RECEIVE_TIME_FORMAT = "%Y-%m-%d %H:%M"
#: The statuses Pipedrive knows; anything else is shown as the first of them.
PIPEDRIVE_STATUSES = ("sent", "delivered", "read", "failed")


def pipedrive_status(status: str) -> str:
    """Our status as Pipedrive may see it (see the module docstring)."""
    return status if status in PIPEDRIVE_STATUSES else "sent"


def receive_time(at: datetime) -> str:
    return at.strftime(RECEIVE_TIME_FORMAT)


def iso_time(at: datetime) -> str:
    """The manifest endpoints' ISO 8601 form, UTC with a `Z`."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def attachment(svc: Services, stored: StoredAttachment) -> dict[str, Any]:
    """An attachment as Pipedrive gets it: a signed link of ours, fresh on every call."""
    return {
        "id": stored.id,
        "type": stored.mime_type,
        "name": stored.name,
        "size": stored.size,
        "url": media_url(
            svc.settings.base_url, svc.crypto, stored.key, stored.mime_type, stored.name
        ),
        "preview_url": None,
        "link_expires": True,
    }


def reply_deadline(svc: Services, channel: Channel, conversation: Conversation) -> datetime | None:
    """The customer's last message plus the provider's reply window (WhatsApp: 24 h)."""
    window: timedelta | None = svc.adapter(channel.provider).reply_window_for(channel)
    if window is None or conversation.last_inbound_at is None:
        return None
    return conversation.last_inbound_at + window


def receive_body(
    svc: Services, channel: Channel, conversation: Conversation, message: Message
) -> dict[str, Any]:
    """The `receive` body (ChannelsReceiveMessageRequest) for a message at its current status."""
    body: dict[str, Any] = {
        "id": message.external_id,
        "channel_id": channel.provider_channel_id,
        "sender_id": message.sender_id,
        "conversation_id": conversation.external_id,
        "message": message.text,
        "status": pipedrive_status(message.status),
        "created_at": receive_time(message.created_at),
        "attachments": [attachment(svc, a) for a in message.attachments],
    }
    if conversation.link:
        body["conversation_link"] = conversation.link
    reply_by = reply_deadline(svc, channel, conversation)
    if reply_by is not None:
        body["reply_by"] = receive_time(reply_by)
    return body


def message(svc: Services, stored: Message) -> dict[str, Any]:
    """A message as the manifest endpoints answer it."""
    return {
        "id": stored.external_id,
        "status": pipedrive_status(stored.status),
        "created_at": iso_time(stored.created_at),
        "message": stored.text,
        "sender_id": stored.sender_id,
        "attachments": [attachment(svc, a) for a in stored.attachments],
    }


def conversation(
    svc: Services, stored: Conversation, page: list[Message], next_cursor: str | None
) -> dict[str, Any]:
    """A conversation with one page of its messages, as the manifest endpoints answer it."""
    return {
        "id": stored.external_id,
        "link": stored.link,
        "status": stored.status,
        "seen": True,
        "next_messages_cursor": next_cursor,
        "messages": [message(svc, m) for m in page],
        "participants": [
            {
                "id": p.external_id,
                "name": p.name,
                "role": p.role,
                **({"avatar_url": p.avatar_url} if p.avatar_url else {}),
            }
            for p in stored.participants
        ],
    }

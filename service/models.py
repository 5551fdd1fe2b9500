"""The bridge's normalized domain, shared by every provider and by the Pipedrive side."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Provider = Literal["telegram", "whatsapp", "twilio"]
Role = Literal["source_user", "end_user"]
Direction = Literal["in", "out"]
#: `pending` and `sending` are ours (an outgoing message not yet accepted by the provider, and
#: one being handed to it); the rest are Pipedrive's enum.
Status = Literal["pending", "sending", "sent", "delivered", "read", "failed"]

_ID_PREFIX = {"telegram": "tg", "whatsapp": "wa", "twilio": "tw"}
_RANK = {"pending": 0, "sending": 0.5, "sent": 1, "delivered": 2, "read": 3}


def status_advances(current: str, new: str) -> bool:
    """Status only moves forward: pending < sent < delivered < read; `failed` ends any status
    below `delivered` (a message already delivered cannot fail any more). Equal is no move."""
    if current == "failed" or current == new:
        return False
    if new == "failed":
        return _RANK.get(current, 0) <= _RANK["sent"]
    return _RANK.get(new, -1) > _RANK.get(current, 0)


@dataclass(frozen=True, slots=True)
class Channel:
    id: int
    provider_channel_id: str
    provider: Provider
    installation_id: int
    name: str
    credentials: dict[str, Any]
    webhook_secret: str | None
    account_id: str
    account_name: str
    pipedrive_channel_id: str | None
    status: str
    created_at: datetime
    #: `channels`, `notes`, or None (follow PIPEDRIVE_SINK); see service.sinks.
    sink: str | None = None
    sink_moved_at: datetime | None = None
    #: Notes sink: create a Pipedrive person when none matches; None follows the setting.
    create_persons: bool | None = None

    @property
    def source_user_id(self) -> str:
        """The business side's participant id in every conversation of this channel
        (namespaced as chat-providers.md §1.2 suggests: `tg:`, `wa:`, `tw:`)."""
        return f"{_ID_PREFIX[self.provider]}:biz:{self.account_id}"

    def as_json(self, webhook_url: str) -> dict[str, Any]:
        """What the admin API shows: no credentials."""
        return {
            "provider_channel_id": self.provider_channel_id,
            "provider": self.provider,
            "name": self.name,
            "account_id": self.account_id,
            "account_name": self.account_name,
            "pipedrive_channel_id": self.pipedrive_channel_id,
            "status": self.status,
            "webhook_url": webhook_url,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Participant:
    external_id: str
    name: str
    role: Role
    avatar_url: str | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    id: int
    channel_id: int
    external_id: str
    address: str
    link: str
    status: str
    last_inbound_at: datetime | None
    last_activity_at: datetime
    participants: tuple[Participant, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    """A re-hosted file: `key` names it in the media store; Pipedrive gets a signed link."""

    id: str
    key: str
    mime_type: str
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    channel_id: int
    conversation_id: int
    external_id: str
    provider_message_id: str | None
    direction: Direction
    sender_id: str
    text: str
    attachments: tuple[StoredAttachment, ...]
    status: str
    pushed_status: str | None
    error: str | None
    created_at: datetime

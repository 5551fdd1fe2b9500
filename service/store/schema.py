"""The tables, as SQLAlchemy Core metadata; Alembic migrations create them.

A migration is the source of truth for the database; this module must describe the same shape
(tests/store/test_migrations.py checks that the two agree on both backends).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Work that ran out of retries or failed for good, kept with its payload so it can be replayed.
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(100), nullable=False),
    sa.Column("job_id", sa.String(200), nullable=True),
    sa.Column("company_id", sa.BigInteger, nullable=True),
    sa.Column("channel", sa.String(100), nullable=True),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("tries", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("replayed_at", UTCDateTime, nullable=True),
    sa.Column("replay_count", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_dead_letters_created_at", "created_at"),
)

#: One row per (company, user) that installed the app, or the implicit single-company one.
#: Tokens and the webhook password are encrypted (service.crypto); never stored in clear.
installations = sa.Table(
    "installations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("company_id", sa.BigInteger, nullable=False),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("auth_kind", sa.String(20), nullable=False),
    sa.Column("api_domain", sa.String(255), nullable=False),
    sa.Column("company_domain", sa.String(255), nullable=True),
    sa.Column("scopes", sa.Text, nullable=False, server_default=""),
    sa.Column("access_token", sa.Text, nullable=True),
    sa.Column("refresh_token", sa.Text, nullable=True),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("token_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("status_reason", sa.Text, nullable=True),
    sa.Column("webhook_user", sa.String(64), nullable=True),
    sa.Column("webhook_password", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("company_id", "user_id", name="uq_installations_company_user"),
    sa.UniqueConstraint("webhook_user", name="uq_installations_webhook_user"),
)

#: Authorization codes already exchanged, so a repeated callback finds its installation
#: instead of burning a second exchange (codes are single use). Only a hash is kept.
oauth_codes = sa.Table(
    "oauth_codes",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column(
        "installation_id",
        sa.Integer,
        sa.ForeignKey("installations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

#: The app webhooks we created in Pipedrive for an installation (reconciled periodically).
pipedrive_webhooks = sa.Table(
    "pipedrive_webhooks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "installation_id",
        sa.Integer,
        sa.ForeignKey("installations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("pipedrive_webhook_id", sa.BigInteger, nullable=False),
    sa.Column("event_action", sa.String(20), nullable=False),
    sa.Column("event_object", sa.String(40), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint(
        "installation_id", "event_action", "event_object", name="uq_pipedrive_webhooks_event"
    ),
)

#: Every inbound delivery (Pipedrive or provider webhook), recorded before it is acknowledged;
#: the unique key is what makes a redelivery harmless.
inbound_deliveries = sa.Table(
    "inbound_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(20), nullable=False),
    sa.Column("dedupe_key", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("job", sa.String(100), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    #: For chat messages: deliveries of one conversation are relayed in this column's id order.
    sa.Column("conversation_key", sa.String(300), nullable=True),
    sa.UniqueConstraint("source", "dedupe_key", name="uq_inbound_deliveries_key"),
    sa.Index("ix_inbound_deliveries_status_received", "status", "received_at"),
    sa.Index("ix_inbound_deliveries_conversation", "conversation_key", "status", "id"),
)

#: The bridge's references to Pipedrive persons (a chat participant is linked to a person);
#: kept in step when Pipedrive merges persons.
person_links = sa.Table(
    "person_links",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("company_id", sa.BigInteger, nullable=False),
    sa.Column("person_id", sa.BigInteger, nullable=False),
    sa.Column("ref_kind", sa.String(40), nullable=False),
    sa.Column("ref_id", sa.String(200), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("company_id", "ref_kind", "ref_id", name="uq_person_links_ref"),
    sa.Index("ix_person_links_company_person", "company_id", "person_id"),
)

#: A connected provider account (a Telegram bot, a WhatsApp number, a Twilio sender).
#: `provider_channel_id` is ours (a UUID), globally unique, and what Pipedrive knows it by.
channels = sa.Table(
    "channels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("provider_channel_id", sa.String(64), nullable=False),
    sa.Column("provider", sa.String(20), nullable=False),
    sa.Column(
        "installation_id",
        sa.Integer,
        sa.ForeignKey("installations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("credentials", sa.Text, nullable=False),
    sa.Column("webhook_secret", sa.Text, nullable=True),
    sa.Column("account_id", sa.String(100), nullable=False),
    sa.Column("account_name", sa.String(255), nullable=False),
    sa.Column("pipedrive_channel_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    #: `channels` or `notes`; null follows PIPEDRIVE_SINK. `sink_moved_at`: when `auto` moved it.
    sa.Column("sink", sa.String(10), nullable=True),
    sa.Column("sink_moved_at", UTCDateTime, nullable=True),
    #: Notes sink: create a person when none matches; null follows NOTES_CREATE_PERSONS.
    sa.Column("create_persons", sa.Boolean, nullable=True),
    sa.UniqueConstraint("provider_channel_id", name="uq_channels_provider_channel_id"),
)

#: A two-party chat on a channel; `external_id` is the id Pipedrive sees (namespaced).
conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "channel_id", sa.Integer, sa.ForeignKey("channels.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("external_id", sa.String(200), nullable=False),
    sa.Column("address", sa.String(200), nullable=False),
    sa.Column("link", sa.String(500), nullable=False, server_default=""),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("last_inbound_at", UTCDateTime, nullable=True),
    sa.Column("last_activity_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("channel_id", "external_id", name="uq_conversations_channel_external"),
    sa.Index("ix_conversations_channel_activity", "channel_id", "last_activity_at", "id"),
)

#: The people of a conversation: exactly one `source_user` (the business) and the `end_user`.
participants = sa.Table(
    "participants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "conversation_id",
        sa.Integer,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("external_id", sa.String(200), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("avatar_url", sa.String(500), nullable=True),
    sa.UniqueConstraint("conversation_id", "external_id", name="uq_participants_conv_external"),
    sa.Index("ix_participants_external", "external_id"),
)

#: Messages both ways. `external_id` is the stable id Pipedrive sees (derived from the provider's
#: id inbound, ours outbound); `pushed_status` is the last status Pipedrive was told.
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "channel_id", sa.Integer, sa.ForeignKey("channels.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column(
        "conversation_id",
        sa.Integer,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("external_id", sa.String(200), nullable=False),
    sa.Column("provider_message_id", sa.String(200), nullable=True),
    sa.Column("direction", sa.String(10), nullable=False),
    sa.Column("sender_id", sa.String(200), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("attachments", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("pushed_status", sa.String(20), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("channel_id", "external_id", name="uq_messages_channel_external"),
    sa.Index("ix_messages_conversation_id", "conversation_id", "id"),
    sa.Index("ix_messages_outbox", "direction", "status", "updated_at"),
    sa.Index("ix_messages_created_at", "created_at"),
)

#: The provider messages an outgoing message went out as (a long text is split, files go one
#: by one): each part is recorded as soon as the provider accepted it, so it is never sent again.
message_parts = sa.Table(
    "message_parts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "message_id", sa.Integer, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("channel_id", sa.Integer, nullable=False),
    sa.Column("part_index", sa.Integer, nullable=False),
    sa.Column("provider_message_id", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("message_id", "part_index", name="uq_message_parts_message_id"),
    sa.Index("ix_message_parts_provider", "channel_id", "provider_message_id"),
)

#: Pipedrive API tokens spent per company and UTC day: the durable roll-up of the Redis ledger
#: (service.pipedrive.ledger), so a day's spend survives a Redis flush. `budget` and
#: `budget_left` are the daily-budget figures last seen (null when Pipedrive never said).
installation_api_usage = sa.Table(
    "installation_api_usage",
    metadata,
    sa.Column("company_id", sa.BigInteger, nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("calls", sa.BigInteger, nullable=False),
    sa.Column("budget", sa.BigInteger, nullable=True),
    sa.Column("budget_left", sa.BigInteger, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("company_id", "day", name="pk_installation_api_usage"),
)

#: Notes sink: one Pipedrive note per conversation and window of time. The row (with its
#: `marker`, which the note's content carries) is the intent, written before the note is created;
#: `revision` counts changes to its lines and `written_revision` the last one Pipedrive has.
note_windows = sa.Table(
    "note_windows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "conversation_id",
        sa.Integer,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("company_id", sa.BigInteger, nullable=False),
    sa.Column("marker", sa.String(64), nullable=False),
    sa.Column("note_id", sa.BigInteger, nullable=True),
    sa.Column("person_id", sa.BigInteger, nullable=True),
    sa.Column("deal_id", sa.BigInteger, nullable=True),
    sa.Column("deal_checked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("closes_at", UTCDateTime, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
    sa.Column("written_revision", sa.Integer, nullable=False, server_default="0"),
    sa.Column("post_started_at", UTCDateTime, nullable=True),
    sa.Column("written_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("marker", name="uq_note_windows_marker"),
    sa.Index("ix_note_windows_conversation", "conversation_id", "closes_at"),
    sa.Index("ix_note_windows_company_note", "company_id", "note_id"),
)

#: Notes sink: which message is a line of which note (a message is a line of one note only).
note_lines = sa.Table(
    "note_lines",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "window_id",
        sa.Integer,
        sa.ForeignKey("note_windows.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column(
        "message_id", sa.Integer, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    ),
    sa.UniqueConstraint("message_id", name="uq_note_lines_message_id"),
    sa.Index("ix_note_lines_window", "window_id", "id"),
)

#: Tombstones of erased messages (a conversation deleted in Pipedrive, a deleted person): a
#: provider's late redelivery of one of them is dropped instead of bringing the history back.
#: Pruned with the delivery records, after `RETENTION_PAYLOAD_DAYS` (the dedupe window).
erased_messages = sa.Table(
    "erased_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel_id", sa.Integer, nullable=False),
    sa.Column("external_id", sa.String(200), nullable=False),
    sa.Column("erased_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("channel_id", "external_id", name="uq_erased_messages_channel_id"),
    sa.Index("ix_erased_messages_erased_at", "erased_at"),
)

#: A person deleted in Pipedrive (v1 `deleted.person`) whose conversations are erased once
#: `due_at` passes, unless a merge moved the person's links to the survivor meanwhile: v1 sends a
#: merge as `deleted` for the merged-away person, possibly before the `merged` that explains it.
person_erasures = sa.Table(
    "person_erasures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("company_id", sa.BigInteger, nullable=False),
    sa.Column("person_id", sa.BigInteger, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("company_id", "person_id", name="uq_person_erasures_company_id"),
    sa.Index("ix_person_erasures_due_at", "due_at"),
)

#: Re-hosted files when `MEDIA_STORE=database`: one row per file, its bytes in ordered chunks
#: (so a file is streamed a chunk at a time, never read whole to serve it).
media_objects = sa.Table(
    "media_objects",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("chunks", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

media_chunks = sa.Table(
    "media_chunks",
    metadata,
    sa.Column(
        "key",
        sa.String(200),
        sa.ForeignKey("media_objects.key", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

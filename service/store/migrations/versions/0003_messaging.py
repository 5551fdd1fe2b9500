"""Messaging: channels, conversations, participants, messages; deliveries get a conversation key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.store.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("provider_channel_id", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("installation_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("credentials", sa.Text, nullable=False),
        sa.Column("webhook_secret", sa.Text, nullable=True),
        sa.Column("account_id", sa.String(100), nullable=False),
        sa.Column("account_name", sa.String(255), nullable=False),
        sa.Column("pipedrive_channel_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_channels"),
        sa.ForeignKeyConstraint(
            ["installation_id"],
            ["installations.id"],
            name="fk_channels_installation_id_installations",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("provider_channel_id", name="uq_channels_provider_channel_id"),
    )
    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("address", sa.String(200), nullable=False),
        sa.Column("link", sa.String(500), nullable=False, server_default=""),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("last_inbound_at", UTCDateTime, nullable=True),
        sa.Column("last_activity_at", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["channels.id"],
            name="fk_conversations_channel_id_channels",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("channel_id", "external_id", name="uq_conversations_channel_external"),
    )
    op.create_index(
        "ix_conversations_channel_activity",
        "conversations",
        ["channel_id", "last_activity_at", "id"],
    )
    op.create_table(
        "participants",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", sa.Integer, nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("avatar_url", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_participants"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_participants_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("conversation_id", "external_id", name="uq_participants_conv_external"),
    )
    op.create_index("ix_participants_external", "participants", ["external_id"])
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("conversation_id", sa.Integer, nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["channels.id"],
            name="fk_messages_channel_id_channels",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("channel_id", "external_id", name="uq_messages_channel_external"),
    )
    op.create_index("ix_messages_conversation_id", "messages", ["conversation_id", "id"])
    with op.batch_alter_table("inbound_deliveries") as batch:
        batch.add_column(sa.Column("conversation_key", sa.String(300), nullable=True))
        batch.create_index(
            "ix_inbound_deliveries_conversation", ["conversation_key", "status", "id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("inbound_deliveries") as batch:
        batch.drop_index("ix_inbound_deliveries_conversation")
        batch.drop_column("conversation_key")
    op.drop_index("ix_messages_conversation_id", table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_participants_external", table_name="participants")
    op.drop_table("participants")
    op.drop_index("ix_conversations_channel_activity", table_name="conversations")
    op.drop_table("conversations")
    op.drop_table("channels")

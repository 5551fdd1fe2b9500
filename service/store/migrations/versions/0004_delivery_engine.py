"""Delivery engine: every sent part of an outgoing message, and the outbox sweeper's index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_parts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "message_id",
            sa.Integer,
            sa.ForeignKey(
                "messages.id",
                ondelete="CASCADE",
                name="fk_message_parts_message_id_messages",
            ),
            nullable=False,
        ),
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("part_index", sa.Integer, nullable=False),
        sa.Column("provider_message_id", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_message_parts"),
        sa.UniqueConstraint("message_id", "part_index", name="uq_message_parts_message_id"),
    )
    op.create_index(
        "ix_message_parts_provider", "message_parts", ["channel_id", "provider_message_id"]
    )
    op.create_index("ix_messages_outbox", "messages", ["direction", "status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_outbox", table_name="messages")
    op.drop_index("ix_message_parts_provider", table_name="message_parts")
    op.drop_table("message_parts")

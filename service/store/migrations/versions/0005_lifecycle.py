"""Lifecycle: tombstones of erased messages, person erasures waiting out a merge, and the
indexes retention prunes by.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel_id", sa.Integer, nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("erased_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_erased_messages"),
        sa.UniqueConstraint("channel_id", "external_id", name="uq_erased_messages_channel_id"),
    )
    op.create_index("ix_erased_messages_erased_at", "erased_messages", ["erased_at"])
    op.create_table(
        "person_erasures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("company_id", sa.BigInteger, nullable=False),
        sa.Column("person_id", sa.BigInteger, nullable=False),
        sa.Column("due_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_person_erasures"),
        sa.UniqueConstraint("company_id", "person_id", name="uq_person_erasures_company_id"),
    )
    op.create_index("ix_person_erasures_due_at", "person_erasures", ["due_at"])
    op.create_index("ix_messages_created_at", "messages", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_created_at", table_name="messages")
    op.drop_index("ix_person_erasures_due_at", table_name="person_erasures")
    op.drop_table("person_erasures")
    op.drop_index("ix_erased_messages_erased_at", table_name="erased_messages")
    op.drop_table("erased_messages")

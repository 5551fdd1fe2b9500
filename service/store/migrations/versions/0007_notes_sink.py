"""Notes sink: a sink per channel, and the notes (windows) and lines a conversation is written as.

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.store.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("sink", sa.String(10), nullable=True))
        batch.add_column(sa.Column("sink_moved_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("create_persons", sa.Boolean, nullable=True))
    op.create_table(
        "note_windows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", sa.Integer, nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_note_windows"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            ondelete="CASCADE",
            name="fk_note_windows_conversation_id_conversations",
        ),
        sa.UniqueConstraint("marker", name="uq_note_windows_marker"),
    )
    op.create_index(
        "ix_note_windows_conversation", "note_windows", ["conversation_id", "closes_at"]
    )
    op.create_index("ix_note_windows_company_note", "note_windows", ["company_id", "note_id"])
    op.create_table(
        "note_lines",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("window_id", sa.Integer, nullable=False),
        sa.Column("message_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_note_lines"),
        sa.ForeignKeyConstraint(
            ["window_id"],
            ["note_windows.id"],
            ondelete="CASCADE",
            name="fk_note_lines_window_id_note_windows",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            ondelete="CASCADE",
            name="fk_note_lines_message_id_messages",
        ),
        sa.UniqueConstraint("message_id", name="uq_note_lines_message_id"),
    )
    op.create_index("ix_note_lines_window", "note_lines", ["window_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_note_lines_window", table_name="note_lines")
    op.drop_table("note_lines")
    op.drop_index("ix_note_windows_company_note", table_name="note_windows")
    op.drop_index("ix_note_windows_conversation", table_name="note_windows")
    op.drop_table("note_windows")
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("create_persons")
        batch.drop_column("sink_moved_at")
        batch.drop_column("sink")

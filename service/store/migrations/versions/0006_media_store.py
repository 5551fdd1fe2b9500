"""Media in the database (`MEDIA_STORE=database`): files as ordered chunks of bytes.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.store.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media_objects",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_media_objects"),
    )
    op.create_table(
        "media_chunks",
        sa.Column(
            "key",
            sa.String(200),
            sa.ForeignKey(
                "media_objects.key", ondelete="CASCADE", name="fk_media_chunks_key_media_objects"
            ),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("key", "seq", name="pk_media_chunks"),
    )


def downgrade() -> None:
    op.drop_table("media_chunks")
    op.drop_table("media_objects")

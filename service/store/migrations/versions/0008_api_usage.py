"""API cost ledger: Pipedrive tokens spent per company and UTC day (the Redis ledger's roll-up).

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "installation_api_usage",
        sa.Column("company_id", sa.BigInteger, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.Column("budget", sa.BigInteger, nullable=True),
        sa.Column("budget_left", sa.BigInteger, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("company_id", "day", name="pk_installation_api_usage"),
    )


def downgrade() -> None:
    op.drop_table("installation_api_usage")

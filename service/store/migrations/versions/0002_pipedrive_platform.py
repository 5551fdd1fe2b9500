"""Pipedrive platform: installations, exchanged codes, app webhooks, inbound deliveries, links.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "installations",
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
        sa.PrimaryKeyConstraint("id", name="pk_installations"),
        sa.UniqueConstraint("company_id", "user_id", name="uq_installations_company_user"),
        sa.UniqueConstraint("webhook_user", name="uq_installations_webhook_user"),
    )
    op.create_table(
        "oauth_codes",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("installation_id", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name="pk_oauth_codes"),
        sa.ForeignKeyConstraint(
            ["installation_id"],
            ["installations.id"],
            name="fk_oauth_codes_installation_id_installations",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "pipedrive_webhooks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("installation_id", sa.Integer, nullable=False),
        sa.Column("pipedrive_webhook_id", sa.BigInteger, nullable=False),
        sa.Column("event_action", sa.String(20), nullable=False),
        sa.Column("event_object", sa.String(40), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pipedrive_webhooks"),
        sa.ForeignKeyConstraint(
            ["installation_id"],
            ["installations.id"],
            name="fk_pipedrive_webhooks_installation_id_installations",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "installation_id", "event_action", "event_object", name="uq_pipedrive_webhooks_event"
        ),
    )
    op.create_table(
        "inbound_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("job", sa.String(100), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_inbound_deliveries"),
        sa.UniqueConstraint("source", "dedupe_key", name="uq_inbound_deliveries_key"),
    )
    op.create_index(
        "ix_inbound_deliveries_status_received", "inbound_deliveries", ["status", "received_at"]
    )
    op.create_table(
        "person_links",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("company_id", sa.BigInteger, nullable=False),
        sa.Column("person_id", sa.BigInteger, nullable=False),
        sa.Column("ref_kind", sa.String(40), nullable=False),
        sa.Column("ref_id", sa.String(200), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_person_links"),
        sa.UniqueConstraint("company_id", "ref_kind", "ref_id", name="uq_person_links_ref"),
    )
    op.create_index("ix_person_links_company_person", "person_links", ["company_id", "person_id"])


def downgrade() -> None:
    op.drop_index("ix_person_links_company_person", table_name="person_links")
    op.drop_table("person_links")
    op.drop_index("ix_inbound_deliveries_status_received", table_name="inbound_deliveries")
    op.drop_table("inbound_deliveries")
    op.drop_table("pipedrive_webhooks")
    op.drop_table("oauth_codes")
    op.drop_table("installations")

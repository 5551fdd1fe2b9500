"""A `Channel` as the store would load it, for adapter tests that need no database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.models import Channel, Provider


def channel_for(
    provider: Provider,
    credentials: dict[str, Any],
    *,
    account_id: str,
    channel_id: int = 1,
    provider_channel_id: str | None = None,
    account_name: str = "Test account",
) -> Channel:
    return Channel(
        id=channel_id,
        provider_channel_id=provider_channel_id or f"ch_{provider}_{channel_id}",
        provider=provider,
        installation_id=1,
        name=provider.title(),
        credentials=dict(credentials),
        webhook_secret=None,
        account_id=account_id,
        account_name=account_name,
        pipedrive_channel_id=None,
        status="active",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

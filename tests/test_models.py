"""Message statuses only move forward; `failed` only ends a message not yet delivered."""

from __future__ import annotations

import pytest

from service.models import status_advances


@pytest.mark.parametrize(
    ("current", "new", "moves"),
    [
        ("pending", "sent", True),
        ("sent", "delivered", True),
        ("delivered", "read", True),
        ("sent", "read", True),
        ("read", "delivered", False),
        ("delivered", "sent", False),
        ("sent", "sent", False),
        ("pending", "failed", True),
        ("sent", "failed", True),
        ("delivered", "failed", False),
        ("failed", "sent", False),
        ("failed", "read", False),
    ],
)
def test_status_order(current: str, new: str, moves: bool) -> None:
    """Each pair moves or not as the forward-only rule says."""
    assert status_advances(current, new) is moves

"""Telegram delivers every webhook three times, the copies out of order (a redelivery arrives
after later updates), while agents answer: each message reaches Pipedrive once, in order."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.faults.checker import Ledger, size
from tests.faults.processes import running_service

pytestmark = pytest.mark.slow

CHATS = [5553001, 5553002]


def test_every_webhook_three_times_out_of_order(
    tmp_path: Path, sqlite_stack: tuple[str, str]
) -> None:
    database, redis_url = sqlite_stack
    rng = random.Random(9)  # noqa: S311 -- a reproducible shuffle, not cryptography
    with running_service(tmp_path, "run", redis_url, database) as service:
        ledger = Ledger(service)
        ledger.open(CHATS)
        n = size(4, 30)
        updates = []
        for i in range(1, n + 1):
            for chat in CHATS:
                ledger.message_ids[chat] += 1
                text = f"redelivered in {chat} #{i}"
                updates.append(service.text_update(chat, text, ledger.message_ids[chat]))
        # First copies in order; each of the two extra copies lands up to four updates later.
        keyed = [(10 * i, update) for i, update in enumerate(updates)]
        keyed += [(10 * i + rng.randint(1, 40), u) for i, u in enumerate(updates) for _ in "ab"]
        schedule = [update for _, update in sorted(keyed, key=lambda pair: pair[0])]
        for k, update in enumerate(schedule):
            assert ledger.deliver(update, retry_for=30)
            if k % 3 == 0:
                chat = CHATS[k % len(CHATS)]
                assert ledger.agent(chat, f"reply {k} to {chat}", retry_for=30)
        ledger.wait_settled(timeout=size(90, 300))
    ledger.check("redelivered 3x")

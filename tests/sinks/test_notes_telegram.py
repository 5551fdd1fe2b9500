"""The notes sink with Telegram: no phone, so the handle decides who the customer is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from service.store import person_links
from tests.messaging.harness import ADMIN, Stack, running_stack
from tests.pipedrive.bridge import standin

pytestmark = pytest.mark.anyio


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def tg() -> Iterator[TelegramStandin]:
    with TelegramStandin(bot_token="777005:notes-bot") as server:
        yield server


@pytest.fixture
async def telegram(
    stack: tuple[str, str], pd: PipedriveStandin, tg: TelegramStandin
) -> AsyncIterator[Stack]:
    async with running_stack(stack, pd, tg) as running:
        yield running


async def test_telegram_customers_are_matched_by_handle_or_created_by_name(
    telegram: Stack,
) -> None:
    """A customer whose `@username` a person carries in a custom field gets notes on that
    person; one without a match gets a new person named after the chat, and we keep the
    handle (Telegram gives no phone)."""
    known = telegram.pd.add_person("Jane Doe (CRM)", custom_fields={"telegram": "@jane"})
    response = await telegram.http.post(
        "/admin/channels",
        headers=ADMIN,
        json={"provider": "telegram", "company_id": 1001, "user_id": 2001, "name": "Bot",
              "credentials": {"bot_token": telegram.tg.bot_token}, "sink": "notes"},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    pcid = response.json()["provider_channel_id"]
    tg = telegram.tg
    await telegram.send_update(
        pcid, tg.text_update(update_id=1, chat_id=501, text="hi from jane", message_id=1)
    )
    await telegram.send_update(
        pcid,
        tg.text_update(
            update_id=2, chat_id=502, text="hi from max", message_id=1,
            first_name="Max", last_name=None, username=None,
        ),
    )  # fmt: skip
    await telegram.run_worker()
    [jane_note] = telegram.pd.notes_of(known["id"])
    assert "hi from jane" in jane_note["content"]
    [created] = [p for p in telegram.pd.persons if p["id"] != known["id"]]
    assert created["name"] == "Max"
    assert created["phones"] == []
    [max_note] = telegram.pd.notes_of(created["id"])
    assert "hi from max" in max_note["content"]
    handle = await person_links.person_for(
        telegram.bridge.services.db, company_id=1001, ref_kind="telegram", ref_id="tg:502"
    )
    assert handle == created["id"]

"""Fixtures for the operator console: the app in process (real database and Redis), a browser-like
client that keeps cookies, and a logged-in one."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx2
import pytest

from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from tests.conftest import ADMIN_TOKEN
from tests.messaging.harness import Stack, running_stack
from tests.pipedrive.bridge import PUBLIC_URL, Bridge, running_bridge, standin

UI = "/admin/ui"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Browser:
    """An operator's browser: its own cookie jar, on the app under test."""

    http: httpx2.AsyncClient
    csrf: str = ""

    async def login(self, token: str = ADMIN_TOKEN) -> httpx2.Response:
        answer = await self.http.post(f"{UI}/login", data={"token": token, "next": UI})
        if answer.status_code == 303:
            page = await self.http.get(UI)
            self.csrf = _CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        return answer

    async def post(self, path: str, csrf: str | None = None) -> httpx2.Response:
        """Submit a console form (its CSRF field unless `csrf` says otherwise)."""
        token = self.csrf if csrf is None else csrf
        return await self.http.post(path, data={"csrf": token} if token else {})


def browser_on(bridge: Bridge) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=bridge.http._transport,  # type: ignore[attr-defined]
        base_url=PUBLIC_URL,
    )


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def tg() -> Iterator[TelegramStandin]:
    with TelegramStandin(bot_token="777001:SECRET-bot-token") as server:
        yield server


@pytest.fixture
async def bridge(stack: tuple[str, str], pd: PipedriveStandin) -> AsyncIterator[Bridge]:
    """The service alone (nothing installed): enough for the console's own rules."""
    async with running_bridge(stack, pd) as running:
        yield running


@pytest.fixture
async def browser(bridge: Bridge) -> AsyncIterator[Browser]:
    async with browser_on(bridge) as http:
        yield Browser(http)


@pytest.fixture
async def world(
    stack: tuple[str, str], pd: PipedriveStandin, tg: TelegramStandin
) -> AsyncIterator[Stack]:
    """Installed, on a real socket, ready for a Telegram channel."""
    async with running_stack(stack, pd, tg) as running:
        yield running


@pytest.fixture
async def operator(world: Stack) -> AsyncIterator[Browser]:
    """A browser logged in to the console of `world`."""
    async with browser_on(world.bridge) as http:
        logged_in = Browser(http)
        assert (await logged_in.login()).status_code == 303
        yield logged_in

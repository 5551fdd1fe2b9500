"""pdbridge with a Pipedrive stand-in and a Telegram stand-in, for end-to-end messaging tests.

The app is served on a real socket in the test's own event loop (so the Pipedrive stand-in can
call the manifest endpoints while the test awaits), and workers run in that loop too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import uvicorn

from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from service.embedded_redis import free_port
from service.models import Channel
from service.store import channels
from tests.conftest import ADMIN_TOKEN
from tests.pipedrive.bridge import Bridge, running_bridge

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Stack:
    bridge: Bridge
    pd: PipedriveStandin
    tg: TelegramStandin
    server_url: str

    @property
    def http(self) -> httpx2.AsyncClient:
        return self.bridge.http

    async def add_channel(self, name: str = "Support bot") -> dict[str, Any]:
        return await connect_channel(
            self.bridge, "telegram", {"bot_token": self.tg.bot_token}, name=name
        )

    async def channel(self, provider_channel_id: str) -> Channel:
        found = await channels.get(
            self.bridge.services.db, self.bridge.services.crypto, provider_channel_id
        )
        assert found is not None
        return found

    async def send_update(
        self, provider_channel_id: str, update: dict[str, Any], *, secret: str | None = None
    ) -> httpx2.Response:
        """Deliver an update as Telegram does, with the secret the bridge registered."""
        assert self.tg.webhook is not None
        token = self.tg.webhook["secret_token"] if secret is None else secret
        return await self.http.post(
            f"/webhooks/telegram/{provider_channel_id}",
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": token},
        )

    async def run_worker(self, workers: int = 1) -> None:
        await self.bridge.run_worker(workers=workers)

    def manifest(self) -> dict[str, Any]:
        from service.pipedrive.manifest import manifest

        return manifest(self.server_url)


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port in the running loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def connect_channel(
    bridge: Bridge, provider: str, credentials: dict[str, Any], *, name: str = "Channel"
) -> dict[str, Any]:
    """`POST /admin/channels` for the installation `served_bridge` made; must succeed."""
    response = await bridge.http.post(
        "/admin/channels",
        headers=ADMIN,
        json={
            "provider": provider,
            "company_id": 1001,
            "user_id": 2001,
            "name": name,
            "credentials": credentials,
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@asynccontextmanager
async def served_bridge(
    stack: tuple[str, str], pd: PipedriveStandin, **overrides: Any
) -> AsyncIterator[tuple[Bridge, str]]:
    """The bridge on a real socket, Pipedrive's manifest pointing at it, installed for
    company 1001 / user 2001; yields the bridge and its URL."""
    from service.pipedrive.manifest import manifest

    async with running_bridge(stack, pd, **overrides) as bridge:
        app = bridge.http._transport.app  # type: ignore[attr-defined]
        async with serving(app) as url:
            pd.set_manifest(manifest(url))
            await bridge.install()
            yield bridge, url


@asynccontextmanager
async def running_stack(
    stack: tuple[str, str], pd: PipedriveStandin, tg: TelegramStandin
) -> AsyncIterator[Stack]:
    async with served_bridge(stack, pd, telegram_api_url=tg.base_url) as (bridge, url):
        yield Stack(bridge, pd, tg, url)

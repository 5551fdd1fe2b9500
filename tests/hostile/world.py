"""Two tenants, each with channels, behind the ASGI app in-process: the ground the hostile-input
and auth-matrix tests stand on.

Company 1001 (user 2001) has a Telegram, a WhatsApp and a Twilio channel; company 3003 (user 4004)
has a Telegram channel and a WhatsApp channel of another Meta app (another app secret). The
outside services are the stand-ins on real sockets; the store is a real database and the queue
a real Redis. `World.footprint()` is everything a request could have recorded or queued, so a
test can say "nothing changed".
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import sqlalchemy as sa

from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from service.media import LocalMediaStore, media_url
from service.store import channels, installations
from service.store.schema import metadata
from tests.conftest import ADMIN_TOKEN
from tests.pipedrive.bridge import CLIENT_ID, CLIENT_SECRET, PUBLIC_URL, Bridge, running_bridge
from tests.standins.twilio import TwilioStandin
from tests.standins.whatsapp import GraphStandin, sign_body

A, B = (1001, 2001), (3003, 4004)
OTHER_NUMBER = "106540352242999"
OTHER_APP_SECRET = "other-app-secret-of-company-b"
#: Tables a refused request must leave as they were (installations and channels are set up once).
RECORDS = (
    "inbound_deliveries",
    "conversations",
    "participants",
    "messages",
    "message_parts",
    "dead_letters",
    "person_links",
    "oauth_codes",
    "installations",
    "channels",
    "pipedrive_webhooks",
)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Tenant:
    company_id: int
    user_id: int
    webhook_user: str
    webhook_password: str
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class World:
    bridge: Bridge
    pd: PipedriveStandin
    tg: TelegramStandin
    wa: GraphStandin
    tw: TwilioStandin
    media_root: Path
    a: Tenant
    b: Tenant

    @property
    def http(self) -> httpx2.AsyncClient:
        return self.bridge.http

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @property
    def client_auth(self) -> dict[str, str]:
        return {"Authorization": basic(CLIENT_ID, CLIENT_SECRET)}

    def pcid(self, tenant: Tenant, provider: str) -> str:
        return str(tenant.channels[provider]["provider_channel_id"])

    def media_link(self, ttl_seconds: int = 600) -> str:
        """A signed link (path only) to a file that exists, valid for `ttl_seconds` from now
        (a negative ttl gives a link that has already expired)."""
        key = "hostile-fixture.txt"
        (self.media_root / key).write_bytes(b"hello")
        url = media_url(
            PUBLIC_URL, self.bridge.services.crypto, key, "text/plain", "a.txt", ttl_seconds
        )
        return url.removeprefix(PUBLIC_URL)

    def twilio_headers(self, path: str, form: dict[str, str]) -> dict[str, str]:
        return self.tw.webhook_headers(f"{PUBLIC_URL}{path}", form)

    def whatsapp_headers(self, body: bytes, app_secret: str | None = None) -> dict[str, str]:
        secret = app_secret or self.wa.app_secret
        return {"Content-Type": "application/json", "X-Hub-Signature-256": sign_body(secret, body)}

    async def footprint(self) -> dict[str, int]:
        """Rows per table, jobs in the queue, files in the media folder."""
        counts: dict[str, int] = {}
        async with self.bridge.services.db.engine.connect() as conn:
            for name in RECORDS:
                table = metadata.tables[name]
                counts[name] = int(
                    (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
                )
        counts["queued"] = await self.bridge.services.queue.depth()
        counts["media_files"] = sum(1 for p in self.media_root.iterdir() if p.is_file())
        return counts


async def _tenant(bridge: Bridge, company_id: int, user_id: int) -> Tenant:
    inst = await installations.find(bridge.services.db, company_id, user_id)
    assert inst is not None
    assert inst.webhook_user
    assert inst.webhook_password_encrypted
    password = bridge.services.crypto.decrypt(inst.webhook_password_encrypted)
    return Tenant(company_id, user_id, inst.webhook_user, password)


async def _channel(
    world: World, tenant: Tenant, provider: str, credentials: dict[str, Any]
) -> None:
    response = await world.http.post(
        "/admin/channels",
        headers=world.admin,
        json={
            "provider": provider,
            "company_id": tenant.company_id,
            "user_id": tenant.user_id,
            "name": f"{provider} of {tenant.company_id}",
            "credentials": credentials,
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    found = await channels.get(
        world.bridge.services.db, world.bridge.services.crypto, body["provider_channel_id"]
    )
    assert found is not None
    body["secret"] = found.webhook_secret
    tenant.channels[provider] = body


async def _second_bot(world: World, tenant: Tenant) -> None:
    """Company B's Telegram channel. The stand-in plays one bot, which the admin API will not
    connect twice, so this one is stored directly, as the admin call would have stored it."""
    services = world.bridge.services
    inst = await installations.find(services.db, tenant.company_id, tenant.user_id)
    assert inst is not None
    created = await channels.create(
        services.db,
        services.crypto,
        provider_channel_id=str(uuid.uuid4()),
        provider="telegram",
        installation_id=inst.id,
        name="telegram of B",
        credentials={"bot_token": "654321:OTHER-token"},
        webhook_secret="secret-of-company-b-bot-0123456789",
        account_id="654321",
        account_name="other_bot",
    )
    tenant.channels["telegram"] = {
        "provider_channel_id": created.provider_channel_id,
        "secret": created.webhook_secret,
    }


async def _conversation(world: World, tenant: Tenant) -> None:
    """A customer writes to the tenant's Telegram bot, so postMessage has a chat to answer."""
    update = world.tg.text_update(update_id=1, chat_id=777001, text="hello", message_id=1)
    response = await world.http.post(
        f"/webhooks/telegram/{world.pcid(tenant, 'telegram')}",
        json=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": tenant.channels["telegram"]["secret"]},
    )
    assert response.status_code == 200, response.text
    await world.bridge.run_worker()
    table = metadata.tables["conversations"]
    async with world.bridge.services.db.engine.connect() as conn:
        found = (await conn.execute(sa.select(table.c.external_id))).scalar_one()
    tenant.channels["telegram"]["conversation"] = found


@asynccontextmanager
async def world(stack: tuple[str, str], media_root: Path) -> AsyncIterator[World]:
    """Stand-ins, the bridge, two installations and their channels."""
    async with AsyncExitStack() as exit_stack:
        pd = exit_stack.enter_context(
            PipedriveStandin(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        )
        tg = exit_stack.enter_context(TelegramStandin())
        wa = exit_stack.enter_context(GraphStandin())
        wa.other_phone_numbers.add(OTHER_NUMBER)
        tw = exit_stack.enter_context(TwilioStandin())
        bridge = await exit_stack.enter_async_context(
            running_bridge(
                stack,
                pd,
                telegram_api_url=tg.base_url,
                whatsapp_graph_url=wa.graph_url,
                twilio_api_url=tw.base_url,
            )
        )
        store = LocalMediaStore(media_root)
        bridge.services.media = store
        bridge.http._transport.app.state.media_store = store  # type: ignore[attr-defined]
        await bridge.install(*A)
        await bridge.install(*B)
        here = World(
            bridge,
            pd,
            tg,
            wa,
            tw,
            media_root,
            await _tenant(bridge, *A),
            await _tenant(bridge, *B),
        )
        await _channel(here, here.a, "telegram", {"bot_token": tg.bot_token})
        await _channel(here, here.a, "whatsapp", wa.credentials)
        await _channel(here, here.a, "twilio", tw.credentials)
        await _second_bot(here, here.b)
        other_app = {
            **wa.credentials,
            "phone_number_id": OTHER_NUMBER,
            "app_secret": OTHER_APP_SECRET,
            "verify_token": "verify-token-of-company-b",
        }
        await _channel(here, here.b, "whatsapp", other_app)
        await _conversation(here, here.a)
        yield here

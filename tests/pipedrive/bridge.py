"""A pdbridge wired to a Pipedrive stand-in, for end-to-end tests of the platform features."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2

from jobs.worker import build_worker
from sandbox.pipedrive import PipedriveStandin
from service import queue as queue_module
from service.app import create_app
from service.config import Settings
from service.context import Services
from service.queue import Queue
from service.store import Database, installations
from service.store.installations import Installation
from service.store.migrate import upgrade
from tests.conftest import make_settings

CLIENT_ID = "bridge-client-id"
CLIENT_SECRET = "bridge-client-secret"
API_TOKEN = "personal-api-token-0123456789"
PUBLIC_URL = "https://bridge.example.com"


@dataclass
class Bridge:
    settings: Settings
    services: Services
    http: httpx2.AsyncClient
    pd: PipedriveStandin

    async def install(self, company_id: int = 1001, user_id: int = 2001) -> Installation:
        """The OAuth callback as the browser brings it, then the setup job (webhooks)."""
        response = await self.http.get(
            "/oauth/callback", params=await self.consent(company_id, user_id)
        )
        assert response.status_code == 200, response.text
        await self.run_worker()
        found = await installations.find(self.services.db, company_id, user_id)
        assert found is not None
        return found

    async def consent(self, company_id: int = 1001, user_id: int = 2001) -> dict[str, str]:
        """What the browser brings back to the callback: it starts at /oauth/install (keeping the
        state cookie in `self.http`) and the user clicks "Allow" at Pipedrive."""
        redirect = await self.http.get("/oauth/install")
        assert redirect.status_code == 302, redirect.text
        state = parse_qs(urlparse(redirect.headers["location"]).query)["state"][0]
        return {"code": self.pd.issue_code(company_id, user_id), "state": state}

    async def reload(self, inst: Installation) -> Installation:
        found = await installations.get(self.services.db, inst.id)
        assert found is not None
        return found

    async def run_worker(self, *extra: queue_module.RegisteredJob, workers: int = 1) -> None:
        """Run `workers` real arq workers side by side until the queue is empty."""
        running = [
            build_worker(self.settings, burst=True, extra_functions=extra, handle_signals=False)
            for _ in range(workers)
        ]
        try:
            await asyncio.gather(*(w.async_run() for w in running))
        finally:
            for w in running:
                await w.close()

    def webhook_auth(self, company_id: int = 1001, user_id: int = 2001) -> tuple[str, str]:
        """The Basic pair Pipedrive would send: what the bridge registered with the webhook."""
        for hook in self.pd.webhooks:
            if hook.get("http_auth_user"):
                return str(hook["http_auth_user"]), str(hook["http_auth_password"])
        raise AssertionError("no webhook with credentials was registered")


@asynccontextmanager
async def running_bridge(
    stack: tuple[str, str], pd: PipedriveStandin, **overrides: Any
) -> AsyncIterator[Bridge]:
    database_url, redis_url = stack
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "public_base_url": PUBLIC_URL,
        "pipedrive_client_id": CLIENT_ID,
        "pipedrive_client_secret": CLIENT_SECRET,
        "pipedrive_oauth_url": pd.base_url,
        "pipedrive_api_url": pd.base_url,
        "pipedrive_budget_probe_seconds": 1.0,
    }
    values.update(overrides)
    settings = make_settings(**values)
    db = Database(database_url)
    await upgrade(db)
    queue = await Queue.connect(redis_url)
    services = Services.create(settings, db=db, queue=queue)
    app = create_app(settings, services)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
        try:
            yield Bridge(settings, services, http, pd)
        finally:
            await services.close()


def standin(**kwargs: Any) -> PipedriveStandin:
    return PipedriveStandin(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **kwargs)


def jobs(*functions: Any) -> Sequence[queue_module.RegisteredJob]:
    return [queue_module.job(f) for f in functions]

"""The long-lived objects of a process, built once at start and shared by handlers and jobs."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httpx2

from service.config import Settings
from service.coordination import Coordination
from service.crypto import Crypto
from service.media import MediaStore
from service.media_stores import media_store_for
from service.metrics import Metrics
from service.pipedrive.client import PipedriveClient, http_client
from service.pipedrive.oauth import OAuthClient
from service.pipedrive.ratelimit import RateLimiter
from service.pipedrive.tokens import TokenManager
from service.providers import adapter_for
from service.providers.base import ProviderAdapter
from service.queue import Queue
from service.store import Database


@dataclass(slots=True)
class Services:
    """What a request handler or a job needs from the process: config, state, queue, clients."""

    settings: Settings
    db: Database
    queue: Queue
    crypto: Crypto
    http: httpx2.AsyncClient
    oauth: OAuthClient
    pipedrive: PipedriveClient
    media: MediaStore
    coordination: Coordination
    metrics: Metrics = field(default_factory=Metrics)
    owns_queue: bool = True
    following: asyncio.Task[None] | None = None

    def adapter(self, provider: str) -> ProviderAdapter:
        """The provider's adapter (raises UnknownProvider)."""
        return adapter_for(provider, self.settings, self.http)

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        db: Database,
        queue: Queue,
        metrics: Metrics | None = None,
        owns_queue: bool = True,
        media: MediaStore | None = None,
    ) -> Services:
        """Wire the clients around a database and a queue (the worker passes arq's own Redis)."""
        crypto = Crypto(settings.secret_keys)
        http = http_client(settings.http_timeout_seconds)
        oauth = OAuthClient(settings, http)
        tokens = TokenManager(db, queue.redis, crypto, oauth)
        pipedrive = PipedriveClient(settings, db, http, tokens, RateLimiter(queue.redis))
        return cls(
            settings=settings,
            db=db,
            queue=queue,
            crypto=crypto,
            http=http,
            oauth=oauth,
            pipedrive=pipedrive,
            media=media if media is not None else media_store_for(settings, db),
            coordination=Coordination(queue.redis),
            metrics=metrics or Metrics(),
            owns_queue=owns_queue,
        )

    @classmethod
    async def start(cls, settings: Settings, *, metrics: Metrics | None = None) -> Services:
        if settings.redis_url is None:
            raise RuntimeError("REDIS_URL is unset: `pdbridge run` starts an embedded Redis")
        queue = await Queue.connect(settings.redis_url)
        return cls.create(
            settings, db=Database(settings.database_url), queue=queue, metrics=metrics
        )

    def follow_invalidations(self) -> None:
        """Keep this process's cached channels and installations in step with the other
        processes: announce our changes, and drop our copies when another process announces
        one (the web and the worker call this at start)."""
        self.db.on_invalidate = self.coordination.announce_invalidation
        self.following = asyncio.ensure_future(self.coordination.follow_invalidations(self.db))

    async def close(self) -> None:
        if self.following is not None:
            self.following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.following
        await self.pipedrive.ledger.close()
        await self.pipedrive.limiter.close()
        await self.http.aclose()
        if self.owns_queue:
            await self.queue.close()
        await self.db.dispose()

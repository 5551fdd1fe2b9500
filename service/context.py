"""The long-lived objects of a process, built once at start and shared by handlers and jobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.config import Settings
from service.crypto import Crypto
from service.metrics import Metrics
from service.queue import Queue
from service.store import Database


@dataclass(slots=True)
class Services:
    """What a request handler or a job needs from the process: config, state, queue, keys."""

    settings: Settings
    db: Database
    queue: Queue
    crypto: Crypto
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    async def start(cls, settings: Settings, *, metrics: Metrics | None = None) -> Services:
        if settings.redis_url is None:
            raise RuntimeError("REDIS_URL is unset: `pdbridge run` starts an embedded Redis")
        db = Database(settings.database_url)
        queue = await Queue.connect(settings.redis_url)
        return cls(
            settings=settings,
            db=db,
            queue=queue,
            crypto=Crypto(settings.secret_keys),
            metrics=metrics or Metrics(),
        )

    async def close(self) -> None:
        await self.queue.close()
        await self.db.dispose()

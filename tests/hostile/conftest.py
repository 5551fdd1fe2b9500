"""The hostile-input and auth-matrix tests share one world per module: two tenants with
channels, built once in an event loop of its own (a blocking portal), so that hypothesis can
drive it from plain synchronous tests.

Hypothesis profiles: `pdbridge` (the default, what `make test` runs: a modest number of
examples and no deadline, since the machine is shared) and `thorough` (`HYPOTHESIS_PROFILE=
thorough`, many more examples, for a run by hand or a nightly job).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings

from service.embedded_redis import EmbeddedRedis
from tests.hostile.world import World, world

_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,  # no example database in the test's working folder
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}
settings.register_profile("pdbridge", max_examples=25, **_COMMON)
settings.register_profile("thorough", max_examples=500, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pdbridge"))


@dataclass
class Live:
    """The world and the portal into the loop it lives in."""

    portal: BlockingPortal
    world: World

    def call(self, fn: Any, *args: Any) -> Any:
        return self.portal.call(fn, *args)


@pytest.fixture(scope="module")
def live(embedded_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One world on SQLite and the embedded Redis for the whole module."""
    import redis

    client = redis.Redis.from_url(embedded_redis.url)
    client.flushdb()
    client.close()
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "media").mkdir()
    stack = (f"sqlite:///{folder / 'pdbridge.db'}", embedded_redis.url)
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(world(stack, folder / "media")) as here,
    ):
        yield Live(portal, here)

"""The hostile-input and auth-matrix tests share one world per module: two tenants with
channels, built once in an event loop of its own (a blocking portal), so that hypothesis can
drive it from plain synchronous tests.

Hypothesis profiles: `pdbridge` (the default, what `make test` runs: a modest number of
examples and no deadline, since the machine is shared) and `thorough` (`HYPOTHESIS_PROFILE=
thorough`, many more examples, for a run by hand or a nightly job).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings

from service.embedded_redis import EmbeddedRedis
from tests.conftest import _reset_postgres
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


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


@contextmanager
def _live(stack: tuple[str, str], folder: Path) -> Iterator[Live]:
    _flush(stack[1])
    (folder / "media").mkdir()
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(world(stack, folder / "media")) as here,
    ):
        yield Live(portal, here)


@pytest.fixture(scope="module")
def live(embedded_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One world on SQLite and the embedded Redis for the whole module (hypothesis runs many
    examples; the PostgreSQL-specific refusals have their own tests in tests/messaging)."""
    folder = tmp_path_factory.mktemp("hostile")
    with _live((f"sqlite:///{folder / 'pdbridge.db'}", embedded_redis.url), folder) as here:
        yield here


@pytest.fixture(
    scope="module",
    params=[
        "sqlite+embedded-redis",
        pytest.param("postgresql+server-redis", marks=pytest.mark.postgres),
    ],
)
def live_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """One world per backend pair for the whole module: the embedded pair, then the machine's
    PostgreSQL and Redis when they answer."""
    folder = tmp_path_factory.mktemp("matrix")
    if request.param.startswith("sqlite"):
        stack = (
            f"sqlite:///{folder / 'pdbridge.db'}",
            request.getfixturevalue("embedded_redis").url,
        )
    else:
        database = request.getfixturevalue("postgres_server_url")
        asyncio.run(_reset_postgres(database))
        stack = (database, request.getfixturevalue("server_redis_url"))
    with _live(stack, folder) as here:
        yield here

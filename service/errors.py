"""The service's error roots and the one place that decides whether a failure is worth a retry.

    PdbridgeError
    ├── TransientError      retry later (optionally after `retry_after` seconds)
    │   └── Parked          wait `retry_after` seconds without spending a try (budgets, blocks)
    └── PermanentError      retrying cannot help: dead-letter at once

Provider and Pipedrive errors subclass these two, so the queue needs no knowledge of either.
"""

from __future__ import annotations

import asyncio

import httpx2
import redis.exceptions
import sqlalchemy.exc


class PdbridgeError(Exception):
    """Root of the service's own errors."""


class TransientError(PdbridgeError):
    """A failure that may pass: a timeout, a 5xx, a 429, a lock held by another worker."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Parked(TransientError):
    """The work cannot run before `retry_after` seconds for a reason outside it (a spent daily
    budget); the queue re-enqueues it for then instead of counting a failed try."""


class PermanentError(PdbridgeError):
    """A failure that will repeat on every try: a rejected payload, a revoked token."""


_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    httpx2.TransportError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    asyncio.TimeoutError,
    ConnectionError,
)


def is_transient(error: BaseException) -> bool:
    """True when another try may succeed; unknown errors are treated as bugs (no retry)."""
    return isinstance(error, _TRANSIENT_TYPES)


def retry_after(error: BaseException) -> float | None:
    """The delay the failing side asked for, if it named one."""
    return error.retry_after if isinstance(error, TransientError) else None

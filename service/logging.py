"""structlog setup: one renderer for our events and for the libraries' stdlib logs.

Context (`request_id`, `job_id`, `company_id`, ...) is bound through contextvars, so every event
emitted while serving a request or running a job carries it without passing loggers around.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

from service.config import Settings

#: Keys whose values never reach a log line, wherever they appear in an event.
REDACTED_KEYS = frozenset(
    {
        "access_token",
        "refresh_token",
        "authorization",
        "password",
        "secret",
        "token",
        "bot_token",
        "auth_token",
        "app_secret",
        "client_secret",
        "api_token",
    }
)


#: Telegram puts the bot token in every URL (`/bot123:ABC.../sendMessage`, `/file/bot.../...`).
_BOT_TOKEN_IN_URL = re.compile(r"bot\d+:[A-Za-z0-9_-]+")


def redact(_: Any, __: str, event: EventDict) -> EventDict:
    """Replace secret-looking values so a careless `log.info(..., token=...)` leaks nothing,
    and mask bot tokens inside any string (an exception text quoting a Telegram URL)."""
    for key in event.keys() & REDACTED_KEYS:
        event[key] = "[redacted]"
    for key, value in event.items():
        if isinstance(value, str) and "bot" in value:
            event[key] = _BOT_TOKEN_IN_URL.sub("bot[redacted]", value)
    return event


def shared_processors() -> list[Processor]:
    """What every event goes through, ours and the libraries': context, level, time, redaction."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]


def configure_logging(settings: Settings) -> None:
    """Route structlog and stdlib logging through the same processors and renderer."""
    fmt = settings.log_format or ("console" if sys.stderr.isatty() else "json")
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    shared = shared_processors()
    structlog.configure(
        processors=[
            # First: an event below LOG_LEVEL is dropped before any processor runs (the relay
            # logs per message at info; at warning those lines would otherwise be built whole).
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,  # again: a formatted traceback may quote a URL with a token
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Our middleware logs each request with its request_id; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    # HTTP clients log every request URL at INFO; Telegram's URLs carry the bot token.
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Alembic announces its context on every migration check; only its warnings matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "arq"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A named structlog logger (typed, for mypy)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger

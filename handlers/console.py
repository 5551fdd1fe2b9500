"""The operator console at `/admin/ui`: server-rendered pages over the store and the queue.

Login takes the admin token once (compared in constant time, failed attempts rate-limited per
client IP) and sets a signed, HttpOnly, SameSite=Strict session cookie (service.console_sessions).
Every page checks the session; every POST also checks the session's CSRF token from a hidden
field. With no `ADMIN_TOKEN` the console answers 404, as the admin API does. Pages read through
the same store functions and services as the admin API, so the console never disagrees with it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from handlers import as_id, error_response, services
from service import replay, sinks
from service.console_sessions import SESSION_SECONDS, ConsoleSessions, Session
from service.crypto import constant_time_equals
from service.logging import get_logger
from service.store import channels, conversations, dead_letters, installations, messages

log = get_logger(__name__)

PREFIX = "/admin/ui"
COOKIE = "pdbridge_console"
#: Longer than any token anyone would type; a form field beyond it is not a token.
MAX_TOKEN_LENGTH = 1000
#: Job outcomes as the queue counts them (service.queue), in the order the console shows them.
OUTCOMES = ("complete", "retried", "dead_lettered")

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
Page = Callable[[Request, Session], Awaitable[Response]]


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "never"


templates.env.filters["when"] = _when


def _admin_token(request: Request) -> str | None:
    token = services(request).settings.admin_token
    return token.get_secret_value() if token is not None else None


def _sessions(request: Request) -> ConsoleSessions:
    svc = services(request)
    return ConsoleSessions(svc.queue.redis, svc.crypto)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    session: Session | None = None,
    status: int = 200,
) -> Response:
    """A page with headers that keep it out of frames and caches and allow only its own style."""
    nonce = secrets.token_urlsafe(16)
    response = templates.TemplateResponse(
        request,
        name,
        {"prefix": PREFIX, "nonce": nonce, "session": session, **context},
        status_code=status,
    )
    response.headers.update(
        {
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
                "frame-ancestors 'none'; base-uri 'none'"
            ),
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        }
    )
    return response


def _login_page(request: Request, *, status: int, error: str | None = None) -> Response:
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    next_path = wanted if request.method == "GET" and wanted != f"{PREFIX}/login" else PREFIX
    context = {"error": error, "next": next_path}
    return _render(request, "console/login.html", context, status=status)


def _safe_next(value: str) -> str:
    """Only a console path: never another site (`//host`, `/\\host`) or another part of ours."""
    if value.startswith(PREFIX) and not value.startswith(("//", "/\\")) and "\\" not in value:
        return value
    return PREFIX


def console_page(handler: Page) -> Callable[[Request], Awaitable[Response]]:
    """Runs `handler` only for a request with a live session (404 when the console is off,
    else the login form with 401); a POST must also carry the session's CSRF token (403)."""

    async def guarded(request: Request) -> Response:
        token = _admin_token(request)
        if token is None:
            return error_response(404, "NOT_FOUND", "Not Found")
        cookie = request.cookies.get(COOKIE, "")
        session = await _sessions(request).find(cookie, token) if cookie else None
        if session is None:
            if cookie:
                log.warning("console.bad_session", path=request.url.path)
            return _login_page(request, status=401)
        if request.method == "POST":
            form = await request.form()
            given = form.get("csrf")
            if not isinstance(given, str) or not session.csrf_matches(given):
                log.warning("console.csrf_refused", path=request.url.path)
                return _render(
                    request,
                    "console/message.html",
                    {"title": "Refused", "text": "The form was stale or forged: nothing was done."},
                    session=session,
                    status=403,
                )
        return await handler(request, session)

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


async def login_form(request: Request) -> Response:
    if _admin_token(request) is None:
        return error_response(404, "NOT_FOUND", "Not Found")
    return _render(request, "console/login.html", {"error": None, "next": PREFIX})


async def login(request: Request) -> Response:
    """Check the token (in constant time, after the per-IP limit); set the session cookie."""
    token = _admin_token(request)
    if token is None:
        return error_response(404, "NOT_FOUND", "Not Found")
    sessions, client = _sessions(request), _client(request)
    if not await sessions.login_allowed(client):
        log.warning("console.login_rate_limited", client=client)
        return _render(
            request,
            "console/login.html",
            {"error": "Too many failed attempts: wait a minute.", "next": PREFIX},
            status=429,
        )
    form = await request.form()
    given, next_path = form.get("token"), form.get("next")
    if (
        not isinstance(given, str)
        or len(given) > MAX_TOKEN_LENGTH
        or not constant_time_equals(given, token)
    ):
        await sessions.count_failure(client)
        log.warning("console.login_failed", client=client)
        kept = _safe_next(next_path) if isinstance(next_path, str) else PREFIX
        return _render(
            request,
            "console/login.html",
            {"error": "That is not the admin token.", "next": kept},
            status=401,
        )
    _, cookie = await sessions.open(token)
    log.info("console.login", client=client)
    target = _safe_next(next_path) if isinstance(next_path, str) else PREFIX
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=services(request).settings.base_url.startswith("https://"),
    )
    return response


@console_page
async def logout(request: Request, session: Session) -> Response:
    await _sessions(request).close(session)
    log.info("console.logout", client=_client(request))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


@console_page
async def overview(request: Request, session: Session) -> Response:
    """Queue depth, job outcomes by function, and what needs attention."""
    svc = services(request)
    outcomes = await svc.queue.job_outcomes()
    functions = sorted({function for function, _ in outcomes})
    table = [(f, [outcomes.get((f, o), 0) for o in OUTCOMES]) for f in functions]
    pending = await dead_letters.list_all(svc.db, limit=1000, pending_only=True)
    return _render(
        request,
        "console/overview.html",
        {
            "depth": await svc.queue.depth(),
            "outcomes": OUTCOMES,
            "table": table,
            "pending": len(pending),
            "installations": len(await installations.list_all(svc.db)),
            "channels": len(await channels.list_active(svc.db, svc.crypto)),
        },
        session=session,
    )


@console_page
async def installations_page(request: Request, session: Session) -> Response:
    """Each installation, its status and its Pipedrive API spend today."""
    svc = services(request)
    found = await installations.list_all(svc.db)
    usage = await svc.pipedrive.ledger.usage(svc.db, {i.company_id for i in found})
    rows = [(i, usage[i.company_id]) for i in found]
    return _render(request, "console/installations.html", {"rows": rows}, session=session)


@console_page
async def channels_page(request: Request, session: Session) -> Response:
    """Each channel with its sink, its health and its last message each way."""
    svc = services(request)
    found = await channels.list_active(svc.db, svc.crypto)
    last = await messages.last_times(svc.db, [c.id for c in found])
    rows = [(c, sinks.describe(svc.settings, c), last[c.id]) for c in found]
    return _render(request, "console/channels.html", {"rows": rows}, session=session)


@console_page
async def dead_letters_page(request: Request, session: Session) -> Response:
    """Dead letters waiting for a replay (all of them with `?all=1`), newest first."""
    svc = services(request)
    show_all = request.query_params.get("all") == "1"
    found = await dead_letters.list_all(svc.db, limit=200, pending_only=not show_all)
    replayed = request.query_params.get("replayed", "")
    return _render(
        request,
        "console/dead_letters.html",
        {
            "letters": found,
            "show_all": show_all,
            "replayed": replayed if replayed.isdigit() else "",
        },
        session=session,
    )


@console_page
async def replay_dead_letter(request: Request, session: Session) -> Response:
    """The admin API's replay (service.replay), then back to the list."""
    try:
        dead_letter_id = as_id(request.path_params["id"])
    except ValueError:
        return _not_found(request, session, "No such dead letter.")
    svc = services(request)
    try:
        await replay.replay_one(svc.db, svc.queue, dead_letter_id)
    except replay.UnknownDeadLetter:
        return _not_found(request, session, f"No dead letter {dead_letter_id}.")
    log.info("console.replayed", dead_letter_id=dead_letter_id)
    return RedirectResponse(f"{PREFIX}/dead-letters?replayed={dead_letter_id}", status_code=303)


def _not_found(request: Request, session: Session, text: str) -> Response:
    context = {"title": "Not found", "text": text}
    return _render(request, "console/message.html", context, session=session, status=404)


@console_page
async def conversations_page(request: Request, session: Session) -> Response:
    """Conversations, newest first; `q` finds them by customer name, address or id."""
    svc = services(request)
    query = request.query_params.get("q", "")[:200]
    found = await conversations.search(svc.db, query, limit=100)
    names = {c.id: c.name for c in await channels.list_active(svc.db, svc.crypto)}
    return _render(
        request,
        "console/conversations.html",
        {"query": query, "rows": found, "channel_names": names},
        session=session,
    )


@console_page
async def conversation_page(request: Request, session: Session) -> Response:
    """One conversation: its people and its latest messages with their statuses."""
    svc = services(request)
    try:
        conversation_id = as_id(request.path_params["conversation_id"])
    except ValueError:
        return _not_found(request, session, "No such conversation.")
    found = await conversations.get_by_pk(svc.db, conversation_id)
    if found is None:
        return _not_found(request, session, "No such conversation.")
    channel = await channels.get_by_id(svc.db, svc.crypto, found.channel_id)
    shown = await messages.page(svc.db, found.id, limit=200, before_id=None)
    return _render(
        request,
        "console/conversation.html",
        {"conversation": found, "channel": channel, "messages": shown},
        session=session,
    )


routes = [
    Route(PREFIX, overview, methods=["GET"]),
    Route(f"{PREFIX}/login", login_form, methods=["GET"]),
    Route(f"{PREFIX}/login", login, methods=["POST"]),
    Route(f"{PREFIX}/logout", logout, methods=["POST"]),
    Route(f"{PREFIX}/installations", installations_page, methods=["GET"]),
    Route(f"{PREFIX}/channels", channels_page, methods=["GET"]),
    Route(f"{PREFIX}/dead-letters", dead_letters_page, methods=["GET"]),
    Route(f"{PREFIX}/dead-letters/{{id}}/replay", replay_dead_letter, methods=["POST"]),
    Route(f"{PREFIX}/conversations", conversations_page, methods=["GET"]),
    Route(f"{PREFIX}/conversations/{{conversation_id}}", conversation_page, methods=["GET"]),
]

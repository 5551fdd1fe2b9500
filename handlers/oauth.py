"""The app's OAuth routes: start an install, receive the callback, receive the uninstall notice.

One URL serves two verbs (Pipedrive allows one callback URL): `GET /oauth/callback` is the browser
coming back with a code; `DELETE /oauth/callback` is Pipedrive's uninstall notice, authenticated
with the app's own client credentials.
"""

from __future__ import annotations

import html
import secrets
from typing import Any

import httpx2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from handlers import as_id, error_response, services
from handlers.basic_auth import basic_credentials, matches
from service import queue
from service.crypto import BadSignature, constant_time_equals
from service.logging import get_logger
from service.pipedrive.errors import InvalidGrant, OAuthError, PipedriveError
from service.store import installations
from service.store.installations import code_hash
from service.uninstall import uninstall_installations

log = get_logger(__name__)

STATE_TTL_SECONDS = 600
STATE_PREFIX = "install:"
#: The cookie that binds an install `state` to the browser that started it (signed, HttpOnly).
STATE_COOKIE = "pdbridge_install"
COOKIE_PREFIX = "browser:"
#: Token exchanges per client IP and minute for codes we do not know yet.
EXCHANGES_PER_MINUTE = 5


def page(title: str, message: str, status: int = 200) -> HTMLResponse:
    """A plain page for the person in the browser."""
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status)


async def install(request: Request) -> Response:
    """Send the person to Pipedrive's consent page with a signed, expiring `state`, and bind that
    state to this browser with a signed cookie, so a callback started elsewhere is refused."""
    svc = services(request)
    if not svc.oauth.configured:
        return page("Not configured", "PIPEDRIVE_CLIENT_ID and _SECRET are not set.", 503)
    nonce = secrets.token_urlsafe(16)
    state = svc.crypto.sign(STATE_PREFIX + nonce, STATE_TTL_SECONDS)
    response = RedirectResponse(svc.oauth.authorize_url(state), status_code=302)
    response.set_cookie(
        STATE_COOKIE,
        svc.crypto.sign(COOKIE_PREFIX + nonce, STATE_TTL_SECONDS),
        max_age=STATE_TTL_SECONDS,
        path="/oauth",
        httponly=True,
        samesite="lax",
        secure=svc.settings.base_url.startswith("https://"),
    )
    return response


def _state_nonce(request: Request) -> str | None:
    """The nonce of a valid `state` that this browser's cookie binds, else None (logged)."""
    svc = services(request)
    state = request.query_params.get("state", "")
    cookie = request.cookies.get(STATE_COOKIE, "")
    try:
        nonce = svc.crypto.unsign(state)
        if not nonce.startswith(STATE_PREFIX):
            raise BadSignature("not an install state")
        nonce = nonce.removeprefix(STATE_PREFIX)
        bound = svc.crypto.unsign(cookie) if cookie else ""
    except BadSignature as error:
        log.warning("oauth.bad_state", reason=str(error), cookie=bool(cookie))
        return None
    if not constant_time_equals(bound, COOKIE_PREFIX + nonce):
        log.warning("oauth.state_not_bound", cookie=bool(cookie))
        return None
    return nonce


async def callback(request: Request) -> Response:
    """Exchange the code (once, even if the browser sends it twice) and store the installation.

    The `state` must be ours, unexpired, bound to this browser's cookie and not used before by
    another code; a code we do not know costs a token exchange only a few times a minute per
    client."""
    svc = services(request)
    params = request.query_params
    if "error" in params:
        log.info("oauth.install_declined", error=params["error"])
        return page("Installation cancelled", "The app was not installed.", 400)
    code = params.get("code", "")
    if not code or len(code) > 2048:
        return page("Installation failed", "The link has no authorization code.", 400)
    if not params.get("state"):
        log.warning("oauth.missing_state")
        return page("Installation failed", "The link has no state; start the install again.", 400)
    nonce = _state_nonce(request)
    if nonce is None:
        return page(
            "Installation failed",
            "This link has expired or was started in another browser; please start again.",
            400,
        )
    if not await svc.coordination.claim_install_state(nonce, code_hash(code), STATE_TTL_SECONDS):
        log.warning("oauth.state_replayed")
        return page("Installation failed", "This link was already used; please start again.", 400)
    async with svc.coordination.code_exchange(code_hash(code)):
        done = await installations.find_by_code(svc.db, code)
        if done is None:
            client = request.client.host if request.client else "unknown"
            if not await svc.coordination.count_code_exchange(client, EXCHANGES_PER_MINUTE):
                log.warning("oauth.exchange_rate_limited", client=client)
                response = page("Installation failed", "Too many attempts; wait a minute.", 429)
                response.headers["Retry-After"] = "60"
                return response
            try:
                done = await _exchange(request, code)
            except InvalidGrant:
                return page(
                    "Installation failed", "The code was used or expired; start again.", 400
                )
            except (OAuthError, PipedriveError, httpx2.TransportError) as error:
                log.error("oauth.install_failed", error=str(error), error_type=type(error).__name__)
                return page("Installation failed", "Pipedrive did not complete it; try again.", 502)
    return page(
        "pdbridge is installed", f"Connected to company {done.company_id}. You can close this page."
    )


async def _exchange(request: Request, code: str) -> installations.Installation:
    svc = services(request)
    tokens = (await svc.oauth.exchange_code(code)).token_set()
    user = await svc.pipedrive.whoami(tokens.api_domain, bearer=tokens.access_token)
    inst = await installations.save_oauth_install(
        svc.db,
        svc.crypto,
        company_id=int(user["company_id"]),
        user_id=int(user["id"]),
        company_domain=user.get("company_domain"),
        tokens=tokens,
        code=code,
    )
    log.info("oauth.installed", installation=inst.key, scopes=list(inst.scopes))
    await svc.queue.enqueue(
        queue.SETUP_INSTALLATION,
        {"installation_id": inst.id, "company_id": inst.company_id},
        key=f"setup:{inst.id}:{inst.token_version}",
    )
    return inst


async def uninstall(request: Request) -> Response:
    """Pipedrive's uninstall notice: the company's installations and channels stop, tokens and
    provider webhooks go (service/uninstall.py; idempotent)."""
    svc = services(request)
    settings = svc.settings
    secret = settings.pipedrive_client_secret
    if not (settings.pipedrive_client_id and secret) or not matches(
        basic_credentials(request), settings.pipedrive_client_id, secret.get_secret_value()
    ):
        log.warning("oauth.uninstall_unauthorized")
        return error_response(401, "UNAUTHORIZED", "client credentials required")
    try:
        body: Any = await request.json()
        company_id, user_id = as_id(body["company_id"]), as_id(body["user_id"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return error_response(400, "INVALID_BODY", "expected JSON with company_id and user_id")
    found = await installations.find_for_uninstall(svc.db, company_id, user_id)
    if not found:
        log.info("oauth.uninstall_unknown", company_id=company_id, user_id=user_id)
        return JSONResponse({"status": "unknown"})
    done = await uninstall_installations(svc, company_id, found)
    log.info(
        "oauth.uninstalled",
        installations=[inst.key for inst in found],
        by_user=user_id,
        channels=done.channels,
    )
    return JSONResponse({"status": "uninstalled"})


routes = [
    Route("/oauth/install", install, methods=["GET"]),
    Route("/oauth/callback", callback, methods=["GET"]),
    Route("/oauth/callback", uninstall, methods=["DELETE"]),
]

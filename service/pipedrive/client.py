"""The Pipedrive API client: auth, the shared rate limiter, the envelope and one error tree.

One `httpx2.AsyncClient` per process carries every call. For each call the client: refuses to
call for an inactive installation; waits for the token's rate limiter (shared through Redis);
sends with a bearer token (OAuth) or `x-api-token` (single-company mode); learns the limit from
`x-ratelimit-*`; and maps the answer onto `service.pipedrive.errors`:

- 2xx with `success: true`: the envelope's `data` (and `additional_data`).
- 401: refresh once (single-flight) and resend; a second 401 marks the installation.
- 429: a daily-budget 429 (`x-daily-ratelimit-token-remaining: 0`, or 429s that go on for more
  than ~10 s) parks the installation and raises `DailyBudgetExhausted`; a burst 429 blocks the
  token for the announced reset and is resent, a few times at most.
- HTML 403: Cloudflare's block; the company's work is parked (parks, like the budget, are
  per company).
- Everything else raises its error class without a resend; the queue decides about retries.

Every call is logged (method, path, status, estimated cost, rate-limit headers), never a token,
and counted in the API cost ledger (`service.pipedrive.ledger`).
"""

from __future__ import annotations

import functools
import random
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import httpx2

from service import __version__
from service.config import Settings
from service.http_transport import transport
from service.logging import get_logger
from service.pipedrive import errors
from service.pipedrive.ledger import Ledger
from service.pipedrive.ratelimit import LimiterParked, RateLimiter, reset_seconds
from service.pipedrive.tokens import TokenManager
from service.store import Database, installations
from service.store.installations import Installation

log = get_logger(__name__)

DEFAULT_API_BASE = "https://api.pipedrive.com"
#: Burst 429s resent within one call before it is handed back to the queue.
MAX_BURST_RESENDS = 4
#: 429s that keep coming for longer than this are taken as a spent daily budget (doc §3.5).
DAILY_SUSPECT_SECONDS = 10.0
CLOUDFLARE_PARK_SECONDS = 900.0
LOGGED_HEADERS = (
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-daily-ratelimit-token-remaining",
)


def http_client(timeout: float = 30.0) -> httpx2.AsyncClient:
    """The process's one outbound HTTP client, with explicit limits and timeouts, on asyncio's
    streams (service.http_transport). When the environment names a proxy (HTTPS_PROXY and the
    like) it is httpx2's own transport, which honours it: httpx2 ignores the environment's
    proxies for a client given its own transport."""
    limits = httpx2.Limits(max_connections=100, max_keepalive_connections=100)
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout, connect=min(5.0, timeout), pool=10.0),
        limits=limits,
        transport=None if urllib.request.getproxies() else transport(limits),
        headers={"User-Agent": f"pdbridge/{__version__}"},
        follow_redirects=False,
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    """A successful Pipedrive answer."""

    data: Any
    additional_data: Any


def estimated_cost(method: str, path: str) -> int:
    """Pipedrive's documented v1 token costs (doc §3.5), for the call log and budgeting."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    by_id = bool(parts) and (parts[-1].isdigit() or parts[-1] == "me")
    if parts[:1] == ["webhooks"]:
        return 6 if method == "DELETE" else 10
    if parts[-1:] == ["search"] or parts[:1] == ["itemSearch"]:
        return 40
    if method == "GET":
        return 2 if by_id else 20
    if method == "DELETE":
        return 6
    return 10


class PipedriveClient:
    """Calls `{api_domain}/api/v1{path}` for an installation."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        http: httpx2.AsyncClient,
        tokens: TokenManager,
        limiter: RateLimiter,
        ledger: Ledger | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.http = http
        self.tokens = tokens
        self.limiter = limiter
        self.ledger = ledger or Ledger(limiter.redis)
        self.probe_seconds = settings.pipedrive_budget_probe_seconds

    def base_url(self, inst: Installation) -> str:
        if self.settings.pipedrive_api_url:
            return f"{self.settings.pipedrive_api_url}/api/v1"
        domain = inst.api_domain or DEFAULT_API_BASE
        return f"{domain}/api/v1"

    async def get(self, inst: Installation, path: str, **params: Any) -> Any:
        return (await self.request(inst, "GET", path, params=params or None)).data

    async def post(self, inst: Installation, path: str, json: Any) -> Any:
        return (await self.request(inst, "POST", path, json=json)).data

    async def put(self, inst: Installation, path: str, json: Any) -> Any:
        return (await self.request(inst, "PUT", path, json=json)).data

    async def delete(self, inst: Installation, path: str) -> Any:
        return (await self.request(inst, "DELETE", path)).data

    def url(self, inst: Installation, path: str) -> str:
        """The full URL of `path`: under `/api/v1`, or `/api/v2` for a path starting `/v2/`."""
        if path.startswith("/v2/"):
            return f"{self.base_url(inst).removesuffix('/v1')}{path}"
        return f"{self.base_url(inst)}{path}"

    async def request(
        self,
        inst: Installation,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Envelope:
        """One API call with auth, rate limiting and error mapping (see the module docstring)."""
        if inst.status != "active":
            raise errors.InstallationInactive(
                f"installation {inst.key} is {inst.status}", code=inst.status
            )
        limiter_key = f"installation:{inst.id}"
        park_key = f"company:{inst.company_id}"
        refreshed = False
        burst_resends = 0
        first_429: float | None = None
        token, version = await self._credentials(inst)
        while True:
            ticket = await self._acquire(inst, limiter_key, park_key, token)
            response = await self._send(inst, method, path, token, json, params)
            await self.limiter.observe(limiter_key, ticket, response.headers)
            status = response.status_code
            if status == 401 and inst.auth_kind == "oauth" and not refreshed:
                refreshed = True
                token, version = await self.tokens.after_unauthorized(inst, version)
                continue
            if status != 429:
                return await self._result(inst, park_key, response)
            now = time.monotonic()
            first_429 = first_429 if first_429 is not None else now
            if _daily_exhausted(response) or now - first_429 > DAILY_SUSPECT_SECONDS:
                raise await self._park(inst, park_key, "daily budget")
            if burst_resends == MAX_BURST_RESENDS:
                raise errors.RateLimited(
                    f"still rate limited after {burst_resends} resends",
                    status=429,
                    retry_after=reset_seconds(response.headers) or 2.0,
                )
            # Doc §3.5: wait the announced reset, growing 2, 4, 8 ... s; 429s that go on past
            # DAILY_SUSPECT_SECONDS mean a spent budget even without the daily header.
            backoff = min(2.0 * 2**burst_resends, 30.0) * random.uniform(0.8, 1.0)  # noqa: S311
            burst_resends += 1
            await self.limiter.block(
                limiter_key, max(reset_seconds(response.headers) or 0.0, backoff)
            )

    async def _acquire(
        self, inst: Installation, limiter_key: str, park_key: str, token: str
    ) -> str:
        """Wait for a send slot; the first caller after a park first probes with a cheap GET."""
        while True:
            try:
                ticket, probe = await self.limiter.acquire(limiter_key, park_key)
            except LimiterParked as parked:
                raise errors.DailyBudgetExhausted(
                    f"installation {inst.key} is parked", retry_after=parked.seconds
                ) from None
            if not probe:
                return ticket
            response = await self._send(inst, "GET", "/users/me", token, None, None)
            await self.limiter.observe(limiter_key, ticket, response.headers)
            if response.status_code == 429 or response.status_code == 403:
                raise await self._park(inst, park_key, "probe still refused")
            await self.limiter.unpark(park_key)
            log.info("pipedrive.unparked", installation=inst.key, probe_status=response.status_code)

    async def single_company_installation(self) -> Installation:
        """Single-company mode: ask whom PIPEDRIVE_API_TOKEN belongs to and return the implicit
        installation, stored (or reactivated) on the way."""
        api_base = self.settings.pipedrive_api_url or DEFAULT_API_BASE
        user = await self.whoami(api_base)
        return await installations.ensure_api_token_install(
            self.db,
            company_id=int(user["company_id"]),
            user_id=int(user["id"]),
            api_domain=api_base,
            company_domain=user.get("company_domain"),
        )

    async def whoami(self, api_domain: str, *, bearer: str | None = None) -> dict[str, Any]:
        """`GET /users/me` for a token that has no installation yet (the OAuth callback, or
        single-company mode); returns the user with `id`, `company_id` and `company_domain`."""
        if bearer is not None:
            headers = {"Authorization": f"Bearer {bearer}"}
        elif self.settings.pipedrive_api_token is not None:
            headers = {"x-api-token": self.settings.pipedrive_api_token.get_secret_value()}
        else:
            raise errors.InstallationInactive("no token to ask Pipedrive who we are")
        base = self.settings.pipedrive_api_url or api_domain
        response = await self.http.get(f"{base}/api/v1/users/me", headers=headers)
        log.info("pipedrive.call", method="GET", path="/users/me", status=response.status_code)
        body = _json(response)
        if response.status_code == 429:
            raise errors.RateLimited("users/me: rate limited", status=429, retry_after=2.0)
        if response.status_code >= 500:
            raise errors.ServerError(
                f"users/me: HTTP {response.status_code}", status=response.status_code
            )
        if response.status_code != 200 or not isinstance(body, dict):
            message, code = _error_text(body, response)
            raise errors.InvalidPayload(
                f"users/me: {message}", status=response.status_code, code=code
            )
        user = body.get("data")
        if not isinstance(user, dict) or "id" not in user or "company_id" not in user:
            raise errors.InvalidPayload("users/me answered without id and company_id")
        await self.ledger.record(
            company_id=int(user["company_id"]),
            auth_kind="oauth" if bearer is not None else "api_token",
            path="/users/me",
            cost=estimated_cost("GET", "/users/me"),
            status=response.status_code,
            headers=response.headers,
        )
        return user

    async def _credentials(self, inst: Installation) -> tuple[str, int]:
        if inst.auth_kind == "api_token":
            token = self.settings.pipedrive_api_token
            if token is None:
                raise errors.InstallationInactive("PIPEDRIVE_API_TOKEN is not set")
            return token.get_secret_value(), 0
        return await self.tokens.access_token(inst)

    async def _send(
        self,
        inst: Installation,
        method: str,
        path: str,
        token: str,
        json: Any,
        params: dict[str, Any] | None,
    ) -> httpx2.Response:
        headers = (
            {"x-api-token": token}
            if inst.auth_kind == "api_token"
            else {"Authorization": f"Bearer {token}"}
        )
        started = time.perf_counter()
        response = await self.http.request(
            method, _parsed(self.url(inst, path)), json=json, params=params, headers=headers
        )
        cost = estimated_cost(method, path)
        await self.ledger.record(
            company_id=inst.company_id,
            auth_kind=inst.auth_kind,
            path=path,
            cost=cost,
            status=response.status_code,
            headers=response.headers,
        )
        log.info(
            "pipedrive.call",
            installation=inst.key,
            method=method,
            path=path,
            status=response.status_code,
            cost=cost,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            **{
                h.replace("-", "_"): response.headers[h]
                for h in LOGGED_HEADERS
                if h in response.headers
            },
        )
        return response

    async def _park(
        self, inst: Installation, park_key: str, why: str
    ) -> errors.DailyBudgetExhausted:
        """Park the company's work; returns the error for the caller to raise."""
        await self.limiter.park(park_key, self.probe_seconds)
        log.warning(
            "pipedrive.parked",
            installation=inst.key,
            reason=why,
            probe_in_seconds=self.probe_seconds,
            action="work waits; a probe resumes it",
        )
        return errors.DailyBudgetExhausted(
            f"daily API budget of company {inst.company_id} is spent ({why})",
            status=429,
            retry_after=self.probe_seconds,
        )

    async def _result(
        self, inst: Installation, park_key: str, response: httpx2.Response
    ) -> Envelope:
        status = response.status_code
        body = _json(response)
        if 200 <= status < 300:
            if status == 204 or not response.content:
                return Envelope(None, None)
            if isinstance(body, dict) and body.get("success") is not False:
                return Envelope(body.get("data"), body.get("additional_data"))
            raise errors.InvalidPayload(
                f"unexpected success body: {response.text[:200]}", status=status
            )
        message, code = _error_text(body, response)
        if status == 401:
            await installations.set_status(self.db, inst.id, "needs_reauth", f"401: {message}")
            log.error("pipedrive.auth_revoked", installation=inst.key, error=message)
            raise errors.AuthRevoked(message, status=status, code=code)
        if status == 403 and body is None and "html" in response.headers.get("content-type", ""):
            await self.limiter.park(park_key, CLOUDFLARE_PARK_SECONDS)
            log.error("pipedrive.cloudflare_block", installation=inst.key, action="alert")
            raise errors.CloudflareBlocked(
                "Pipedrive's edge blocked this token (HTML 403)",
                status=status,
                retry_after=CLOUDFLARE_PARK_SECONDS,
            )
        if status == 403 and "scope" in message.lower():
            raise errors.ScopeMissing(message, status=status, code=code)
        error_type: type[errors.PipedriveError] = {
            402: errors.AccountNotOpen,
            403: errors.Forbidden,
            404: errors.NotFound,
            410: errors.NotFound,
        }.get(status, errors.InvalidPayload)
        if status >= 500:
            raise errors.ServerError(message, status=status, code=code)
        raise error_type(message, status=status, code=code)


@functools.lru_cache(maxsize=512)
def _parsed(url: str) -> httpx2.URL:
    """A URL parsed once: the relay calls the same few endpoints for every message, and parsing
    was a tenth of httpx2's work per call."""
    return httpx2.URL(url)


def _json(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_text(body: Any, response: httpx2.Response) -> tuple[str, str | None]:
    """The human message and machine code of an error envelope (Pipedrive's or the Channels
    API's `{data: {code, message}}`), or the start of a non-JSON body."""
    if isinstance(body, dict):
        data = body.get("data")
        if isinstance(data, dict) and "message" in data:
            return str(data["message"]), str(data.get("code")) if data.get("code") else None
        message = body.get("error") or body.get("message") or body.get("errors")
        extra = body.get("additional_data")
        code = body.get("code") or (extra.get("code") if isinstance(extra, dict) else None)
        return str(message or response.status_code), str(code) if code else None
    return f"HTTP {response.status_code}: {response.text[:200]}", None


def _daily_exhausted(response: httpx2.Response) -> bool:
    return response.headers.get("x-daily-ratelimit-token-remaining", "").strip() == "0"

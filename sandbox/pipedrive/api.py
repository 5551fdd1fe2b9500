"""The emulator's API pipeline: authentication, the burst and daily token budgets with their
headers, Pipedrive's error envelopes, users/me and webhook CRUD."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from starlette.responses import JSONResponse, Response

from sandbox.pipedrive.contract import (
    SECONDS_PER_DAY,
    WEBHOOK_ACTIONS,
    WEBHOOK_OBJECTS,
    _is_url,
    _pd_error,
    _pd_time,
)
from sandbox.pipedrive.recording import Handler, RecordedRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


@dataclass(slots=True)
class _Caller:
    key: str  # the token itself: rate limits are per token
    company_id: int
    user_id: int
    scopes: tuple[str, ...] | None  # None: personal API token, every permission
    oauth: bool


# An API route's logic, after authentication and rate limiting.
ApiHandler: TypeAlias = "Callable[[RecordedRequest, Mapping[str, Any], _Caller], Response]"


def _webhook_bad_request(errors: dict[str, str]) -> Response:
    """``WebhookBadRequest`` (doc §1.1)."""
    return JSONResponse({"success": False, "status": "error", "errors": errors}, 400)


def _webhook_errors(body: dict[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    version = body.get("version", "2.0")
    if version not in WEBHOOK_ACTIONS:
        errors["version"] = 'version must be "1.0" or "2.0"'
        version = "2.0"
    url = body.get("subscription_url")
    if not isinstance(url, str) or not _is_url(url):
        errors["subscription_url"] = "subscription_url must be a valid http(s) URL"
    if body.get("event_action") not in WEBHOOK_ACTIONS[version]:
        errors["event_action"] = f"event_action must be one of {sorted(WEBHOOK_ACTIONS[version])}"
    if body.get("event_object") not in WEBHOOK_OBJECTS[version]:
        errors["event_object"] = f"event_object must be one of {sorted(WEBHOOK_OBJECTS[version])}"
    for name in ("http_auth_user", "http_auth_password", "name"):
        if name in body and not isinstance(body[name], str):
            errors[name] = f"{name} must be a string"
    if "user_id" in body and (
        not isinstance(body["user_id"], int) or isinstance(body["user_id"], bool)
    ):
        errors["user_id"] = "user_id must be an integer"
    return errors


class ApiMixin:
    """The emulator's API pipeline for ``PipedriveStandin``."""

    def set_burst_limit(self, limit: int, window_seconds: float) -> None:
        """Allow ``limit`` requests per token in any rolling ``window_seconds`` (default 80/2 s)."""
        with self._lock:
            self._burst_limit = limit
            self._burst_window = window_seconds
            self._windows.clear()

    def exhaust_daily_budget(
        self, token: str | None = None, *, company_id: int | None = None
    ) -> None:
        """Spend the whole daily budget of the company of ``token`` (or ``company_id``).

        The budget is per company (doc §3.5), so every token of that company gets the daily 429.
        """
        with self._lock:
            company = self._company_for(token, company_id)
            self._daily_spent[company] = (self._day(), self.daily_budget)

    def restore_daily_budget(
        self, token: str | None = None, *, company_id: int | None = None
    ) -> None:
        """Undo ``exhaust_daily_budget``: the company starts the day afresh."""
        with self._lock:
            self._daily_spent.pop(self._company_for(token, company_id), None)

    def daily_tokens_spent(self, company_id: int | None = None) -> int:
        """Tokens the company (default: the stand-in's own) spent today, by the stand-in's
        count: what the ``x-daily-ratelimit-token-*`` headers are computed from."""
        with self._lock:
            company = self.company_id if company_id is None else company_id
            return self.daily_budget - self._daily_remaining(company)

    @property
    def requests_inside_reset_window(self) -> int:
        """Requests sent with a token before the ``x-ratelimit-reset`` of its last 429 elapsed."""
        with self._lock:
            return self._inside_reset_window

    @property
    def webhooks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(w) for w in self._webhooks.values()]

    def _api(self, handler: ApiHandler, cost: int, scope: str | None) -> Handler:
        """Wrap an API handler: authenticate, daily budget, burst limit, scope, then headers."""

        def run(rec: RecordedRequest, params: Mapping[str, Any]) -> Response:
            caller = self._authenticate(rec)
            if isinstance(caller, Response):
                return caller
            limited = self._check_daily(rec, caller)
            if limited is None:
                limited = self._check_burst(rec, caller)
            if limited is not None:
                return limited
            self._spend(caller.company_id, cost)
            if scope is not None and caller.scopes is not None and scope not in caller.scopes:
                rec.note = f"token lacks the {scope!r} scope"
                response: Response = JSONResponse(_pd_error(403, "Scope and URL mismatch"), 403)
            else:
                response = handler(rec, params, caller)
            response.headers.update(self._rate_headers(caller))
            return response

        return run

    def _authenticate(self, rec: RecordedRequest) -> _Caller | Response:
        authorization = rec.headers.get("authorization", "")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = self._access.get(value.strip())
            if token is None:
                rec.note = "unknown access token"
                return JSONResponse(_pd_error(401, "Invalid token: access token is invalid"), 401)
            if self.now() >= token.at:
                rec.note = "expired access token"
                return JSONResponse(_pd_error(401, "Invalid token: access token has expired"), 401)
            return _Caller(value.strip(), token.company_id, token.user_id, token.scopes, True)
        api_token = rec.headers.get("x-api-token")
        if api_token is not None and api_token in self._api_tokens:
            company_id, user_id = self._api_tokens[api_token]
            return _Caller(api_token, company_id, user_id, None, False)
        rec.note = "no valid Bearer token or x-api-token"
        return JSONResponse(_pd_error(401, "unauthorized access"), 401)

    def _day(self) -> int:
        # Pipedrive resets at midnight of an unnamed server timezone (§3.5); we use UTC.
        return int(self.now() // SECONDS_PER_DAY)

    def _daily_remaining(self, company_id: int) -> int:
        day, spent = self._daily_spent.get(company_id, (self._day(), 0))
        if day != self._day():
            spent = 0
        return max(0, self.daily_budget - spent)

    def _spend(self, company_id: int, cost: int) -> None:
        spent = self.daily_budget - self._daily_remaining(company_id) + cost
        self._daily_spent[company_id] = (self._day(), spent)

    def _check_daily(self, rec: RecordedRequest, caller: _Caller) -> Response | None:
        """Once the budget is spent every request gets 429 until the day ends (doc §3.5)."""
        if self._daily_remaining(caller.company_id) > 0:
            return None
        rec.note = "daily token budget exhausted"
        body = _pd_error(429, "Daily API token budget exceeded")  # text unconfirmed
        headers = {**self._rate_headers(caller), **self._daily_headers(caller, force=True)}
        return JSONResponse(body, 429, headers)

    def _check_burst(self, rec: RecordedRequest, caller: _Caller) -> Response | None:
        times = self._window_times(caller.key)
        if len(times) >= self._burst_limit:
            rec.note = "burst limit exceeded"
            headers = self._rate_headers(caller)
            if self.retry_after_on_429:
                headers["retry-after"] = headers["x-ratelimit-reset"]
            body = _pd_error(429, "Too many requests")  # text unconfirmed
            return JSONResponse(body, 429, headers)
        times.append(self.now())
        return None

    def _window_times(self, key: str) -> deque[float]:
        times = self._windows.setdefault(key, deque())
        while times and times[0] <= self.now() - self._burst_window:
            times.popleft()
        return times

    def _rate_headers(self, caller: _Caller) -> dict[str, str]:
        times = self._window_times(caller.key)
        until_reset = times[0] + self._burst_window - self.now() if times else self._burst_window
        headers = {
            "x-ratelimit-limit": str(self._burst_limit),
            "x-ratelimit-remaining": str(max(0, self._burst_limit - len(times))),
            "x-ratelimit-reset": str(max(1, math.ceil(until_reset))),
        }
        headers.update(self._daily_headers(caller))
        return headers

    def _burst_429_headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self._burst_limit),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": str(max(1, math.ceil(self._burst_window))),
        }

    def _daily_headers(self, caller: _Caller, *, force: bool = False) -> dict[str, str]:
        if not (self.daily_budget_headers or force):
            return {}
        return {
            "x-daily-ratelimit-token-limit": str(self.daily_budget),
            "x-daily-ratelimit-token-remaining": str(self._daily_remaining(caller.company_id)),
        }

    def _company_for(self, token: str | None, company_id: int | None) -> int:
        if company_id is not None:
            return company_id
        if token is None:
            return self.company_id
        if token in self._api_tokens:
            return self._api_tokens[token][0]
        grant = self._access.get(token) or self._refresh.get(token)
        if grant is None:
            raise KeyError(f"unknown token {token[:12]}...")
        return grant.company_id

    def _unknown_path(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        rec.note = "path not served by the stand-in"
        return JSONResponse(_pd_error(404, f"Unknown method {rec.method} {rec.api_path}"), 404)

    def _users_me(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        return JSONResponse({"success": True, "data": self._users[caller.user_id].as_me()})

    def _visible_webhooks(self, caller: _Caller) -> list[dict[str, Any]]:
        # An OAuth app sees only the webhooks it created (§1.1, §1.7); per user, since each
        # install owns its own (gotcha 2). An API token sees the company's general webhooks.
        if caller.oauth:
            return [
                w
                for w in self._webhooks.values()
                if w["type"] == "application"
                and w["company_id"] == caller.company_id
                and w["owner_id"] == caller.user_id
            ]
        return [
            w
            for w in self._webhooks.values()
            if w["type"] == "general" and w["company_id"] == caller.company_id
        ]

    def _list_webhooks(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        data = [dict(w) for w in self._visible_webhooks(caller)]
        return JSONResponse({"success": True, "status": "ok", "data": data})

    def _add_webhook(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        body = rec.json
        if not isinstance(body, dict):  # the endpoint takes JSON, not form data (§1.1)
            rec.note = "webhook body is not a JSON object"
            return _webhook_bad_request({"body": "Request body must be a JSON object"})
        errors = _webhook_errors(body)
        if errors:
            rec.note = f"invalid webhook: {errors}"
            return _webhook_bad_request(errors)
        if len(self._visible_webhooks(caller)) >= self.webhook_limit:
            rec.note = "webhook limit reached"
            return JSONResponse(_pd_error(422, "Webhooks limit reached"), 422)
        webhook = {
            "id": self._next_webhook_id,
            "company_id": caller.company_id,
            "owner_id": caller.user_id,
            "user_id": body.get("user_id", caller.user_id),
            "event_action": body["event_action"],
            "event_object": body["event_object"],
            "subscription_url": body["subscription_url"],
            "version": body.get("version", "2.0"),  # the default since 2025-03-17
            "is_active": 1,
            "add_time": _pd_time(self.now()),
            "remove_time": None,
            "type": "application" if caller.oauth else "general",
            "http_auth_user": body.get("http_auth_user"),
            "http_auth_password": body.get("http_auth_password"),
            "remove_reason": None,
            "last_delivery_time": None,
            "last_http_status": None,
            "admin_id": caller.user_id,
            "name": body.get("name"),
        }
        self._webhooks[webhook["id"]] = webhook
        self._next_webhook_id += 1
        return JSONResponse({"success": True, "status": "ok", "data": dict(webhook)}, 201)

    def _delete_webhook(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        raw_id = str(params["webhook_id"])
        webhook_id = int(raw_id) if raw_id.isdigit() else -1
        if not any(w["id"] == webhook_id for w in self._visible_webhooks(caller)):
            rec.note = "unknown or foreign webhook"
            return JSONResponse(_pd_error(404, "Webhook not found"), 404)
        del self._webhooks[webhook_id]
        return JSONResponse({"success": True, "status": "ok"})

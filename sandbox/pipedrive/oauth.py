"""The emulator's OAuth server: authorize, token (code and refresh grants, rotation), revoke, and
the helpers that mint codes and tokens without a browser."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from starlette.responses import JSONResponse, RedirectResponse, Response

from sandbox.pipedrive.contract import (
    CODE_TTL_SECONDS,
    DEFAULT_SCOPES,
    REFRESH_TOKEN_TTL_SECONDS,
    _basic_credentials,
    _is_url,
)
from sandbox.pipedrive.recording import RecordedRequest

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(slots=True)
class _User:
    id: int
    company_id: int
    is_admin: bool
    company_domain: str

    def as_me(self) -> dict[str, Any]:
        """``GET /v1/users/me`` data (doc §2.1: id, company_id, company_domain, company_name)."""
        return {
            "id": self.id,
            "name": f"User {self.id}",
            "email": f"user{self.id}@{self.company_domain}.example",
            "lang": 1,
            "locale": "en_US",
            "timezone_name": "Europe/Tallinn",
            "timezone_offset": "+02:00",
            "default_currency": "EUR",
            "icon_url": None,
            "active_flag": True,
            "is_admin": 1 if self.is_admin else 0,
            "role_id": 1,
            "has_created_company": False,
            "is_you": True,
            "company_id": self.company_id,
            "company_name": f"Company {self.company_id}",
            "company_domain": self.company_domain,
            "company_country": "EE",
            "company_industry": None,
            "language": {"language_code": "en", "country_code": "US"},
        }


@dataclass(slots=True)
class _Code:
    company_id: int
    user_id: int
    scopes: tuple[str, ...]
    redirect_uri: str | None  # None: any redirect_uri is accepted at exchange
    issued_at: float


@dataclass(slots=True)
class _Token:
    """An access or refresh token. ``at`` is the expiry for access and the last use for refresh."""

    company_id: int
    user_id: int
    scopes: tuple[str, ...]
    at: float


def _oauth_error(status: int, error: str, description: str) -> Response:
    headers = {"www-authenticate": 'Basic realm="Service"'} if status == 401 else None
    return JSONResponse({"error": error, "error_description": description}, status, headers)


class OAuthMixin:
    """The emulator's OAuth server for ``PipedriveStandin``."""

    def issue_code(
        self,
        company_id: int,
        user_id: int,
        *,
        scopes: tuple[str, ...] | list[str] = DEFAULT_SCOPES,
        redirect_uri: str | None = None,
        is_admin: bool = True,
    ) -> str:
        """Mint an authorization code as if the user had clicked "Allow" (doc §2.3).

        The exchange must send ``redirect_uri`` or, when that is None, the registered one
        (``self.redirect_uri``); when both are None any redirect_uri is accepted.
        """
        with self._lock:
            self._add_user(company_id, user_id, is_admin=is_admin)
            return self._new_code(company_id, user_id, tuple(scopes), redirect_uri)

    def issue_tokens(
        self,
        company_id: int,
        user_id: int,
        *,
        scopes: tuple[str, ...] | list[str] = DEFAULT_SCOPES,
        is_admin: bool = True,
    ) -> dict[str, Any]:
        """A token response as ``/oauth/token`` would give it, without the HTTP round trip."""
        with self._lock:
            self._add_user(company_id, user_id, is_admin=is_admin)
            return self._token_response(company_id, user_id, tuple(scopes))

    @property
    def issued_secrets(self) -> list[str]:
        """Every authorization code, access token and refresh token ever handed out (a test
        scans logs for them)."""
        with self._lock:
            return list(self._issued)

    def expire_access_tokens(self) -> None:
        """Make every issued access token expired (refresh tokens stay valid)."""
        with self._lock:
            for token in self._access.values():
                token.at = self.now() - 1

    def uninstall(self, company_id: int, user_id: int) -> None:
        """What Pipedrive does on uninstall: drop the user's tokens and app webhooks (§1.7, §2.8).

        The uninstall notice to the service (``DELETE <callback>``) is not sent; tests do that.
        """
        with self._lock:
            self._drop_installation(company_id, user_id)

    @property
    def refresh_calls(self) -> int:
        """``POST /oauth/token`` requests with ``grant_type=refresh_token``, whatever the answer."""
        with self._lock:
            return self._refresh_calls

    def _authorize(self, rec: RecordedRequest, params: Mapping[str, Any]) -> Response:
        query = rec.query
        if query.get("client_id") != self.client_id:
            return _oauth_error(400, "invalid_client", "Invalid client: client is invalid")
        redirect_uri = query.get("redirect_uri", "")
        if not _is_url(redirect_uri) or (
            self.redirect_uri is not None and redirect_uri != self.redirect_uri
        ):
            return _oauth_error(400, "invalid_request", "Invalid request: redirect_uri is invalid")
        code = self._new_code(self.company_id, self.user_id, DEFAULT_SCOPES, redirect_uri)
        answer = {"code": code}
        if "state" in query:
            answer["state"] = query["state"]
        separator = "&" if urlsplit(redirect_uri).query else "?"
        return RedirectResponse(redirect_uri + separator + urlencode(answer), status_code=302)

    def _token(self, rec: RecordedRequest, params: Mapping[str, Any]) -> Response:
        if rec.form is None:
            rec.note = "token request body is not form-encoded"
            return _oauth_error(
                400,
                "invalid_request",
                "Invalid request: content must be application/x-www-form-urlencoded",
            )
        client_error = self._check_client(rec)
        if client_error is not None:
            return client_error
        form = rec.form
        grant_type = form.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "invalid_request", "Missing parameter: grant_type")
        if grant_type == "authorization_code":
            return self._exchange_code(form)
        if grant_type == "refresh_token":
            return self._refresh_token(form)
        # exchange_api_token is documented (§2.4) but not modelled here.
        return _oauth_error(
            400, "unsupported_grant_type", "Unsupported grant type: grant_type is invalid"
        )

    def _check_client(self, rec: RecordedRequest) -> Response | None:
        credentials = _basic_credentials(rec.headers)
        if credentials is None:
            rec.note = "no HTTP Basic client credentials"
            return _oauth_error(
                401, "invalid_client", "Invalid client: cannot retrieve client credentials"
            )
        client_id, client_secret = credentials
        if not (
            secrets.compare_digest(client_id, self.client_id)
            and secrets.compare_digest(client_secret, self.client_secret)
        ):
            rec.note = "wrong client credentials"
            return _oauth_error(401, "invalid_client", "Invalid client: client is invalid")
        return None

    def _exchange_code(self, form: dict[str, str]) -> Response:
        code = self._codes.get(form.get("code", ""))
        if code is None:  # unknown, or already exchanged
            return _oauth_error(
                400, "invalid_grant", "Invalid grant: authorization_code is invalid"
            )
        if self.now() - code.issued_at > CODE_TTL_SECONDS:
            return _oauth_error(
                400, "invalid_grant", "Invalid grant: authorization_code has expired"
            )
        redirect_uri = form.get("redirect_uri", "")
        if not _is_url(redirect_uri):
            return _oauth_error(
                400, "invalid_request", "Invalid request: redirect_uri is not a valid URI"
            )
        if code.redirect_uri is not None and redirect_uri != code.redirect_uri:
            return _oauth_error(400, "invalid_request", "Invalid request: redirect_uri is invalid")
        del self._codes[form["code"]]
        return JSONResponse(self._token_response(code.company_id, code.user_id, code.scopes))

    def _refresh_token(self, form: dict[str, str]) -> Response:
        value = form.get("refresh_token", "")
        grant = self._refresh.get(value)
        if grant is None or self.now() - grant.at > REFRESH_TOKEN_TTL_SECONDS:
            return _oauth_error(400, "invalid_grant", "Invalid grant: refresh_token is invalid")
        if self.rotate_refresh_tokens:
            del self._refresh[value]
            return JSONResponse(self._token_response(grant.company_id, grant.user_id, grant.scopes))
        grant.at = self.now()  # the 60-day window slides
        answer = self._token_response(grant.company_id, grant.user_id, grant.scopes, value)
        return JSONResponse(answer)

    def _revoke(self, rec: RecordedRequest, params: Mapping[str, Any]) -> Response:
        if rec.form is None:
            return _oauth_error(
                400,
                "invalid_request",
                "Invalid request: content must be application/x-www-form-urlencoded",
            )
        client_error = self._check_client(rec)
        if client_error is not None:
            return client_error
        token = rec.form.get("token", "")
        if token in self._refresh:
            grant = self._refresh[token]
            self._drop_installation(grant.company_id, grant.user_id)
        else:
            self._access.pop(token, None)
        return Response(status_code=200)  # RFC 7009: 200 whatever the token was

    def _new_code(
        self, company_id: int, user_id: int, scopes: tuple[str, ...], redirect_uri: str | None
    ) -> str:
        code = secrets.token_urlsafe(24)
        bound_uri = redirect_uri if redirect_uri is not None else self.redirect_uri
        self._codes[code] = _Code(company_id, user_id, scopes, bound_uri, self.now())
        self._issued.append(code)
        return code

    def _token_response(
        self,
        company_id: int,
        user_id: int,
        scopes: tuple[str, ...],
        refresh_token: str | None = None,
    ) -> dict[str, Any]:
        access_token = "v1u:" + secrets.token_urlsafe(48)
        self._issued.append(access_token)
        self._access[access_token] = _Token(
            company_id, user_id, scopes, self.now() + self.access_token_ttl
        )
        if refresh_token is None:
            refresh_token = f"{company_id}:{user_id}:" + secrets.token_urlsafe(32)
            self._issued.append(refresh_token)
            self._refresh[refresh_token] = _Token(company_id, user_id, scopes, self.now())
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "refresh_token": refresh_token,
            "scope": ",".join(scopes),
            "expires_in": self.access_token_ttl,
            "api_domain": self.api_domain or self.base_url,
        }

    def _drop_installation(self, company_id: int, user_id: int) -> None:
        installation = (company_id, user_id)
        for tokens in (self._access, self._refresh):
            for value, token in list(tokens.items()):
                if (token.company_id, token.user_id) == installation:
                    del tokens[value]
        for webhook_id, webhook in list(self._webhooks.items()):
            owner = (webhook["company_id"], webhook["owner_id"])
            if webhook["type"] == "application" and owner == installation:
                del self._webhooks[webhook_id]

    def _add_user(
        self, company_id: int, user_id: int, *, is_admin: bool, company_domain: str | None = None
    ) -> None:
        domain = company_domain or next(
            (u.company_domain for u in self._users.values() if u.company_id == company_id),
            f"company{company_id}",
        )
        self._users[user_id] = _User(user_id, company_id, is_admin, domain)

"""Pipedrive's OAuth server: the authorize URL, code exchange, refresh and revoke.

Token requests are form-encoded with the client credentials in HTTP Basic (JSON is refused by
Pipedrive). Error bodies are parsed defensively (their shape is not documented; node-oauth2-server
style `{"error", "error_description"}` is what is seen).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx2

from service.config import Settings
from service.logging import get_logger
from service.pipedrive.errors import InvalidClient, InvalidGrant, OAuthError, OAuthUnavailable
from service.store.installations import TokenSet
from service.store.schema import utcnow

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: str
    refresh_token: str
    expires_in: int
    scopes: tuple[str, ...]
    api_domain: str

    def token_set(self) -> TokenSet:
        return TokenSet(
            access_token=self.access_token,
            refresh_token=self.refresh_token,
            expires_at=utcnow() + timedelta(seconds=self.expires_in),
            api_domain=self.api_domain,
            scopes=self.scopes,
        )


class OAuthClient:
    """Calls the OAuth server with the app's client credentials."""

    def __init__(self, settings: Settings, http: httpx2.AsyncClient) -> None:
        self.settings = settings
        self.http = http

    @property
    def configured(self) -> bool:
        return bool(self.settings.pipedrive_client_id and self.settings.pipedrive_client_secret)

    @property
    def redirect_uri(self) -> str:
        return f"{self.settings.base_url}/oauth/callback"

    def authorize_url(self, state: str) -> str:
        query = urlencode(
            {
                "client_id": self.settings.pipedrive_client_id or "",
                "redirect_uri": self.redirect_uri,
                "state": state,
            }
        )
        return f"{self.settings.pipedrive_oauth_url}/oauth/authorize?{query}"

    def _basic(self) -> str:
        secret = self.settings.pipedrive_client_secret
        pair = f"{self.settings.pipedrive_client_id}:{secret.get_secret_value() if secret else ''}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    async def exchange_code(self, code: str) -> TokenResponse:
        return await self._token(
            {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri}
        )

    async def refresh(self, refresh_token: str) -> TokenResponse:
        return await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def revoke(self, token: str, hint: str = "refresh_token") -> None:
        """Revoke a token (RFC 7009: 200 even for unknown tokens, so it proves nothing)."""
        response = await self.http.post(
            f"{self.settings.pipedrive_oauth_url}/oauth/revoke",
            data={"token": token, "token_type_hint": hint},
            headers={"Authorization": self._basic()},
        )
        log.info("oauth.revoke", status=response.status_code, hint=hint)

    async def _token(self, form: dict[str, str]) -> TokenResponse:
        grant = form["grant_type"]
        try:
            response = await self.http.post(
                f"{self.settings.pipedrive_oauth_url}/oauth/token",
                data=form,
                headers={"Authorization": self._basic(), "Accept": "application/json"},
            )
        except httpx2.TransportError as transport_error:
            raise OAuthUnavailable(f"OAuth server unreachable: {transport_error}") from None
        log.info("oauth.token", grant_type=grant, status=response.status_code)
        body = _json(response)
        if response.status_code == 200 and isinstance(body, dict):
            return _token_response(body)
        error = str(body.get("error", "")) if isinstance(body, dict) else ""
        description = str(body.get("error_description", "")) if isinstance(body, dict) else ""
        message = f"{grant}: {error or response.status_code} {description}".strip()
        if response.status_code >= 500:
            raise OAuthUnavailable(message, status=response.status_code)
        if error == "invalid_client" or response.status_code == 401:
            raise InvalidClient(message, status=response.status_code, code=error or None)
        said = f"{error} {description}".lower().replace("_", " ")
        if "invalid grant" in said or (grant == "refresh_token" and response.status_code == 400):
            raise InvalidGrant(message, status=response.status_code, code="invalid_grant")
        raise OAuthError(message, status=response.status_code, code=error or None)


def _json(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _token_response(body: dict[str, Any]) -> TokenResponse:
    try:
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            raise ValueError(f"unexpected token_type {body.get('token_type')!r}")
        return TokenResponse(
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
            expires_in=int(body.get("expires_in", 3600)),
            scopes=tuple(s.strip() for s in str(body.get("scope", "")).split(",") if s.strip()),
            api_domain=str(body["api_domain"]).rstrip("/"),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise OAuthError(f"malformed token response: {error}") from None

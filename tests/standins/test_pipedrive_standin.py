"""Self-test of the Pipedrive stand-in: it must enforce the contract rules it claims to."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import anyio.to_thread
import httpx2
import pytest
from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sandbox.pipedrive import (
    CLOUDFLARE_BLOCK_HTML,
    CONVERSATION_SCHEMA,
    CREATE_CHANNEL_REQUEST_SCHEMA,
    ERROR_RESPONSE_SCHEMA,
    MANIFEST_RESPONSE_SCHEMAS,
    MESSAGE_SCHEMA,
    PARTICIPANT_SCHEMA,
    RECEIVE_MESSAGE_REQUEST_SCHEMA,
    TEMPLATES_RESPONSE_SCHEMA,
    PipedriveStandin,
    ServerThread,
    error_problems,
    manifest_problems,
    response_problems,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from starlette.requests import Request

CLIENT_ID = "cid-123"
CLIENT_SECRET = "csecret-456"
API_TOKEN = "personal-api-token"
REDIRECT_URI = "http://app.test/oauth/callback"
COMPANY, USER = 1001, 2001
T0 = 1_700_000_000.0  # the fake clock only moves through pd.advance()


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with PipedriveStandin(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        api_token=API_TOKEN,
        redirect_uri=REDIRECT_URI,
        company_id=COMPANY,
        user_id=USER,
        clock=lambda: T0,
    ) as standin:
        yield standin


@pytest.fixture
def client(pd: PipedriveStandin) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=pd.base_url) as c:
        yield c


def exchange(client: httpx2.Client, code: str, **overrides: Any) -> httpx2.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    auth = overrides.pop("auth", (CLIENT_ID, CLIENT_SECRET))
    return client.post("/oauth/token", data={**form, **overrides}, auth=auth)


def refresh(client: httpx2.Client, refresh_token: str) -> httpx2.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return client.post("/oauth/token", data=form, auth=(CLIENT_ID, CLIENT_SECRET))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def access_token(pd: PipedriveStandin, **kwargs: Any) -> str:
    token: str = pd.issue_tokens(COMPANY, USER, **kwargs)["access_token"]
    return token


def message(**overrides: Any) -> dict[str, Any]:
    body = {
        "id": "msg-1",
        "channel_id": "chan-1",
        "sender_id": "user-1",
        "conversation_id": "conv-1",
        "message": "Hi",
        "status": "sent",
        "created_at": "2024-05-02 14:07",
        "attachments": [],
    }
    return {**body, **overrides}


# ---------------------------------------------------------------------- OAuth


def test_code_exchange_returns_exactly_the_documented_fields(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    response = exchange(client, pd.issue_code(COMPANY, USER, scopes=["base", "admin"]))

    assert response.status_code == 200
    tokens = response.json()
    assert set(tokens) == {
        "access_token",
        "token_type",
        "refresh_token",
        "scope",
        "expires_in",
        "api_domain",
    }
    assert tokens["token_type"].lower() == "bearer"
    assert tokens["scope"] == "base,admin"
    assert tokens["expires_in"] == 3599
    assert tokens["api_domain"] == pd.base_url
    me = client.get("/api/v1/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    assert me.json()["data"]["company_id"] == COMPANY


@pytest.mark.parametrize(
    ("auth", "description"),
    [
        (None, "Invalid client: cannot retrieve client credentials"),
        ((CLIENT_ID, "wrong"), "Invalid client: client is invalid"),
        (("other-client", CLIENT_SECRET), "Invalid client: client is invalid"),
    ],
)
def test_token_endpoint_requires_basic_client_auth(
    pd: PipedriveStandin,
    client: httpx2.Client,
    auth: tuple[str, str] | None,
    description: str,
) -> None:
    response = exchange(client, pd.issue_code(COMPANY, USER), auth=auth)

    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client", "error_description": description}


def test_client_credentials_in_the_body_are_not_enough(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    code = pd.issue_code(COMPANY, USER)
    response = exchange(client, code, auth=None, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    assert response.status_code == 401


def test_token_endpoint_rejects_json(pd: PipedriveStandin, client: httpx2.Client) -> None:
    body = {
        "grant_type": "authorization_code",
        "code": pd.issue_code(COMPANY, USER),
        "redirect_uri": REDIRECT_URI,
    }
    response = client.post("/oauth/token", json=body, auth=(CLIENT_ID, CLIENT_SECRET))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "application/x-www-form-urlencoded" in response.json()["error_description"]


def test_token_endpoint_grant_type_errors(client: httpx2.Client) -> None:
    auth = (CLIENT_ID, CLIENT_SECRET)
    missing = client.post("/oauth/token", data={"code": "x"}, auth=auth)
    assert missing.json()["error_description"] == "Missing parameter: grant_type"
    unsupported = client.post("/oauth/token", data={"grant_type": "password"}, auth=auth)
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"


def test_code_is_single_use(pd: PipedriveStandin, client: httpx2.Client) -> None:
    code = pd.issue_code(COMPANY, USER)
    assert exchange(client, code).status_code == 200

    again = exchange(client, code)
    assert again.status_code == 400
    assert again.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid grant: authorization_code is invalid",
    }


def test_code_expires_after_five_minutes(pd: PipedriveStandin, client: httpx2.Client) -> None:
    fresh, stale = pd.issue_code(COMPANY, USER), pd.issue_code(COMPANY, USER)
    pd.advance(299)
    assert exchange(client, fresh).status_code == 200
    pd.advance(2)

    response = exchange(client, stale)
    assert response.status_code == 400
    assert response.json()["error_description"] == "Invalid grant: authorization_code has expired"


def test_redirect_uri_must_match_and_a_mismatch_does_not_burn_the_code(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    code = pd.issue_code(COMPANY, USER)
    wrong = exchange(client, code, redirect_uri="http://evil.test/cb")
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_request"
    assert exchange(client, code).status_code == 200


def test_authorize_redirects_with_code_and_state(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    query = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "state": "s-1"}
    response = client.get("/oauth/authorize", params=query)

    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    params = parse_qs(location.query)
    assert params["state"] == ["s-1"]
    assert exchange(client, params["code"][0]).status_code == 200
    bad = client.get("/oauth/authorize", params={**query, "redirect_uri": "http://x.test/"})
    assert bad.status_code == 400


def test_refresh_rotates_and_the_old_refresh_token_is_rejected(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    first = exchange(client, pd.issue_code(COMPANY, USER)).json()
    second = refresh(client, first["refresh_token"])
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert second.json()["access_token"] != first["access_token"]

    replay = refresh(client, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid grant: refresh_token is invalid",
    }
    assert refresh(client, second.json()["refresh_token"]).status_code == 200
    assert pd.refresh_calls == 3


def test_refresh_without_rotation_returns_the_same_token(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    pd.rotate_refresh_tokens = False
    first = pd.issue_tokens(COMPANY, USER)
    again = refresh(client, first["refresh_token"]).json()
    assert again["refresh_token"] == first["refresh_token"]
    assert refresh(client, first["refresh_token"]).status_code == 200


def test_uninstall_and_revoke_invalidate_tokens(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    tokens = pd.issue_tokens(COMPANY, USER)
    pd.uninstall(COMPANY, USER)
    assert client.get("/api/v1/users/me", headers=bearer(tokens["access_token"])).status_code == 401
    assert refresh(client, tokens["refresh_token"]).status_code == 400

    tokens = pd.issue_tokens(COMPANY, USER)
    revoke = client.post(
        "/oauth/revoke",
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert revoke.status_code == 200
    assert refresh(client, tokens["refresh_token"]).status_code == 400


# ---------------------------------------------------------------------- API auth and envelope


def test_api_accepts_valid_bearer_and_api_token_and_both_path_forms(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    token = access_token(pd)
    for path in ("/api/v1/users/me", "/v1/users/me"):
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 200
        assert response.json()["success"] is True
    by_api_token = client.get("/api/v1/users/me", headers={"x-api-token": API_TOKEN})
    assert by_api_token.status_code == 200
    assert {"id", "company_id", "company_domain", "company_name"} <= set(
        by_api_token.json()["data"]
    )


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"x-api-token": "nope"}, {"Authorization": "Basic x"}],
)
def test_api_rejects_missing_or_unknown_credentials_with_the_error_envelope(
    client: httpx2.Client, headers: dict[str, str]
) -> None:
    response = client.get("/api/v1/users/me", headers=headers)

    assert response.status_code == 401
    body = response.json()
    assert body["success"] is False
    assert body["errorCode"] == 401
    assert isinstance(body["error"], str)
    assert "error_info" in body


def test_api_token_query_parameter_is_not_accepted(client: httpx2.Client) -> None:
    assert client.get("/api/v1/users/me", params={"api_token": API_TOKEN}).status_code == 401


def test_expired_access_token_is_rejected(pd: PipedriveStandin, client: httpx2.Client) -> None:
    token = access_token(pd)
    pd.advance(3598)
    assert client.get("/api/v1/users/me", headers=bearer(token)).status_code == 200
    pd.advance(2)
    response = client.get("/api/v1/users/me", headers=bearer(token))
    assert response.status_code == 401
    assert "expired" in response.json()["error"]


def test_unknown_api_path_is_404_in_the_envelope(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    response = client.get("/api/v1/deals", headers=bearer(access_token(pd)))
    assert response.status_code == 404
    assert response.json()["success"] is False


def test_missing_scope_is_scope_and_url_mismatch(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    token = access_token(pd, scopes=["base"])
    response = client.get("/api/v1/webhooks", headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["error"] == "Scope and URL mismatch"


# ---------------------------------------------------------------------- rate limits


def test_burst_limit_headers_and_429(pd: PipedriveStandin, client: httpx2.Client) -> None:
    pd.set_burst_limit(3, 2.0)
    headers = bearer(access_token(pd))

    remaining = []
    for _ in range(3):
        response = client.get("/api/v1/users/me", headers=headers)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == "3"
        assert response.headers["x-ratelimit-reset"] == "2"
        remaining.append(response.headers["x-ratelimit-remaining"])
    assert remaining == ["2", "1", "0"]

    limited = client.get("/api/v1/users/me", headers=headers)
    assert limited.status_code == 429
    assert limited.json()["success"] is False
    assert limited.json()["errorCode"] == 429
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert limited.headers["x-ratelimit-reset"] == "2"
    assert limited.headers["x-daily-ratelimit-token-remaining"] != "0"  # not the daily kind
    assert "retry-after" not in limited.headers
    assert pd.requests_inside_reset_window == 0

    pd.advance(1)
    assert client.get("/api/v1/users/me", headers=headers).status_code == 429
    assert pd.requests_inside_reset_window == 1
    pd.advance(1)
    assert client.get("/api/v1/users/me", headers=headers).status_code == 200
    assert pd.requests_inside_reset_window == 1
    other_token = client.get("/api/v1/users/me", headers=bearer(access_token(pd)))
    assert other_token.status_code == 200  # the limit is per token


def test_daily_budget_exhaustion_is_marked_and_per_company(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    token = access_token(pd)
    other_company = pd.issue_tokens(5005, 6006)["access_token"]
    first = client.get("/api/v1/users/me", headers=bearer(token))
    assert first.headers["x-daily-ratelimit-token-limit"] == "30000"
    assert first.headers["x-daily-ratelimit-token-remaining"] == "29998"  # users/me costs 2

    pd.exhaust_daily_budget(token)
    for headers in (bearer(token), {"x-api-token": API_TOKEN}):  # the whole company
        response = client.get("/api/v1/users/me", headers=headers)
        assert response.status_code == 429
        assert response.headers["x-daily-ratelimit-token-remaining"] == "0"
        assert response.json()["errorCode"] == 429
    assert client.get("/api/v1/users/me", headers=bearer(other_company)).status_code == 200

    pd.restore_daily_budget(token)
    assert client.get("/api/v1/users/me", headers=bearer(token)).status_code == 200
    pd.exhaust_daily_budget(company_id=COMPANY)
    pd.advance(24 * 3600)  # the next day (the access token has expired by then)
    assert client.get("/api/v1/users/me", headers={"x-api-token": API_TOKEN}).status_code == 200


def test_daily_budget_is_spent_by_cost(pd: PipedriveStandin, client: httpx2.Client) -> None:
    pd.daily_budget = 12
    headers = bearer(access_token(pd))
    assert client.get("/api/v1/webhooks", headers=headers).status_code == 200  # cost 10
    assert client.get("/api/v1/users/me", headers=headers).status_code == 200  # cost 2
    assert client.get("/api/v1/users/me", headers=headers).status_code == 429


# ---------------------------------------------------------------------- webhooks


def test_webhook_lifecycle(pd: PipedriveStandin, client: httpx2.Client) -> None:
    headers = bearer(access_token(pd))
    body = {
        "subscription_url": "https://app.test/webhooks/pipedrive",
        "event_action": "change",
        "event_object": "deal",
        "version": "2.0",
        "name": "pdbridge",
        "http_auth_user": "pd",
        "http_auth_password": "pw",
    }
    created = client.post("/api/v1/webhooks", json=body, headers=headers)
    assert created.status_code == 201
    webhook = created.json()["data"]
    assert created.json()["status"] == "ok"
    assert webhook["type"] == "application"
    assert (webhook["http_auth_user"], webhook["http_auth_password"]) == ("pd", "pw")

    listed = client.get("/api/v1/webhooks", headers=headers).json()["data"]
    assert [w["id"] for w in listed] == [webhook["id"]]
    # Another install of the same company does not see it; the API token sees only general ones.
    assert (
        client.get(
            "/api/v1/webhooks", headers=bearer(pd.issue_tokens(COMPANY, 2002)["access_token"])
        ).json()["data"]
        == []
    )
    assert client.get("/api/v1/webhooks", headers={"x-api-token": API_TOKEN}).json()["data"] == []

    deleted = client.delete(f"/api/v1/webhooks/{webhook['id']}", headers=headers)
    assert deleted.json() == {"success": True, "status": "ok"}
    assert pd.webhooks == []
    assert client.delete(f"/api/v1/webhooks/{webhook['id']}", headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_action": "change", "event_object": "deal"}, "subscription_url"),
        ({"subscription_url": "https://a.test/", "event_object": "deal"}, "event_action"),
        ({"subscription_url": "https://a.test/", "event_action": "change"}, "event_object"),
        (
            {
                "subscription_url": "https://a.test/",
                "event_action": "updated",
                "event_object": "deal",
                "version": "2.0",
            },
            "event_action",
        ),
        (
            {
                "subscription_url": "https://a.test/",
                "event_action": "added",
                "event_object": "lead",
                "version": "1.0",
            },
            "event_object",
        ),
        (
            {
                "subscription_url": "https://a.test/",
                "event_action": "*",
                "event_object": "*",
                "version": "3.0",
            },
            "version",
        ),
    ],
)
def test_webhook_validation(
    pd: PipedriveStandin, client: httpx2.Client, body: dict[str, Any], field: str
) -> None:
    response = client.post("/api/v1/webhooks", json=body, headers=bearer(access_token(pd)))
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert field in response.json()["errors"]


def test_webhook_body_must_be_json(pd: PipedriveStandin, client: httpx2.Client) -> None:
    form = {"subscription_url": "https://a.test/", "event_action": "*", "event_object": "*"}
    response = client.post("/api/v1/webhooks", data=form, headers=bearer(access_token(pd)))
    assert response.status_code == 400


# ---------------------------------------------------------------------- channels


def register_channel(client: httpx2.Client, token: str, channel_id: str = "chan-1") -> None:
    body = {"name": "WhatsApp +49", "provider_channel_id": channel_id, "provider_type": "whatsapp"}
    response = client.post("/api/v1/channels", json=body, headers=bearer(token))
    assert response.status_code == 200, response.text


def test_channel_registration(pd: PipedriveStandin, client: httpx2.Client) -> None:
    token = access_token(pd)
    body = {"name": "My Channel", "provider_channel_id": "chan-1"}
    response = client.post("/api/v1/channels", json=body, headers=bearer(token))

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["provider_channel_id"] == "chan-1"
    assert data["marketplace_client_id"] == CLIENT_ID
    assert (data["pd_company_id"], data["pd_user_id"]) == (COMPANY, USER)
    assert (data["provider_type"], data["template_support"]) == ("other", False)
    assert len(pd.channels) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x"},
        {"provider_channel_id": "c"},
        {"name": 1, "provider_channel_id": "c"},
        {"name": "x", "provider_channel_id": "c", "provider_type": "telegram"},
        ["not", "object"],
    ],
)
def test_channel_registration_invalid_body(
    pd: PipedriveStandin, client: httpx2.Client, body: Any
) -> None:
    response = client.post("/api/v1/channels", json=body, headers=bearer(access_token(pd)))

    assert response.status_code == 400
    assert response.json()["success"] is False
    assert response.json()["additional_data"] == {"code": "INVALID_BODY"}
    assert pd.requests[-1].note is not None


def test_channel_registration_is_admin_only(pd: PipedriveStandin, client: httpx2.Client) -> None:
    token = access_token(pd, is_admin=False)
    body = {"name": "x", "provider_channel_id": "c"}
    response = client.post("/api/v1/channels", json=body, headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["additional_data"]["code"] == "ADMIN_ONLY"


def test_receive_upserts_by_message_id(pd: PipedriveStandin, client: httpx2.Client) -> None:
    token = access_token(pd)
    register_channel(client, token)

    first = client.post("/api/v1/channels/messages/receive", json=message(), headers=bearer(token))
    assert first.status_code == 200
    assert first.json() == {"success": True, "data": message()}
    update = message(status="read", reply_by=None)
    client.post("/api/v1/channels/messages/receive", json=update, headers=bearer(token))
    assert pd.messages == [update]


@pytest.mark.parametrize(
    "body",
    [
        message(status="seen"),
        message(created_at=None),
        {k: v for k, v in message().items() if k != "sender_id"},
        {k: v for k, v in message().items() if k != "attachments"},
        message(attachments=[{"id": "a1", "type": "image/png"}]),
        message(id=7),
    ],
)
def test_schema_invalid_receive_body_is_400(
    pd: PipedriveStandin, client: httpx2.Client, body: dict[str, Any]
) -> None:
    token = access_token(pd)
    register_channel(client, token)

    response = client.post("/api/v1/channels/messages/receive", json=body, headers=bearer(token))
    assert response.status_code == 400
    assert response.json()["additional_data"] == {"code": "INVALID_RECEIVE_MESSAGE_PAYLOAD"}
    assert response.json()["error"].startswith("Expected {")
    assert pd.messages == []


def test_receive_accepts_documented_nullables_and_optional_attachments_when_relaxed(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    token = access_token(pd)
    register_channel(client, token)
    attachment = {
        "id": "a1",
        "type": "image/png",
        "url": "https://m.test/a1",
        "name": None,
        "size": None,
        "preview_url": None,
    }
    body = message(attachments=[attachment], reply_by=None)
    url = "/api/v1/channels/messages/receive"
    assert client.post(url, json=body, headers=bearer(token)).status_code == 200

    pd.require_receive_attachments = False
    no_attachments = {k: v for k, v in message().items() if k != "attachments"}
    assert client.post(url, json=no_attachments, headers=bearer(token)).status_code == 200


def test_receive_for_an_unknown_channel_is_404(pd: PipedriveStandin, client: httpx2.Client) -> None:
    response = client.post(
        "/api/v1/channels/messages/receive", json=message(), headers=bearer(access_token(pd))
    )
    assert response.status_code == 404
    assert response.json()["additional_data"]["code"] == "NOT_FOUND"


def test_delete_conversation_and_channel(pd: PipedriveStandin, client: httpx2.Client) -> None:
    owner = access_token(pd)
    register_channel(client, owner)
    for msg_id, conv in (("m1", "conv-1"), ("m2", "conv-2")):
        body = message(id=msg_id, conversation_id=conv)
        client.post("/api/v1/channels/messages/receive", json=body, headers=bearer(owner))

    colleague = pd.issue_tokens(COMPANY, 2002)["access_token"]
    url = "/api/v1/channels/chan-1/conversations/conv-1"
    forbidden = client.delete(url, headers=bearer(colleague))
    assert forbidden.status_code == 403
    assert forbidden.json()["additional_data"]["code"] == "FORBIDDEN_USER_REQUEST"
    assert client.delete(url, headers=bearer(owner)).json() == {"success": True}
    assert [m["id"] for m in pd.messages] == ["m2"]
    missing = client.delete("/api/v1/channels/nope/conversations/conv-1", headers=bearer(owner))
    assert missing.status_code == 404

    assert client.delete("/api/v1/channels/chan-1", headers=bearer(owner)).json() == {
        "success": True
    }
    assert (pd.channels, pd.messages) == ([], [])
    assert client.delete("/api/v1/channels/chan-1", headers=bearer(owner)).status_code == 404


def test_embedded_schemas_match_the_shared_spec() -> None:
    spec = Path(__file__).resolve().parents[3] / "shared" / "spec" / "pipedrive-v1-schemas.json"
    if not spec.exists():
        pytest.skip(f"{spec} is not present")
    schemas = json.loads(spec.read_text())

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("description", "example")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    assert strip(schemas["ChannelsCreateNewChannelRequest"]) == CREATE_CHANNEL_REQUEST_SCHEMA
    assert strip(schemas["ChannelsReceiveMessageRequest"]) == RECEIVE_MESSAGE_REQUEST_SCHEMA


# ---------------------------------------------------------------------- faults and records


def test_fail_next_injects_server_errors_then_recovers(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    headers = bearer(access_token(pd))
    pd.fail_next("/v1/users", 503, count=2)

    statuses = [client.get("/api/v1/users/me", headers=headers).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert [r.status for r in pd.requests] == [503, 503, 200]


def test_stall_next_answers_too_late_but_still_handles_the_call(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    """A client that gave up never learns that the stalled call took effect."""
    token = access_token(pd)
    register_channel(client, token)
    headers = bearer(token)
    pd.stall_next("/v1/channels/messages/receive", 2.0)
    with pytest.raises(httpx2.ReadTimeout):
        client.post(
            "/api/v1/channels/messages/receive", json=message(), headers=headers, timeout=0.2
        )
    deadline = time.monotonic() + 30
    while not pd.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m["id"] for m in pd.messages] == [message()["id"]]
    again = client.post("/api/v1/channels/messages/receive", json=message(), headers=headers)
    assert again.status_code == 200  # only the next call was held


def test_fail_next_cloudflare_html_403(pd: PipedriveStandin, client: httpx2.Client) -> None:
    pd.fail_next("/api/v1/channels", 403)
    response = client.post(
        "/api/v1/channels/messages/receive", json=message(), headers=bearer(access_token(pd))
    )
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == CLOUDFLARE_BLOCK_HTML


def test_fail_next_custom_body_and_method(pd: PipedriveStandin, client: httpx2.Client) -> None:
    headers = bearer(access_token(pd))
    pd.fail_next("/v1/webhooks", 500, body={"success": False, "error": "boom"}, method="POST")
    assert client.get("/api/v1/webhooks", headers=headers).status_code == 200
    response = client.post("/api/v1/webhooks", json={}, headers=headers)
    assert (response.status_code, response.json()["error"]) == (500, "boom")


def test_injected_429_opens_a_reset_window(pd: PipedriveStandin, client: httpx2.Client) -> None:
    headers = bearer(access_token(pd))
    pd.fail_next("/v1/users/me", 429)
    limited = client.get("/api/v1/users/me", headers=headers)
    assert limited.status_code == 429
    assert limited.headers["x-ratelimit-reset"] == "2"

    assert client.get("/api/v1/users/me", headers=headers).status_code == 200
    assert pd.requests_inside_reset_window == 1


def test_fail_next_on_the_token_endpoint_still_counts_the_refresh(
    pd: PipedriveStandin, client: httpx2.Client
) -> None:
    tokens = pd.issue_tokens(COMPANY, USER)
    pd.fail_next("/oauth/token", 503)
    assert refresh(client, tokens["refresh_token"]).status_code == 503
    assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert pd.refresh_calls == 2


def test_requests_are_recorded(pd: PipedriveStandin, client: httpx2.Client) -> None:
    token = access_token(pd)
    register_channel(client, token)
    client.get("/v1/users/me", headers=bearer(token))

    channel_post, me = pd.requests
    assert (channel_post.method, channel_post.path, channel_post.api_path) == (
        "POST",
        "/api/v1/channels",
        "/v1/channels",
    )
    assert channel_post.json["provider_channel_id"] == "chan-1"
    assert channel_post.headers["authorization"] == f"Bearer {token}"
    assert channel_post.time == T0
    assert (me.path, me.api_path, me.status) == ("/v1/users/me", "/v1/users/me", 200)
    exchange(client, "unknown-code")
    assert pd.requests[-1].form is not None
    assert pd.requests[-1].form["grant_type"] == "authorization_code"


def test_stop_closes_the_port() -> None:
    standin = PipedriveStandin().start()
    host, port = "127.0.0.1", int(standin.base_url.rsplit(":", 1)[1])
    with socket.create_connection((host, port), timeout=1):
        pass
    standin.stop()
    standin.stop()
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), timeout=1):
        pass


# ---------------------------------------------------------------------- manifest callbacks

RECEIVE = "/api/v1/channels/messages/receive"
NOT_FOUND = (404, {"success": False, "data": {"code": "NOT_FOUND", "message": "not found"}})
Answer = tuple[int, Any]  # (status, body); a str body is sent as text/plain


def conversation(conversation_id: str, *, sender: str = "wa-user-1", **overrides: Any) -> dict:
    """A valid Conversation (messaging doc §3.3) from the app's side."""
    body = {
        "id": conversation_id,
        "link": "",
        "status": "open",
        "seen": True,
        "next_messages_cursor": None,
        "messages": [
            {
                "id": f"{conversation_id}-m1",
                "status": "read",
                "created_at": "2024-05-02 14:07",
                "message": "Hi",
                "sender_id": sender,
                "attachments": [
                    {"id": "a1", "type": "image/jpeg", "url": "https://m.test/a1", "name": None}
                ],
            }
        ],
        "participants": [
            {"id": "wa-biz-1", "name": "ACME Sales", "role": "source_user"},
            {"id": "wa-user-1", "name": "Jane Doe", "role": "end_user", "fetch_avatar": True},
        ],
    }
    return {**body, **overrides}


def page(*conversations: dict, after: str | None = None) -> Answer:
    return 200, {"success": True, "data": list(conversations), "additional_data": {"after": after}}


@dataclass
class FakeCall:
    endpoint: str
    method: str
    raw_path: str  # as sent, percent-encoded
    query: dict[str, str]
    auth: tuple[str, str] | None  # the HTTP Basic credentials, if any
    content_type: str
    form: list[tuple[str, Any]] | None  # postMessage: (name, str | (filename, bytes, type))


class FakeApp:
    """The provider app, reduced to canned answers on the manifest endpoints; records calls.

    It answers 401 in the documented envelope unless the Basic credentials are the stand-in's.
    """

    def __init__(self) -> None:
        self.calls: list[FakeCall] = []
        self.conversations_page: Callable[[str | None], Answer] = lambda after: page()
        self.conversation: dict[str, Answer] = {}  # getConversationById by id; others 404
        self.canned: dict[str, Answer] = {
            "postMessage": (200, {"success": True, "data": {"id": "wamid.1"}}),
            "deleteChannelById": (200, {"success": True}),
        }
        self.gate = threading.Event()  # getConversations waits until it is set
        self.gate.set()
        channel = "/pd/channels/{channel}"
        routes = [
            ("getConversations", "GET", "/conversations"),
            ("getConversationById", "GET", "/conversations/{conversation}"),
            ("getMessageById", "GET", "/conversations/{conversation}/messages/{message}"),
            ("getSenderById", "GET", "/senders/{sender}"),
            ("getTemplates", "GET", "/templates"),
            ("postMessage", "POST", "/messages"),
            ("deleteChannelById", "DELETE", ""),
        ]
        app = Starlette(
            routes=[
                Route(channel + path, self._handler(name), methods=[method])
                for name, method, path in routes
            ]
        )
        self.server = ServerThread(app, name="fake-app")

    def manifest(self) -> dict[str, Any]:
        """What ``pdbridge manifest`` would print for this app."""
        base = f"{self.server.base_url}/pd/channels/:providerChannelId"
        conversation_url = f"{base}/conversations/:sourceConversationId"
        return {
            "version": "v202101",
            "endpoints": {
                "getConversations": f"{base}/conversations",
                "getConversationById": conversation_url,
                "getMessageById": f"{conversation_url}/messages/:sourceMessageId",
                "getSenderById": f"{base}/senders/:senderId",
                "getTemplates": f"{base}/templates",
                "postMessage": f"{base}/messages",
                "deleteChannelById": base,
            },
        }

    def _handler(self, endpoint: str) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            form = None
            if endpoint == "postMessage":
                form = []
                async with request.form() as data:
                    for name, value in data.multi_items():
                        if isinstance(value, UploadFile):
                            file = (value.filename, await value.read(), value.content_type)
                            form.append((name, file))
                        else:
                            form.append((name, value))
            auth = basic_credentials(request.headers.get("authorization"))
            self.calls.append(
                FakeCall(
                    endpoint,
                    request.method,
                    request.scope["raw_path"].decode(),
                    dict(request.query_params),
                    auth,
                    request.headers.get("content-type", ""),
                    form,
                )
            )
            if endpoint == "getConversations":
                await anyio.to_thread.run_sync(self.gate.wait, 5)
            if auth != (CLIENT_ID, CLIENT_SECRET):
                body = {"success": False, "data": {"code": "UNAUTHORIZED", "message": "who?"}}
                return JSONResponse(body, 401)
            if endpoint == "getConversations":
                status, body = self.conversations_page(request.query_params.get("after"))
            elif endpoint == "getConversationById":
                status, body = self.conversation.get(request.path_params["conversation"], NOT_FOUND)
            else:
                status, body = self.canned.get(endpoint, NOT_FOUND)
            if isinstance(body, str):
                return PlainTextResponse(body, status)
            return JSONResponse(body, status)

        return handle


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


@pytest.fixture
def app() -> Iterator[FakeApp]:
    fake = FakeApp()
    with fake.server:
        yield fake


@pytest.fixture
def token(pd: PipedriveStandin, app: FakeApp) -> str:
    """An access token, with the stand-in calling the fake app."""
    pd.set_manifest(app.manifest())
    return access_token(pd)


def receive(client: httpx2.Client, token: str, **overrides: Any) -> None:
    response = client.post(RECEIVE, json=message(**overrides), headers=bearer(token))
    assert response.status_code == 200, response.text


def test_without_a_manifest_nothing_is_called(
    pd: PipedriveStandin, client: httpx2.Client, app: FakeApp
) -> None:
    token = access_token(pd)
    register_channel(client, token)
    receive(client, token)
    assert pd.wait_for_idle() == []
    assert app.calls == []
    assert pd.manifest is None


def test_registration_imports_conversations_following_after(
    pd: PipedriveStandin, client: httpx2.Client, app: FakeApp, token: str
) -> None:
    pages = {
        None: page(conversation("conv-1"), after="cur-2"),
        "cur-2": page(conversation("conv-2")),
    }
    app.conversations_page = pages.__getitem__

    register_channel(client, token)
    first, second = pd.wait_for_callbacks(2)

    assert len(pd.wait_for_idle()) == 2
    assert (first.endpoint, first.method, first.status, first.problems) == (
        "getConversations",
        "GET",
        200,
        [],
    )
    base = f"{app.server.base_url}/pd/channels/chan-1/conversations"
    assert first.url == f"{base}?conversations_limit=30&messages_limit=30"
    assert first.params == {"conversations_limit": "30", "messages_limit": "30"}
    assert first.body == pages[None][1]
    assert first.time == T0
    assert second.params == {"conversations_limit": "30", "messages_limit": "30", "after": "cur-2"}
    assert (second.status, second.problems) == (200, [])
    assert [c.auth for c in app.calls] == [(CLIENT_ID, CLIENT_SECRET)] * 2
    assert pd.seen_conversations("chan-1") == {"conv-1", "conv-2"}

    receive(client, token, conversation_id="conv-2")  # imported: Pipedrive knows it
    assert len(pd.wait_for_idle()) == 2


def test_callbacks_do_not_hold_up_the_triggering_request(
    pd: PipedriveStandin, client: httpx2.Client, app: FakeApp, token: str
) -> None:
    app.gate.clear()  # getConversations hangs until the registration has its answer
    body = {"name": "WA", "provider_channel_id": "chan-1"}
    response = client.post("/api/v1/channels", json=body, headers=bearer(token), timeout=3)

    assert response.status_code == 200
    assert pd.callbacks == []
    app.gate.set()
    assert [c.problems for c in pd.wait_for_callbacks(1)] == [[]]


def test_receive_fetches_a_new_conversation_once(
    pd: PipedriveStandin, client: httpx2.Client, app: FakeApp, token: str
) -> None:
    app.conversation["conv-9"] = (200, {"success": True, "data": conversation("conv-9")})
    register_channel(client, token)
    pd.wait_for_callbacks(1)

    receive(client, token, id="m1", conversation_id="conv-9")
    fetched = pd.wait_for_callbacks(2)[1]
    assert fetched.endpoint == "getConversationById"
    assert fetched.url == (
        f"{app.server.base_url}/pd/channels/chan-1/conversations/conv-9?messages_limit=30"
    )
    assert (fetched.status, fetched.problems) == (200, [])
    assert app.calls[-1].auth == (CLIENT_ID, CLIENT_SECRET)

    receive(client, token, id="m2", conversation_id="conv-9")
    receive(client, token, id="m1", conversation_id="conv-9", status="read")
    assert len(pd.wait_for_idle()) == 2

    receive(client, token, id="m3", conversation_id="conv-new")
    missing = pd.wait_for_callbacks(3)[2]
    assert (missing.status, missing.problems) == (404, ["$: HTTP 404, expected 200"])

    assert [(m["id"], m["status"]) for m in pd.received("chan-1")] == [
        ("m1", "read"),
        ("m2", "sent"),
        ("m3", "sent"),
    ]
    assert [m["id"] for m in pd.received("chan-1", "conv-9")] == ["m1", "m2"]
    assert pd.received("chan-2") == []

    # Once Pipedrive deleted the conversation, a message in it is news again.
    client.delete("/api/v1/channels/chan-1/conversations/conv-9", headers=bearer(token))
    receive(client, token, id="m4", conversation_id="conv-9")
    assert pd.wait_for_callbacks(4)[3].url.endswith("/conversations/conv-9?messages_limit=30")


def test_invalid_answers_are_recorded_with_their_problems(
    pd: PipedriveStandin, client: httpx2.Client, app: FakeApp, token: str
) -> None:
    broken = conversation("conv-1", status="pending")
    del broken["link"]
    app.conversations_page = lambda after: page(broken, after="more")
    app.conversation["conv-2"] = (
        200,
        {"success": True, "data": conversation("conv-2", sender="x")},
    )
    app.conversation["conv-3"] = (500, "Internal Server Error")
    app.conversation["conv-4"] = (200, conversation("conv-4"))  # no envelope

    register_channel(client, token)
    assert len(pd.wait_for_idle()) == 1  # a refused page ends the paging, "after" or not
    problems = pd.callbacks[0].problems
    assert "$.data[0]: 'link' is a required property" in problems
    assert "$.data[0].status: 'pending' is not one of ['open', 'closed']" in problems
    assert pd.seen_conversations("chan-1") == set()

    for number in (2, 3, 4):
        receive(client, token, id=f"m{number}", conversation_id=f"conv-{number}")
    _, wrong_sender, server_error, bare = pd.wait_for_callbacks(4)
    assert wrong_sender.problems == [
        "$.data.messages[0].sender_id: 'x' is not the id of a participant of the conversation"
        " ['wa-biz-1', 'wa-user-1']"
    ]
    assert (server_error.status, server_error.body) == (500, "Internal Server Error")
    assert server_error.problems[:2] == [
        "$: the body is not JSON (content-type 'text/plain')",
        "$: HTTP 500, expected 200",
    ]
    assert "$: 'success' is a required property" in bare.problems


def test_paging_ends_at_a_repeated_cursor_and_after_ten_pages(
    pd: PipedriveStandin, client: httpx2.Client, app: FakeApp, token: str
) -> None:
    app.conversations_page = lambda after: page(after="same")
    register_channel(client, token, "chan-1")
    first, again = pd.wait_for_idle()
    assert (first.problems, again.params["after"]) == ([], "same")
    assert again.problems == ["$.additional_data.after: 'same' was given before; paging stopped"]

    pd.clear_callbacks()
    app.conversations_page = lambda after: page(after=str(int(after or 0) + 1))
    register_channel(client, token, "chan-2")
    pages = pd.wait_for_idle()
    assert [c.params.get("after") for c in pages] == [None, *map(str, range(1, 10))]
    assert all(c.problems == [] for c in pages)


def test_an_unreachable_app_is_a_problem(pd: PipedriveStandin, client: httpx2.Client) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens once it is closed
    base = f"http://127.0.0.1:{port}/pd/channels/:providerChannelId"
    pd.set_manifest(
        {
            "version": "v202101",
            "endpoints": {
                "getConversations": f"{base}/conversations",
                "getConversationById": f"{base}/conversations/:sourceConversationId",
                "postMessage": f"{base}/messages",
            },
        }
    )
    register_channel(client, access_token(pd))
    (callback,) = pd.wait_for_callbacks(1)
    assert callback.status is None
    assert callback.problems[0].startswith("$: no answer: ConnectError")


def test_wait_for_callbacks_times_out_with_the_list(pd: PipedriveStandin) -> None:
    with pytest.raises(AssertionError, match=r"expected at least 1 manifest callbacks .* got 0"):
        pd.wait_for_callbacks(1, timeout=0.05)


def test_the_schemas_are_valid_draft_2020_12() -> None:
    for schema in (
        CONVERSATION_SCHEMA,
        MESSAGE_SCHEMA,
        PARTICIPANT_SCHEMA,
        TEMPLATES_RESPONSE_SCHEMA,
        ERROR_RESPONSE_SCHEMA,
        *MANIFEST_RESPONSE_SCHEMAS.values(),
    ):
        Draft202012Validator.check_schema(schema)
    assert Draft202012Validator(CONVERSATION_SCHEMA).is_valid(conversation("c"))


def test_manifest_problems_cross_field_rules() -> None:
    def problems(data: dict, **path_vars: str) -> list[str]:
        body = {"success": True, "data": data}
        return manifest_problems("getConversationById", 200, body, path_vars=path_vars)

    assert problems(conversation("c1"), sourceConversationId="c1") == []
    two_sources = conversation("c1")
    two_sources["participants"][1]["role"] = "source_user"
    assert problems(two_sources) == [
        "$.data.participants: needs exactly one participant with role source_user",
        "$.data.participants: needs at least one participant with role end_user",
    ]
    assert problems(conversation("c1", sender="stranger")) == [
        "$.data.messages[0].sender_id: 'stranger' is not the id of a participant of the"
        " conversation ['wa-biz-1', 'wa-user-1']"
    ]
    twice = conversation("c1")
    twice["participants"].append(copy.deepcopy(twice["participants"][1]))
    assert problems(twice) == ["$.data.participants: id 'wa-user-1' appears 2 times"]
    assert problems(conversation("c1"), sourceConversationId="c2") == [
        "$.data.id: 'c1', but the path asked for 'c2'"
    ]
    limits = {"conversations_limit": "1", "messages_limit": "0"}
    body = {"success": True, "data": [conversation("a"), conversation("b")]}
    assert manifest_problems("getConversations", 200, body, params=limits) == [
        "$.data: 2 conversations, conversations_limit is 1",
        "$.data[0].messages: 1 messages, messages_limit is 0",
        "$.data[1].messages: 1 messages, messages_limit is 0",
    ]


def test_manifest_problems_per_endpoint_shape() -> None:
    bare = conversation("c1")["messages"][0]
    assert manifest_problems("getMessageById", 200, bare) == []
    assert manifest_problems(
        "getMessageById", 200, bare, path_vars={"sourceMessageId": "other"}
    ) == ["$.id: 'c1-m1', but the path asked for 'other'"]
    wrapped = manifest_problems("getMessageById", 200, {"success": True, "data": bare})
    assert "$: getMessageById answers a bare Message, not {success, data} (§3.7)" in wrapped

    templates = [{"id": "t1", "name": "Hi", "content": "Hello {{1}}", "language": "en_US"}]
    ok = {"success": True, "data": {"templates": templates}}
    assert manifest_problems("getTemplates", 200, ok) == []
    as_list = manifest_problems("getTemplates", 200, {"success": True, "data": templates})
    assert as_list == [f"$.data: {templates!r} is not of type 'object'"]

    sender = {"id": "u1", "name": "Jane", "avatar_url": ""}
    assert manifest_problems("getSenderById", 200, {"success": True, "data": sender}) == []
    no_avatar = {"success": True, "data": {"id": "u1", "name": "Jane", "avatar_url": None}}
    assert manifest_problems("getSenderById", 200, no_avatar) == [
        "$.data.avatar_url: None is not of type 'string'"
    ]
    assert manifest_problems("postMessage", 200, {"success": True, "data": {"id": ""}}) == [
        "$.data.id: '' should be non-empty"
    ]
    assert manifest_problems("deleteChannelById", 200, {"success": True}) == []
    assert manifest_problems("deleteChannelById", 204, "") == ["$: HTTP 204, expected 200"]
    with pytest.raises(ValueError, match="unknown manifest endpoint"):
        manifest_problems("getEverything", 200, {})


def test_error_envelope_problems() -> None:
    ours = {"success": False, "data": {"code": "UNAUTHORIZED", "message": "revoked"}}
    assert error_problems(401, ours) == []
    assert manifest_problems("getTemplates", 401, ours) == ["$: HTTP 401, expected 200"]
    pipedrive_style = {"success": False, "error": "x", "additional_data": {"code": "UNAUTHORIZED"}}
    assert error_problems(401, pipedrive_style) == ["$: 'data' is a required property"]
    assert error_problems(404, ours) == [
        "$.data.code: 'UNAUTHORIZED' is not the code for HTTP 404 (NOT_FOUND)"
    ]
    limited = {"success": False, "data": {"code": "RATE_LIMIT_EXCEEDED", "message": "slow"}}
    assert error_problems(429, limited) == [
        "$.data.retry_by: required with RATE_LIMIT_EXCEEDED (ISO 8601 UTC)"
    ]
    limited["data"]["retry_by"] = "2021-11-26T13:42:17.191Z"
    assert error_problems(429, limited) == []


def test_post_message_sends_multipart_with_repeated_recipients_and_files(
    pd: PipedriveStandin, app: FakeApp
) -> None:
    pd.set_manifest(app.manifest())
    response = pd.post_message(
        "chan-1",
        conversation_id="conv-1",
        sender_id="wa-biz-1",
        recipient_ids=["wa-user-1", "wa-user-2"],
        message="Grüße ✓",
        files=[("a.png", b"\x89PNG\r\n", "image/png"), ("b.txt", b"hi", "text/plain")],
    )

    assert response.status_code == 200
    assert response_problems("postMessage", response) == []
    call = app.calls[-1]
    assert (call.method, call.raw_path) == ("POST", "/pd/channels/chan-1/messages")
    assert call.content_type.startswith("multipart/form-data; boundary=")
    assert call.auth == (CLIENT_ID, CLIENT_SECRET)
    assert call.form == [
        ("message", "Grüße ✓"),
        ("senderId", "wa-biz-1"),
        ("conversationId", "conv-1"),
        ("recipientIds[]", "wa-user-1"),
        ("recipientIds[]", "wa-user-2"),
        ("files", ("a.png", b"\x89PNG\r\n", "image/png")),
        ("files", ("b.txt", b"hi", "text/plain")),
    ]

    pd.post_message(
        "chan-1",
        conversation_id="conv-1",
        sender_id="wa-biz-1",
        recipient_ids=["wa-user-1,wa-user-2"],
        message="",
        recipient_field="recipientIds",
    )
    call = app.calls[-1]
    assert call.content_type.startswith("multipart/form-data")  # even without files
    assert call.form is not None
    assert call.form[3:] == [("recipientIds", "wa-user-1,wa-user-2")]


def test_call_manifest_fills_the_url_and_sends_the_credentials_asked_for(
    pd: PipedriveStandin, app: FakeApp
) -> None:
    with pytest.raises(RuntimeError, match="set_manifest"):
        pd.call_manifest("getTemplates", providerChannelId="chan-1")
    pd.set_manifest(app.manifest())
    sender = {"id": "wa user+1", "name": "Jane", "avatar_url": "https://m.test/jane.png"}
    app.canned["getSenderById"] = (200, {"success": True, "data": sender})

    ok = pd.call_manifest("getSenderById", providerChannelId="chan-1", senderId="wa user+1")
    assert ok.status_code == 200
    assert response_problems("getSenderById", ok, path_vars={"senderId": "wa user+1"}) == []
    assert app.calls[-1].raw_path == "/pd/channels/chan-1/senders/wa%20user%2B1"
    assert app.calls[-1].auth == (CLIENT_ID, CLIENT_SECRET)

    wrong = pd.call_manifest(
        "getSenderById", auth=(CLIENT_ID, "wrong"), providerChannelId="c", senderId="s"
    )
    assert app.calls[-1].auth == (CLIENT_ID, "wrong")
    assert wrong.status_code == 401
    assert error_problems(401, wrong.json()) == []
    pd.call_manifest("getTemplates", auth=None, providerChannelId="c")
    assert app.calls[-1].auth is None
    posted = pd.post_message(
        "c", conversation_id="v", sender_id="s", recipient_ids=["r"], message="m", auth=("x", "y")
    )
    assert (posted.status_code, app.calls[-1].auth) == (401, ("x", "y"))

    deleted = pd.call_manifest("deleteChannelById", providerChannelId="chan-1")
    assert (app.calls[-1].method, deleted.status_code) == ("DELETE", 200)
    assert response_problems("deleteChannelById", deleted) == []
    query = pd.call_manifest("getConversations", params={"after": "c2"}, providerChannelId="c")
    assert app.calls[-1].query == {"after": "c2"}
    assert query.status_code == 200

    with pytest.raises(ValueError, match="needs the path variable senderId"):
        pd.call_manifest("getSenderById", providerChannelId="c")
    with pytest.raises(ValueError, match="has no :senderId"):
        pd.call_manifest("getTemplates", providerChannelId="c", senderId="s")


def good_manifest() -> dict[str, Any]:
    base = "https://app.test/pd/channels/:providerChannelId"
    return {
        "version": "v202101",
        "endpoints": {
            "getConversations": f"{base}/conversations",
            "getConversationById": f"{base}/conversations/:sourceConversationId",
            "postMessage": f"{base}/messages",
        },
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m["endpoints"].pop("postMessage"), "postMessage is required"),
        (lambda m: m.update(version="v2"), "version is 'v2'"),
        (lambda m: m["endpoints"].update(getStuff="https://a.test/"), "unknown endpoint"),
        (
            lambda m: m["endpoints"].update(
                getConversationById="https://a.test/:providerChannelId"
            ),
            "lacks :sourceConversationId",
        ),
        (
            lambda m: m["endpoints"].update(getTemplates="https://a.test/:providerChannelId/:id"),
            "has :id, which is not filled",
        ),
        (lambda m: m["endpoints"].update(postMessage="/pd/:providerChannelId"), "absolute"),
    ],
)
def test_set_manifest_refuses_what_developer_hub_would(
    pd: PipedriveStandin, change: Callable[[dict[str, Any]], object], problem: str
) -> None:
    manifest = good_manifest()
    change(manifest)
    with pytest.raises(ValueError, match=problem):
        pd.set_manifest(manifest)
    assert pd.manifest is None
    pd.set_manifest(good_manifest())
    assert pd.manifest == good_manifest()
    pd.set_manifest(None)
    assert pd.manifest is None

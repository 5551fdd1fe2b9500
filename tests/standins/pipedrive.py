"""A local stand-in for Pipedrive: OAuth server and the v1 REST endpoints pdbridge calls.

One Starlette app served by uvicorn on 127.0.0.1 (free port, background thread, real sockets).
OAuth and API share the base URL; point both PIPEDRIVE_OAUTH_URL and PIPEDRIVE_API_URL at
``standin.base_url``. Tests read and steer its state through the methods of PipedriveStandin.

    with PipedriveStandin(client_id="cid", client_secret="secret") as pd:
        code = pd.issue_code(1001, 2001)
        ...                                  # the service exchanges it at pd.base_url/oauth/token
        assert pd.refresh_calls == 0

Contract rules it enforces ("doc" = shared/docs/pipedrive-webhooks-oauth-api.md,
"messaging doc" = shared/docs/pipedrive-messaging-contract.md):

OAuth (doc §2.2-§2.9)
- ``GET /oauth/authorize`` checks client_id and redirect_uri, then redirects to the redirect_uri
  with ``code`` (+ ``state`` when given). ``issue_code()`` mints a code without a browser.
- ``POST /oauth/token`` needs ``application/x-www-form-urlencoded`` (JSON → 400, §2.4) and HTTP
  Basic client_id:client_secret (→ 401 ``invalid_client``; 401 is the RFC code, the doc marks the
  table code unconfirmed). Client credentials in the body are rejected: the doc calls them
  "discouraged" and we want the service to use Basic.
- Authorization codes live 5 minutes and are single use (§2.3, gotcha 15). The redirect_uri of the
  exchange must equal the one the code was issued for.
- Refresh tokens rotate by default: each refresh returns a new one and the old one answers
  ``400 invalid_grant`` (the doc is split on rotation, §2.6 and gotcha 5; ``rotate_refresh_tokens =
  False`` models the "same token comes back" reading). They expire after 60 days without use.
- Error bodies are ``{"error": "<rfc code>", "error_description": "<doc message>"}``; the doc says
  the shape is unconfirmed and node-oauth2-server style is the likely one (§2.7).
- Token responses carry exactly access_token, token_type, refresh_token, scope (comma-separated),
  expires_in and api_domain (§2.4). api_domain is this server unless ``api_domain`` is set.
- ``POST /oauth/revoke`` (§2.9): a refresh token uninstalls the user, an access token revokes only
  itself; always 200 (RFC 7009).

API (doc §3.1-§3.5; messaging doc §2)
- Paths are served under ``/api/v1/...`` (the documented form) and ``/v1/...`` (the legacy form the
  example app and SDKs use, messaging doc §2.0). Anything else under them is 404.
- Auth: ``Authorization: Bearer <access token>`` (known and unexpired) or ``x-api-token: <personal
  token>``. The ``api_token`` query parameter is NOT accepted: the doc never says it is. Otherwise
  401 with the error envelope ``{success: false, error, error_info, data, additional_data,
  errorCode}`` (§3.2).
- OAuth scopes: webhooks need ``admin`` (§1.7), channels need ``messengers-integration`` (messaging
  doc §2.0); otherwise 403 "Scope and URL mismatch". A personal API token has every permission.
- Rate limits per token (§3.5): a rolling burst window (default 80 per 2 s, the OAuth Lite figure)
  with ``x-ratelimit-limit/-remaining/-reset`` (seconds, rounded up) on every authenticated API
  response, 429 when exceeded. A daily per-company token budget (30,000 by default, per-endpoint
  costs from the doc) with ``x-daily-ratelimit-token-limit/-remaining``: those headers are
  "observed but undocumented", and the doc's client algorithm treats
  ``x-daily-ratelimit-token-remaining: 0`` as the mark of daily exhaustion, so that header is what
  tells a daily 429 from a burst 429. The 429 body texts are unconfirmed; do not parse them.
  ``Retry-After`` is not sent unless ``retry_after_on_429`` is set (the doc: unconfirmed today).
- Any 429 that announces ``x-ratelimit-reset`` opens a window for that token; a request with the
  same token that arrives before it closes is counted in ``requests_inside_reset_window``.
- Webhooks (§1.1, §1.7): JSON body; subscription_url (http/https URL), event_action and event_object
  required and checked against the vocabulary of ``version`` (default "2.0"; v1 names with 2.0 are
  rejected, which the doc leaves unconfirmed, gotcha 1). 201 ``{success, status: "ok", data}``; 400
  ``{success: false, status: "error", errors}``; more than ``webhook_limit`` (40) per user → 422.
  An OAuth caller sees and deletes only the ``application`` webhooks of its own user.
- Channels (messaging doc §2): bodies validated with jsonschema against the Channels* request
  schemas of shared/spec/pipedrive-v1-schemas.json (embedded below; the self-test checks they did
  not drift). 400 ``INVALID_BODY`` / ``INVALID_RECEIVE_MESSAGE_PAYLOAD``, 403 ``ADMIN_ONLY``,
  ``FORBIDDEN_USER_REQUEST``, 404 ``NOT_FOUND``, in the ``{success, error, error_info,
  additional_data: {code}}`` envelope. For ``receive`` the schema is corrected where Pipedrive's
  own validator text (the documented 400 message) differs: ``attachments`` is required (turn off
  with ``require_receive_attachments = False``) and ``reply_by`` / attachment ``name``, ``size``,
  ``preview_url`` may be null. ``format`` is not checked: ``created_at`` is documented as
  ``YYYY-MM-DD HH:MM``, which is not an RFC 3339 date-time. ``receive`` upserts by (channel, id).

Fault injection: ``fail_next(path_prefix, status, body=None, count=1)`` answers the next matching
requests (OAuth or API) with that status before any other processing. Default bodies: 403 is the
Cloudflare HTML block page (§3.5, gotcha 14), 429 a burst-limit answer, others a JSON envelope.
``stall_next(path_prefix, seconds, count=1)`` holds the next matching requests that long before
handling them as usual (a client that timed out meanwhile never learns that the call took effect).

Every request that reaches the OAuth or API routes is recorded in ``requests``. Time comes from the
injectable ``clock`` plus whatever ``advance(seconds)`` added (code/token expiry, burst windows and
the daily reset, which is at midnight UTC: Pipedrive's server timezone is not documented).

Manifest callbacks (messaging doc §2.1, §2.2, §3, §4.2, §4.3)
- ``set_manifest(manifest)`` takes what ``pdbridge manifest`` prints (``{"version": "v202101",
  "endpoints": {key: absolute URL with :variables}}``) and checks it as Developer Hub would: known
  keys, the three required endpoints, each URL with exactly its documented ``:variables`` (§3.1).
  Until then (the default) the stand-in calls nothing.
- A successful ``POST /v1/channels`` queues ``getConversations`` for the channel
  (``conversations_limit=30&messages_limit=30``) and follows ``additional_data.after`` for at most
  10 pages; paging stops at an answer with problems or a cursor seen before. The conversations of
  a page without problems count as seen. How many pages Pipedrive follows is unconfirmed (§3.4).
- A successful ``receive`` whose ``conversation_id`` the channel has not seen queues
  ``getConversationById`` (``messages_limit=30``). The conversation counts as seen from then on,
  whatever the answer (what Pipedrive does after a failed fetch is undocumented). Deleting the
  conversation or the channel forgets it.
- One worker thread makes the queued calls in order with httpx2 (10 s timeout, proxy settings of
  the environment ignored) and HTTP Basic client_id:client_secret (§3.2). The request that
  triggered them never waits: whether Pipedrive calls back during or after it is unconfirmed
  (§3.5), so the app must answer while its own call is in flight.
- Each answer is checked by ``response_problems`` / ``manifest_problems``: HTTP 200, a JSON body,
  the ``{success: true, data}`` envelope (getMessageById: a bare Message) and the §3.3 shapes as
  Draft 2020-12 schemas (``CONVERSATION_SCHEMA``, ``MESSAGE_SCHEMA``, ``PARTICIPANT_SCHEMA``, ...),
  then the rules a schema cannot state: every message's ``sender_id`` is a participant's id, ids
  are unique within their list, the answer is about the id in the path, the query's limits hold.
  A non-200 answer is also checked against the error envelope ``{success: false, data: {code,
  message}}`` and the documented code for its status (§3.2). Results land in ``callbacks``;
  ``wait_for_callbacks(n)`` and ``wait_for_idle()`` wait for them.
- ``call_manifest()`` and ``post_message()`` play the Pipedrive UI: synchronous calls to any
  manifest endpoint (postMessage as multipart/form-data: ``message``, ``senderId``,
  ``conversationId``, repeated ``recipientIds[]``, file parts named ``files``). Their answers are
  returned, not recorded: check them with ``response_problems``.

CRM (persons search and create, deals, notes, the note webhook, a retired Channels API):
``tests/standins/pipedrive_crm.py``, mixed in.

Not modelled: webhook deliveries other than notes', the getSenderById / getTemplates calls after
registration (§4.2 step 3), HEAD checks of expiring links and avatars, the uninstall notice, API v2
beyond persons and deals, the
``exchange_api_token`` grant, the search burst limit and the legacy ``x-daily-requests-left``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import enum
import http
import json
import math
import queue
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeAlias
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx2
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.exceptions import best_match
from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.standins.pipedrive_crm import CrmMixin
from tests.standins.server import Served, ServerThread

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from jsonschema.protocols import Validator
    from starlette.requests import Request

__all__ = [
    "ATTACHMENT_SCHEMA",
    "CLOUDFLARE_BLOCK_HTML",
    "CONVERSATIONS_RESPONSE_SCHEMA",
    "CONVERSATION_RESPONSE_SCHEMA",
    "CONVERSATION_SCHEMA",
    "CREATE_CHANNEL_REQUEST_SCHEMA",
    "DEFAULT_SCOPES",
    "DELETE_CHANNEL_RESPONSE_SCHEMA",
    "ERROR_RESPONSE_SCHEMA",
    "MANIFEST_ENDPOINTS",
    "MANIFEST_ERROR_CODES",
    "MANIFEST_RESPONSE_SCHEMAS",
    "MESSAGE_SCHEMA",
    "PARTICIPANT_SCHEMA",
    "POST_MESSAGE_RESPONSE_SCHEMA",
    "RECEIVE_MESSAGE_REQUEST_SCHEMA",
    "SENDER_RESPONSE_SCHEMA",
    "TEMPLATES_RESPONSE_SCHEMA",
    "Callback",
    "PipedriveStandin",
    "RecordedRequest",
    "ServerThread",
    "error_problems",
    "manifest_problems",
    "response_problems",
]

ERROR_INFO: Final = "Please check developers.pipedrive.com"
CHANNELS_ERROR_INFO: Final = (
    "Please check the reference docs in https://developers.pipedrive.com/docs/api/v1"
)
CODE_TTL_SECONDS: Final = 5 * 60  # doc §2.3
REFRESH_TOKEN_TTL_SECONDS: Final = 60 * 24 * 3600  # doc §2.6, sliding
SECONDS_PER_DAY: Final = 24 * 3600

ADMIN: Final = "admin"  # the scope webhook CRUD needs (doc §1.7)
MESSAGING: Final = "messengers-integration"  # the Channels API scope (messaging doc §2.0)
DEFAULT_SCOPES: Final = ("base", ADMIN, MESSAGING)  # what issue_code() grants by default

CLOUDFLARE_BLOCK_HTML: Final = """<!DOCTYPE html>
<html><head><title>Attention Required! | Cloudflare</title></head>
<body><h1>Sorry, you have been blocked</h1>
<h2>You are unable to access api.pipedrive.com</h2>
<p>This website is using a security service to protect itself from online attacks.
Access denied.</p><p>Cloudflare Ray ID: 8a1b2c3d4e5f6a7b</p></body></html>
"""

# Webhook vocabulary per version (doc §1.1, §1.2).
WEBHOOK_ACTIONS: Final = {
    "1.0": {"added", "updated", "merged", "deleted", "*"},
    "2.0": {"create", "change", "delete", "*"},
}
_V2_OBJECTS: Final = {
    "activity",
    "deal",
    "lead",
    "note",
    "organization",
    "person",
    "pipeline",
    "product",
    "stage",
    "user",
    "*",
}
WEBHOOK_OBJECTS: Final = {
    "1.0": (_V2_OBJECTS - {"lead"}) | {"activityType"},
    "2.0": _V2_OBJECTS,
}

# The request schemas of shared/spec/pipedrive-v1-schemas.json with "description" and "example"
# removed. tests/standins/test_pipedrive_standin.py compares them with the file.
CREATE_CHANNEL_REQUEST_SCHEMA: Final[dict[str, Any]] = {
    "properties": {
        "avatar_url": {"format": "url", "type": "string"},
        "name": {"type": "string"},
        "provider_channel_id": {"type": "string"},
        "provider_type": {
            "default": "other",
            "enum": ["facebook", "whatsapp", "other"],
            "type": "string",
        },
        "template_support": {"default": False, "type": "boolean"},
    },
    "required": ["name", "provider_channel_id"],
    "type": "object",
}
RECEIVE_MESSAGE_REQUEST_SCHEMA: Final[dict[str, Any]] = {
    "properties": {
        "attachments": {
            "items": {
                "properties": {
                    "id": {"type": "string"},
                    "link_expires": {"default": False, "type": "boolean"},
                    "name": {"type": "string"},
                    "preview_url": {"type": "string"},
                    "size": {"type": "number"},
                    "type": {"type": "string"},
                    "url": {"type": "string"},
                },
                "required": ["id", "type", "url"],
                "type": "object",
            },
            "type": "array",
        },
        "channel_id": {"type": "string"},
        "conversation_id": {"type": "string"},
        "conversation_link": {"format": "url", "type": "string"},
        "created_at": {"format": "date-time", "type": "string"},
        "id": {"type": "string"},
        "message": {"type": "string"},
        "reply_by": {"format": "date-time", "type": "string"},
        "sender_id": {"type": "string"},
        "status": {"enum": ["sent", "delivered", "read", "failed"], "type": "string"},
    },
    "required": [
        "id",
        "channel_id",
        "sender_id",
        "conversation_id",
        "message",
        "status",
        "created_at",
    ],
    "type": "object",
}
# The 400 texts Pipedrive's validator prints (the "example" values of the spec's 400 schemas).
CREATE_CHANNEL_INVALID_TEXT: Final = (
    "Expected { name: string; avatar_url?: string; provider_channel_id: string; }, "
    "but was incompatible"
)
RECEIVE_INVALID_TEXT: Final = (
    "Expected { id: string; sender_id: string; conversation_id: string; conversation_link?: "
    "string; channel_id: string; created_at: string; message: string; status: unknown; "
    "attachments: { id: string; type: string; name: string | null; size: number | null; "
    "url: string; preview_url: string | null; }[]; reply_by?: string | null; }, "
    "but was incompatible"
)


def _receive_schema(require_attachments: bool) -> dict[str, Any]:
    """The receive schema, corrected to match the validator type in the documented 400 text."""
    schema = copy.deepcopy(RECEIVE_MESSAGE_REQUEST_SCHEMA)
    props = schema["properties"]
    props["reply_by"]["type"] = ["string", "null"]
    attachment = props["attachments"]["items"]["properties"]
    for name in ("name", "size", "preview_url"):
        attachment[name]["type"] = [attachment[name]["type"], "null"]
    if require_attachments:
        schema["required"].append("attachments")
    return schema


# ---------------------------------------------------------------------- the messaging manifest

MANIFEST_VERSION: Final = "v202101"  # the only value ever seen (messaging doc §3.1)
# Manifest key → (HTTP method, the :variables its URL must contain) (messaging doc §3.1).
MANIFEST_ENDPOINTS: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    "getConversations": ("GET", ("providerChannelId",)),
    "getConversationById": ("GET", ("providerChannelId", "sourceConversationId")),
    "postMessage": ("POST", ("providerChannelId",)),
    "getSenderById": ("GET", ("providerChannelId", "senderId")),
    "deleteChannelById": ("DELETE", ("providerChannelId",)),
    "getTemplates": ("GET", ("providerChannelId",)),
    "getMessageById": ("GET", ("providerChannelId", "sourceConversationId", "sourceMessageId")),
}
REQUIRED_MANIFEST_ENDPOINTS: Final = ("getConversations", "getConversationById", "postMessage")
CALLBACK_TIMEOUT_SECONDS: Final = 10.0
CALLBACK_PAGE_LIMIT: Final = 10  # getConversations pages followed after one registration
CALLBACK_CONVERSATIONS_LIMIT: Final = 30  # the documented defaults (§3.4, §3.5)
CALLBACK_MESSAGES_LIMIT: Final = 30
_MANIFEST_VARIABLE: Final = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")

# The manifest answer shapes of messaging doc §3.3-§3.10, as JSON Schema Draft 2020-12. Extra
# properties are allowed: the doc never says Pipedrive rejects them. Rules no schema can state
# (senders among the participants, unique ids, ids matching the path) are in manifest_problems().
_ID: Final[dict[str, Any]] = {"type": "string", "minLength": 1}
_URL_OR_EMPTY: Final[dict[str, Any]] = {"type": "string", "pattern": r"^(https?://\S+)?$"}
# Times in manifest answers: "YYYY-MM-DD HH:MM" (the spec text) or ISO 8601 (its examples, §7.3).
_TIME_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$"

ATTACHMENT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["id", "type", "url"],
    "properties": {
        "id": _ID,
        "type": {"type": "string", "pattern": r"^[\w.+-]+/[\w.+-]+"},  # a MIME type
        "url": {"type": "string", "pattern": r"^https?://\S+$"},  # Pipedrive must reach it
        "name": {"type": ["string", "null"]},
        "size": {"type": ["number", "null"]},
        "preview_url": {"type": ["string", "null"]},
        "link_expires": {"type": "boolean"},
    },
}
MESSAGE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["id", "status", "created_at", "message", "sender_id"],
    "properties": {
        "id": _ID,
        "status": {"enum": ["sent", "delivered", "read", "failed"]},
        "created_at": {"type": "string", "pattern": _TIME_PATTERN},
        "message": {"type": "string"},
        "sender_id": _ID,
        # null: what receive's validator accepts (§2.2); the §3.3 table only says "optional".
        "reply_by": {"type": ["string", "null"], "pattern": _TIME_PATTERN},
        "attachments": {"type": "array", "items": ATTACHMENT_SCHEMA},
    },
}
PARTICIPANT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["id", "name", "role"],
    "properties": {
        "id": _ID,
        "name": {"type": "string"},
        "role": {"enum": ["source_user", "end_user"]},
        "avatar_url": _URL_OR_EMPTY,
        "fetch_avatar": {"type": "boolean"},
        "avatar_expires": {"type": "boolean"},
    },
}


def _role(role: str) -> dict[str, Any]:
    return {"type": "object", "required": ["role"], "properties": {"role": {"const": role}}}


CONVERSATION_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    # participants is not in the doc's "Required" list, but "exactly one source_user" needs it.
    "required": ["id", "link", "status", "seen", "participants"],
    "properties": {
        "id": _ID,
        "link": _URL_OR_EMPTY,  # "" when there is no external link; the key is required
        "status": {"enum": ["open", "closed"]},
        "seen": {"type": "boolean"},
        "next_messages_cursor": {"type": ["string", "null"]},
        "messages": {"type": "array", "items": MESSAGE_SCHEMA},
        "participants": {
            "type": "array",
            "items": PARTICIPANT_SCHEMA,
            "allOf": [
                {
                    "description": "exactly one participant with role source_user",
                    "contains": _role("source_user"),
                    "minContains": 1,
                    "maxContains": 1,
                },
                {
                    "description": "at least one participant with role end_user",
                    "contains": _role("end_user"),
                    "minContains": 1,
                },
            ],
        },
    },
}
_ADDITIONAL_DATA: Final[dict[str, Any]] = {
    "type": ["object", "null"],
    "properties": {"after": {"type": ["string", "null"]}},
}


def _success_envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "data"],
        "properties": {
            "success": {"const": True},
            "data": data,
            "additional_data": _ADDITIONAL_DATA,
        },
    }


CONVERSATIONS_RESPONSE_SCHEMA: Final = _success_envelope(
    {"type": "array", "items": CONVERSATION_SCHEMA}
)
CONVERSATION_RESPONSE_SCHEMA: Final = _success_envelope(CONVERSATION_SCHEMA)
SENDER_RESPONSE_SCHEMA: Final = _success_envelope(
    {
        "type": "object",
        "required": ["id", "name", "avatar_url"],
        # avatar_url "" when there is none; whether null is accepted is unconfirmed (§3.8).
        "properties": {"id": _ID, "name": {"type": "string"}, "avatar_url": _URL_OR_EMPTY},
    }
)
TEMPLATES_RESPONSE_SCHEMA: Final = _success_envelope(
    {
        "type": "object",  # an object holding the list, not a bare list (§3.9)
        "required": ["templates"],
        "properties": {
            "templates": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "name", "content", "language"],
                    "properties": {
                        "id": _ID,
                        "name": {"type": "string"},
                        "content": {"type": "string"},
                        "language": {"type": "string"},
                    },
                },
            }
        },
    }
)
POST_MESSAGE_RESPONSE_SCHEMA: Final = _success_envelope(
    {"type": "object", "required": ["id"], "properties": {"id": _ID}}
)
DELETE_CHANNEL_RESPONSE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["success"],
    "properties": {"success": {"const": True}},
}
ERROR_RESPONSE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["success", "data"],
    "properties": {
        "success": {"const": False},
        "data": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "retry_by": {"type": "string", "pattern": _TIME_PATTERN},
            },
        },
    },
}
# getMessageById answers a bare Message (§3.7); every other endpoint the {success, data} envelope.
MANIFEST_RESPONSE_SCHEMAS: Final[Mapping[str, dict[str, Any]]] = {
    "getConversations": CONVERSATIONS_RESPONSE_SCHEMA,
    "getConversationById": CONVERSATION_RESPONSE_SCHEMA,
    "getMessageById": MESSAGE_SCHEMA,
    "getSenderById": SENDER_RESPONSE_SCHEMA,
    "getTemplates": TEMPLATES_RESPONSE_SCHEMA,
    "postMessage": POST_MESSAGE_RESPONSE_SCHEMA,
    "deleteChannelById": DELETE_CHANNEL_RESPONSE_SCHEMA,
}
# The documented data.code of each error status (§3.2; 400's BAD_REQUEST is the YAML's example).
MANIFEST_ERROR_CODES: Final[Mapping[int, tuple[str, ...]]] = {
    400: ("INVALID_BODY", "BAD_REQUEST"),
    401: ("UNAUTHORIZED", "ACCOUNT_SUSPENDED"),
    403: ("FORBIDDEN",),
    404: ("NOT_FOUND",),
    429: ("RATE_LIMIT_EXCEEDED",),
}
_RESPONSE_VALIDATORS: Final[Mapping[str, Validator]] = {
    name: Draft202012Validator(schema) for name, schema in MANIFEST_RESPONSE_SCHEMAS.items()
}
_ERROR_VALIDATOR: Final = Draft202012Validator(ERROR_RESPONSE_SCHEMA)


def manifest_problems(
    endpoint: str,
    status: int,
    body: Any,
    *,
    path_vars: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> list[str]:
    """What is wrong with a manifest endpoint's answer, by messaging doc §3; [] when nothing.

    ``endpoint`` is the manifest key, ``body`` the parsed JSON (a str when it was not JSON).
    ``path_vars`` (``sourceConversationId``, ``sourceMessageId``, ``senderId``) let it check that
    the answer is about what was asked; ``params`` (``conversations_limit``, ``messages_limit``)
    that the limits hold. Each problem starts with the JSONPath of what it is about.
    """
    if endpoint not in MANIFEST_RESPONSE_SCHEMAS:
        raise ValueError(f"unknown manifest endpoint {endpoint!r}")
    if status != 200:
        problems = [f"$: HTTP {status}, expected 200"]
        if status >= 400:
            problems += [f"error envelope {p}" for p in error_problems(status, body)]
        return problems
    problems = _schema_problems(_RESPONSE_VALIDATORS[endpoint], body)
    return problems + _cross_field_problems(endpoint, body, path_vars or {}, params or {})


def error_problems(status: int, body: Any) -> list[str]:
    """What is wrong with an error answer of a manifest endpoint (§3.2); [] when nothing.

    The envelope is ``{"success": false, "data": {"code", "message"[, "retry_by"]}}`` (not
    Pipedrive's own ``additional_data`` style), with the documented code for the status.
    """
    problems = [] if status >= 400 else [f"$: HTTP {status} is not an error status"]
    problems += _schema_problems(_ERROR_VALIDATOR, body)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        return problems
    codes = MANIFEST_ERROR_CODES.get(status)
    code = data.get("code")
    if codes is not None and isinstance(code, str) and code not in codes:
        expected = " or ".join(codes)
        problems.append(f"$.data.code: {code!r} is not the code for HTTP {status} ({expected})")
    if status == 429 and "retry_by" not in data:
        problems.append("$.data.retry_by: required with RATE_LIMIT_EXCEEDED (ISO 8601 UTC)")
    return problems


def response_problems(
    endpoint: str, response: httpx2.Response, *, path_vars: Mapping[str, str] | None = None
) -> list[str]:
    """``manifest_problems`` for an httpx2 response, plus: the body is JSON, said so in its
    content-type. The query of the request supplies ``params``."""
    body, problems = _response_body(response)
    params = dict(response.request.url.params)
    problems += manifest_problems(
        endpoint, response.status_code, body, path_vars=path_vars, params=params
    )
    return problems


def _response_body(response: httpx2.Response) -> tuple[Any, list[str]]:
    """The parsed JSON body (or the text) and what is wrong with its encoding."""
    content_type = _content_type(response.headers)
    try:
        body = response.json()
    except ValueError:
        return response.text, [f"$: the body is not JSON (content-type {content_type!r})"]
    if content_type != "application/json":
        return body, [f"$: content-type is {content_type!r}, expected 'application/json'"]
    return body, []


def _schema_problems(validator: Validator, instance: Any) -> list[str]:
    problems = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: (e.json_path, e.message)):
        message = error.message
        schema = error.schema if isinstance(error.schema, dict) else {}
        if error.validator in ("contains", "minContains", "maxContains") and schema.get(
            "description"
        ):
            message = f"needs {schema['description']}"
        if len(message) > 200:
            message = message[:197] + "..."
        problems.append(f"{error.json_path}: {message}")
    return problems


def _cross_field_problems(
    endpoint: str, body: Any, path_vars: Mapping[str, str], params: Mapping[str, str]
) -> list[str]:
    if not isinstance(body, dict):
        return []  # the schema said so already
    if endpoint == "getMessageById":
        problems = []
        if "success" in body:
            problems.append("$: getMessageById answers a bare Message, not {success, data} (§3.7)")
        return problems + _id_mismatch("$.id", body, path_vars.get("sourceMessageId"))
    data = body.get("data")
    messages_limit = _int_param(params, "messages_limit")
    problems = []
    if endpoint == "getConversations" and isinstance(data, list):
        limit = _int_param(params, "conversations_limit")
        if limit is not None and len(data) > limit:
            problems.append(f"$.data: {len(data)} conversations, conversations_limit is {limit}")
        problems += _duplicate_ids("$.data", data)
        for i, conversation in enumerate(data):
            problems += _conversation_problems(f"$.data[{i}]", conversation, messages_limit)
    elif endpoint == "getConversationById" and isinstance(data, dict):
        problems += _conversation_problems("$.data", data, messages_limit)
        problems += _id_mismatch("$.data.id", data, path_vars.get("sourceConversationId"))
    elif endpoint == "getSenderById" and isinstance(data, dict):
        problems += _id_mismatch("$.data.id", data, path_vars.get("senderId"))
    elif endpoint == "getTemplates" and isinstance(data, dict):
        templates = data.get("templates")
        if isinstance(templates, list):
            problems += _duplicate_ids("$.data.templates", templates)
    return problems


def _conversation_problems(where: str, conversation: Any, messages_limit: int | None) -> list[str]:
    if not isinstance(conversation, dict):
        return []
    problems = []
    participants = conversation.get("participants")
    messages = conversation.get("messages")
    if isinstance(participants, list):
        problems += _duplicate_ids(f"{where}.participants", participants)
    if not isinstance(messages, list):
        return problems
    if messages_limit is not None and len(messages) > messages_limit:
        problems.append(
            f"{where}.messages: {len(messages)} messages, messages_limit is {messages_limit}"
        )
    problems += _duplicate_ids(f"{where}.messages", messages)
    if not isinstance(participants, list):
        return problems
    ids = [p["id"] for p in participants if isinstance(p, dict) and isinstance(p.get("id"), str)]
    for j, message in enumerate(messages):
        sender = message.get("sender_id") if isinstance(message, dict) else None
        if isinstance(sender, str) and sender not in ids:
            problems.append(
                f"{where}.messages[{j}].sender_id: {sender!r} is not the id of a participant"
                f" of the conversation {ids}"
            )
    return problems


def _duplicate_ids(where: str, items: list[Any]) -> list[str]:
    ids = [
        item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)
    ]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    return [f"{where}: id {i!r} appears {ids.count(i)} times" for i in repeated]


def _id_mismatch(where: str, obj: dict[str, Any], expected: str | None) -> list[str]:
    actual = obj.get("id")
    if expected is None or not isinstance(actual, str) or actual == expected:
        return []
    return [f"{where}: {actual!r}, but the path asked for {expected!r}"]


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _manifest_definition_problems(manifest: Any) -> list[str]:
    """What Developer Hub's validation would refuse in a manifest (§3.1), as far as documented."""
    if not isinstance(manifest, dict):
        return ["the manifest is not an object"]
    problems = []
    if manifest.get("version") != MANIFEST_VERSION:
        problems.append(f"version is {manifest.get('version')!r}, expected {MANIFEST_VERSION!r}")
    endpoints = manifest.get("endpoints")
    if not isinstance(endpoints, dict):
        return [*problems, "endpoints is not an object"]
    problems += [f"unknown endpoint {key!r}" for key in endpoints if key not in MANIFEST_ENDPOINTS]
    problems += [
        f"{key} is required" for key in REQUIRED_MANIFEST_ENDPOINTS if key not in endpoints
    ]
    for key, url in endpoints.items():
        if key not in MANIFEST_ENDPOINTS:
            continue
        if not isinstance(url, str) or not _is_url(url):
            problems.append(f"{key}: {url!r} is not an absolute http(s) URL")
            continue
        parts = urlsplit(url)
        found = set(_MANIFEST_VARIABLE.findall(parts.path + "?" + parts.query))
        needed = set(MANIFEST_ENDPOINTS[key][1])
        problems += [f"{key}: {url} lacks :{name}" for name in sorted(needed - found)]
        problems += [
            f"{key}: {url} has :{name}, which is not filled" for name in sorted(found - needed)
        ]
    return problems


def _manifest_url(manifest: Mapping[str, Any], endpoint: str, path_vars: Mapping[str, str]) -> str:
    """The endpoint's URL with its :variables replaced by the (percent-encoded) values."""
    template: str | None = manifest["endpoints"].get(endpoint)
    if template is None:
        raise KeyError(f"the manifest has no {endpoint} endpoint")
    used: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in path_vars:
            raise ValueError(f"{endpoint} needs the path variable {name}")
        used.add(name)
        return quote(str(path_vars[name]), safe="")

    parts = urlsplit(template)
    url = urlunsplit(
        parts._replace(
            path=_MANIFEST_VARIABLE.sub(fill, parts.path),
            query=_MANIFEST_VARIABLE.sub(fill, parts.query),
        )
    )
    unused = sorted(set(path_vars) - used)
    if unused:
        raise ValueError(f"{endpoint} ({template}) has no :{', :'.join(unused)}")
    return url


def _multipart(
    fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, bytes, str]]
) -> tuple[bytes, str]:
    """A multipart/form-data body and its content-type: ``fields`` (name, value) in order, then
    ``files`` (part name, filename, content, content-type). Built by hand because httpx2 falls
    back to urlencoded when there are no files, and postMessage is always multipart (§3.6)."""
    boundary = "pdbridge-standin-" + secrets.token_hex(12)

    def quoted(value: str) -> str:  # the HTML form rule for names in Content-Disposition
        return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")

    chunks = []
    for name, value in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{quoted(name)}"\r\n\r\n'
        chunks.append(head.encode() + value.encode() + b"\r\n")
    for name, filename, content, content_type in files:
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{quoted(name)}"; filename="{quoted(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        chunks.append(head.encode() + content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@dataclass(slots=True)
class RecordedRequest:
    """One request as the stand-in saw it. ``status`` and ``note`` are filled in when answered."""

    method: str
    path: str  # as sent, e.g. "/api/v1/channels"
    api_path: str  # without the "/api" prefix, e.g. "/v1/channels"; OAuth paths unchanged
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any  # parsed JSON body, or None
    form: dict[str, str] | None  # parsed form body, or None
    time: float  # stand-in clock
    status: int | None = None
    note: str | None = None  # why it was rejected, when the stand-in knows


@dataclass(slots=True)
class Callback:
    """One call the stand-in made to a manifest endpoint of the app, and what it made of it."""

    endpoint: str  # the manifest key, e.g. "getConversations"
    method: str
    url: str  # as sent, with the query
    params: dict[str, str]  # the query
    status: int | None  # None: no HTTP answer (refused, timed out)
    body: Any  # the parsed JSON; the text when it was not JSON; None without an answer
    problems: list[str]  # [] when the answer is what Pipedrive expects
    time: float  # stand-in clock when the answer arrived


@dataclass(frozen=True, slots=True)
class _Job:
    endpoint: str  # "getConversations" or "getConversationById"
    provider_channel_id: str
    conversation_id: str | None = None


class _Own(enum.Enum):
    """The default of ``auth`` arguments: the stand-in's own client_id:client_secret."""

    CREDENTIALS = enum.auto()


OWN_CREDENTIALS: Final = _Own.CREDENTIALS
Auth: TypeAlias = "tuple[str, str] | Literal[_Own.CREDENTIALS] | None"


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


@dataclass(slots=True)
class _Caller:
    key: str  # the token itself: rate limits are per token
    company_id: int
    user_id: int
    scopes: tuple[str, ...] | None  # None: personal API token, every permission
    oauth: bool


@dataclass(slots=True)
class _Fault:
    path_prefix: str
    method: str | None
    status: int
    body: Any
    headers: dict[str, str]
    remaining: int


# A route's logic, run under the lock: (request record, path params) → response.
Handler: TypeAlias = "Callable[[RecordedRequest, Mapping[str, Any]], Response]"
# An API route's logic, after authentication and rate limiting.
ApiHandler: TypeAlias = "Callable[[RecordedRequest, Mapping[str, Any], _Caller], Response]"


class PipedriveStandin(CrmMixin, Served):
    """The stand-in server. Use as a context manager, or call ``start()`` and ``stop()``."""

    def __init__(
        self,
        *,
        client_id: str = "test-client-id",
        client_secret: str = "test-client-secret",  # noqa: S107 - a fake for tests
        api_token: str | None = None,
        redirect_uri: str | None = None,
        company_id: int = 1001,
        user_id: int = 2001,
        company_domain: str = "acme",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.api_token = api_token
        self.redirect_uri = redirect_uri  # the registered callback URL; None accepts any
        self.company_id = company_id  # identity of GET /oauth/authorize and the api_token
        self.user_id = user_id
        # Knobs; set them before the requests they should affect.
        self.api_domain: str | None = None  # None: base_url
        self.access_token_ttl = 3599
        self.rotate_refresh_tokens = True
        self.daily_budget = 30_000
        self.daily_budget_headers = True
        self.retry_after_on_429 = False
        self.webhook_limit = 40
        self.require_receive_attachments = True

        self._clock = clock
        self._offset = 0.0
        self._lock = threading.Lock()
        self._users: dict[int, _User] = {}
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Token] = {}
        self._refresh: dict[str, _Token] = {}
        self._issued: list[str] = []  # every code and token ever handed out
        self._api_tokens: dict[str, tuple[int, int]] = {}
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._stalls: list[list[Any]] = []  # [path_prefix, seconds, remaining]
        self._refresh_calls = 0
        self._burst_limit = 80
        self._burst_window = 2.0
        self._windows: dict[str, deque[float]] = {}  # token → recent request times
        self._reset_until: dict[str, float] = {}
        self._inside_reset_window = 0
        self._daily_spent: dict[int, tuple[int, int]] = {}  # company → (day number, tokens spent)
        self._webhooks: dict[int, dict[str, Any]] = {}
        self._next_webhook_id = 1
        self._channels: dict[str, dict[str, Any]] = {}  # by provider_channel_id
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}  # by (channel, message id)
        # Manifest callbacks. _changed (on the same lock) wakes wait_for_callbacks/wait_for_idle.
        self._manifest: dict[str, Any] | None = None
        self._seen: dict[str, set[str]] = {}  # provider_channel_id → conversation ids known
        self._callbacks: list[Callback] = []
        self._pending = 0  # callback jobs queued or running
        self._changed = threading.Condition(self._lock)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None

        self._crm_init()
        self._add_user(company_id, user_id, is_admin=True, company_domain=company_domain)
        if api_token is not None:
            self._api_tokens[api_token] = (company_id, user_id)

        self.app = Starlette(routes=self._routes())

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Serve on a free port of 127.0.0.1 in a background thread; returns when it accepts.

        Also starts the worker thread that makes the manifest callbacks.
        """
        if self._server is not None:
            raise RuntimeError("already started")
        try:
            server = ServerThread(self.app, name="pipedrive-standin").start()
        except RuntimeError as exc:
            raise RuntimeError("Pipedrive stand-in did not start") from exc
        self._server, self._port = server, server.port
        jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        stopping = threading.Event()
        worker = threading.Thread(
            target=self._work, args=(jobs, stopping), name="pipedrive-callbacks", daemon=True
        )
        with self._lock:
            self._jobs, self._stopping, self._worker = jobs, stopping, worker
        worker.start()
        return self

    def stop(self) -> None:
        """Stop the callbacks (queued ones are dropped; one in flight may take up to its
        10 s timeout) and the server, and wait for both threads. Safe to call twice."""
        with self._lock:
            worker, self._worker = self._worker, None
            self._stopping.set()
            self._jobs.put(None)
        if worker is not None:
            worker.join(timeout=CALLBACK_TIMEOUT_SECONDS + 5)
        if self._server is not None:
            self._server.stop()
        self._server = None

    @property
    def api_v1_url(self) -> str:
        return f"{self.base_url}/api/v1"

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        """The stand-in's clock: the injected clock plus everything ``advance()`` added."""
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward (code and token expiry, burst windows, the daily reset)."""
        with self._lock:
            self._offset += seconds

    # ------------------------------------------------------------------ OAuth state for tests

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

    # ------------------------------------------------------------------ rate limits

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

    # ------------------------------------------------------------------ faults and records

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        body: Any = None,
        count: int = 1,
        *,
        method: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests whose path starts with ``path_prefix``: ``status``.

        ``path_prefix`` matches the path as sent or without "/api" ("/v1/channels" matches
        "/api/v1/channels/messages/receive"). ``body``: None for the default of that status (403 is
        the Cloudflare HTML page), a str (HTML if it starts with "<", else text), bytes, or
        anything else as JSON.
        """
        with self._lock:
            self._faults.append(
                _Fault(path_prefix, method, status, body, dict(headers or {}), count)
            )

    def stall_next(self, path_prefix: str, seconds: float, count: int = 1) -> None:
        """Hold the next ``count`` requests whose path starts with ``path_prefix`` for ``seconds``,
        then handle them as usual (recorded when handled): Pipedrive that answers too late."""
        with self._lock:
            self._stalls.append([path_prefix, seconds, count])

    def _take_stall(self, path: str) -> float:
        with self._lock:
            api_path = path.removeprefix("/api") if path.startswith("/api/") else path
            for stall in self._stalls:
                if path.startswith(stall[0]) or api_path.startswith(stall[0]):
                    stall[2] -= 1
                    if stall[2] <= 0:
                        self._stalls.remove(stall)
                    return float(stall[1])
        return 0.0

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def webhooks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(w) for w in self._webhooks.values()]

    @property
    def channels(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._channels.values()]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Messages received through ``receive``, in first-seen order, latest version of each."""
        with self._lock:
            return [copy.deepcopy(m) for m in self._messages.values()]

    def received(
        self, provider_channel_id: str, conversation_id: str | None = None
    ) -> list[dict[str, Any]]:
        """``messages`` of one channel (and conversation): the latest version of each message
        ``receive`` stored, in order of first arrival. Every single call is in ``requests``."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for (channel, _), m in self._messages.items()
                if channel == provider_channel_id
                and (conversation_id is None or m["conversation_id"] == conversation_id)
            ]

    # ------------------------------------------------------------------ manifest callbacks

    def set_manifest(self, manifest: Mapping[str, Any] | None) -> None:
        """Use the app's manifest (what ``pdbridge manifest`` prints) from now on; None: no
        callbacks. Raises ValueError for a manifest Developer Hub would refuse (§3.1)."""
        if manifest is not None:
            problems = _manifest_definition_problems(manifest)
            if problems:
                raise ValueError("invalid manifest: " + "; ".join(problems))
        with self._lock:
            self._manifest = copy.deepcopy(dict(manifest)) if manifest is not None else None

    @property
    def manifest(self) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._manifest)

    @property
    def callbacks(self) -> list[Callback]:
        """The manifest calls made so far, in the order their answers arrived."""
        with self._lock:
            return list(self._callbacks)

    def clear_callbacks(self) -> None:
        with self._lock:
            self._callbacks.clear()

    def wait_for_callbacks(self, n: int, timeout: float = 10.0) -> list[Callback]:
        """Block until at least ``n`` callbacks completed; they are returned (all of them).

        Raises AssertionError, listing those there are, when ``timeout`` seconds pass first.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._callbacks) >= n, timeout):
                raise AssertionError(
                    f"expected at least {n} manifest callbacks within {timeout} s, "
                    f"got {len(self._callbacks)}: {self._callbacks!r}"
                )
            return list(self._callbacks)

    def wait_for_idle(self, timeout: float = 10.0) -> list[Callback]:
        """Block until no callback is queued or running; returns all callbacks.

        The calls are queued before the triggering request is answered, so after this returns
        a request that would have caused one has caused it. AssertionError on timeout.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: self._pending == 0, timeout):
                raise AssertionError(
                    f"manifest callbacks still busy after {timeout} s ({self._pending} jobs); "
                    f"done: {self._callbacks!r}"
                )
            return list(self._callbacks)

    def seen_conversations(self, provider_channel_id: str) -> set[str]:
        """The conversation ids the stand-in treats as known for the channel (no fetch on
        ``receive``): those of ``receive`` calls and of valid getConversations pages."""
        with self._lock:
            return set(self._seen.get(provider_channel_id, ()))

    def call_manifest(
        self,
        endpoint: str,
        *,
        method: str | None = None,
        params: Mapping[str, Any] | None = None,
        auth: Auth = OWN_CREDENTIALS,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        **path_vars: str,
    ) -> httpx2.Response:
        """Call a manifest endpoint of the app now, as Pipedrive would, and return the answer.

        ``path_vars`` fill the URL's ``:variables`` (providerChannelId, sourceConversationId,
        sourceMessageId, senderId; percent-encoded). ``method``: None for the documented one.
        ``auth``: HTTP Basic credentials, the stand-in's own by default, None for none.
        The answer is neither recorded nor checked: see ``response_problems``.
        """
        with self._lock:
            manifest = self._manifest
        if manifest is None:
            raise RuntimeError("no manifest: call set_manifest() first")
        if endpoint not in MANIFEST_ENDPOINTS:
            raise ValueError(f"unknown manifest endpoint {endpoint!r}")
        url = _manifest_url(manifest, endpoint, path_vars)
        credentials = (self.client_id, self.client_secret) if auth is OWN_CREDENTIALS else auth
        with httpx2.Client(timeout=CALLBACK_TIMEOUT_SECONDS, trust_env=False) as client:
            return client.request(
                method or MANIFEST_ENDPOINTS[endpoint][0],
                url,
                params=params,
                auth=credentials,
                headers=headers,
                content=content,
            )

    def post_message(
        self,
        provider_channel_id: str,
        *,
        conversation_id: str,
        sender_id: str,
        recipient_ids: Sequence[str],
        message: str,
        files: Sequence[tuple[str, bytes, str]] = (),
        recipient_field: str = "recipientIds[]",
        file_field: str = "files",
        auth: Auth = OWN_CREDENTIALS,
    ) -> httpx2.Response:
        """An agent's reply from the Pipedrive inbox: ``postMessage`` as multipart/form-data
        (§3.6). Parts in order: ``message``, ``senderId``, ``conversationId``, one
        ``recipient_field`` per recipient, then one ``file_field`` part per (filename, content,
        content-type) in ``files``. Returns the answer, unchecked."""
        fields = [
            ("message", message),
            ("senderId", sender_id),
            ("conversationId", conversation_id),
        ]
        fields += [(recipient_field, recipient) for recipient in recipient_ids]
        parts = [(file_field, name, data, content_type) for name, data, content_type in files]
        body, content_type = _multipart(fields, parts)
        return self.call_manifest(
            "postMessage",
            auth=auth,
            headers={"content-type": content_type},
            content=body,
            providerChannelId=provider_channel_id,
        )

    # ================================================================== internals

    def _routes(self) -> list[Route]:
        # (method, path, handler, token cost, OAuth scope needed). Costs: doc §3.5 (webhooks;
        # users/me is a "get single entity") and messaging doc §2.0 (channels).
        channel = "/v1/channels/{channel_id}"
        conversation = channel + "/conversations/{conversation_id}"
        api: list[tuple[str, str, ApiHandler, int, str | None]] = [
            ("GET", "/v1/users/me", self._users_me, 2, None),
            ("GET", "/v1/webhooks", self._list_webhooks, 10, ADMIN),
            ("POST", "/v1/webhooks", self._add_webhook, 10, ADMIN),
            ("DELETE", "/v1/webhooks/{webhook_id}", self._delete_webhook, 6, ADMIN),
            ("POST", "/v1/channels", self._add_channel, 10, MESSAGING),
            ("POST", "/v1/channels/messages/receive", self._receive_message, 10, MESSAGING),
            ("DELETE", channel, self._delete_channel, 6, MESSAGING),
            ("DELETE", conversation, self._delete_conversation, 6, MESSAGING),
            *self._crm_routes(),  # persons, deals, notes: tests/standins/pipedrive_crm.py
        ]
        routes = [
            Route("/oauth/authorize", self._endpoint(self._authorize), methods=["GET"]),
            Route("/oauth/token", self._endpoint(self._token), methods=["POST"]),
            Route("/oauth/revoke", self._endpoint(self._revoke), methods=["POST"]),
        ]
        for prefix in ("/api", ""):
            for method, path, handler, cost, scope in api:
                endpoint = self._endpoint(self._api(handler, cost, scope))
                routes.append(Route(prefix + path, endpoint, methods=[method]))
            unknown = self._endpoint(self._api(self._unknown_path, 0, None))
            any_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
            routes.append(Route(prefix + "/v1/{rest:path}", unknown, methods=any_method))
            routes.append(Route(prefix + "/v2/{rest:path}", unknown, methods=any_method))
        return routes

    def _endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Record, apply fault injection, run ``handler`` under the lock."""

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            stall = self._take_stall(request.url.path)
            if stall:
                await asyncio.sleep(stall)
            with self._lock:
                rec = self._record(request, body)
                response = self._take_fault(rec)
                if response is None:
                    response = handler(rec, request.path_params)
                rec.status = response.status_code
                key = _token_key(rec.headers)
                reset = response.headers.get("x-ratelimit-reset")
                if response.status_code == 429 and key is not None and reset is not None:
                    self._reset_until[key] = self.now() + float(reset)
                return response

        return endpoint

    def _record(self, request: Request, body: bytes) -> RecordedRequest:
        path = request.url.path
        headers = {k.lower(): v for k, v in request.headers.items()}
        content_type = _content_type(headers)
        parsed_json: Any = None
        form: dict[str, str] | None = None
        if content_type == "application/json":
            try:
                parsed_json = json.loads(body) if body else None
            except ValueError:
                parsed_json = None
        elif content_type == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        rec = RecordedRequest(
            method=request.method,
            path=path,
            api_path=path.removeprefix("/api") if path.startswith("/api/") else path,
            query=dict(request.query_params),
            headers=headers,
            body=body,
            json=parsed_json,
            form=form,
            time=self.now(),
        )
        self._requests.append(rec)
        if path == "/oauth/token" and (form or {}).get("grant_type") == "refresh_token":
            self._refresh_calls += 1
        key = _token_key(headers)
        if key is not None and rec.time < self._reset_until.get(key, -math.inf):
            self._inside_reset_window += 1
            rec.note = "sent inside the announced x-ratelimit-reset window of a previous 429"
        return rec

    def _take_fault(self, rec: RecordedRequest) -> Response | None:
        for fault in self._faults:
            if fault.method is not None and fault.method.upper() != rec.method:
                continue
            if not (
                rec.path.startswith(fault.path_prefix) or rec.api_path.startswith(fault.path_prefix)
            ):
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            rec.note = f"injected fault {fault.status}"
            return self._fault_response(fault)
        return None

    def _fault_response(self, fault: _Fault) -> Response:
        status, body, headers = fault.status, fault.body, dict(fault.headers)
        if body is None and status == 403:
            headers.setdefault("server", "cloudflare")
            return Response(CLOUDFLARE_BLOCK_HTML, status, headers, media_type="text/html")
        if body is None and status == 429:
            headers = {**self._burst_429_headers(), **headers}
            return JSONResponse(_pd_error(429, "Too many requests"), 429, headers)
        if body is None:
            return JSONResponse(_pd_error(status, http.HTTPStatus(status).phrase), status, headers)
        if isinstance(body, str):
            media = "text/html" if body.lstrip().startswith("<") else "text/plain"
            return Response(body, status, headers, media_type=media)
        if isinstance(body, bytes):
            return Response(body, status, headers)
        return JSONResponse(body, status, headers)

    # ------------------------------------------------------------------ OAuth endpoints

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

    # ------------------------------------------------------------------ API pipeline

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

    # ------------------------------------------------------------------ API handlers

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

    def _add_channel(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        problem = _schema_problem(CREATE_CHANNEL_REQUEST_SCHEMA, rec.json)
        if problem is not None:
            rec.note = problem
            return _channels_error(400, "INVALID_BODY", CREATE_CHANNEL_INVALID_TEXT)
        if not self._users[caller.user_id].is_admin:
            rec.note = "only admins can register channels"
            return _channels_error(403, "ADMIN_ONLY", "Only admins can register channels")
        body: dict[str, Any] = rec.json
        provider_channel_id = body["provider_channel_id"]
        # A second registration of the same provider_channel_id is undocumented (messaging doc
        # §2.1); we update the channel and keep its Pipedrive id, like an upsert.
        existing = self._channels.get(provider_channel_id)
        channel = {
            "id": existing["id"] if existing else str(uuid.uuid4()),
            "name": body["name"],
            "avatar_url": body.get("avatar_url"),
            "provider_channel_id": provider_channel_id,
            "marketplace_client_id": self.client_id,
            "pd_company_id": caller.company_id,
            "pd_user_id": caller.user_id,
            "created_at": existing["created_at"] if existing else _pd_time(self.now()),
            "provider_type": body.get("provider_type", "other"),
            "template_support": body.get("template_support", False),
        }
        self._channels[provider_channel_id] = channel
        # "Right after registration, Pipedrive calls your getConversations" (messaging doc §2.1).
        self._seen.setdefault(provider_channel_id, set())
        self._enqueue_locked(_Job("getConversations", provider_channel_id))
        return JSONResponse({"success": True, "data": dict(channel)})

    def _own_channel(self, caller: _Caller, provider_channel_id: str) -> dict[str, Any] | None:
        channel = self._channels.get(provider_channel_id)
        if channel is None or channel["pd_company_id"] != caller.company_id:
            return None
        return channel

    def _delete_channel(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        provider_channel_id = str(params["channel_id"])
        # 404 for an unknown channel is not documented for this endpoint; it is what the
        # troubleshooting page says happens when Pipedrive's internal UUID is sent instead.
        if self._own_channel(caller, provider_channel_id) is None:
            rec.note = "unknown provider_channel_id"
            return _channels_error(404, "NOT_FOUND", "Channel not found.")
        del self._channels[provider_channel_id]
        for key in [k for k in self._messages if k[0] == provider_channel_id]:
            del self._messages[key]
        self._seen.pop(provider_channel_id, None)
        return JSONResponse({"success": True})

    def _delete_conversation(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        channel = self._own_channel(caller, str(params["channel_id"]))
        if channel is None:
            rec.note = "unknown provider_channel_id"
            return _channels_error(404, "NOT_FOUND", "Channel not found.")
        if channel["pd_user_id"] != caller.user_id:
            rec.note = "only the installation owner may delete conversations"
            return _channels_error(
                403, "FORBIDDEN_USER_REQUEST", "Only the app owner can delete conversations"
            )
        # An unknown conversation is not an error: nothing is left to delete.
        conversation = (channel["provider_channel_id"], str(params["conversation_id"]))
        for key, message in list(self._messages.items()):
            if (key[0], message["conversation_id"]) == conversation:
                del self._messages[key]
        self._seen.get(conversation[0], set()).discard(conversation[1])
        return JSONResponse({"success": True})

    def _receive_message(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        schema = _receive_schema(self.require_receive_attachments)
        problem = _schema_problem(schema, rec.json)
        if problem is not None:
            rec.note = problem
            return _channels_error(400, "INVALID_RECEIVE_MESSAGE_PAYLOAD", RECEIVE_INVALID_TEXT)
        body: dict[str, Any] = rec.json
        # Unknown channel → 404 is UNCONFIRMED (messaging doc §2.2); it is the documented cause
        # of 404s in general (§1), so a test that forgot to register the channel fails loudly.
        if self._own_channel(caller, body["channel_id"]) is None:
            rec.note = "unknown channel_id"
            return _channels_error(404, "NOT_FOUND", "Channel not found.")
        message = copy.deepcopy(body)
        self._messages[(body["channel_id"], body["id"])] = message  # upsert by message id
        # A conversation_id new to Pipedrive makes it call getConversationById (§2.2, §4.3).
        seen = self._seen.setdefault(body["channel_id"], set())
        if body["conversation_id"] not in seen:
            seen.add(body["conversation_id"])
            job = _Job("getConversationById", body["channel_id"], body["conversation_id"])
            self._enqueue_locked(job)
        return JSONResponse({"success": True, "data": copy.deepcopy(message)})

    # ------------------------------------------------------------------ manifest callbacks

    def _enqueue_locked(self, job: _Job) -> None:
        """Queue a callback (the caller holds the lock); nothing without manifest or worker."""
        if self._manifest is None or self._worker is None:
            return
        self._pending += 1
        self._jobs.put(job)

    def _work(self, jobs: queue.SimpleQueue[_Job | None], stopping: threading.Event) -> None:
        with httpx2.Client(timeout=CALLBACK_TIMEOUT_SECONDS, trust_env=False) as client:
            while (job := jobs.get()) is not None:
                try:
                    if not stopping.is_set():
                        self._run_job(client, job)
                except Exception as exc:  # noqa: BLE001 - a stand-in bug must show, not hang waits
                    problem = f"$: the stand-in failed: {type(exc).__name__}: {exc}"
                    self._add_callback(
                        Callback(job.endpoint, "", "", {}, None, None, [problem], self.now())
                    )
                finally:
                    with self._changed:
                        self._pending -= 1
                        self._changed.notify_all()

    def _run_job(self, client: httpx2.Client, job: _Job) -> None:
        channel = job.provider_channel_id
        if job.endpoint == "getConversationById":
            assert job.conversation_id is not None
            params = {"messages_limit": str(CALLBACK_MESSAGES_LIMIT)}
            path_vars = {"providerChannelId": channel, "sourceConversationId": job.conversation_id}
            callback = self._call(client, job.endpoint, params, path_vars)
            if callback is not None:
                self._add_callback(callback)
            return
        cursors: set[str] = set()
        after: str | None = None
        for _ in range(CALLBACK_PAGE_LIMIT):
            params = {
                "conversations_limit": str(CALLBACK_CONVERSATIONS_LIMIT),
                "messages_limit": str(CALLBACK_MESSAGES_LIMIT),
            }
            if after is not None:
                params["after"] = after
            callback = self._call(
                client, "getConversations", params, {"providerChannelId": channel}
            )
            if callback is None:
                return
            after = None
            if not callback.problems:  # a page with problems is refused: paging ends there
                body = callback.body
                with self._lock:
                    self._seen.setdefault(channel, set()).update(c["id"] for c in body["data"])
                cursor = (body.get("additional_data") or {}).get("after")
                if cursor and cursor in cursors:
                    callback.problems.append(
                        f"$.additional_data.after: {cursor!r} was given before; paging stopped"
                    )
                elif cursor:
                    cursors.add(cursor)
                    after = cursor
            self._add_callback(callback)
            if after is None:
                return

    def _call(
        self,
        client: httpx2.Client,
        endpoint: str,
        params: dict[str, str],
        path_vars: dict[str, str],
    ) -> Callback | None:
        """Call the endpoint and check the answer; None when the manifest is gone."""
        with self._lock:
            manifest = self._manifest
        if manifest is None:
            return None
        url = _manifest_url(manifest, endpoint, path_vars)
        method = MANIFEST_ENDPOINTS[endpoint][0]
        auth = (self.client_id, self.client_secret)
        try:
            response = client.request(method, url, params=params, auth=auth)
        except httpx2.HTTPError as exc:
            problem = f"$: no answer: {type(exc).__name__}: {exc}"
            sent = f"{url}?{urlencode(params)}"
            return Callback(endpoint, method, sent, params, None, None, [problem], self.now())
        body, _ = _response_body(response)
        problems = response_problems(endpoint, response, path_vars=path_vars)
        return Callback(
            endpoint,
            method,
            str(response.request.url),
            params,
            response.status_code,
            body,
            problems,
            self.now(),
        )

    def _add_callback(self, callback: Callback) -> None:
        with self._changed:
            self._callbacks.append(callback)
            self._changed.notify_all()


# ---------------------------------------------------------------------- helpers


def _pd_error(status: int, message: str) -> dict[str, Any]:
    """Pipedrive's general error envelope (doc §3.2)."""
    return {
        "success": False,
        "error": message,
        "error_info": ERROR_INFO,
        "data": None,
        "additional_data": None,
        "errorCode": status,
    }


def _channels_error(status: int, code: str, message: str) -> Response:
    """The Channels API error envelope (messaging doc §2.0)."""
    body = {
        "success": False,
        "error": message,
        "error_info": CHANNELS_ERROR_INFO,
        "additional_data": {"code": code},
    }
    return JSONResponse(body, status)


def _oauth_error(status: int, error: str, description: str) -> Response:
    headers = {"www-authenticate": 'Basic realm="Service"'} if status == 401 else None
    return JSONResponse({"error": error, "error_description": description}, status, headers)


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


def _schema_problem(schema: dict[str, Any], instance: Any) -> str | None:
    """None when ``instance`` is valid, else the most relevant jsonschema message."""
    error = best_match(Draft7Validator(schema).iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "body"
    return f"{where}: {error.message}"


def _is_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _content_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _basic_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _token_key(headers: Mapping[str, str]) -> str | None:
    """The token a request is rate-limited under (without checking it)."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-token")


def _pd_time(timestamp: float) -> str:
    """v1 time format, UTC ``YYYY-MM-DD HH:MM:SS`` (doc §3.1)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")

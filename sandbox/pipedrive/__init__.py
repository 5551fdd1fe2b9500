"""A local emulator of Pipedrive: OAuth server and the v1 REST endpoints pdbridge calls.

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
``sandbox/pipedrive/crm.py``, mixed in.

Not modelled: webhook deliveries other than notes', the getSenderById / getTemplates calls after
registration (§4.2 step 3), HEAD checks of expiring links and avatars, the uninstall notice, API v2
beyond persons and deals, the
``exchange_api_token`` grant, the search burst limit and the legacy ``x-daily-requests-left``.
"""

from sandbox.pipedrive.api import ApiHandler
from sandbox.pipedrive.contract import (
    ATTACHMENT_SCHEMA,
    CLOUDFLARE_BLOCK_HTML,
    CONVERSATION_RESPONSE_SCHEMA,
    CONVERSATION_SCHEMA,
    CONVERSATIONS_RESPONSE_SCHEMA,
    CREATE_CHANNEL_REQUEST_SCHEMA,
    DEFAULT_SCOPES,
    DELETE_CHANNEL_RESPONSE_SCHEMA,
    ERROR_RESPONSE_SCHEMA,
    MANIFEST_ENDPOINTS,
    MANIFEST_ERROR_CODES,
    MANIFEST_RESPONSE_SCHEMAS,
    MESSAGE_SCHEMA,
    PARTICIPANT_SCHEMA,
    POST_MESSAGE_RESPONSE_SCHEMA,
    RECEIVE_MESSAGE_REQUEST_SCHEMA,
    SENDER_RESPONSE_SCHEMA,
    TEMPLATES_RESPONSE_SCHEMA,
    error_problems,
    manifest_problems,
    response_problems,
)
from sandbox.pipedrive.manifest_caller import Callback
from sandbox.pipedrive.recording import RecordedRequest
from sandbox.pipedrive.standin import PipedriveStandin
from sandbox.server import ServerThread

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
    "ApiHandler",
    "Callback",
    "PipedriveStandin",
    "RecordedRequest",
    "ServerThread",
    "error_problems",
    "manifest_problems",
    "response_problems",
]

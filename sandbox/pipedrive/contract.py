"""The Pipedrive contract the emulator holds the app to: constants, JSON schemas of requests and
answers (messaging doc), and the checkers that name what an answer got wrong."""

from __future__ import annotations

import base64
import binascii
import copy
import re
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import httpx2
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.exceptions import best_match

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from jsonschema.protocols import Validator


if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from jsonschema.protocols import Validator


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

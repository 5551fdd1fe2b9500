"""A local stand-in for Meta's Graph API as the WhatsApp adapter uses it, plus webhook builders.

One Starlette app served by uvicorn on 127.0.0.1 (free port, background thread, real sockets).
Point WHATSAPP_GRAPH_URL at ``standin.graph_url`` (``{base_url}/v21.0``); every path is also
served without the version segment, so ``base_url`` works too. Media downloads are served at
``{base_url}/whatsapp_business/attachments/?mid=...`` like ``lookaside.fbsbx.com``: same host
as the Graph base, which the adapter allows for stand-ins.

    with GraphStandin() as graph:
        media_id = graph.add_media(b"\\xff\\xd8...", "image/jpeg")
        body = graph.encode(graph.image_webhook(wamid="wamid.A", wa_id="16505551234",
                                                media_id=media_id, caption="the blue one"))
        headers = graph.webhook_headers(body)   # X-Hub-Signature-256 for its app secret
        ...                                     # the service takes it, fetches the media, ...
        assert graph.sent[0]["text"]["body"] == "Thanks!"

Contract rules it enforces ("doc" = shared/docs/chat-providers.md §3; [U] = a rule or text the
doc does not give, or marks unconfirmed, that we chose):

- Every request needs the access token, as ``Authorization: Bearer`` or ``access_token`` in the
  query: otherwise 401 with Graph error code 190 (doc §3.10; [U] Meta answers a *missing* token
  with 400/104). Errors are always ``{"error": {"message", "type": "OAuthException", "code",
  "error_subcode"?, "error_data": {"messaging_product", "details"}?, "fbtrace_id"}}``.
- ``GET /{phone_number_id}`` (``fields`` honoured, ``id`` always), ``GET /{waba_id}``.
- ``POST /{phone_number_id}/messages`` (doc §3.6), JSON only: ``messaging_product`` must be
  ``whatsapp``, ``to`` a non-empty string, ``recipient_type`` absent, ``individual`` or
  ``group``, ``type`` one of text/image/document/audio/video/template with its object. Text:
  ``body`` 1-4096 characters. Media: exactly one of ``id`` (uploaded or added here) and ``link``;
  ``caption`` ≤ 1024 and not on audio [U]. Template: ``name`` + ``language.code`` of an APPROVED
  template in ``templates`` (else 132001), body parameters as many as the BODY's ``{{n}}``
  placeholders (else 132000). Every violation is 400 with code 100 [U texts]. Success:
  ``{"messaging_product", "contacts": [{"input", "wa_id"}], "messages": [{"id": "wamid.…"}]}``.
  A mark-as-read body (``status: "read"``, ``message_id``) answers ``{"success": true}``.
- ``POST /{phone_number_id}/media``: multipart with a ``file`` part, ``type`` and
  ``messaging_product=whatsapp`` → ``{"id"}``; the file can then be looked up and downloaded.
- ``GET /{media_id}`` → ``{messaging_product, url, mime_type, sha256 (hex [U]), file_size (a
  string), id}``; the URL works for ``media_url_ttl`` seconds (doc: 5 minutes), with the bearer.
  ``DELETE /{media_id}`` → ``{"success": true}``. Unknown ids → 400, code 100, subcode 33.
- ``GET /{waba_id}/message_templates``: ``templates`` (settable; the defaults hold one REJECTED
  template), filtered by ``status`` / ``name`` / ``language`` (unless
  ``ignore_template_filters``), paged by ``limit`` (default 25) and the ``after`` cursor,
  ``paging.next`` pointing back at the stand-in.
- Any other path → 400, code 2500 "Unknown path components".

Fault injection: ``fail_next(path_suffix, status, code=..., message=...)`` answers the next
``count`` requests whose path (version stripped) ends with ``path_suffix`` ("*" for any) with a
Graph error, after the token check; ``headers`` (e.g. ``Retry-After``) go with it.

Builders (no network): ``text_webhook``, ``image_webhook``, ``status_webhook`` and ``batch``
make the bodies Meta POSTs for this phone number (doc §3.4-3.5); ``encode`` gives their bytes
the way Meta writes them (compact, non-ASCII escaped) and ``sign`` / ``webhook_headers`` the
``X-Hub-Signature-256`` value (doc §3.2).

Not modelled: webhook deliveries by the stand-in itself, the 24-hour window (use ``fail_next``
with 131047), rate limits, media size limits, interactive/location/contacts sends, BSUID sends.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.server import Served

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = [
    "GRAPH_VERSION",
    "GraphStandin",
    "RecordedRequest",
    "UploadedMedia",
    "sign_body",
]

GRAPH_VERSION: Final = "v21.0"
MAX_TEXT_CHARS: Final = 4096
MAX_CAPTION_CHARS: Final = 1024
SEND_TYPES: Final = frozenset({"text", "image", "document", "audio", "video", "template"})
MEDIA_TYPES: Final = frozenset({"image", "document", "audio", "video"})
DOWNLOAD_PATH: Final = "whatsapp_business/attachments"
_VERSION: Final = re.compile(r"v\d+(\.\d+)?")
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


def sign_body(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body`` (doc §3.2)."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def default_templates() -> list[dict[str, Any]]:
    """Three approved templates and one rejected one, shaped like Graph's listing (doc §3.8)."""
    return [
        {
            "name": "hello_world",
            "parameter_format": "POSITIONAL",
            "components": [
                {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
                {
                    "type": "BODY",
                    "text": "Welcome and congratulations!! This message demonstrates your "
                    "ability to send a WhatsApp message notification from the Cloud API.",
                },
                {"type": "FOOTER", "text": "WhatsApp Business Platform sample message"},
            ],
            "language": "en_US",
            "status": "APPROVED",
            "category": "UTILITY",
            "id": "1192339204654487",
        },
        {
            "name": "order_update",
            "parameter_format": "POSITIONAL",
            "components": [
                {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
                {
                    "type": "BODY",
                    "text": "Hi {{1}}, your order {{2}} has shipped and arrives on {{3}}.",
                    "example": {"body_text": [["Sheena", "#1042", "Friday"]]},
                },
                {"type": "FOOTER", "text": "Reply STOP to opt out"},
            ],
            "language": "en_US",
            "status": "APPROVED",
            "category": "UTILITY",
            "id": "1402958037436710",
        },
        {
            "name": "order_update",
            "parameter_format": "POSITIONAL",
            "components": [
                {
                    "type": "BODY",
                    "text": "Hallo {{1}}, deine Bestellung {{2}} ist unterwegs.",
                    "example": {"body_text": [["Sheena", "#1042"]]},
                },
            ],
            "language": "de",
            "status": "APPROVED",
            "category": "UTILITY",
            "id": "1402958037436711",
        },
        {
            "name": "spring_sale",
            "parameter_format": "POSITIONAL",
            "components": [
                {"type": "BODY", "text": "Everything 50% off until Sunday, {{1}}!"},
            ],
            "language": "en_US",
            "status": "REJECTED",
            "category": "MARKETING",
            "id": "873524781034955",
        },
    ]


@dataclass(frozen=True, slots=True)
class UploadedMedia:
    """One successful ``POST /{phone_number_id}/media``."""

    id: str
    file_name: str
    mime_type: str  # the ``type`` form field
    content_type: str | None  # the file part's own Content-Type
    content: bytes
    messaging_product: str


@dataclass(slots=True)
class RecordedRequest:
    """One request as the stand-in saw it; ``status`` and ``response`` are set when answered."""

    http_method: str
    path: str  # as sent, e.g. "/v21.0/106540352242922/messages"
    graph_path: str  # without the version and the slashes, e.g. "106540352242922/messages"
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    json: Any  # the parsed JSON body, or None
    form: dict[str, str]  # multipart / urlencoded fields
    files: dict[str, tuple[str, str | None, bytes]]  # field → (filename, content type, bytes)
    time: float
    status: int | None = None
    response: Any = None  # the JSON answered (None for downloads)
    note: str | None = None  # why it was refused, when the stand-in knows


@dataclass(slots=True)
class _Media:
    id: str
    content: bytes
    mime_type: str
    declared_size: int | None = None
    url: str | None = None  # a URL to hand out instead of the stand-in's own

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(slots=True)
class _Fault:
    suffix: str
    status: int
    code: int
    message: str
    subcode: int | None
    details: str | None
    headers: dict[str, str]
    remaining: int


@dataclass(slots=True)
class _Link:
    media_id: str
    expires: float


class _GraphError(Exception):
    """Raised under the lock by a handler: answer a Graph error."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        subcode: int | None = None,
        details: str | None = None,
        note: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = graph_error_body(code, message, subcode=subcode, details=details)
        self.note = note or message
        self.headers = headers or {}


def graph_error_body(
    code: int, message: str, *, subcode: int | None = None, details: str | None = None
) -> dict[str, Any]:
    """Graph's error shape (doc §3.10)."""
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = "A" + secrets.token_urlsafe(16)
    return {"error": error}


def _invalid(message: str, note: str | None = None) -> _GraphError:
    return _GraphError(400, 100, f"(#100) {message}", note=note or message)


@dataclass(slots=True)
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    wamids: list[str] = field(default_factory=list)
    uploads: list[UploadedMedia] = field(default_factory=list)
    media: dict[str, _Media] = field(default_factory=dict)
    links: dict[str, _Link] = field(default_factory=dict)
    faults: list[_Fault] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=default_templates)
    media_counter: int = 0


class GraphStandin(Served):
    """The stand-in server. Use as a context manager, or call ``start()`` and ``stop()``."""

    def __init__(
        self,
        *,
        access_token: str = "EAAG-test",  # noqa: S107 - a fake for tests
        phone_number_id: str = "106540352242922",
        waba_id: str = "102290129340398",
        app_secret: str = "test-app-secret",  # noqa: S107 - a fake for tests
        display_phone_number: str = "15550783881",
        verified_name: str = "Pdbridge Test Shop",
        media_url_ttl: float = 300.0,
    ) -> None:
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.waba_id = waba_id
        self.app_secret = app_secret
        self.display_phone_number = display_phone_number
        self.verified_name = verified_name
        self.media_url_ttl = media_url_ttl
        #: List every template whatever the `status` / `name` / `language` filters say (their
        #: support is unconfirmed, doc §3.8), to check that the client filters by itself.
        self.ignore_template_filters = False
        #: More numbers of the same app (and WABA) that answer the account lookup, for tests of
        #: one callback URL carrying several numbers' traffic. Sending is modelled for the
        #: main number only.
        self.other_phone_numbers: set[str] = set()
        self._lock = threading.Lock()
        self._state = _State()
        self.app = Starlette(
            routes=[
                Route("/{path:path}", self._endpoint, methods=["GET", "POST", "DELETE"]),
            ]
        )
        self.server_name = "whatsapp-standin"

    # ------------------------------------------------------------------ addresses

    @property
    def graph_url(self) -> str:
        """``{base_url}/v21.0``: what the service uses as WHATSAPP_GRAPH_URL."""
        return f"{self.base_url}/{GRAPH_VERSION}"

    @property
    def credentials(self) -> dict[str, str]:
        """Channel credentials that this stand-in accepts (verify_token is made up)."""
        return {
            "phone_number_id": self.phone_number_id,
            "access_token": self.access_token,
            "app_secret": self.app_secret,
            "verify_token": "verify-me",
            "waba_id": self.waba_id,
        }

    # ------------------------------------------------------------------ state for tests

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._state.requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._state.requests.clear()

    @property
    def sent(self) -> list[dict[str, Any]]:
        """The body of every accepted ``/messages`` send (not mark-as-read), oldest first."""
        with self._lock:
            return copy.deepcopy(self._state.sent)

    @property
    def wamids(self) -> list[str]:
        """The message id answered for each of ``sent``, in the same order."""
        with self._lock:
            return list(self._state.wamids)

    @property
    def uploads(self) -> list[UploadedMedia]:
        with self._lock:
            return list(self._state.uploads)

    @property
    def templates(self) -> list[dict[str, Any]]:
        """What ``message_templates`` lists (a copy); assign a new list to change it."""
        with self._lock:
            return copy.deepcopy(self._state.templates)

    @templates.setter
    def templates(self, value: list[dict[str, Any]]) -> None:
        with self._lock:
            self._state.templates = copy.deepcopy(list(value))

    def add_media(
        self,
        content: bytes,
        mime_type: str,
        *,
        declared_size: int | None = None,
        url: str | None = None,
    ) -> str:
        """Register a downloadable media (as a customer's upload would be); returns its id.

        ``declared_size`` replaces the ``file_size`` the lookup reports (to test size limits
        without big files); ``url`` replaces the download URL it hands out (to test refusals).
        """
        with self._lock:
            return self._new_media(content, mime_type, declared_size, url).id

    def media_content(self, media_id: str) -> bytes:
        with self._lock:
            return self._state.media[media_id].content

    def fail_next(
        self,
        path_suffix: str,
        status: int,
        *,
        code: int,
        message: str,
        count: int = 1,
        subcode: int | None = None,
        details: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests whose path ends with ``path_suffix`` (e.g.
        "/messages", "/media", "message_templates", a media id; "*" for any) with a Graph
        error, after the token check."""
        fault = _Fault(
            path_suffix.strip("/"),
            status,
            code,
            message,
            subcode,
            details,
            dict(headers or {}),
            count,
        )
        with self._lock:
            self._state.faults.append(fault)

    # ------------------------------------------------------------------ webhook builders

    def sign(self, body: bytes) -> str:
        """The ``X-Hub-Signature-256`` header value for ``body`` with this app secret."""
        return sign_body(self.app_secret, body)

    @staticmethod
    def encode(payload: dict[str, Any]) -> bytes:
        """A body's bytes as Meta writes them: compact, non-ASCII as ``\\uXXXX``."""
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode()

    def webhook_headers(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Hub-Signature-256": self.sign(body)}

    def text_webhook(
        self,
        *,
        wamid: str,
        wa_id: str,
        text: str,
        name: str = "Jane Doe",
        timestamp: int | None = None,
    ) -> dict[str, Any]:
        """A customer's text message (doc §3.4)."""
        message = self._message(wamid, wa_id, timestamp, "text", {"body": text})
        return self._body(self._value(contacts=[_contact(name, wa_id)], messages=[message]))

    def image_webhook(
        self,
        *,
        wamid: str,
        wa_id: str,
        media_id: str,
        caption: str | None = None,
        mime_type: str = "image/jpeg",
        name: str = "Jane Doe",
        timestamp: int | None = None,
    ) -> dict[str, Any]:
        """A customer's image; ``sha256`` is the base64 digest of the registered media, if any."""
        with self._lock:
            known = self._state.media.get(media_id)
        digest = hashlib.sha256(known.content if known else media_id.encode()).digest()
        image: dict[str, Any] = {
            "mime_type": mime_type,
            "sha256": base64.b64encode(digest).decode(),
            "id": media_id,
        }
        if caption is not None:
            image = {"caption": caption, **image}
        message = self._message(wamid, wa_id, timestamp, "image", image)
        return self._body(self._value(contacts=[_contact(name, wa_id)], messages=[message]))

    def status_webhook(
        self,
        *,
        wamid: str,
        recipient_id: str,
        status: str,
        errors: list[dict[str, Any]] | None = None,
        timestamp: int | None = None,
    ) -> dict[str, Any]:
        """A status of one of our messages (doc §3.5). ``sent`` and ``delivered`` carry
        conversation and pricing; ``failed`` carries ``errors`` (default: 131026)."""
        item: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(timestamp if timestamp is not None else int(time.time())),
            "recipient_id": recipient_id,
        }
        if status in ("sent", "delivered"):
            conversation: dict[str, Any] = {
                "id": hashlib.md5(recipient_id.encode(), usedforsecurity=False).hexdigest(),
                "origin": {"type": "service"},
            }
            if status == "sent":
                conversation["expiration_timestamp"] = str(int(item["timestamp"]) + 86_400)
            item["conversation"] = conversation
            item["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "service"}
        if status == "failed" and errors is None:
            errors = [
                {
                    "code": 131026,
                    "title": "Message undeliverable",
                    "message": "Message undeliverable",
                    "error_data": {"details": "Message Undeliverable."},
                }
            ]
        if errors is not None:
            item["errors"] = copy.deepcopy(errors)
        return self._body(self._value(statuses=[item]))

    def batch(self, *webhooks: dict[str, Any], merge: bool = False) -> dict[str, Any]:
        """One POST body holding several: whole bodies (their changes are taken) or ``value``
        objects. ``merge=False`` gives one change per piece; ``merge=True`` one change whose
        value holds every ``contacts``, ``messages`` and ``statuses`` item together."""
        values: list[dict[str, Any]] = []
        for webhook in webhooks:
            if "entry" in webhook:
                for entry in webhook["entry"]:
                    values += [copy.deepcopy(c["value"]) for c in entry.get("changes", [])]
            else:
                values.append(copy.deepcopy(webhook))
        if merge:
            merged = self._value()
            for value in values:
                for key in ("contacts", "messages", "statuses"):
                    if key in value:
                        merged.setdefault(key, []).extend(value[key])
            values = [merged]
        changes = [{"value": value, "field": "messages"} for value in values]
        return {
            "object": "whatsapp_business_account",
            "entry": [{"id": self.waba_id, "changes": changes}],
        }

    def _value(self, **items: list[dict[str, Any]]) -> dict[str, Any]:
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": self.display_phone_number,
                "phone_number_id": self.phone_number_id,
            },
        }
        value.update(items)
        return value

    def _body(self, value: dict[str, Any]) -> dict[str, Any]:
        return self.batch(value)

    @staticmethod
    def _message(
        wamid: str, wa_id: str, timestamp: int | None, kind: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "from": wa_id,
            "id": wamid,
            "timestamp": str(timestamp if timestamp is not None else int(time.time())),
            "type": kind,
            kind: content,
        }

    # ================================================================== internals

    def _new_media(
        self, content: bytes, mime_type: str, declared_size: int | None, url: str | None
    ) -> _Media:
        self._state.media_counter += 1
        media_id = str(1_000_000_000_000_000 + self._state.media_counter * 7919)
        media = _Media(media_id, content, mime_type, declared_size, url)
        self._state.media[media_id] = media
        return media

    async def _endpoint(self, request: Request) -> Response:
        segments = [s for s in request.url.path.split("/") if s]
        if segments and _VERSION.fullmatch(segments[0]):
            segments = segments[1:]
        body, form, files, parse_error = await _read_body(request)
        with self._lock:
            rec = self._record(request, "/".join(segments), body, form, files)
            try:
                self._check_token(request)
                self._take_fault(rec)
                if parse_error is not None:
                    raise _invalid(parse_error)
                response = self._dispatch(request, segments, rec)
            except _GraphError as refused:
                rec.note = refused.note
                response = JSONResponse(refused.body, refused.status, headers=refused.headers)
                rec.response = refused.body
            rec.status = response.status_code
            return response

    def _record(
        self,
        request: Request,
        graph_path: str,
        body: Any,
        form: dict[str, str],
        files: dict[str, tuple[str, str | None, bytes]],
    ) -> RecordedRequest:
        rec = RecordedRequest(
            http_method=request.method,
            path=request.url.path,
            graph_path=graph_path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            json=body,
            form=form,
            files=files,
            time=time.time(),
        )
        self._state.requests.append(rec)
        return rec

    def _check_token(self, request: Request) -> None:
        given = request.query_params.get("access_token", "")
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if not given or not secrets.compare_digest(given.encode(), self.access_token.encode()):
            raise _GraphError(
                401,
                190,
                "Invalid OAuth access token - Cannot parse access token",
                note="missing or wrong access token",
            )

    def _take_fault(self, rec: RecordedRequest) -> None:
        for fault in self._state.faults:
            if fault.suffix not in ("*", "") and not rec.graph_path.endswith(fault.suffix):
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._state.faults.remove(fault)
            raise _GraphError(
                fault.status,
                fault.code,
                fault.message,
                subcode=fault.subcode,
                details=fault.details,
                note=f"injected fault {fault.status}/{fault.code}",
                headers=fault.headers,
            )

    def _dispatch(self, request: Request, segments: list[str], rec: RecordedRequest) -> Response:
        method = request.method
        path = "/".join(segments)
        if method == "GET" and path == DOWNLOAD_PATH:
            return self._download(rec)
        if len(segments) == 1:
            object_id = segments[0]
            if method == "GET" and object_id == self.phone_number_id:
                return JSONResponse(self._phone_number(rec))
            if method == "GET" and object_id in self.other_phone_numbers:
                return JSONResponse({"id": object_id, "verified_name": "Second line"})
            if method == "GET" and object_id == self.waba_id:
                return JSONResponse({"id": self.waba_id, "name": "Pdbridge Test WABA"})
            if object_id in self._state.media and method in ("GET", "DELETE"):
                return JSONResponse(self._media_object(rec, object_id, delete=method == "DELETE"))
            raise _GraphError(
                400,
                100,
                f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not "
                "exist, cannot be loaded due to missing permissions, or does not support this "
                "operation. Please read the Graph API documentation at "
                "https://developers.facebook.com/docs/graph-api",
                subcode=33,
                note="unknown object id",
            )
        if len(segments) == 2:
            object_id, edge = segments
            if method == "POST" and object_id == self.phone_number_id and edge == "messages":
                return JSONResponse(self._messages(rec))
            if method == "POST" and object_id == self.phone_number_id and edge == "media":
                return JSONResponse(self._upload(rec))
            if method == "GET" and object_id == self.waba_id and edge == "message_templates":
                return JSONResponse(self._templates(rec, request.url.path))
        raise _GraphError(400, 2500, f"Unknown path components: /{path}", note="unknown path")

    def _phone_number(self, rec: RecordedRequest) -> dict[str, Any]:
        everything = {
            "verified_name": self.verified_name,
            "code_verification_status": "VERIFIED",
            "display_phone_number": self.display_phone_number,
            "quality_rating": "GREEN",
            "platform_type": "CLOUD_API",
            "throughput": {"level": "STANDARD"},
            "id": self.phone_number_id,
        }
        wanted = [f.strip() for f in rec.query.get("fields", "").split(",") if f.strip()]
        if not wanted:
            return everything
        return {k: v for k, v in everything.items() if k in wanted or k == "id"}

    def _media_object(self, rec: RecordedRequest, media_id: str, *, delete: bool) -> dict[str, Any]:
        owner = rec.query.get("phone_number_id")
        if owner is not None and owner != self.phone_number_id:
            raise _invalid("Invalid parameter", "phone_number_id does not own the media [U]")
        if delete:
            del self._state.media[media_id]
            return {"success": True}
        media = self._state.media[media_id]
        url = media.url
        if url is None:
            link = secrets.token_urlsafe(24)
            self._state.links[link] = _Link(media_id, time.time() + self.media_url_ttl)
            query = urlencode({"mid": media_id, "ext": int(time.time()), "hash": link})
            url = f"{self.base_url}/{DOWNLOAD_PATH}/?{query}"
        size = media.declared_size if media.declared_size is not None else len(media.content)
        return {
            "messaging_product": "whatsapp",
            "url": url,
            "mime_type": media.mime_type,
            "sha256": media.sha256,
            "file_size": str(size),
            "id": media_id,
        }

    def _download(self, rec: RecordedRequest) -> Response:
        link = self._state.links.get(rec.query.get("hash", ""))
        if link is None or link.expires < time.time() or link.media_id not in self._state.media:
            rec.note = "unknown or expired media URL"
            return Response(b"URL signature expired", 404, media_type="text/plain")
        media = self._state.media[link.media_id]
        return Response(media.content, 200, media_type=media.mime_type)

    def _messages(self, rec: RecordedRequest) -> dict[str, Any]:
        body = rec.json
        if not isinstance(body, dict):
            raise _invalid("Invalid parameter", "the body is not a JSON object")
        if body.get("messaging_product") != "whatsapp":
            raise _invalid("The parameter messaging_product is required.")
        if body.get("status") == "read":
            if not isinstance(body.get("message_id"), str):
                raise _invalid("The parameter message_id is required.")
            return {"success": True}
        to = body.get("to")
        if not isinstance(to, str) or not to.strip():
            raise _invalid("The parameter to is required.")
        if body.get("recipient_type", "individual") not in ("individual", "group"):
            raise _invalid("Param recipient_type must be one of {INDIVIDUAL, GROUP}.")
        kind = body.get("type")
        if kind not in SEND_TYPES:
            raise _invalid(f"Param type must be one of {sorted(SEND_TYPES)} [U]")
        content = body.get(kind)
        if not isinstance(content, dict):
            raise _invalid(f"The parameter {kind} is required.")
        if kind == "text":
            text = content.get("body")
            if not isinstance(text, str) or not text.strip():
                raise _invalid("The parameter text['body'] is required.")
            if len(text) > MAX_TEXT_CHARS:
                raise _invalid(f"Param text['body'] must be at most {MAX_TEXT_CHARS} characters.")
        elif kind in MEDIA_TYPES:
            self._check_media(kind, content)
        else:
            self._check_template(content)
        wamid = "wamid." + base64.b64encode(secrets.token_bytes(30)).decode()
        self._state.sent.append(copy.deepcopy(body))
        self._state.wamids.append(wamid)
        wa_id = re.sub(r"\D", "", to) if re.fullmatch(r"\+?[\d\s()-]+", to) else to
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": wa_id}],
            "messages": [{"id": wamid}],
        }

    def _check_media(self, kind: str, content: dict[str, Any]) -> None:
        if ("id" in content) == ("link" in content):
            raise _invalid(f"Param {kind} must have exactly one of id and link [U]")
        if "id" in content and str(content["id"]) not in self._state.media:
            raise _invalid(f"Param {kind}['id'] is not a valid media id [U]")
        caption = content.get("caption")
        if caption is not None and kind == "audio":
            raise _invalid("Param audio['caption'] is not allowed [U]")
        if caption is not None and (not isinstance(caption, str) or len(caption) > 1024):
            raise _invalid(f"Param {kind}['caption'] must be at most {MAX_CAPTION_CHARS} chars")

    def _check_template(self, content: dict[str, Any]) -> None:
        name = content.get("name")
        language = content.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not isinstance(name, str) or not isinstance(code, str):
            raise _invalid("The parameters template['name'] and template['language'] are needed.")
        found = next(
            (
                t
                for t in self._state.templates
                if t.get("name") == name
                and t.get("language") == code
                and t.get("status") == "APPROVED"
            ),
            None,
        )
        if found is None:
            raise _GraphError(
                404,
                132001,
                "(#132001) Template name does not exist in the translation",
                details=f"template name ({name}) does not exist in {code}",
            )
        body_text = next(
            (c.get("text", "") for c in found.get("components", []) if c.get("type") == "BODY"),
            "",
        )
        expected = len(set(_PLACEHOLDER.findall(body_text)))
        components = content.get("components") or []
        given = sum(
            len(c.get("parameters") or [])
            for c in components
            if isinstance(c, dict) and str(c.get("type", "")).lower() == "body"
        )
        if given != expected:
            raise _GraphError(
                400,
                132000,
                "(#132000) Number of parameters does not match the expected number of params",
                details=f"body: number of localizable_params ({given}) does not match the "
                f"expected number of params ({expected})",
            )

    def _upload(self, rec: RecordedRequest) -> dict[str, Any]:
        if rec.form.get("messaging_product") != "whatsapp":
            raise _invalid("The parameter messaging_product is required.")
        part = rec.files.get("file")
        if part is None:
            raise _invalid("The parameter file is required.")
        mime = rec.form.get("type")
        if not mime:
            raise _invalid("The parameter type is required.")
        filename, content_type, content = part
        media = self._new_media(content, mime, None, None)
        self._state.uploads.append(
            UploadedMedia(media.id, filename, mime, content_type, content, "whatsapp")
        )
        return {"id": media.id}

    def _templates(self, rec: RecordedRequest, path: str) -> dict[str, Any]:
        query = rec.query
        found = self._state.templates
        if self.ignore_template_filters:
            query = {k: v for k, v in query.items() if k not in ("status", "name", "language")}
        if query.get("status"):
            wanted = {s.strip().upper() for s in query["status"].split(",")}
            found = [t for t in found if str(t.get("status", "")).upper() in wanted]
        if query.get("name"):
            found = [t for t in found if query["name"] in str(t.get("name", ""))]
        if query.get("language"):
            found = [t for t in found if t.get("language") == query["language"]]
        try:
            limit = max(1, min(int(query.get("limit", "25")), 1000))
        except ValueError:
            raise _invalid("Param limit must be an integer") from None
        start = 0
        if query.get("after"):
            try:
                start = int(base64.urlsafe_b64decode(query["after"].encode()).decode()) + 1
            except ValueError:
                raise _invalid("Invalid cursor", "bad after cursor") from None
        page = copy.deepcopy(found[start : start + limit])
        answer: dict[str, Any] = {"data": page}
        if page:
            answer["paging"] = {
                "cursors": {
                    "before": base64.urlsafe_b64encode(str(start).encode()).decode(),
                    "after": base64.urlsafe_b64encode(str(start + len(page) - 1).encode()).decode(),
                }
            }
            if start + len(page) < len(found):
                following = {k: v for k, v in query.items() if k != "access_token"}
                following["limit"] = str(limit)
                following["after"] = answer["paging"]["cursors"]["after"]
                answer["paging"]["next"] = f"{self.base_url}{path}?{urlencode(following)}"
        return answer


def _contact(name: str, wa_id: str) -> dict[str, Any]:
    return {"profile": {"name": name}, "wa_id": wa_id}


async def _read_body(
    request: Request,
) -> tuple[Any, dict[str, str], dict[str, tuple[str, str | None, bytes]], str | None]:
    """(JSON body or None, form fields, file parts, why the body could not be read)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form: dict[str, str] = {}
    files: dict[str, tuple[str, str | None, bytes]] = {}
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        parsed = await request.form(max_files=10, max_fields=100)
        try:
            for key, value in parsed.multi_items():
                if isinstance(value, UploadFile):
                    files[key] = (value.filename or key, value.content_type, await value.read())
                else:
                    form[key] = value
        finally:
            await parsed.close()
        return None, form, files, None
    raw = await request.body()
    if not raw.strip():
        return None, form, files, None
    try:
        return json.loads(raw), form, files, None
    except ValueError:
        return None, form, files, "Invalid parameter: the body is not JSON"

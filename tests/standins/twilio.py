"""A local stand-in for Twilio's Programmable Messaging REST API (chat-providers.md §4).

One Starlette app served by uvicorn on 127.0.0.1 (free port, background thread, real sockets).
Point TWILIO_API_URL at ``standin.base_url``: resources are served at
``{base_url}/2010-04-01/Accounts/{AccountSid}/...`` like ``https://api.twilio.com``.

    with TwilioStandin() as tw:
        form = tw.add_inbound(from_="+14155550100", body="Hi", media=[(jpeg, "image/jpeg")])
        headers = tw.webhook_headers(url, form)   # X-Twilio-Signature + form content type
        ...                                       # the service takes the webhook, fetches media
        assert tw.sent[0]["body"] == "Thanks!"

Contract rules it enforces ("doc" = shared/docs/chat-providers.md §4; [U] = the doc does not give
it and we chose):

- Every route needs HTTP Basic ``AccountSid:AuthToken`` → else 401 ``{"code": 20003, "message":
  "Authenticate", "more_info", "status": 401}``. A path naming another account → 404 20404.
  Errors are always ``{code, message, more_info, status}`` (doc §4.5).
- ``GET /Accounts/{sid}.json``: the account (``friendly_name``, ``status`` "active", ...).
- ``POST /Accounts/{sid}/Messages.json`` (form-encoded, ``MediaUrl`` repeatable, doc §4.5):
  ``To`` required (400 21604); ``From`` or ``MessagingServiceSid`` required (400 21603); ``Body``
  or ``MediaUrl`` or ``ContentSid`` required (400 21602); ``To`` must be E.164 or
  ``whatsapp:+E.164`` (400 21211); ``From`` must be the stand-in's number (or its
  ``whatsapp:`` form) (400 21606 [U text]); ``whatsapp:`` on one side only → 400 21910 [U];
  ``Body`` ≤ 1600 (400 21617); at most 10 ``MediaUrl``, each http(s) (400 21623 / 21620 [U]);
  an address in ``unsubscribe()`` → 400 21610. Success: 201 with a Message JSON, ``sid`` "MM…"
  with media and "SM…" without, ``status`` "queued", ``date_sent`` null; recorded in ``sent``.
- ``GET /Accounts/{sid}/Messages.json``: every stored message, outbound and inbound
  (``add_inbound``), newest first, filtered by ``To``, ``From``, ``DateSent`` (a day),
  ``DateSent>`` and ``DateSent<`` (the ``DateSent>=`` / ``<=`` of Twilio's docs, days inclusive,
  compared with ``date_sent``, or ``date_created`` while a message has none [U]); paged with
  ``PageSize`` (default 50, max 1000, and at most ``page_size_cap`` when set), ``Page`` and
  ``PageToken``, with Twilio's ``first_page_uri``/``next_page_uri``/``previous_page_uri``/
  ``page``/``page_size``/``start``/``end``/``uri`` fields.
- ``GET /Accounts/{sid}/Messages/{MessageSid}.json``; ``.../Media.json`` (``media_list``);
  ``.../Media/{MediaSid}.json`` (one Media resource); ``.../Media/{MediaSid}`` → the bytes with
  their Content-Type. With ``media_redirects = n`` the media URL first answers ``n`` 302s through
  ``/cdn/...`` (no auth there), like Twilio sending downloads to its CDN (doc §4.1 [U]).

Fault injection: ``fail_next(path_suffix, status, code=..., message=...)`` answers the next
``count`` requests whose path ends with ``path_suffix`` ("" for any; optionally only one HTTP
method) with that error, after the auth check; ``retry_after`` adds a Retry-After header.

Helpers that touch no network: ``signature(url, params)`` (X-Twilio-Signature with the stand-in's
auth token, doc §4.2), ``webhook_headers``, ``form_body``, ``add_inbound`` (returns the webhook
form Twilio would POST) and ``status_form`` (a status callback form).

Not modelled: Messaging Services, Content API, scheduling, real status progression (use
``status_form``, which also updates the stored message), webhook deliveries by the stand-in itself,
media DELETE, subaccounts, API keys.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import http
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from sandbox.server import Served

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["API_VERSION", "MAX_BODY_CHARS", "MAX_MEDIA_URLS", "RecordedRequest", "TwilioStandin"]

API_VERSION: Final = "2010-04-01"
MAX_BODY_CHARS: Final = 1600
MAX_MEDIA_URLS: Final = 10
DEFAULT_ACCOUNT_SID: Final = "AC" + "0123456789abcdef" * 2
_ADDRESS: Final = re.compile(r"(?:whatsapp:)?\+[1-9][0-9]{1,14}")
_DEFAULT_MESSAGES: Final = {
    400: "Bad Request",
    401: "Authenticate",
    404: "The requested resource was not found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_DEFAULT_CODES: Final = {401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}


@dataclass(slots=True)
class RecordedRequest:
    """One request as the stand-in saw it; ``status`` is filled in when answered."""

    http_method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    form: dict[str, list[str]]  # the form body's fields, repeats kept in order
    auth_user: str | None  # the Basic auth user name, when any
    time: float
    status: int | None = None
    response: dict[str, Any] | None = None  # the JSON answered (None for media bytes)


@dataclass(slots=True)
class _Media:
    sid: str
    message_sid: str
    content: bytes
    content_type: str
    date_created: datetime


@dataclass(slots=True)
class _Message:
    sid: str
    direction: str  # "inbound" | "outbound-api"
    from_: str
    to: str
    body: str
    status: str
    date_created: datetime
    date_sent: datetime | None
    media: list[str] = field(default_factory=list)  # media sids
    error_code: int | None = None
    error_message: str | None = None


@dataclass(slots=True)
class _Fault:
    suffix: str
    method: str | None
    status: int
    code: int
    message: str
    retry_after: float | None
    remaining: int


class _Rejected(Exception):
    """Raised under the lock to answer a Twilio error."""

    def __init__(
        self, status: int, code: int, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after


class TwilioStandin(Served):
    """The stand-in server. Use as a context manager, or call ``start()`` and ``stop()``."""

    def __init__(
        self,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = "test-auth-token",  # noqa: S107 - a fake for tests
        number: str = "+15005550006",
        friendly_name: str = "pdbridge test account",
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.number = number
        self.friendly_name = friendly_name
        self.media_redirects = 0  # 302 hops through /cdn before media bytes
        self.page_size_cap: int | None = None  # forces small pages on listings

        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._sent: list[dict[str, Any]] = []
        self._messages: dict[str, _Message] = {}
        self._media: dict[str, _Media] = {}
        self._faults: list[_Fault] = []
        self._unsubscribed: set[str] = set()

        self.app = Starlette(routes=self._routes())
        self.server_name = "twilio-standin"

    # ------------------------------------------------------------------ addresses

    @property
    def account_path(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}"

    @property
    def credentials(self) -> dict[str, str]:
        """Channel credentials that work against this stand-in."""
        return {"account_sid": self.account_sid, "auth_token": self.auth_token, "from": self.number}

    # ------------------------------------------------------------------ state for tests

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return copy.deepcopy(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Every accepted POST to Messages.json, oldest first: sid, to, from, body (None when
        absent), media_urls, status_callback, messaging_service_sid and params (every field,
        as lists)."""
        with self._lock:
            return copy.deepcopy(self._sent)

    def message(self, sid: str) -> dict[str, Any]:
        """The stored message ``sid`` as Twilio's Message JSON."""
        with self._lock:
            return self._message_json(self._messages[sid])

    def media_content(self, media_sid: str) -> bytes:
        with self._lock:
            return self._media[media_sid].content

    def unsubscribe(self, address: str) -> None:
        """The customer texted STOP: sends to ``address`` answer 400 21610."""
        with self._lock:
            self._unsubscribed.add(address)

    def fail_next(
        self,
        path_suffix: str,
        status: int,
        *,
        code: int | None = None,
        message: str | None = None,
        count: int = 1,
        method: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``count`` requests whose path ends with ``path_suffix`` ("" for any),
        of ``method`` when given, with ``{code, message, more_info, status}`` (after the auth
        check). ``code`` defaults by status (429 → 20429, 401 → 20003, 404 → 20404, 5xx →
        20500/20503), ``message`` to the usual phrase; ``retry_after`` adds a Retry-After."""
        if code is None:
            code = _DEFAULT_CODES.get(status, status * 100)
        if message is None:
            message = _DEFAULT_MESSAGES.get(status) or http.HTTPStatus(status).phrase
        fault = _Fault(
            path_suffix,
            method.upper() if method else None,
            status,
            code,
            message,
            retry_after,
            count,
        )
        with self._lock:
            self._faults.append(fault)

    # ------------------------------------------------------------------ builders (no network)

    def signature(self, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
        """X-Twilio-Signature of a form POST to ``url`` with ``params`` (doc §4.2)."""
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        signed = url + "".join(name + value for name, value in sorted(pairs))
        digest = hmac.new(self.auth_token.encode(), signed.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    def webhook_headers(
        self, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> dict[str, str]:
        """Headers of Twilio's webhook POST of ``params`` to ``url``."""
        return {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": self.signature(url, params),
        }

    @staticmethod
    def form_body(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        return urlencode(pairs).encode()

    def add_inbound(
        self,
        *,
        from_: str,
        body: str,
        media: Sequence[tuple[bytes, str]] = (),
        date_sent: datetime | None = None,
        to: str | None = None,
        profile_name: str | None = None,
    ) -> dict[str, str]:
        """Store a message from ``from_`` to our number (``whatsapp:`` form when ``from_`` is a
        WhatsApp address) in the log, for listings, and return the webhook form Twilio would
        have POSTed for it, ``MediaUrl{N}`` pointing at the stand-in's media route."""
        if to is None:
            to = f"whatsapp:{self.number}" if from_.startswith("whatsapp:") else self.number
        when = date_sent or datetime.now(UTC)
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        sid = _sid("MM" if media else "SM")
        message = _Message(sid, "inbound", from_, to, body, "received", when, when)
        with self._lock:
            for content, content_type in media:
                media_sid = _sid("ME")
                self._media[media_sid] = _Media(media_sid, sid, content, content_type, when)
                message.media.append(media_sid)
            self._messages[sid] = message
        form = {
            "SmsMessageSid": sid,
            "NumMedia": str(len(media)),
            "SmsSid": sid,
            "SmsStatus": "received",
            "Body": body,
            "To": to,
            "NumSegments": "1",
            "MessageSid": sid,
            "AccountSid": self.account_sid,
            "From": from_,
            "ApiVersion": API_VERSION,
        }
        for index, media_sid in enumerate(message.media):
            form[f"MediaContentType{index}"] = self._media[media_sid].content_type
            form[f"MediaUrl{index}"] = f"{self.base_url}{self._media_path(sid, media_sid)}"
        if from_.startswith("whatsapp:"):
            form["WaId"] = from_.removeprefix("whatsapp:+")
            if profile_name is not None:
                form["ProfileName"] = profile_name
        return form

    def status_form(
        self,
        sid: str,
        status: str,
        *,
        to: str,
        error_code: int | None = None,
        error_message: str | None = None,
    ) -> dict[str, str]:
        """A status callback form for our message ``sid`` (doc §4.4); also sets the stored
        message's status when the stand-in knows it."""
        from_ = f"whatsapp:{self.number}" if to.startswith("whatsapp:") else self.number
        with self._lock:
            known = self._messages.get(sid)
            if known is not None:
                known.status = status
                known.error_code, known.error_message = error_code, error_message
                if known.date_sent is None and status in ("sent", "delivered", "read"):
                    known.date_sent = datetime.now(UTC)
                from_ = known.from_
        form = {
            "SmsSid": sid,
            "SmsStatus": status,
            "MessageStatus": status,
            "To": to,
            "MessageSid": sid,
            "AccountSid": self.account_sid,
            "From": from_,
            "ApiVersion": API_VERSION,
        }
        if error_code is not None:
            form["ErrorCode"] = str(error_code)
        if error_message is not None:
            form["ErrorMessage"] = error_message
        return form

    # ================================================================== internals

    def _routes(self) -> list[Route]:
        account = "/" + API_VERSION + "/Accounts/{account}"
        messages = account + "/Messages"
        any_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return [
            Route(account + ".json", self._account_endpoint, methods=["GET"]),
            Route(messages + ".json", self._messages_endpoint, methods=["GET", "POST"]),
            Route(messages + "/{sid}.json", self._message_endpoint, methods=["GET"]),
            Route(messages + "/{sid}/Media.json", self._media_list_endpoint, methods=["GET"]),
            Route(messages + "/{sid}/Media/{media}", self._media_endpoint, methods=["GET"]),
            Route("/cdn/{hop:int}/{media}", self._cdn_endpoint, methods=["GET"]),
            Route("/{rest:path}", self._not_found_endpoint, methods=any_method),
        ]

    def _media_path(self, message_sid: str, media_sid: str) -> str:
        return f"{self.account_path}/Messages/{message_sid}/Media/{media_sid}"

    async def _record(self, request: Request) -> RecordedRequest:
        headers = {k.lower(): v for k, v in request.headers.items()}
        form: dict[str, list[str]] = {}
        if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            text = (await request.body()).decode("utf-8", "replace")
            for key, value in parse_qsl(text, keep_blank_values=True):
                form.setdefault(key, []).append(value)
        query: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            query.setdefault(key, []).append(value)
        rec = RecordedRequest(
            http_method=request.method,
            path=request.url.path,
            query=query,
            headers=headers,
            form=form,
            auth_user=_basic_user(headers.get("authorization", ""))[0],
            time=time.time(),
        )
        with self._lock:
            self._requests.append(rec)
        return rec

    def _check(self, rec: RecordedRequest, *, auth: bool = True) -> None:
        """Auth, account and injected faults, in Twilio's order. Call under the lock."""
        if auth:
            user, password = _basic_user(rec.headers.get("authorization", ""))
            ok = user is not None and password is not None
            ok = ok and secrets.compare_digest(str(user), self.account_sid)
            ok = ok and secrets.compare_digest(str(password), self.auth_token)
            if not ok:
                raise _Rejected(401, 20003, "Authenticate")
            if not rec.path.startswith(self.account_path + "/") and rec.path != (
                self.account_path + ".json"
            ):
                raise _Rejected(404, 20404, "The requested resource was not found")
        for fault in self._faults:
            if not rec.path.endswith(fault.suffix):
                continue
            if fault.method is not None and fault.method != rec.http_method:
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            raise _Rejected(fault.status, fault.code, fault.message, retry_after=fault.retry_after)

    def _finish(
        self,
        rec: RecordedRequest,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> Response:
        rec.status, rec.response = status, body
        return JSONResponse(body, status, headers=headers)

    def _reject(self, rec: RecordedRequest, rejected: _Rejected) -> Response:
        headers: dict[str, str] = {}
        if rejected.retry_after is not None:
            headers["Retry-After"] = f"{rejected.retry_after:g}"
        return self._finish(rec, rejected.status, _error_body(rejected), headers)

    async def _account_endpoint(self, request: Request) -> Response:
        rec = await self._record(request)
        with self._lock:
            try:
                self._check(rec)
            except _Rejected as rejected:
                return self._reject(rec, rejected)
            now = format_datetime(datetime.now(UTC), usegmt=True)
            body = {
                "sid": self.account_sid,
                "friendly_name": self.friendly_name,
                "status": "active",
                "type": "Full",
                "auth_token": "*" * 32,  # Twilio answers the real token; the stand-in does not
                "owner_account_sid": self.account_sid,
                "date_created": now,
                "date_updated": now,
                "uri": f"{self.account_path}.json",
                "subresource_uris": {"messages": f"{self.account_path}/Messages.json"},
            }
            return self._finish(rec, 200, body)

    async def _messages_endpoint(self, request: Request) -> Response:
        rec = await self._record(request)
        with self._lock:
            try:
                self._check(rec)
                if request.method == "POST":
                    return self._finish(rec, 201, self._create_message(rec))
                return self._finish(rec, 200, self._list_messages(rec))
            except _Rejected as rejected:
                return self._reject(rec, rejected)

    async def _message_endpoint(self, request: Request) -> Response:
        rec = await self._record(request)
        with self._lock:
            try:
                self._check(rec)
                message = self._find_message(str(request.path_params["sid"]))
            except _Rejected as rejected:
                return self._reject(rec, rejected)
            return self._finish(rec, 200, self._message_json(message))

    async def _media_list_endpoint(self, request: Request) -> Response:
        rec = await self._record(request)
        with self._lock:
            try:
                self._check(rec)
                message = self._find_message(str(request.path_params["sid"]))
            except _Rejected as rejected:
                return self._reject(rec, rejected)
            items = [self._media_json(self._media[m]) for m in message.media]
            uri = f"{self.account_path}/Messages/{message.sid}/Media.json"
            body = {
                "media_list": items,
                "first_page_uri": f"{uri}?PageSize=50&Page=0",
                "next_page_uri": None,
                "previous_page_uri": None,
                "page": 0,
                "page_size": 50,
                "start": 0,
                "end": max(len(items) - 1, 0),
                "uri": f"{uri}?PageSize=50&Page=0",
            }
            return self._finish(rec, 200, body)

    async def _media_endpoint(self, request: Request) -> Response:
        rec = await self._record(request)
        raw = str(request.path_params["media"])
        as_json = raw.endswith(".json")
        media_sid = raw.removesuffix(".json")
        with self._lock:
            try:
                self._check(rec)
                media = self._media.get(media_sid)
                if media is None or media.message_sid != request.path_params["sid"]:
                    raise _Rejected(404, 20404, "The requested resource was not found")
            except _Rejected as rejected:
                return self._reject(rec, rejected)
            if as_json:
                return self._finish(rec, 200, self._media_json(media))
            if self.media_redirects > 0:
                rec.status = 302
                return RedirectResponse(f"{self.base_url}/cdn/1/{media_sid}", 302)
            rec.status = 200
            return Response(media.content, 200, media_type=media.content_type)

    async def _cdn_endpoint(self, request: Request) -> Response:
        rec = await self._record(request)
        hop = int(request.path_params["hop"])
        media_sid = str(request.path_params["media"])
        with self._lock:
            try:
                self._check(rec, auth=False)
                media = self._media.get(media_sid)
                if media is None:
                    raise _Rejected(404, 20404, "The requested resource was not found")
            except _Rejected as rejected:
                return self._reject(rec, rejected)
            if hop < self.media_redirects:
                rec.status = 302
                return RedirectResponse(f"{self.base_url}/cdn/{hop + 1}/{media_sid}", 302)
            rec.status = 200
            return Response(media.content, 200, media_type=media.content_type)

    async def _not_found_endpoint(self, request: Request) -> Response:
        rec = await self._record(request)
        with self._lock:
            return self._reject(rec, _Rejected(404, 20404, "The requested resource was not found"))

    # --- Messages ---------------------------------------------------------------------------

    def _create_message(self, rec: RecordedRequest) -> dict[str, Any]:
        form = rec.form
        to = (form.get("To") or [""])[0].strip()
        from_ = (form.get("From") or [""])[0].strip()
        service = (form.get("MessagingServiceSid") or [""])[0].strip()
        body = _first(form, "Body")
        media_urls = form.get("MediaUrl", [])
        content_sid = (form.get("ContentSid") or [""])[0]
        if not to:
            raise _Rejected(400, 21604, "A 'To' phone number is required.")
        if not from_ and not service:
            raise _Rejected(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required")
        if not body and not media_urls and not content_sid:
            raise _Rejected(400, 21602, "Message body is required.")
        if not _ADDRESS.fullmatch(to):
            raise _Rejected(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if from_ and from_ not in (self.number, f"whatsapp:{self.number}"):
            raise _Rejected(
                400,
                21606,
                f"The From phone number {from_} is not a valid, SMS-capable inbound phone number "
                "or short code for your account.",
            )
        if from_ and from_.startswith("whatsapp:") != to.startswith("whatsapp:"):
            raise _Rejected(
                400,
                21910,
                "Invalid From and To pair. From and To should be of the same channel",
            )
        if body is not None and len(body) > MAX_BODY_CHARS:
            raise _Rejected(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if len(media_urls) > MAX_MEDIA_URLS:
            raise _Rejected(400, 21623, "Number of media files exceeds allowed limit")
        if any(not url.startswith(("http://", "https://")) for url in media_urls):
            raise _Rejected(400, 21620, "Invalid media URL(s)")
        if to in self._unsubscribed:
            raise _Rejected(400, 21610, "Attempt to send to unsubscribed recipient")
        now = datetime.now(UTC)
        sid = _sid("MM" if media_urls else "SM")
        message = _Message(
            sid, "outbound-api", from_ or self.number, to, body or "", "queued", now, None
        )
        self._messages[sid] = message
        self._sent.append(
            {
                "sid": sid,
                "to": to,
                "from": from_,
                "body": body,
                "media_urls": list(media_urls),
                "status_callback": _first(form, "StatusCallback"),
                "messaging_service_sid": service or None,
                "params": copy.deepcopy(form),
            }
        )
        answer = self._message_json(message)
        answer["num_media"] = str(len(media_urls))
        return answer

    def _list_messages(self, rec: RecordedRequest) -> dict[str, Any]:
        query = {k: v[-1] for k, v in rec.query.items()}
        try:
            page_size = min(max(int(query.get("PageSize", "50")), 1), 1000)
            page = max(int(query.get("Page", "0")), 0)
            exact = _day(query.get("DateSent"))
            after = _day(query.get("DateSent>"))
            before = _day(query.get("DateSent<"))
        except ValueError as error:
            raise _Rejected(400, 20001, f"Invalid parameter: {error}") from None
        if self.page_size_cap is not None:
            page_size = min(page_size, self.page_size_cap)
        chosen = []
        for message in self._messages.values():
            if "To" in query and message.to != query["To"]:
                continue
            if "From" in query and message.from_ != query["From"]:
                continue
            day = (message.date_sent or message.date_created).astimezone(UTC).date()
            if exact is not None and day != exact:
                continue
            if after is not None and day < after:
                continue
            if before is not None and day > before:
                continue
            chosen.append(message)
        chosen.sort(key=lambda m: m.date_sent or m.date_created, reverse=True)
        start = page * page_size
        items = chosen[start : start + page_size]
        filters = [(k, v) for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")]
        base = f"{self.account_path}/Messages.json"

        def page_uri(number: int) -> str:
            params = [*filters, ("PageSize", str(page_size)), ("Page", str(number))]
            if number > 0:
                params.append(("PageToken", f"PASM{number * page_size}"))
            return f"{base}?{urlencode(params)}"

        more = start + page_size < len(chosen)
        return {
            "messages": [self._message_json(m) for m in items],
            "end": start + max(len(items) - 1, 0),
            "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1) if more else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": page_uri(page),
        }

    def _find_message(self, sid: str) -> _Message:
        message = self._messages.get(sid)
        if message is None:
            raise _Rejected(404, 20404, "The requested resource was not found")
        return message

    def _message_json(self, message: _Message) -> dict[str, Any]:
        uri = f"{self.account_path}/Messages/{message.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": message.body,
            "date_created": format_datetime(message.date_created, usegmt=True),
            "date_sent": (
                format_datetime(message.date_sent, usegmt=True) if message.date_sent else None
            ),
            "date_updated": format_datetime(message.date_created, usegmt=True),
            "direction": message.direction,
            "error_code": message.error_code,
            "error_message": message.error_message,
            "from": message.from_,
            "messaging_service_sid": None,
            "num_media": str(len(message.media)),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": message.sid,
            "status": message.status,
            "subresource_uris": {
                "media": f"{uri}/Media.json",
                "feedback": f"{uri}/Feedback.json",
            },
            "to": message.to,
            "uri": f"{uri}.json",
        }

    def _media_json(self, media: _Media) -> dict[str, Any]:
        stamp = format_datetime(media.date_created, usegmt=True)
        return {
            "account_sid": self.account_sid,
            "content_type": media.content_type,
            "date_created": stamp,
            "date_updated": stamp,
            "parent_sid": media.message_sid,
            "sid": media.sid,
            "uri": f"{self._media_path(media.message_sid, media.sid)}.json",
        }


# ---------------------------------------------------------------------- helpers


def _first(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _day(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def _basic_user(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None, None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except ValueError:
        return None, None
    user, sep, password = decoded.partition(":")
    return user, (password if sep else None)


def _error_body(rejected: _Rejected) -> dict[str, Any]:
    """Twilio's REST error shape (doc §4.5)."""
    return {
        "code": rejected.code,
        "message": rejected.message,
        "more_info": f"https://www.twilio.com/docs/errors/{rejected.code}",
        "status": rejected.status,
    }

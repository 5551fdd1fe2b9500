"""A local stand-in for the Telegram Bot API: the methods pdbridge calls and the file downloads.

One Starlette app served by uvicorn on 127.0.0.1 (free port, background thread, real sockets).
Point TELEGRAM_API_URL at ``standin.base_url``: methods are served at
``{base_url}/bot{token}/{method}`` and files at ``{base_url}/file/bot{token}/{file_path}``, like
``https://api.telegram.org``. Tests read and steer its state through TelegramStandin.

    with TelegramStandin() as tg:
        file = tg.add_file(b"%PDF-1.7 ...", mime_type="application/pdf")
        update = tg.document_update(update_id=1, chat_id=42, message_id=7, file=file,
                                    file_name="offer.pdf", mime_type="application/pdf")
        ...                                  # the service takes the update, calls getFile, ...
        assert tg.sent[0]["text"] == "Thanks!"

Contract rules it enforces ("doc" = shared/docs/chat-providers.md §2; [U] = text or rule the doc
marks unconfirmed, or that the doc does not give and we chose):

Requests (doc §2)
- GET and POST; parameters from the query string, ``application/json``,
  ``application/x-www-form-urlencoded`` and ``multipart/form-data`` (the body wins over the query
  string). Method names are case-insensitive. In form and multipart bodies, object parameters
  (``allowed_updates``, ``reply_parameters``, ``reply_markup``, ``entities``, ...) are JSON text,
  as Telegram expects; they are parsed, and so are integers and booleans, so ``RecordedRequest.
  params`` looks the same whatever the encoding.
- A token other than the bot's → 401 ``Unauthorized``; an unknown method → 404 ``Not Found: method
  not found``; any other path → 404 ``Not Found``. Errors are always
  ``{"ok": false, "error_code", "description", "parameters"?}`` (doc §2.7).

Methods
- ``getMe``; ``setWebhook`` (doc §2.1: ``url`` must be HTTPS on port 443, 80, 88 or 8443 — texts as
  Telegram's; an empty or missing ``url`` removes the webhook; ``secret_token`` 1-256 chars of
  ``A-Za-z0-9_-``; ``allowed_updates`` omitted keeps the previous value); ``deleteWebhook``;
  ``getWebhookInfo`` (plus whatever ``webhook_info_extra`` holds, e.g. ``last_error_date``);
  ``getUpdates`` (409 while a webhook is set, else an empty list).
- ``getFile`` (doc §2.5): unknown ``file_id`` → 400 ``invalid file_id``; over 20 MiB
  (``MAX_DOWNLOAD_BYTES``; the doc says "20 MB") → 400 ``file is too big``. Files come from
  ``add_file()``, from the update builders (photo thumbnails) and from uploads to send methods.
- ``sendMessage`` (doc §2.6): ``chat_id`` (int or ``@channel``) required (400 ``chat_id is
  empty``); ``text`` 1-4096 characters, whitespace only counts as empty (400 ``message text is
  empty`` / ``message is too long``). Length is counted in code points [U: Telegram counts after
  entity parsing].
- ``sendPhoto`` / ``sendDocument``: ``photo`` / ``document`` as a multipart upload (also via
  ``attach://<part>``), a known ``file_id`` or an http(s) URL; an unknown file_id → 400 ``wrong
  file identifier/HTTP URL specified``, none → 400 ``there is no photo in the request``.
  ``caption`` ≤ 1024 (400 ``message caption is too long``). Upload limits (doc §2.6): a photo over
  10 MB → 400 ``PHOTO_SAVE_FILE_INVALID`` [U], any file over 50 MB → 413 [U]. The image is not
  decoded: a sent photo comes back as one 1280x960 PhotoSize [U: Telegram makes several].
- Every send returns ``{"ok": true, "result": <Message>}`` with ``message_id`` increasing per chat,
  ``chat``, ``from`` (the bot) and ``date``. Message ids are shared by both directions of a chat,
  as in Telegram: the update builders advance the chat's counter, so a reply never gets the id of
  a message a test built. A chat in ``block_chat()`` answers 403 ``Forbidden: bot was blocked by
  the user`` (doc §2.6 [U text]) to every send.

Fault injection: ``fail_next(method, status, ...)`` answers the next ``count`` calls of ``method``
("*" for any; "file" for downloads) with that error, after the token check. 429 carries
``parameters.retry_after`` (doc §2.7). ``send_delay`` makes every send* call sleep before it
answers (injected faults included), without blocking the server's other requests;
``hold_sends`` (a ``threading.Event``) holds every send until the test sets it.

Update builders (``text_update``, ``photo_update``, ``document_update``, ``edited_update``,
``my_chat_member_update``) make the Update dicts Telegram POSTs to the webhook (doc §2.4); they
touch no network. ``webhook_headers()`` gives the headers such a POST carries (doc §2.2, §6.4).

Not modelled: webhook deliveries by the stand-in itself, rate limits (use ``fail_next``), other
send methods, ``reply_to_message`` in results, chats that never wrote to the bot (any chat id is
accepted), group → supergroup migration (use ``fail_next(..., migrate_to_chat_id=...)``).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import http
import json
import mimetypes
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.server import Served

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from starlette.requests import Request

__all__ = [
    "MAX_CAPTION_CHARS",
    "MAX_DOWNLOAD_BYTES",
    "MAX_PHOTO_UPLOAD_BYTES",
    "MAX_TEXT_CHARS",
    "MAX_UPLOAD_BYTES",
    "RecordedRequest",
    "TelegramStandin",
    "UploadedFile",
]

MAX_DOWNLOAD_BYTES: Final = 20 * 1024 * 1024  # getFile limit of the cloud Bot API (doc §2.5)
MAX_PHOTO_UPLOAD_BYTES: Final = 10 * 1024 * 1024  # sendPhoto by multipart (doc §2.6)
MAX_UPLOAD_BYTES: Final = 50 * 1024 * 1024  # other files by multipart (doc §2.6)
MAX_TEXT_CHARS: Final = 4096
MAX_CAPTION_CHARS: Final = 1024
WEBHOOK_PORTS: Final = frozenset({443, 80, 88, 8443})
SECRET_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,256}")
SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"

# Parameters that arrive as JSON text in form and multipart bodies.
_JSON_PARAMS: Final = frozenset(
    {
        "allowed_updates",
        "reply_parameters",
        "reply_markup",
        "entities",
        "caption_entities",
        "link_preview_options",
    }
)
_INT_PARAMS: Final = frozenset(
    {
        "message_thread_id",
        "reply_to_message_id",
        "max_connections",
        "offset",
        "limit",
        "timeout",
    }
)
_BOOL_PARAMS: Final = frozenset(
    {
        "drop_pending_updates",
        "disable_notification",
        "protect_content",
        "has_spoiler",
        "disable_content_type_detection",
        "allow_sending_without_reply",
        "disable_web_page_preview",
        "show_caption_above_media",
    }
)
_DEFAULT_DESCRIPTIONS: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict",
    413: "Request Entity Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
_SEND_WIDTH, _SEND_HEIGHT = 1280, 960  # what a sent photo is said to measure [U]


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """One multipart file part of a request."""

    filename: str
    content_type: str | None
    content: bytes


@dataclass(slots=True)
class RecordedRequest:
    """One request as the stand-in saw it. ``status`` and the rest are filled in when answered.

    ``method`` is the canonical Bot API name ("sendMessage") when the method is served, the name
    as sent otherwise, "file" for downloads and "" for paths that are neither.
    """

    method: str
    http_method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    content_type: str  # without parameters, e.g. "multipart/form-data"
    params: dict[str, Any]  # query + body, parsed (see the module docstring)
    files: dict[str, UploadedFile]  # multipart file parts by field name
    time: float
    status: int | None = None
    response: dict[str, Any] | None = None  # the JSON answered (None for file bytes)
    note: str | None = None  # why it was rejected, when the stand-in knows


@dataclass(slots=True)
class _File:
    file_id: str
    file_unique_id: str
    content: bytes
    file_path: str
    mime_type: str | None

    def as_file(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": len(self.content),
        }


@dataclass(slots=True)
class _Fault:
    method: str  # lower-cased; "*" for any
    status: int
    description: str
    parameters: dict[str, Any] | None
    remaining: int


@dataclass(slots=True)
class _MediaSource:
    """Where a sendPhoto/sendDocument file came from."""

    file: _File | None = None  # uploaded (new) or found by file_id
    file_id: str | None = None  # the file_id string given
    url: str | None = None  # the URL given
    upload: UploadedFile | None = None


# A method's logic, run under the lock: (request record) → (status, JSON body).
Answer: TypeAlias = tuple[int, dict[str, Any]]
Handler: TypeAlias = "Callable[[RecordedRequest], Answer]"


class _BadRequestError(Exception):
    """A body the stand-in cannot parse; the message is the description to answer."""


class _RejectedError(Exception):
    """Raised by a method handler (under the lock) to answer an error."""

    def __init__(self, status: int, description: str, note: str) -> None:
        super().__init__(description)
        self.answer = _error(status, description)
        self.note = note


class TelegramStandin(Served):
    """The stand-in server. Use as a context manager, or call ``start()`` and ``stop()``."""

    def __init__(
        self,
        *,
        bot_token: str = "123456:TEST-token",
        bot_id: int | None = None,
        bot_username: str = "pdbridge_test_bot",
        send_delay: float = 0.0,
    ) -> None:
        if bot_id is None:
            digits = bot_token.partition(":")[0]
            if not digits.isdigit():
                raise ValueError("bot_token must look like '<digits>:<secret>' or give bot_id")
            bot_id = int(digits)
        self.bot_token = bot_token
        self.bot_id = bot_id
        self.bot_username = bot_username
        self.send_delay = send_delay  # seconds; read on every send* call
        #: When set to an Event, every send* call waits for it (a test decides when sends
        #: answer, instead of guessing with delays).
        self.hold_sends: threading.Event | None = None
        self.webhook_info_extra: dict[str, Any] = {}  # merged into getWebhookInfo's result
        #: `pdbridge sandbox` runs the service on plain http://127.0.0.1: accept such webhooks.
        self.allow_http_webhooks = False

        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._webhook: dict[str, Any] | None = None
        self._allowed_updates: list[str] | None = None  # survives setWebhook without it
        self._sent: list[dict[str, Any]] = []
        self._files_by_id: dict[str, _File] = {}
        self._files_by_path: dict[str, _File] = {}
        self._file_counter = 0
        self._last_message_id: dict[int, int] = {}  # chat id → highest message_id used
        self._chats: dict[int, dict[str, Any]] = {}  # chat objects seen in built updates
        self._usernames: dict[str, int] = {}  # "@channel" → fake chat id
        self._blocked: set[int] = set()

        self._methods: dict[str, tuple[str, Handler]] = {
            name.lower(): (name, handler)
            for name, handler in [
                ("getMe", self._get_me),
                ("setWebhook", self._set_webhook),
                ("deleteWebhook", self._delete_webhook),
                ("getWebhookInfo", self._get_webhook_info),
                ("getUpdates", self._get_updates),
                ("getFile", self._get_file),
                ("sendMessage", self._send_message),
                ("sendPhoto", self._send_photo),
                ("sendDocument", self._send_document),
            ]
        }
        self.app = Starlette(routes=self._routes())
        self.server_name = "telegram-standin"

    # ------------------------------------------------------------------ addresses

    @property
    def api_url(self) -> str:
        """``{base_url}/bot{token}``: append ``/{method}``."""
        return f"{self.base_url}/bot{self.bot_token}"

    def file_url(self, file_path: str) -> str:
        """The download URL of ``file_path`` (as getFile returns it)."""
        return f"{self.base_url}/file/bot{self.bot_token}/{file_path}"

    @property
    def bot_user(self) -> dict[str, Any]:
        """The bot as a ``User`` object (``from`` of sent messages)."""
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "PDBridge Test Bot",
            "username": self.bot_username,
        }

    # ------------------------------------------------------------------ state for tests

    @property
    def webhook(self) -> dict[str, Any] | None:
        """The parameters of the last setWebhook (``allowed_updates`` as in force), or None."""
        with self._lock:
            return copy.deepcopy(self._webhook)

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Every successful sendMessage/sendPhoto/sendDocument, oldest first.

        Each: method, chat_id (as requested), message_id, date, text, caption, file_name,
        file_bytes, mime_type (the part's Content-Type), file_id / file_url (when sent by
        reference), parse_mode, reply_parameters, reply_to_message_id, message_thread_id,
        result (the Message answered) and params (everything the request carried).
        """
        with self._lock:
            return copy.deepcopy(self._sent)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def add_file(
        self, content: bytes, *, file_path: str | None = None, mime_type: str | None = None
    ) -> dict[str, Any]:
        """Register a downloadable file; returns ``{file_id, file_unique_id, file_size}``.

        ``file_path`` defaults to ``photos/file_N.jpg`` for images and ``documents/file_N.<ext>``
        otherwise. Files over ``MAX_DOWNLOAD_BYTES`` are kept, but getFile refuses them.
        """
        with self._lock:
            if file_path is not None and file_path in self._files_by_path:
                raise ValueError(f"file_path {file_path!r} is already registered")
            return self._new_file(content, file_path, mime_type).as_file()

    def file_content(self, file_id: str) -> bytes:
        """The bytes behind ``file_id`` (e.g. of a file the service uploaded)."""
        with self._lock:
            return self._files_by_id[file_id].content

    def fail_next(
        self,
        method: str,
        status: int,
        *,
        description: str | None = None,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` calls of ``method`` with ``status`` (after the token check).

        ``method`` is case-insensitive; "*" matches every method, "file" the file downloads.
        ``description`` defaults by status: 403 "Forbidden: bot was blocked by the user", 429
        "Too Many Requests: retry after N" (N = ``retry_after``, 1 when not given), else the
        usual phrase. ``retry_after`` / ``migrate_to_chat_id`` go into ``parameters``.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        if description is None:
            if status == 429:
                description = f"Too Many Requests: retry after {retry_after}"
            else:
                description = _DEFAULT_DESCRIPTIONS.get(status) or http.HTTPStatus(status).phrase
        parameters: dict[str, Any] = {}
        if retry_after is not None:
            parameters["retry_after"] = retry_after
        if migrate_to_chat_id is not None:
            parameters["migrate_to_chat_id"] = migrate_to_chat_id
        fault = _Fault(method.lower(), status, description, parameters or None, count)
        with self._lock:
            self._faults.append(fault)

    def block_chat(self, chat_id: int) -> None:
        """The user blocked the bot: every send to ``chat_id`` answers 403 until unblocked."""
        with self._lock:
            self._blocked.add(chat_id)

    def unblock_chat(self, chat_id: int) -> None:
        with self._lock:
            self._blocked.discard(chat_id)

    def webhook_headers(self, secret_token: str | None = None) -> dict[str, str]:
        """Headers of Telegram's webhook POST: JSON plus the secret of the current webhook.

        ``secret_token`` overrides the registered one; no secret → no secret header.
        """
        with self._lock:
            if secret_token is None and self._webhook is not None:
                secret_token = self._webhook.get("secret_token")
        headers = {"Content-Type": "application/json"}
        if secret_token:
            headers[SECRET_HEADER] = secret_token
        return headers

    # ------------------------------------------------------------------ update builders

    def text_update(
        self,
        *,
        update_id: int,
        chat_id: int,
        text: str,
        message_id: int,
        from_id: int | None = None,
        first_name: str = "Jane",
        last_name: str | None = "Doe",
        username: str | None = "jane",
        date: int | None = None,
    ) -> dict[str, Any]:
        """An Update with a text ``message``; a leading /command gets its bot_command entity."""
        message = self._message(chat_id, message_id, from_id, first_name, last_name, username, date)
        message["text"] = text
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            message["entities"] = [
                {"offset": 0, "length": _utf16_len(command), "type": "bot_command"}
            ]
        return {"update_id": update_id, "message": message}

    def photo_update(
        self,
        *,
        update_id: int,
        chat_id: int,
        message_id: int,
        file: Mapping[str, Any],
        caption: str | None = None,
        width: int = 1280,
        height: int = 960,
        media_group_id: str | None = None,
        from_id: int | None = None,
        first_name: str = "Jane",
        last_name: str | None = "Doe",
        username: str | None = "jane",
        date: int | None = None,
    ) -> dict[str, Any]:
        """An Update with a ``photo`` message: smaller thumbnails first, ``file`` last and largest.

        The thumbnails (90 and 320 px on the long side, when smaller than ``file``) are
        registered files of their own, with other bytes, so picking the wrong size shows.
        """
        message = self._message(chat_id, message_id, from_id, first_name, last_name, username, date)
        full_size = file.get("file_size")
        if full_size is None:
            with self._lock:
                known = self._files_by_id.get(file["file_id"])
            full_size = len(known.content) if known is not None else 100_000
        sizes: list[dict[str, Any]] = []
        for side in (90, 320):
            if side >= max(width, height):
                continue
            scale = side / max(width, height)
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            thumb_size = max(1, full_size * w * h // (width * height))
            pattern = f"thumbnail {w}x{h} of {file['file_id']};".encode()
            content = (pattern * (thumb_size // len(pattern) + 1))[:thumb_size]
            thumb = self.add_file(content, mime_type="image/jpeg")
            sizes.append({**thumb, "width": w, "height": h})
        largest = {k: file[k] for k in ("file_id", "file_unique_id", "file_size") if k in file}
        sizes.append({**largest, "width": width, "height": height})
        message["photo"] = sizes
        if media_group_id is not None:
            message["media_group_id"] = media_group_id
        if caption is not None:
            message["caption"] = caption
        return {"update_id": update_id, "message": message}

    def document_update(
        self,
        *,
        update_id: int,
        chat_id: int,
        message_id: int,
        file: Mapping[str, Any],
        file_name: str,
        mime_type: str,
        caption: str | None = None,
        from_id: int | None = None,
        first_name: str = "Jane",
        last_name: str | None = "Doe",
        username: str | None = "jane",
        date: int | None = None,
    ) -> dict[str, Any]:
        """An Update with a ``document`` message (file_name, mime_type, file_id, ...)."""
        message = self._message(chat_id, message_id, from_id, first_name, last_name, username, date)
        document: dict[str, Any] = {"file_name": file_name, "mime_type": mime_type}
        document.update(
            {k: file[k] for k in ("file_id", "file_unique_id", "file_size") if k in file}
        )
        message["document"] = document
        if caption is not None:
            message["caption"] = caption
        return {"update_id": update_id, "message": message}

    def edited_update(
        self,
        *,
        update_id: int,
        chat_id: int,
        message_id: int,
        text: str,
        edit_date: int,
        date: int | None = None,
        from_id: int | None = None,
        first_name: str = "Jane",
        last_name: str | None = "Doe",
        username: str | None = "jane",
    ) -> dict[str, Any]:
        """An Update with ``edited_message``: same message_id, ``date`` (default edit_date - 60)."""
        original = date if date is not None else edit_date - 60
        message = self._message(
            chat_id, message_id, from_id, first_name, last_name, username, original
        )
        message["edit_date"] = edit_date
        message["text"] = text
        return {"update_id": update_id, "edited_message": message}

    def my_chat_member_update(
        self,
        *,
        update_id: int,
        chat_id: int,
        blocked: bool = True,
        from_id: int | None = None,
        first_name: str = "Jane",
        last_name: str | None = "Doe",
        username: str | None = "jane",
        date: int | None = None,
    ) -> dict[str, Any]:
        """An Update with ``my_chat_member``: the user blocked (or unblocked) the bot (doc §2.4).

        Only builds the update; call ``block_chat`` for the sends to start failing.
        """
        base = self._message(chat_id, 0, from_id, first_name, last_name, username, date)
        old, new = ("member", "kicked") if blocked else ("kicked", "member")
        new_member: dict[str, Any] = {"user": self.bot_user, "status": new}
        if blocked:
            new_member["until_date"] = 0
        member = {
            "chat": base["chat"],
            "from": base["from"],
            "date": base["date"],
            "old_chat_member": {"user": self.bot_user, "status": old},
            "new_chat_member": new_member,
        }
        return {"update_id": update_id, "my_chat_member": member}

    # ================================================================== internals

    def _message(
        self,
        chat_id: int,
        message_id: int,
        from_id: int | None,
        first_name: str,
        last_name: str | None,
        username: str | None,
        date: int | None,
    ) -> dict[str, Any]:
        """A Message's common part; notes the chat and advances its message_id counter."""
        if from_id is None:
            from_id = chat_id if chat_id > 0 else 100_000_001
        user: dict[str, Any] = {"id": from_id, "is_bot": False, "first_name": first_name}
        if last_name is not None:
            user["last_name"] = last_name
        if username is not None:
            user["username"] = username
        user["language_code"] = "en"
        if chat_id > 0:
            chat: dict[str, Any] = {"id": chat_id, "first_name": first_name}
            if last_name is not None:
                chat["last_name"] = last_name
            if username is not None:
                chat["username"] = username
            chat["type"] = "private"
        else:
            kind = "supergroup" if chat_id <= -1_000_000_000_000 else "group"
            chat = {"id": chat_id, "title": "Test group", "type": kind}
        with self._lock:
            self._chats.setdefault(chat_id, chat)
            if message_id > self._last_message_id.get(chat_id, 0):
                self._last_message_id[chat_id] = message_id
        return {
            "message_id": message_id,
            "from": user,
            "chat": copy.deepcopy(chat),
            "date": date if date is not None else int(time.time()),
        }

    def _new_file(self, content: bytes, file_path: str | None, mime_type: str | None) -> _File:
        self._file_counter += 1
        n = self._file_counter
        if file_path is None:
            if mime_type is not None and mime_type.startswith("image/"):
                file_path = f"photos/file_{n}.jpg"
            else:
                ext = (mimetypes.guess_extension(mime_type) if mime_type else None) or ""
                file_path = f"documents/file_{n}{ext}"
        prefix = "AgACAgIAAxkBAA" if file_path.startswith("photos/") else "BQACAgIAAxkBAA"
        digest = hashlib.sha256(content).hexdigest()[:8]
        entry = _File(
            file_id=f"{prefix}{n}_{secrets.token_urlsafe(18)}",
            file_unique_id=f"AQAD{n}{digest}",
            content=content,
            file_path=file_path,
            mime_type=mime_type,
        )
        self._files_by_id[entry.file_id] = entry
        self._files_by_path[entry.file_path] = entry
        return entry

    def _routes(self) -> list[Route]:
        any_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return [
            Route("/bot{token}/{method}", self._method_endpoint, methods=["GET", "POST"]),
            Route("/file/bot{token}/{file_path:path}", self._file_endpoint, methods=["GET"]),
            Route("/{rest:path}", self._not_found_endpoint, methods=any_method),
        ]

    def _record(
        self,
        request: Request,
        method: str,
        params: dict[str, Any],
        files: dict[str, UploadedFile],
    ) -> RecordedRequest:
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = RecordedRequest(
            method=method,
            http_method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers=headers,
            content_type=_content_type(headers),
            params=params,
            files=files,
            time=time.time(),
        )
        self._requests.append(rec)
        return rec

    def _check_token(self, rec: RecordedRequest, token: str) -> Answer | None:
        if secrets.compare_digest(token.encode(), self.bot_token.encode()):
            return None
        rec.note = "wrong bot token"
        return _error(401, "Unauthorized")

    def _take_fault(self, rec: RecordedRequest) -> Answer | None:
        for fault in self._faults:
            if fault.method not in ("*", rec.method.lower()):
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            rec.note = f"injected fault {fault.status}"
            return _error(fault.status, fault.description, fault.parameters)
        return None

    def _finish(self, rec: RecordedRequest, answer: Answer) -> Response:
        status, body = answer
        rec.status, rec.response = status, body
        return JSONResponse(body, status)

    async def _method_endpoint(self, request: Request) -> Response:
        token = str(request.path_params["token"])
        name = str(request.path_params["method"])
        parse_error: str | None = None
        try:
            params, files = await _read_params(request)
        except _BadRequestError as exc:
            params, files, parse_error = {}, {}, str(exc)
        known = self._methods.get(name.lower())
        with self._lock:
            rec = self._record(request, known[0] if known else name, params, files)
            early = self._check_token(rec, token)
            if early is None and known is None:
                rec.note = "method not served by the stand-in"
                early = _error(404, "Not Found: method not found")
            if early is None and parse_error is not None:
                rec.note = "unparsable body"
                early = _error(400, parse_error)
            if early is not None:
                return self._finish(rec, early)
        assert known is not None
        canonical, handler = known
        delay = self.send_delay
        if canonical.startswith("send") and delay > 0:
            await asyncio.sleep(delay)
        gate = self.hold_sends
        if canonical.startswith("send") and gate is not None:
            await asyncio.to_thread(gate.wait)
        with self._lock:
            answer = self._take_fault(rec)
            if answer is None:
                try:
                    answer = handler(rec)
                except _RejectedError as rejected:
                    rec.note, answer = rejected.note, rejected.answer
            return self._finish(rec, answer)

    async def _file_endpoint(self, request: Request) -> Response:
        with self._lock:
            rec = self._record(request, "file", {}, {})
            answer = self._check_token(rec, str(request.path_params["token"]))
            if answer is None:
                answer = self._take_fault(rec)
            entry = self._files_by_path.get(str(request.path_params["file_path"]))
            if answer is None and entry is None:
                rec.note = "unknown file_path"
                answer = _error(404, "Not Found")
            if answer is not None:
                return self._finish(rec, answer)
            assert entry is not None
            rec.status = 200
            media_type = entry.mime_type or "application/octet-stream"
            return Response(entry.content, 200, media_type=media_type)

    async def _not_found_endpoint(self, request: Request) -> Response:
        with self._lock:
            rec = self._record(request, "", dict(request.query_params), {})
            rec.note = "path is neither /bot<token>/<method> nor /file/bot<token>/<path>"
            return self._finish(rec, _error(404, "Not Found"))

    # ------------------------------------------------------------------ methods

    def _get_me(self, rec: RecordedRequest) -> Answer:
        me = {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        return _ok(me)

    def _set_webhook(self, rec: RecordedRequest) -> Answer:
        params = rec.params
        url = params.get("url")
        if url is None or url == "":
            return self._remove_webhook()
        parts = urlsplit(str(url))
        if self.allow_http_webhooks and parts.scheme.lower() == "http" and parts.hostname:
            pass  # the sandbox's local service; Telegram itself takes HTTPS only
        elif parts.scheme.lower() != "https":
            rec.note = "webhook URL is not HTTPS"
            return _error(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        try:
            port = parts.port or 443
        except ValueError:
            port = -1
        if not parts.hostname:
            rec.note = "webhook URL has no host"
            return _error(
                400, "Bad Request: bad webhook: Failed to resolve host: Name or service not known"
            )
        if port not in WEBHOOK_PORTS and not self.allow_http_webhooks:
            rec.note = "webhook port not allowed"
            return _error(
                400,
                "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443",
            )
        secret = params.get("secret_token")
        if secret is not None and not (
            isinstance(secret, str) and SECRET_TOKEN_RE.fullmatch(secret)
        ):
            rec.note = "secret_token is not 1-256 chars of A-Za-z0-9_-"
            return _error(400, "Bad Request: secret token contains unallowed characters")
        allowed = params.get("allowed_updates")
        if allowed is not None and not (
            isinstance(allowed, list) and all(isinstance(a, str) for a in allowed)
        ):
            rec.note = "allowed_updates is not a JSON array of strings"
            return _error(400, "Bad Request: can't parse allowed updates")
        if allowed is not None:
            self._allowed_updates = list(allowed)
        webhook = {k: copy.deepcopy(v) for k, v in params.items()}
        if self._allowed_updates is not None:
            webhook["allowed_updates"] = list(self._allowed_updates)
        if "certificate" in rec.files:
            webhook["certificate"] = rec.files["certificate"].content
        self._webhook = webhook
        return _ok(True, "Webhook was set")

    def _remove_webhook(self) -> Answer:
        had = self._webhook is not None
        self._webhook = None
        return _ok(True, "Webhook was deleted" if had else "Webhook is already deleted")

    def _delete_webhook(self, rec: RecordedRequest) -> Answer:
        return self._remove_webhook()

    def _get_webhook_info(self, rec: RecordedRequest) -> Answer:
        webhook = self._webhook
        info: dict[str, Any] = {
            "url": webhook["url"] if webhook else "",
            "has_custom_certificate": bool(webhook and "certificate" in webhook),
            "pending_update_count": 0,
        }
        if webhook is not None:
            info["ip_address"] = "127.0.0.1"
            info["max_connections"] = webhook.get("max_connections", 40)
            if "allowed_updates" in webhook:
                info["allowed_updates"] = list(webhook["allowed_updates"])
        info.update(copy.deepcopy(self.webhook_info_extra))
        return _ok(info)

    def _get_updates(self, rec: RecordedRequest) -> Answer:
        if self._webhook is not None:
            rec.note = "getUpdates while a webhook is set"
            return _error(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        return _ok([])

    def _get_file(self, rec: RecordedRequest) -> Answer:
        file_id = rec.params.get("file_id")
        entry = self._files_by_id.get(file_id) if isinstance(file_id, str) else None
        if entry is None:
            rec.note = "unknown file_id"
            return _error(400, "Bad Request: invalid file_id")
        if len(entry.content) > MAX_DOWNLOAD_BYTES:
            rec.note = "file over the 20 MB download limit"
            return _error(400, "Bad Request: file is too big")
        return _ok({**entry.as_file(), "file_path": entry.file_path})

    def _target_chat(self, rec: RecordedRequest) -> tuple[int, dict[str, Any]]:
        """The chat of ``chat_id`` as (id, Chat object)."""
        raw = rec.params.get("chat_id")
        if raw is None or raw == "":
            raise _RejectedError(400, "Bad Request: chat_id is empty", "no chat_id")
        if isinstance(raw, int) and not isinstance(raw, bool):
            chat_id = raw
            chat = self._chats.get(chat_id)
            if chat is None:
                chat = (
                    {"id": chat_id, "first_name": "Jane", "type": "private"}
                    if chat_id > 0
                    else {"id": chat_id, "title": "Test group", "type": "group"}
                )
            return chat_id, copy.deepcopy(chat)
        if isinstance(raw, str) and re.fullmatch(r"@[A-Za-z][A-Za-z0-9_]{3,31}", raw):
            username = raw[1:]
            chat_id = self._usernames.setdefault(
                username.lower(), -1_001_000_000_000 - len(self._usernames)
            )
            channel = {"id": chat_id, "title": username, "username": username, "type": "channel"}
            return chat_id, channel
        raise _RejectedError(
            400, "Bad Request: chat not found", "chat_id is neither an integer nor @channelusername"
        )

    def _check_not_blocked(self, chat_id: int) -> None:
        if chat_id in self._blocked:
            raise _RejectedError(
                403, "Forbidden: bot was blocked by the user", "the user blocked the bot"
            )

    def _send_message(self, rec: RecordedRequest) -> Answer:
        chat_id, chat = self._target_chat(rec)
        text = rec.params.get("text")
        if isinstance(text, int | float) and not isinstance(text, bool):
            text = str(text)
        if not isinstance(text, str) or not text.strip():
            raise _RejectedError(400, "Bad Request: message text is empty", "empty text")
        if len(text) > MAX_TEXT_CHARS:
            raise _RejectedError(
                400, "Bad Request: message is too long", f"text over {MAX_TEXT_CHARS} chars"
            )
        self._check_not_blocked(chat_id)
        message = self._new_message(chat_id, chat)
        message["text"] = text
        if isinstance(rec.params.get("entities"), list):
            message["entities"] = copy.deepcopy(rec.params["entities"])
        self._remember_sent(rec, message, text=text)
        return _ok(message)

    def _send_photo(self, rec: RecordedRequest) -> Answer:
        return self._send_media(rec, "photo")

    def _send_document(self, rec: RecordedRequest) -> Answer:
        return self._send_media(rec, "document")

    def _send_media(self, rec: RecordedRequest, kind: str) -> Answer:
        chat_id, chat = self._target_chat(rec)
        caption = rec.params.get("caption")
        if caption is not None and not isinstance(caption, str):
            caption = str(caption)
        if caption is not None and len(caption) > MAX_CAPTION_CHARS:
            raise _RejectedError(
                400,
                "Bad Request: message caption is too long",
                f"caption over {MAX_CAPTION_CHARS} chars",
            )
        source = self._media_source(rec, kind)
        self._check_not_blocked(chat_id)
        message = self._new_message(chat_id, chat)
        entry = source.file
        if entry is not None:
            described = entry.as_file()
        else:  # by URL: Telegram fetches it; we only make up an id
            described = {
                "file_id": f"URL{secrets.token_urlsafe(18)}",
                "file_unique_id": f"AQADu{secrets.token_hex(4)}",
            }
        file_name = source.upload.filename if source.upload is not None else None
        mime_type = source.upload.content_type if source.upload is not None else None
        if kind == "photo":
            message["photo"] = [{**described, "width": _SEND_WIDTH, "height": _SEND_HEIGHT}]
        else:
            document: dict[str, Any] = {}
            if file_name is not None:
                document["file_name"] = file_name
            doc_mime = entry.mime_type if entry is not None else None
            if doc_mime is not None:
                document["mime_type"] = doc_mime
            message["document"] = {**document, **described}
        if caption:
            message["caption"] = caption
        self._remember_sent(
            rec,
            message,
            caption=caption,
            file_name=file_name,
            file_bytes=entry.content if entry is not None else None,
            mime_type=mime_type,
            file_id=source.file_id,
            file_url=source.url,
        )
        return _ok(message)

    def _media_source(self, rec: RecordedRequest, kind: str) -> _MediaSource:
        value = rec.params.get(kind)
        upload = rec.files.get(kind)
        if upload is None and isinstance(value, str) and value.startswith("attach://"):
            upload = rec.files.get(value.removeprefix("attach://"))
        if upload is not None:
            size = len(upload.content)
            if kind == "photo" and size > MAX_PHOTO_UPLOAD_BYTES:
                raise _RejectedError(
                    400, "Bad Request: PHOTO_SAVE_FILE_INVALID", "photo upload over 10 MB"
                )
            if size > MAX_UPLOAD_BYTES:
                raise _RejectedError(413, "Request Entity Too Large", "upload over 50 MB")
            mime = upload.content_type
            if mime in (None, "", "application/octet-stream"):
                mime = mimetypes.guess_type(upload.filename)[0] or mime
            if kind == "photo":
                mime = "image/jpeg"  # Telegram re-encodes photos
            entry = self._new_file(upload.content, None, mime)
            return _MediaSource(file=entry, upload=upload)
        if isinstance(value, str) and value:
            if urlsplit(value).scheme in ("http", "https"):
                return _MediaSource(url=value)
            known = self._files_by_id.get(value)
            if known is not None:
                return _MediaSource(file=known, file_id=value)
            raise _RejectedError(
                400,
                "Bad Request: wrong file identifier/HTTP URL specified",
                f"unknown {kind} file_id",
            )
        raise _RejectedError(400, f"Bad Request: there is no {kind} in the request", f"no {kind}")

    def _new_message(self, chat_id: int, chat: dict[str, Any]) -> dict[str, Any]:
        message_id = self._last_message_id.get(chat_id, 0) + 1
        self._last_message_id[chat_id] = message_id
        return {
            "message_id": message_id,
            "from": self.bot_user,
            "chat": chat,
            "date": int(time.time()),
        }

    def _remember_sent(
        self,
        rec: RecordedRequest,
        message: dict[str, Any],
        *,
        text: str | None = None,
        caption: str | None = None,
        file_name: str | None = None,
        file_bytes: bytes | None = None,
        mime_type: str | None = None,
        file_id: str | None = None,
        file_url: str | None = None,
    ) -> None:
        params = rec.params
        self._sent.append(
            {
                "method": rec.method,
                "chat_id": params.get("chat_id"),
                "message_id": message["message_id"],
                "date": message["date"],
                "text": text,
                "caption": caption,
                "file_name": file_name,
                "file_bytes": file_bytes,
                "mime_type": mime_type,
                "file_id": file_id,
                "file_url": file_url,
                "parse_mode": params.get("parse_mode"),
                "reply_parameters": copy.deepcopy(params.get("reply_parameters")),
                "reply_to_message_id": params.get("reply_to_message_id"),
                "message_thread_id": params.get("message_thread_id"),
                "result": copy.deepcopy(message),
                "params": copy.deepcopy(params),
            }
        )


# ---------------------------------------------------------------------- helpers


def _ok(result: Any, description: str | None = None) -> Answer:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description is not None:
        body["description"] = description
    return 200, body


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> Answer:
    """Telegram's error shape (doc §2.7); ``error_code`` mirrors the HTTP status."""
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = dict(parameters)
    return status, body


def _content_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def _coerce(name: str, value: Any) -> Any:
    """A parameter as Telegram reads it: JSON text for objects, integers, booleans."""
    if not isinstance(value, str):
        return value
    if name in _JSON_PARAMS:
        try:
            return json.loads(value)
        except ValueError:
            return value
    if name in _INT_PARAMS or name == "chat_id":
        stripped = value.strip()
        if re.fullmatch(r"-?\d+", stripped):
            return int(stripped)
        return value
    if name in _BOOL_PARAMS:
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0", ""):
            return False
    return value


async def _read_params(request: Request) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
    """Query string and body merged (the body wins), and the multipart file parts."""
    raw: dict[str, Any] = dict(request.query_params)
    files: dict[str, UploadedFile] = {}
    content_type = _content_type(request.headers)
    if content_type == "multipart/form-data":
        form = await request.form(max_files=100, max_fields=1000)
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    content = await value.read()
                    name = value.filename or key
                    files[key] = UploadedFile(name, value.content_type, content)
                else:
                    raw[key] = value
        finally:
            await form.close()
    else:
        body = await request.body()
        if content_type == "application/json":
            if body.strip():
                try:
                    parsed = json.loads(body)
                except ValueError as exc:
                    raise _BadRequestError("Bad Request: can't parse JSON object") from exc
                if not isinstance(parsed, dict):
                    raise _BadRequestError("Bad Request: can't parse JSON object")
                raw.update(parsed)
        elif content_type == "application/x-www-form-urlencoded" or (body and not content_type):
            text = body.decode("utf-8", "replace")
            raw.update(parse_qsl(text, keep_blank_values=True))
    return {k: _coerce(k, v) for k, v in raw.items()}, files

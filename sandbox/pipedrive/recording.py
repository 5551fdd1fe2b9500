"""Request recording and fault injection for the Pipedrive emulator: every request is recorded
before it is answered, and a test (or the sandbox) can make the next matching ones fail or stall."""

from __future__ import annotations

import asyncio
import http
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse, Response

from sandbox.pipedrive.contract import CLOUDFLARE_BLOCK_HTML, _content_type, _pd_error, _token_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from starlette.requests import Request


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
class _Fault:
    path_prefix: str
    method: str | None
    status: int
    body: Any
    headers: dict[str, str]
    remaining: int


# A route's logic, run under the lock: (request record, path params) → response.
Handler: TypeAlias = "Callable[[RecordedRequest, Mapping[str, Any]], Response]"


class RecordingMixin:
    """Request recording and fault injection for ``PipedriveStandin``."""

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

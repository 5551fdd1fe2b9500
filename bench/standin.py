"""A bare Pipedrive stand-in for the end-to-end bench, in its own process.

`python -m bench.standin --port P [--limit 80] [--delay-ms 1]` serves, on 127.0.0.1 with plain
asyncio streams (no framework, so it is never the bottleneck and its CPU is easy to tell apart):

- `GET /api/v1/users/me`: the token's user (single-company mode asks at start).
- `GET|POST /api/v1/webhooks`, `DELETE /api/v1/webhooks/N`: success envelopes, nothing kept.
- `POST /api/v1/channels/messages/receive`: records (arrival `time.time()`, message id,
  conversation id, text, HTTP status) and answers after `--delay-ms`.
- Every `/api/v1` answer carries `x-ratelimit-limit/-remaining/-reset`. Without `--limit` the
  announced limit is huge (a service that never saw the header would fall back to its cautious
  default and the bench would measure that). With `--limit L` at most L requests per rolling
  2 s window are accepted, the rest get 429; a request that arrives inside the reset window a
  429 announced is counted (a client that honours the headers sends none).
- `/_bench/state`, `/_bench/receipts`, `/_bench/reset`: what the bench reads and clears.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from collections import Counter, deque
from typing import Any

UNLIMITED = 1_000_000
ME = {"id": 1, "company_id": 1, "company_domain": "bench", "name": "Bench"}
WINDOW = 2.0

Response = tuple[int, dict[str, str], Any]


class Standin:
    def __init__(self, limit: int | None, delay: float) -> None:
        self.limit = limit
        self.delay = delay
        self.window: deque[float] = deque()
        self.reset_until = 0.0
        self.receipts: list[tuple[float, str, str, str, int]] = []
        self.unique: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.inside_window = 0

    def reset(self) -> None:
        self.receipts.clear()
        self.unique.clear()
        self.calls.clear()
        self.inside_window = 0

    def state(self) -> dict[str, Any]:
        ok = sum(1 for r in self.receipts if r[4] < 300)
        return {"received": ok, "unique": len(self.unique), "calls": dict(self.calls),
                "inside_window": self.inside_window,
                "throttled": sum(1 for r in self.receipts if r[4] == 429)}  # fmt: skip

    def rate_headers(self, now: float) -> dict[str, str]:
        while self.window and self.window[0] <= now - WINDOW:
            self.window.popleft()
        limit = self.limit or UNLIMITED
        reset = self.window[0] + WINDOW - now if self.window else WINDOW
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - len(self.window))),
            "x-ratelimit-reset": str(max(1, math.ceil(reset))),
        }

    def api(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        now = time.time()
        if "x-api-token" not in headers and "authorization" not in headers:
            return 401, {}, {"success": False, "error": "unauthorized", "errorCode": 401}
        if now < self.reset_until:
            self.inside_window += 1
        self.calls[f"{method} {path}"] += 1
        rate = self.rate_headers(now)
        status, data = 200, None
        if self.limit is not None and len(self.window) >= self.limit:
            status, data = 429, {"success": False, "error": "Too many requests", "errorCode": 429}
            self.reset_until = max(self.reset_until, now + int(rate["x-ratelimit-reset"]))
        else:
            self.window.append(now)
            rate = self.rate_headers(now)
        if path == "/api/v1/channels/messages/receive" and method == "POST":
            message = json.loads(body)
            receipt = (now, message["id"], message["conversation_id"], message["message"], status)
            self.receipts.append(receipt)
            if status == 200:
                self.unique.add(message["id"])
                data = {"success": True, "data": {"id": message["id"]}}
        elif status != 200:
            pass
        elif path == "/api/v1/users/me":
            data = {"success": True, "data": ME}
        elif path == "/api/v1/webhooks" and method == "POST":
            webhook = {**json.loads(body), "id": self.calls[f"{method} {path}"]}
            status, data = 201, {"success": True, "status": "ok", "data": webhook}
        elif path.startswith("/api/v1/webhooks"):
            data = {"success": True, "data": [] if method == "GET" else {"id": 1}}
        else:
            status, data = 404, {"success": False, "error": "not found", "errorCode": 404}
        return status, rate, data

    def route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        if path.startswith("/api/v1/"):
            return self.api(method, path, headers, body)
        if path == "/_bench/state":
            return 200, {}, self.state()
        if path == "/_bench/receipts":
            return 200, {}, self.receipts
        if path == "/_bench/reset" and method == "POST":
            self.reset()
            return 200, {}, {"ok": True}
        return 404, {}, {"error": "not found"}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                method, path, headers, body = await read_message(reader)
                status, extra, data = self.route(method, path, headers, body)
                if self.delay and path.startswith("/api/"):
                    await asyncio.sleep(self.delay)
                payload = json.dumps(data).encode()
                head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                writer.write(f"{head}content-length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        writer.close()


async def read_message(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    """One HTTP/1.1 request or response: (method or status, target or reason, headers, body)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    first, second, _ = (head[0] + "  ").split(" ", 2)
    headers = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return first, second, headers, body
    length = int(headers.get("content-length", "0"))
    return first, second, headers, await reader.readexactly(length) if length else b""


async def main(port: int, limit: int | None, delay: float) -> None:
    standin = Standin(limit, delay)
    server = await asyncio.start_server(standin.serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.standin", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--limit", type=int, help="requests per rolling 2 s (default: no limit)")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="answer time of /api calls")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.port, args.limit, args.delay_ms / 1000))

"""The e2e bench's load generator: raw keep-alive HTTP/1.1 over asyncio streams.

Far cheaper per request than a client library, so on two shared cores the generator takes as
little CPU from the service under test as it can. Updates of one chat are never in flight
together: the next is sent once the previous was answered, as Telegram delivers them, so the
order the bridge must keep is the order of the numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.standin import read_message

REQUEST_TIMEOUT = 30.0
#: The body of update number `n` for chat `chat`.
Body = Callable[[int, int], bytes]


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1, (re)opened on first use."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send one request; returns (status, body) once the whole answer is read."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n{extra}"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        try:
            _, status, answer_headers, answer = await read_message(self.reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        return int(status), answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Load:
    """What the load generator saw: send times (wall clock) and POST round trips."""

    sent: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    rejected: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / max(1e-9, self.finished - self.started)


class Target:
    """One HTTP endpoint to load: where, what body, which headers."""

    def __init__(self, port: int, path: str, body: Body, headers: dict[str, str]) -> None:
        self.port, self.path, self.body, self.headers = port, path, body, headers

    async def send(self, conn: Connection, n: int, chat: int, load: Load) -> None:
        body = self.body(n, chat)
        sent, started = time.time(), time.perf_counter()
        try:
            status, _ = await asyncio.wait_for(
                conn.request("POST", self.path, body, self.headers), REQUEST_TIMEOUT
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            conn.close()
            status = 0
        if 200 <= status < 300:
            load.sent[n] = sent
            load.latencies.append(time.perf_counter() - started)
        else:
            load.rejected += 1

    async def blast(self, plan: list[tuple[int, int]], concurrency: int) -> Load:
        """As fast as answered on `concurrency` connections; a chat's next update is sent only
        after its previous one was answered (that order is what the bridge must keep)."""
        per_chat: dict[int, deque[int]] = defaultdict(deque)
        for n, chat in plan:
            per_chat[chat].append(n)
        ready: asyncio.Queue[int | None] = asyncio.Queue()
        for chat in per_chat:
            ready.put_nowait(chat)
        load, left = Load(started=time.time()), len(plan)

        async def user() -> None:
            nonlocal left
            conn = Connection(self.port)
            while (chat := await ready.get()) is not None:
                await self.send(conn, per_chat[chat].popleft(), chat, load)
                left -= 1
                if per_chat[chat]:
                    ready.put_nowait(chat)
                if left == 0:
                    for _ in range(concurrency):
                        ready.put_nowait(None)
            conn.close()

        await asyncio.gather(*(user() for _ in range(concurrency)))
        load.finished = time.time()
        return load

    async def paced(self, plan: list[tuple[int, int]], rate: float, pool: int = 64) -> Load:
        """One update every 1/rate s (a chat still waits for its previous answer)."""
        locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        conns: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(pool):
            conns.put_nowait(Connection(self.port))
        load = Load(started=time.time())
        start = time.perf_counter() + 0.05

        async def one(i: int, n: int, chat: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            async with locks[chat]:
                conn = await conns.get()
                try:
                    await self.send(conn, n, chat, load)
                finally:
                    conns.put_nowait(conn)

        await asyncio.gather(*(one(i, n, chat) for i, (n, chat) in enumerate(plan)))
        load.finished = time.time()
        while not conns.empty():
            conns.get_nowait().close()
        return load


class Plans:
    """Update numbers never repeat within a run (they are the dedupe keys); chats are M ids."""

    def __init__(self) -> None:
        self.next = 1

    def make(self, count: int, chats: int, first_chat: int = 1000) -> list[tuple[int, int]]:
        plan = [(self.next + i, first_chat + (self.next + i) % chats) for i in range(count)]
        self.next += count
        return plan

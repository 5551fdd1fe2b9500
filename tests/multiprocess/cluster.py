"""pdbridge scaled out as operators run it on several machines: N `pdbridge web` and M
`pdbridge worker` processes, each in a working directory of its own (no shared ./var), on one
PostgreSQL, one Redis and one shared media store, wired to the Pipedrive and Telegram stand-ins.

Built on tests/faults/processes.py (its `Running` helpers and `wait_until`); kept in a module of
its own so the two harnesses can grow apart.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from service.embedded_redis import free_port
from service.pipedrive.manifest import manifest
from tests.faults.processes import (
    BOT_TOKEN,
    Running,
    _ready,
    connect_support_channel,
    service_env,
    wait_until,
)
from tests.pipedrive.bridge import CLIENT_ID, CLIENT_SECRET
from tests.test_cli import PDBRIDGE


@dataclass
class Cluster(Running):
    """`url` is the first web process; `webs` all of them, in order."""

    webs: list[str] = field(default_factory=list)

    def kill(self, role: str) -> None:
        """SIGKILL: no shutdown hook, no goodbye to Redis, jobs cut off mid-way."""
        self.processes[role].send_signal(signal.SIGKILL)
        self.processes[role].wait(timeout=10)

    def customer_says_to(self, web: str, chat_id: int, text: str, message_id: int) -> int:
        """As `customer_says`, through the web process at `web`."""
        self.update_id += 1
        update = self.tg.text_update(
            update_id=self.update_id, chat_id=chat_id, text=text, message_id=message_id
        )
        return self._deliver(web, update)

    def customer_sends_photo(
        self, web: str, chat_id: int, message_id: int, content: bytes, caption: str
    ) -> int:
        """A photo update through `web`; Telegram serves `content` for its file id."""
        self.update_id += 1
        file = self.tg.add_file(content, mime_type="image/jpeg")
        update = self.tg.photo_update(
            update_id=self.update_id,
            chat_id=chat_id,
            message_id=message_id,
            file=file,
            caption=caption,
        )
        return self._deliver(web, update)

    def _deliver(self, web: str, update: dict[str, Any]) -> int:
        response = httpx2.post(
            f"{web}/webhooks/telegram/{self.pcid}",
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": self.secret},
            timeout=30,
        )
        return response.status_code

    def agent_sends_file(
        self, web: str, chat_id: int, text: str, file: tuple[str, bytes, str]
    ) -> httpx2.Response:
        """postMessage with one file, as Pipedrive calls it, at the web process `web`."""
        self.pd.set_manifest(manifest(web))
        return self.pd.post_message(
            self.pcid,
            conversation_id=f"tg:777009:{chat_id}",
            sender_id="tg:biz:777009",
            recipient_ids=[f"tg:{chat_id}"],
            message=text,
            files=[file],
        )

    def log_tails(self, lines: int = 30) -> str:
        """The end of every process's log, for a failure message."""
        out = []
        for path in sorted(self.logs.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)


@contextmanager
def running_cluster(
    tmp_path: Path,
    *,
    database_url: str,
    redis_url: str,
    media_env: dict[str, str],
    webs: int = 2,
    workers: int = 2,
) -> Iterator[Cluster]:
    """Migrate once, start `webs` web and `workers` worker processes (each in `tmp_path/<role>`),
    install the app through one web's OAuth callback and connect one Telegram channel through
    another's admin API; stops everything on exit."""
    with (
        PipedriveStandin(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as pd,
        TelegramStandin(bot_token=BOT_TOKEN) as tg,
    ):
        common = service_env(pd, tg, redis_url, database_url, **media_env)
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        release = tmp_path / "release"
        release.mkdir()
        subprocess.run([*PDBRIDGE, "migrate"], cwd=release, env=common, check=True)
        roles = [f"web-{n}" for n in range(1, webs + 1)]
        roles += [f"worker-{n}" for n in range(1, workers + 1)]
        urls: list[str] = []
        processes: dict[str, subprocess.Popen[bytes]] = {}
        handles: list[Any] = []
        try:
            for role in roles:
                env = dict(common)
                if role.startswith("web"):
                    port = free_port()
                    env["PORT"] = str(port)
                    urls.append(f"http://127.0.0.1:{port}")
                home = tmp_path / role
                home.mkdir()
                out = (logs / f"{role}.log").open("wb")
                handles.append(out)
                command = role.split("-")[0]
                processes[role] = subprocess.Popen(
                    [*PDBRIDGE, command], cwd=home, env=env, stdout=out, stderr=out
                )
            for url in urls:
                wait_until(lambda url=url: _ready(url), f"{url} answers /readyz", timeout=150)
            cluster = Cluster(urls[0], processes, pd, tg, logs, webs=urls)
            pd.set_manifest(manifest(urls[0]))
            connect_support_channel(cluster, install_at=urls[0], admin_at=urls[-1])
            yield cluster
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.terminate()
            for process in processes.values():
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for handle in handles:
                handle.close()

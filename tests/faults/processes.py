"""pdbridge as operators run it, for fault tests: real `pdbridge run`, or `web` and `worker` as
separate processes, wired to the Pipedrive and Telegram stand-ins on real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2

from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from service.embedded_redis import free_port
from service.pipedrive.manifest import manifest
from tests.conftest import ADMIN_TOKEN
from tests.pipedrive.bridge import CLIENT_ID, CLIENT_SECRET
from tests.test_cli import PDBRIDGE, env_with

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BOT_TOKEN = "777009:fault-suite-bot"
SECRET_KEY = "fault-suite-secret-key-0123456789abcdef"


def install_through_browser(
    url: str, pd: PipedriveStandin, company_id: int, user_id: int
) -> httpx2.Response:
    """Install the app as a browser does: /oauth/install sets the state cookie, Pipedrive's
    consent redirects back with a code. The browser reaches the https PUBLIC_BASE_URL and so
    sends the Secure cookie back; a test talks plain http to the port, so it hands it over."""
    started = httpx2.get(f"{url}/oauth/install", timeout=30)
    state = parse_qs(urlparse(started.headers["location"]).query)["state"][0]
    cookie = started.headers["set-cookie"].split(";", 1)[0]
    return httpx2.get(
        f"{url}/oauth/callback",
        params={"code": pd.issue_code(company_id, user_id), "state": state},
        headers={"Cookie": cookie},
        timeout=30,
    )


def service_env(
    pd: PipedriveStandin,
    tg: TelegramStandin,
    redis_url: str,
    database_url: str,
    **extra: str,
) -> dict[str, str]:
    """The environment of every process of the service under test, wired to the stand-ins."""
    return env_with(
        PUBLIC_BASE_URL="https://bridge.example.com",  # Telegram takes HTTPS webhooks only
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        SECRET_KEY=SECRET_KEY,
        ADMIN_TOKEN=ADMIN_TOKEN,
        PIPEDRIVE_CLIENT_ID=CLIENT_ID,
        PIPEDRIVE_CLIENT_SECRET=CLIENT_SECRET,
        PIPEDRIVE_OAUTH_URL=pd.base_url,
        PIPEDRIVE_API_URL=pd.base_url,
        TELEGRAM_API_URL=tg.base_url,
        LOG_FORMAT="json",
        **extra,
    )


def connect_support_channel(service: Running, *, install_at: str, admin_at: str) -> None:
    """Install the app (company 1001, user 2001) through the browser flow at `install_at`, then
    connect the "Support" Telegram bot through the admin API at `admin_at`; records the
    channel's id and the webhook secret Telegram was given on `service`."""
    installed = install_through_browser(install_at, service.pd, 1001, 2001)
    assert installed.status_code == 200, installed.text
    channel = httpx2.post(
        f"{admin_at}/admin/channels",
        headers=ADMIN,
        json={
            "provider": "telegram",
            "company_id": 1001,
            "user_id": 2001,
            "name": "Support",
            "credentials": {"bot_token": BOT_TOKEN},
        },
        timeout=30,
    )
    assert channel.status_code == 201, channel.text
    service.pcid = channel.json()["provider_channel_id"]
    webhook = service.tg.webhook
    assert webhook is not None
    service.secret = str(webhook["secret_token"])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Poll `condition` until it holds (bounded): behaviour, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@dataclass
class Running:
    """The service's processes and what a test needs to talk to it like the outside world."""

    url: str
    processes: dict[str, subprocess.Popen[bytes]]
    pd: PipedriveStandin
    tg: TelegramStandin
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = field(default_factory=Path)
    pcid: str = ""
    secret: str = ""
    update_id: int = field(default=1000)
    handles: list[Any] = field(default_factory=list)

    def secrets(self) -> list[str]:
        """Every secret this run used: ours, the bot's, and what Pipedrive issued."""
        bot_secret = BOT_TOKEN.partition(":")[2]
        return [
            SECRET_KEY,
            ADMIN_TOKEN,
            CLIENT_SECRET,
            BOT_TOKEN,
            bot_secret,
            self.secret,
            *self.pd.issued_secrets,
        ]

    def alive(self) -> dict[str, bool]:
        return {role: p.poll() is None for role, p in self.processes.items()}

    def start(self, role: str) -> None:
        """Start (or start again, after it exited) one process of the service: `run`, `web`,
        `worker` or `worker2` (a second worker), appending to its log."""
        previous = self.processes.get(role)
        assert previous is None or previous.poll() is not None, f"{role} is still running"
        out = (self.logs / f"{role}.log").open("ab")
        self.handles.append(out)
        command = "worker" if role.startswith("worker") else role
        self.processes[role] = subprocess.Popen(
            [*PDBRIDGE, command], cwd=self.cwd, env=self.env, stdout=out, stderr=out
        )

    def signal(self, role: str, number: signal.Signals) -> None:
        """Send a signal to one process (SIGKILL reaches it alone: its children, if any, are
        the supervisor's business and are tested in tests/test_cli.py)."""
        os.kill(self.processes[role].pid, number)

    def wait_exited(self, role: str, timeout: float = 60.0) -> int:
        """Wait until the process has exited; returns its exit code."""
        return self.processes[role].wait(timeout=timeout)

    def ready(self) -> bool:
        return _ready(self.url)

    def post_update(self, update: dict[str, Any]) -> int:
        """POST a Telegram update as Telegram does; our answer's status (599: no answer)."""
        try:
            response = httpx2.post(
                f"{self.url}/webhooks/telegram/{self.pcid}",
                json=update,
                headers={"X-Telegram-Bot-Api-Secret-Token": self.secret},
                timeout=30,
            )
        except httpx2.TransportError:
            return 599
        return response.status_code

    def text_update(self, chat_id: int, text: str, message_id: int) -> dict[str, Any]:
        self.update_id += 1
        return self.tg.text_update(
            update_id=self.update_id, chat_id=chat_id, text=text, message_id=message_id
        )

    def customer_says(self, chat_id: int, text: str, message_id: int) -> int:
        """A Telegram update for `text`, as Telegram posts it; returns our answer's status."""
        return self.post_update(self.text_update(chat_id, text, message_id))

    def agent_says(self, chat_id: int, text: str) -> httpx2.Response:
        """An agent's reply from the Pipedrive inbox (postMessage, as Pipedrive calls it)."""
        return self.pd.post_message(
            self.pcid,
            conversation_id=f"tg:777009:{chat_id}",
            sender_id="tg:biz:777009",
            recipient_ids=[f"tg:{chat_id}"],
            message=text,
        )

    def inbound_at_pipedrive(self) -> list[str]:
        """Texts of customers' messages Pipedrive accepted, in arrival order, repeats kept."""
        return [
            str(r.json["message"])
            for r in self.pd.requests
            if r.api_path == "/v1/channels/messages/receive"
            and r.status == 200
            and isinstance(r.json, dict)
            and str(r.json.get("id", "")).startswith("tg:")
        ]

    def outbound_at_telegram(self) -> list[str]:
        return [str(m["text"]) for m in self.tg.sent]


def _ready(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx2.TransportError:
        return False


@contextmanager
def running_service(
    tmp_path: Path,
    layout: str,
    redis_url: str,
    database_url: str | None = None,
    *,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Running]:
    """Start the service (`run`, or `web` + `workers` worker processes), install the app
    through OAuth and connect one Telegram channel; stops everything on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        PipedriveStandin(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as pd,
        TelegramStandin(bot_token=BOT_TOKEN) as tg,
    ):
        env = service_env(
            pd,
            tg,
            redis_url,
            database_url or f"sqlite:///{tmp_path / 'pdbridge.db'}",
            PORT=str(port),
            **(extra_env or {}),
        )
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        roles = ["run"] if layout == "run" else ["web", "worker"]
        roles += [f"worker{n}" for n in range(2, workers + 1)] if layout != "run" else []
        if layout != "run":
            subprocess.run([*PDBRIDGE, "migrate"], cwd=tmp_path, env=env, check=True)
        processes: dict[str, subprocess.Popen[bytes]] = {}
        running = Running(url, processes, pd, tg, logs, env=env, cwd=tmp_path)
        try:
            for role in roles:
                running.start(role)
            wait_until(lambda: _ready(url), "the service answers /readyz", timeout=60)
            pd.set_manifest(manifest(url))
            connect_support_channel(running, install_at=url, admin_at=url)
            yield running
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
            for handle in running.handles:
                handle.close()

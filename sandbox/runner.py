"""`pdbridge sandbox`: the service wired to the local Pipedrive emulator and Telegram simulator.

It starts both emulators on free loopback ports, runs the service as `pdbridge run` would (SQLite,
an embedded Redis, the generated SECRET_KEY) with every outside URL pointing at them, installs the
app through the real OAuth flow, connects one Telegram channel and prints the inbox URL. Nothing
here is imported by the service: the command loads it lazily.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from urllib.parse import parse_qs, urlsplit

import httpx2
import structlog

from sandbox.chat import CustomerChat
from sandbox.inbox import Inbox
from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin

log = structlog.get_logger("pdbridge.sandbox")

COMPANY_ID = 1001
USER_ID = 2001
#: How long the service may take to answer /readyz after it starts (migrations, Redis).
READY_TIMEOUT_SECONDS = 90.0
#: The sandbox's own database, started afresh each time so every run begins from one clean install.
SANDBOX_DIR = Path("var") / "sandbox"


class SandboxError(RuntimeError):
    """The sandbox could not be brought up; the message says which step failed."""


def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll `condition` until it holds, or raise naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SandboxError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def _ready(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/readyz", timeout=2.0).status_code == 200
    except httpx2.TransportError:
        return False


def install(url: str) -> None:
    """Install the app as a browser does: /oauth/install (state cookie), the emulator's consent
    (which redirects back with a code), then the callback carrying the cookie."""
    with httpx2.Client(timeout=30, trust_env=False) as client:
        started = client.get(f"{url}/oauth/install")
        if started.status_code not in (302, 303, 307):
            raise SandboxError(f"/oauth/install answered {started.status_code}: {started.text}")
        cookie = started.headers["set-cookie"].split(";", 1)[0]
        consent = client.get(started.headers["location"])
        if consent.status_code not in (302, 303, 307):
            raise SandboxError(f"the emulator's consent answered {consent.status_code}")
        callback = consent.headers["location"]
        query = parse_qs(urlsplit(callback).query)
        if "code" not in query:
            raise SandboxError(f"the consent gave no code: {callback}")
        done = client.get(callback, headers={"Cookie": cookie})
        if done.status_code != 200:
            raise SandboxError(f"/oauth/callback answered {done.status_code}: {done.text}")


def connect_channel(url: str, admin_token: str, bot_token: str) -> str:
    """POST /admin/channels for the simulator's bot; returns the provider_channel_id."""
    answer = httpx2.post(
        f"{url}/admin/channels",
        headers={"Authorization": f"Bearer {admin_token}"},
        json={
            "provider": "telegram",
            "company_id": COMPANY_ID,
            "user_id": USER_ID,
            "name": "Sandbox bot",
            "credentials": {"bot_token": bot_token},
        },
        timeout=30,
        trust_env=False,
    )
    if answer.status_code != 201:
        raise SandboxError(f"POST /admin/channels answered {answer.status_code}: {answer.text}")
    return str(answer.json()["provider_channel_id"])


def set_sink(url: str, admin_token: str, provider_channel_id: str, sink: str) -> int:
    """PATCH /admin/channels/{id}: the inbox's switch between channels and notes."""
    answer = httpx2.patch(
        f"{url}/admin/channels/{provider_channel_id}",
        headers={"Authorization": f"Bearer {admin_token}"},
        json={"sink": sink},
        timeout=30,
        trust_env=False,
    )
    return answer.status_code


def service_env(
    pd: PipedriveStandin, tg: TelegramStandin, url: str, admin_token: str
) -> dict[str, str]:
    """The environment of the `pdbridge run` child: every outside URL at the emulators."""
    env = dict(os.environ)
    env.update(
        PUBLIC_BASE_URL=url,
        ADMIN_TOKEN=admin_token,
        DATABASE_URL=f"sqlite:///{(SANDBOX_DIR / 'pdbridge.db').resolve()}",
        PIPEDRIVE_CLIENT_ID=pd.client_id,
        PIPEDRIVE_CLIENT_SECRET=pd.client_secret,
        PIPEDRIVE_OAUTH_URL=pd.base_url,
        PIPEDRIVE_API_URL=pd.base_url,
        TELEGRAM_API_URL=tg.base_url,
    )
    env.pop("PIPEDRIVE_API_TOKEN", None)  # the sandbox installs through OAuth
    env.pop("REDIS_URL", None)  # `run` starts its embedded Redis
    return env


def port_free(port: int) -> bool:
    """Whether the service's port can be bound (so a busy one fails at once, by name)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_sandbox(port: int, admin_token: str | None = None) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop, 1 when a step of the start failed."""
    from service.children import die_with_parent
    from service.pipedrive.manifest import manifest

    if not port_free(port):
        log.error("sandbox.port_in_use", port=port, fix="set PORT to a free port")
        return 1
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    shutil.rmtree(SANDBOX_DIR, ignore_errors=True)
    SANDBOX_DIR.mkdir(parents=True)
    admin_token = admin_token or secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}"
    bot_token = f"{secrets.randbelow(9_000_000) + 1_000_000}:{secrets.token_urlsafe(26)}"
    pd = PipedriveStandin(
        client_id=f"sandbox-{secrets.token_hex(6)}",
        client_secret=secrets.token_urlsafe(24),
        company_id=COMPANY_ID,
        user_id=USER_ID,
        company_domain="sandbox",
    )
    tg = TelegramStandin(bot_token=bot_token, bot_username="pdbridge_sandbox_bot")
    tg.allow_http_webhooks = True
    child: subprocess.Popen[bytes] | None = None
    try:
        pd.start()
        tg.start()
        chat = CustomerChat(tg)
        Inbox(
            pd,
            chat_url=f"{tg.base_url}/chat",
            service_url=url,
            set_sink=lambda pcid, sink: set_sink(url, admin_token, pcid, sink),
        ).mount()
        chat.mount()
        child = subprocess.Popen(
            [sys.executable, "-m", "service", "run"],
            env=service_env(pd, tg, url, admin_token),
            preexec_fn=die_with_parent,
        )
        running = child

        def up() -> bool:
            if running.poll() is not None:
                raise SandboxError(f"pdbridge run exited with {running.returncode}")
            return bool(stopping) or _ready(url)

        wait_until(up, f"the service answers {url}/readyz", READY_TIMEOUT_SECONDS)
        if not stopping:
            pd.set_manifest(manifest(url))
            install(url)
            pcid = connect_channel(url, admin_token, bot_token)
            log.info("sandbox.ready", provider_channel_id=pcid, service=url)
            _announce(pd, admin_token)
        while not stopping and child.poll() is None:
            time.sleep(0.2)
    except SandboxError as error:
        log.error("sandbox.failed", reason=str(error))
        return 1
    finally:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        tg.stop()
        pd.stop()
    return 0 if stopping else 1


def _announce(pd: PipedriveStandin, admin_token: str) -> None:
    """The one URL to open, alone on its line, then the admin token (the admin API's bearer)."""
    lines = [
        "",
        "pdbridge sandbox is up. Open the Pipedrive inbox (it links to the customer's chat):",
        f"{pd.base_url}/inbox",
        f"ADMIN_TOKEN={admin_token}",
        "Ctrl-C stops everything.",
        "",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()

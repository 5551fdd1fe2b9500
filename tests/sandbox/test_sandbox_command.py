"""`pdbridge sandbox` as a newcomer runs it: a real process that starts the emulators and the
service, installs through OAuth, connects a channel and prints the inbox URL. Through that URL a
customer's message reaches the inbox and the agent's reply reaches the customer."""

from __future__ import annotations

import html
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil
import pytest

from service.embedded_redis import free_port
from tests.test_cli import PDBRIDGE, env_with

pytestmark = pytest.mark.slow

# The smallest valid PNG: the customer page checks what it is sent is an image.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c63f8cfc0f01f0005000201a5b1e0a50000000049454e44ae426082"
)


@dataclass
class Sandbox:
    inbox: str  # the printed URL
    chat: str
    output: list[str]


def poll(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Bounded polling: until `condition` holds, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    cwd: Path = tmp_path_factory.mktemp("sandbox")
    log = cwd / "sandbox.log"
    with (
        log.open("wb") as stderr,
        subprocess.Popen(
            [*PDBRIDGE, "sandbox"],
            cwd=cwd,
            env=env_with(PORT=str(free_port()), LOG_FORMAT="json"),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as process,
    ):
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        output: list[str] = []
        descendants: list[psutil.Process] = []
        try:
            announced = _announced(lines, output, log)
            descendants = psutil.Process(process.pid).children(recursive=True)
            yield announced
        finally:
            process.send_signal(signal.SIGINT)  # Ctrl-C stops everything
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
            reader.join(timeout=10)
    assert code == 0, log.read_text()[-3000:]
    assert descendants  # `run`, its worker process and the embedded Redis...
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == []  # ...all stopped with it


def _announced(lines: queue.Queue[str | None], output: list[str], log: Path) -> Sandbox:
    """Read the output until the inbox URL line and the line after it."""
    deadline = time.monotonic() + 120
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, f"exited: {output} {log.read_text()[-3000:]}"
        output.append(line)
        if re.fullmatch(r"http://127\.0\.0\.1:\d+/inbox", line):
            break
    after = lines.get(timeout=5)
    assert after is not None
    output.append(after)
    # The customer's side is one click away, linked from the inbox.
    chat = re.search(r'href="(http://127\.0\.0\.1:\d+/chat)"', httpx2.get(line, timeout=10).text)
    assert chat is not None, output
    return Sandbox(line, chat.group(1), output)


def test_prints_one_url_and_an_admin_token(sandbox: Sandbox) -> None:
    assert sum(1 for line in sandbox.output if line.startswith("http")) == 1
    assert any("ADMIN_TOKEN=" in line for line in sandbox.output)


def test_the_pages_render(sandbox: Sandbox) -> None:
    inbox = httpx2.get(sandbox.inbox, timeout=10)
    assert inbox.status_code == 200
    assert "Sandbox bot" in inbox.text  # the channel the sandbox connected
    assert sandbox.chat in html.unescape(inbox.text)  # the way to the customer's side
    console = re.search(r'href="(http://127\.0\.0\.1:\d+/admin/ui)"', inbox.text)
    assert console is not None  # and to the operator console, whose login form answers
    assert 'name="token"' in httpx2.get(console.group(1), timeout=10).text
    chat = httpx2.get(sandbox.chat, timeout=10)
    assert chat.status_code == 200
    assert 'action="/chat/send"' in chat.text


def test_a_customer_message_reaches_the_inbox_and_a_reply_the_customer(sandbox: Sandbox) -> None:
    sent = httpx2.post(
        f"{sandbox.chat}/send", data={"text": "Hello from the sandbox test"}, timeout=30
    )
    assert sent.status_code == 303
    poll(
        lambda: "Hello from the sandbox test" in httpx2.get(sandbox.inbox, timeout=10).text,
        "the customer's message shows in the inbox",
    )
    page = httpx2.get(sandbox.inbox, timeout=10).text
    channel = re.search(r'name="channel" value="([^"]+)"', page)
    conversation = re.search(r'name="conversation" value="([^"]+)"', page)
    assert channel is not None
    assert conversation is not None
    reply = httpx2.post(
        sandbox.inbox.replace("/inbox", "/inbox/reply"),
        data={
            "channel": html.unescape(channel.group(1)),
            "conversation": html.unescape(conversation.group(1)),
            "message": "Hi, how can we help?",
        },
        timeout=30,
    )
    assert reply.status_code == 303, reply.text

    def delivered_at_customer() -> bool:
        messages = httpx2.get(f"{sandbox.chat}/messages", timeout=10).text
        return bool(re.search(r'data-status="delivered">Hi, how can we help\?', messages))

    poll(delivered_at_customer, "the reply shows, delivered, on the customer page")
    poll(
        lambda: (
            re.search(
                r'data-status="sent">Hi, how can we help\?',
                httpx2.get(sandbox.inbox, timeout=10).text,
            )
            is not None
        ),
        "the reply's status moves to sent in the inbox",
    )


def test_an_image_from_the_customer_shows_in_the_inbox(sandbox: Sandbox) -> None:
    sent = httpx2.post(
        f"{sandbox.chat}/send",
        data={"text": "my receipt"},
        files={"image": ("receipt.png", PNG, "image/png")},
        timeout=30,
    )
    assert sent.status_code == 303

    def shown() -> bool:
        page = httpx2.get(sandbox.inbox, timeout=10).text
        return (
            re.search(r"my receipt<br><img src=\"http://127\.0\.0\.1:\d+/media/", page) is not None
        )

    poll(shown, "the image shows in the inbox behind the service's signed link")


def test_bad_input_is_refused_with_a_reason(sandbox: Sandbox) -> None:
    empty = httpx2.post(f"{sandbox.chat}/send", data={"text": "  "}, timeout=10)
    assert empty.status_code == 400
    assert "Write something" in empty.text
    not_image = httpx2.post(
        f"{sandbox.chat}/send",
        data={"text": "x"},
        files={"image": ("a.png", b"not an image", "image/png")},
        timeout=10,
    )
    assert not_image.status_code == 400
    unknown = httpx2.post(
        sandbox.inbox.replace("/inbox", "/inbox/reply"),
        data={"channel": "nope", "conversation": "nope", "message": "hi"},
        timeout=10,
    )
    assert unknown.status_code == 404


def test_notes_mode_shows_notes_and_a_reply_note_reaches_the_customer(sandbox: Sandbox) -> None:
    """Last in the file: it moves the channel to the notes sink."""
    page = httpx2.get(sandbox.inbox, timeout=10).text
    channel = re.search(
        r'action="/inbox/sink"><input type="hidden" name="channel" value="([^"]+)"', page
    )
    assert channel is not None
    moved = httpx2.post(
        f"{sandbox.inbox}/sink", data={"channel": channel.group(1), "sink": "notes"}, timeout=30
    )
    assert moved.status_code == 303
    assert "Sink: notes" in httpx2.get(sandbox.inbox, timeout=10).text
    sent = httpx2.post(f"{sandbox.chat}/send", data={"text": "please note this"}, timeout=30)
    assert sent.status_code == 303
    found: list[str] = []

    def noted() -> bool:
        for person in re.findall(
            r"/inbox\?person=(\d+)", httpx2.get(sandbox.inbox, timeout=10).text
        ):
            if (
                "please note this"
                in httpx2.get(f"{sandbox.inbox}?person={person}", timeout=10).text
            ):
                found.append(person)
                return True
        return False

    poll(noted, "the customer's message shows as a note on their person")
    note = httpx2.post(
        f"{sandbox.inbox}/note",
        data={"person": found[0], "content": "/reply Noted, thanks"},
        timeout=30,
    )
    assert note.status_code == 303, note.text
    poll(
        lambda: (
            re.search(
                r'data-status="delivered">[^<]*Noted, thanks',
                httpx2.get(f"{sandbox.chat}/messages", timeout=10).text,
            )
            is not None
        ),
        "the /reply note reaches the customer",
    )
    bad = httpx2.post(
        f"{sandbox.inbox}/note", data={"person": "999999", "content": "x"}, timeout=10
    )
    assert bad.status_code == 404


def test_a_busy_port_stops_it_at_once_naming_the_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*PDBRIDGE, "sandbox"],
            cwd=tmp_path,
            env=env_with(PORT=str(port), LOG_FORMAT="json"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "sandbox.port_in_use" in done.stderr
    assert "http" not in done.stdout  # no URL for a sandbox that is not there

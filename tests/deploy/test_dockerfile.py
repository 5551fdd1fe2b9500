"""deploy/Dockerfile: hadolint where it is installed, and our own structural checks always
(multi-stage, non-root, a working HEALTHCHECK, installs from the lock with hashes)."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.embedded_redis import free_port
from tests.deploy.conftest import DEPLOY, ROOT

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
#: Instructions, with continuation lines joined and comments dropped.
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def instructions(keyword: str, stage: int | None = None) -> list[str]:
    """The arguments of every `keyword` instruction (of one stage when given, 0-based)."""
    found, current = [], -1
    for line in INSTRUCTIONS:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            current += 1
        if word.upper() == keyword and (stage is None or stage == current):
            found.append(rest.strip())
    return found


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed here")
def test_hadolint_finds_nothing() -> None:
    """Every hadolint rule, at every severity."""
    result = subprocess.run(
        [str(hadolint()), "--failure-threshold", "style", "-f", "json", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, json.loads(result.stdout or "[]")


def test_two_stages_and_the_runtime_one_runs_as_an_unprivileged_user() -> None:
    """The build tools stay in the first stage; the last one runs as a numeric non-root user."""
    stages = instructions("FROM")
    assert len(stages) >= 2
    last = len(stages) - 1
    users = instructions("USER", last)
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit()
    assert int(user) != 0
    assert instructions("COPY", last) == ["--from=build /opt/pdbridge /opt/pdbridge"]


def test_base_images_are_slim_and_pinned() -> None:
    """Every base is a slim Python with an explicit version tag (never `latest`)."""
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE, re.M)
    assert default is not None
    image = default[1]
    assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim(-\w+)?", image), image
    for base in instructions("FROM"):
        assert base.split()[0] == "${PYTHON_IMAGE}"
    assert "latest" not in DOCKERFILE


def test_dependencies_are_installed_from_the_lock_with_hashes() -> None:
    """The lock file, hash-checked, no dependency resolution; our own wheel with no index."""
    runs = " ".join(instructions("RUN", 0))
    installs = re.findall(r"pip install ([^&]+)", runs)
    from_locks = [i for i in installs if " -r " in f" {i}"]
    locks = {Path(re.search(r"-r (\S+)", i)[1]).name for i in from_locks}  # type: ignore[index]
    assert locks == {"requirements.lock", "build-requirements.lock"}
    for install in from_locks:
        assert "--require-hashes" in install
        assert "--no-deps" in install
    others = [i for i in installs if i not in from_locks]
    assert others
    assert all("--no-index" in i and "--no-deps" in i for i in others)
    assert "deploy/requirements.lock" in instructions("COPY", 0)[0]


def test_one_image_for_every_role() -> None:
    """`pdbridge` is the entrypoint, `web` the default; `worker`/`migrate` are the command."""
    assert instructions("ENTRYPOINT") == ['["pdbridge"]']
    assert instructions("CMD")[-1] == '["web"]'
    env = " ".join(instructions("ENV"))
    assert "PYTHONUNBUFFERED=1" in env
    assert "LOG_FORMAT=json" in env


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_healthcheck_command_asks_healthz_on_port(health_server: int) -> None:
    """The HEALTHCHECK's own command line, run as Docker would: 0 when /healthz answers on
    $PORT, non-zero when nothing listens there."""
    check = instructions("HEALTHCHECK")
    assert len(check) == 1
    command = json.loads(check[0].split(" CMD ", 1)[1])
    assert command[0] == "python"
    env = {**os.environ, "PORT": str(health_server)}
    ok = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    env["PORT"] = str(free_port())
    down = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
    assert down.returncode != 0


def test_the_build_context_leaves_secrets_and_state_out() -> None:
    """.dockerignore is an allowlist: nothing is sent unless named, and .env never is."""
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "service",
        "handlers",
        "jobs",
        "deploy/requirements.lock",
        "deploy/build-requirements.lock",
    }
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M):
        for path in source.split():
            assert path in allowed, f"COPY {path} is not in .dockerignore's allowlist"

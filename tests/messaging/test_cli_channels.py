"""`pdbridge channels add | list | remove` from a shell, in single-company mode."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from tests.pipedrive.bridge import API_TOKEN, standin
from tests.test_cli import env_with

pytestmark = pytest.mark.slow


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin(api_token=API_TOKEN) as server:
        yield server


@pytest.fixture
def tg() -> Iterator[TelegramStandin]:
    with TelegramStandin(bot_token="777003:cli-token") as server:
        yield server


def test_channels_commands_drive_the_same_lifecycle(
    tmp_path: Path, pd: PipedriveStandin, tg: TelegramStandin, embedded_redis: object
) -> None:
    """add registers at Pipedrive and hooks the bot, list shows it, remove undoes both."""
    env = env_with(
        REDIS_URL=embedded_redis.url,  # type: ignore[attr-defined]
        PUBLIC_BASE_URL="https://bridge.example.com",
        PIPEDRIVE_API_TOKEN=API_TOKEN,
        PIPEDRIVE_API_URL=pd.base_url,
        TELEGRAM_API_URL=tg.base_url,
        LOG_FORMAT="json",
        SECRET_KEY="cli-channels-secret-0123456789abcdef",
    )

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "service", *args], cwd=tmp_path, env=env, capture_output=True
        )

    assert run("migrate").returncode == 0
    added = run(
        "channels", "add", "telegram", "--name", "Shop bot", "-c", "bot_token=777003:cli-token"
    )
    assert added.returncode == 0, added.stderr.decode()
    channel = json.loads(added.stdout)
    assert channel["webhook_url"].endswith(f"/webhooks/telegram/{channel['provider_channel_id']}")
    assert tg.webhook is not None
    assert [c["provider_channel_id"] for c in pd.channels] == [channel["provider_channel_id"]]
    assert b"cli-token" not in added.stderr
    listed = json.loads(run("channels", "list").stdout)
    assert [c["name"] for c in listed] == ["Shop bot"]
    removed = run("channels", "remove", channel["provider_channel_id"])
    assert removed.returncode == 0, removed.stderr.decode()
    assert tg.webhook is None
    assert json.loads(run("channels", "list").stdout) == []
    refused = run("channels", "add", "telegram", "--name", "X", "-c", "bot_token=nonsense")
    assert refused.returncode == 1
    assert b"INVALID_BODY" in refused.stderr


def test_channels_add_with_the_notes_sink_and_set_sink(
    tmp_path: Path, pd: PipedriveStandin, tg: TelegramStandin, embedded_redis: object
) -> None:
    """`channels add --sink notes` skips the Channels API registration; `channels set-sink`
    moves the channel between sinks and shows where it writes now."""
    env = env_with(
        REDIS_URL=embedded_redis.url,  # type: ignore[attr-defined]
        PUBLIC_BASE_URL="https://bridge.example.com",
        PIPEDRIVE_API_TOKEN=API_TOKEN,
        PIPEDRIVE_API_URL=pd.base_url,
        TELEGRAM_API_URL=tg.base_url,
        SECRET_KEY="cli-channels-secret-0123456789abcdef",
        LOG_FORMAT="json",
    )

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "service", *args], cwd=tmp_path, env=env, capture_output=True
        )

    assert run("migrate").returncode == 0
    added = run(
        "channels", "add", "telegram", "--name", "Bot", "--sink", "notes",
        "-c", "bot_token=777003:cli-token",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr.decode()
    channel = json.loads(added.stdout)
    assert (channel["sink"], channel["sink_setting"]) == ("notes", "notes")
    assert pd.channels == []
    moved = run("channels", "set-sink", channel["provider_channel_id"], "default")
    assert moved.returncode == 0, moved.stderr.decode()
    shown = json.loads(moved.stdout)
    assert (shown["sink"], shown["sink_setting"]) == ("channels", None)

"""Settings: defaults, validation with a one-line error, and the generated secret key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.config import ConfigError, Settings, ensure_secret_key_file, load_settings


def test_defaults_need_no_configuration() -> None:
    """With nothing set, the service runs on SQLite with an embedded Redis on port 8000."""
    settings = load_settings()
    assert settings.port == 8000
    assert settings.database_url == "sqlite:///./var/pdbridge.db"
    assert settings.redis_url is None
    assert settings.base_url == "http://localhost:8000"
    assert settings.admin_token is None
    assert not settings.single_company


def test_bad_port_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """PORT=abc is refused with a message that names PORT and the bad value."""
    monkeypatch.setenv("PORT", "abc")
    with pytest.raises(ConfigError, match=r"^PORT: .*integer.*'abc'") as caught:
        load_settings()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://localhost"),
        ("PUBLIC_BASE_URL", "example.com"),
        ("LOG_LEVEL", "loud"),
        ("PORT", "70000"),
        ("HTTP_TIMEOUT_SECONDS", "0"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Each malformed variable is refused at start, named in the error."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        load_settings()


def test_short_secret_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SECRET_KEY under 32 characters is refused, and the error does not print the secret."""
    monkeypatch.setenv("SECRET_KEY", "short-but-secret")
    with pytest.raises(ConfigError, match=r"^SECRET_KEY: ") as caught:
        load_settings()
    assert "short-but-secret" not in str(caught.value)


def test_secret_key_list_is_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A comma-separated SECRET_KEY is a rotation list, newest first."""
    monkeypatch.setenv("SECRET_KEY", f"{'n' * 32}, {'o' * 40}")
    assert load_settings().secret_keys == ["n" * 32, "o" * 40]


def test_secret_key_is_generated_once_with_private_mode(tmp_path: Path) -> None:
    """`pdbridge run`'s key is written to ./var/secret.key (0600) once and reused afterwards;
    settings without SECRET_KEY then use that file (a laptop's shell tools beside `run`)."""
    first = ensure_secret_key_file()
    path = Path("var/secret.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert ensure_secret_key_file(path) == first
    assert load_settings().secret_keys == [first]


def test_without_secret_key_settings_never_make_one_up(tmp_path: Path) -> None:
    """With no SECRET_KEY and no key from `pdbridge run`, asking for the keys is a one-line
    error naming SECRET_KEY, and no key file appears: a process with a key of its own could not
    read what the others encrypted."""
    with pytest.raises(ConfigError, match=r"^SECRET_KEY: not set") as caught:
        load_settings().secret_keys  # noqa: B018 -- the property is what is under test
    assert "\n" not in str(caught.value)
    assert not Path("var/secret.key").exists()


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    """A .env file in the working directory configures the service."""
    Path(".env").write_text("PORT=9123\nPUBLIC_BASE_URL=https://bridge.example.com/\n")
    settings = Settings()
    assert settings.port == 9123
    assert settings.base_url == "https://bridge.example.com"

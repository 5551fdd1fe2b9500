"""Settings from the environment and `.env`: one typed, validated object.

Every variable of interface.md lives here, so a bad value is refused once, at start, with a
message that names the variable (see `load_settings`).
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.redis_url import is_sentinel, parse_sentinel_url

VAR_DIR = Path("var")
SECRET_KEY_FILE = VAR_DIR / "secret.key"
MIN_SECRET_LENGTH = 32
#: The one line a process that needs the shared key prints when it has none.
NO_SHARED_KEY = (
    "SECRET_KEY: not set; every web and worker process needs the same key (32+ characters,"
    " e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`); only `pdbridge run`"
    " generates one"
)
#: `s3://bucket` or `s3://bucket/prefix`: a DNS-style bucket name, then a relative key prefix.
_S3_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9!_.*'()/-]*)?")


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


class Settings(BaseSettings):
    """The service's whole configuration; field names are the env variables in lower case."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    host: str = "0.0.0.0"  # noqa: S104 -- a web service behind a PaaS router must listen on all interfaces
    port: int = Field(default=8000, ge=1, le=65535)
    web_concurrency: int = Field(default=1, ge=1, le=64)
    public_base_url: str | None = None
    database_url: str = "sqlite:///./var/pdbridge.db"
    redis_url: str | None = None
    secret_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    pipedrive_client_id: str | None = None
    pipedrive_client_secret: SecretStr | None = None
    pipedrive_oauth_url: str = "https://oauth.pipedrive.com"
    pipedrive_api_url: str | None = None
    pipedrive_api_token: SecretStr | None = None
    #: How long a daily-budget park lasts before a probe call tries again (doc: 15-30 minutes).
    pipedrive_budget_probe_seconds: float = Field(default=1200.0, gt=0)
    #: Where conversations go in Pipedrive (a channel's own `sink` wins): the Channels API,
    #: notes on the matched person and deal, or channels until Pipedrive says the API is gone.
    pipedrive_sink: Literal["channels", "notes", "auto"] = "auto"
    #: Notes sink: how long one note collects a conversation's lines before a new note starts.
    notes_window_seconds: float = Field(default=600.0, gt=0, le=7 * 24 * 3600)
    #: Notes sink: a CRM note whose first line starts with this is sent to the customer.
    notes_reply_marker: str = Field(default="/reply", min_length=1, max_length=40)
    #: Notes sink: which open deal of the person a conversation's notes also attach to.
    notes_deal_policy: Literal["never", "single", "newest"] = "single"
    #: Notes sink: create a person when none matches (a channel's own choice wins).
    notes_create_persons: bool = True
    #: Notes sink: how long a person match (address -> person) is cached.
    notes_match_ttl_seconds: float = Field(default=3600.0, ge=0)
    #: How long an outside HTTP call (Pipedrive, a provider) may wait for an answer.
    http_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    telegram_api_url: str = "https://api.telegram.org"
    whatsapp_graph_url: str = "https://graph.facebook.com/v21.0"
    twilio_api_url: str = "https://api.twilio.com"
    #: Retention, in days (service/retention.py): recorded webhook bodies (and the dedupe keys
    #: and erasure tombstones they carry), delivered messages, re-hosted media files, and dead
    #: letters once replayed. Nothing that is not yet delivered is pruned.
    retention_payload_days: int = Field(default=14, ge=1, le=36500)
    retention_message_days: int = Field(default=90, ge=1, le=36500)
    retention_media_days: int = Field(default=30, ge=1, le=36500)
    retention_dead_letter_days: int = Field(default=30, ge=1, le=36500)
    #: `local`, `database` or `s3://bucket/prefix`; unset: `local` for `run`, `database` for
    #: `web` and `worker` (see `service.media_stores`).
    media_store: str | None = None
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str | None = None
    log_format: Literal["json", "console"] | None = None
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator(
        "log_level", "log_format", "pipedrive_sink", "notes_deal_policy", mode="before"
    )
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "public_base_url",
        "pipedrive_oauth_url",
        "pipedrive_api_url",
        "telegram_api_url",
        "whatsapp_graph_url",
        "twilio_api_url",
        "aws_endpoint_url",
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("must be sqlite:///PATH or postgresql://...")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        if is_sentinel(value):
            parse_sentinel_url(value)
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be redis://host:port/db or redis+sentinel://host:port/MASTER")
        return value

    @field_validator("media_store")
    @classmethod
    def _media_store(cls, value: str | None) -> str | None:
        if not value:
            return None
        if value in ("local", "database") or _S3_URL.fullmatch(value):
            return value.rstrip("/")
        raise ValueError("must be local, database or s3://bucket/prefix")

    @field_validator(
        "secret_key",
        "admin_token",
        "pipedrive_api_token",
        "aws_secret_access_key",
        "aws_access_key_id",
        "aws_region",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("secret_key")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and any(
            len(k.strip()) < MIN_SECRET_LENGTH for k in value.get_secret_value().split(",")
        ):
            raise ValueError(f"every key must have {MIN_SECRET_LENGTH} or more characters")
        return value

    @property
    def base_url(self) -> str:
        """The public URL providers and Pipedrive reach us at."""
        return self.public_base_url or f"http://localhost:{self.port}"

    @cached_property
    def secret_keys(self) -> list[str]:
        """The encryption keys, newest first. Without SECRET_KEY only the key `pdbridge run`
        generated into ./var is used (a laptop's shell tools); nothing else ever generates one,
        since a process with a key of its own cannot read what the others encrypted."""
        if self.secret_key is not None:
            return [k.strip() for k in self.secret_key.get_secret_value().split(",") if k.strip()]
        if SECRET_KEY_FILE.exists():
            return [ensure_secret_key_file()]
        raise ConfigError(NO_SHARED_KEY)

    @property
    def single_company(self) -> bool:
        """With a personal API token the service runs for one company, without OAuth."""
        return self.pipedrive_api_token is not None


def ensure_secret_key_file(path: Path = SECRET_KEY_FILE) -> str:
    """Read the generated key, creating it once (atomically, mode 0600) when absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if len(key) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"SECRET_KEY: {path} holds a key shorter than 32 characters"
            ) from None
        return key
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def load_settings() -> Settings:
    """Build the settings, turning pydantic's report into a one-line `ConfigError`."""
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        value = first.get("input")
        shown = "" if "secret" in name.lower() or "token" in name.lower() else f" (got {value!r})"
        raise ConfigError(redact(f"{name}: {first['msg']}{shown}")) from None


#: The password part of `scheme://user:password@host` (database and Redis URLs).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")


def redact(text: str) -> str:
    """`text` with every URL password replaced by `***`: error lines go to logs and terminals."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def exit_on_config_error(error: ConfigError) -> None:
    """Print the one-line error operators act on, and exit 2 like a usage error."""
    sys.stderr.write(f"pdbridge: invalid configuration: {error}\n")
    raise SystemExit(2)

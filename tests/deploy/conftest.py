"""Shared helpers for the static checks of deploy/: paths and the variables pdbridge reads."""

from __future__ import annotations

from pathlib import Path

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

#: Variables the service reads that Settings does not hold (the media store's, per interface.md)
#: or that uvicorn reads itself.
OTHER_KNOWN = {
    "MEDIA_STORE",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "FORWARDED_ALLOW_IPS",
}
#: Every variable a deployment may set on a pdbridge container.
KNOWN_VARIABLES = {name.upper() for name in Settings.model_fields} | OTHER_KNOWN
#: Variables that hold credentials: they come from a Secret or an env file, never inline.
SECRET_VARIABLES = {
    "SECRET_KEY",
    "ADMIN_TOKEN",
    "PIPEDRIVE_CLIENT_SECRET",
    "PIPEDRIVE_API_TOKEN",
    "DATABASE_URL",
    "REDIS_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}

"""Which `MediaStore` a process uses: `MEDIA_STORE`, or the default for its role.

`pdbridge run` keeps files in `./var/media` (one machine, one folder). `web` and `worker` may
run on different machines with no shared disk, so they default to the database every process
already shares; `s3://bucket/prefix` is the choice for production.
"""

from __future__ import annotations

import os

from service.config import Settings
from service.media import LocalMediaStore, MediaStore
from service.store import Database

#: `MEDIA_STORE` when unset, by command: only `run` (and what it starts) keeps a local folder.
ROLE_DEFAULTS = {"web": "database", "worker": "database"}
LOCAL = "local"


def with_role_default(settings: Settings, role: str) -> Settings:
    """`settings` with `MEDIA_STORE` set to the role's default when the operator left it unset,
    also in the environment, so that processes this one starts (uvicorn's workers, `run`'s
    children) make the same choice."""
    if settings.media_store is not None:
        return settings
    choice = ROLE_DEFAULTS.get(role, LOCAL)
    os.environ["MEDIA_STORE"] = choice
    return settings.model_copy(update={"media_store": choice})


def media_store_for(settings: Settings, db: Database) -> MediaStore:
    """The store `settings.media_store` names (`local` when unset)."""
    choice = settings.media_store or LOCAL
    if choice == "database":
        from service.store.media_blobs import DatabaseMediaStore

        return DatabaseMediaStore(db)
    if choice.startswith("s3://"):
        from service.media_s3 import S3MediaStore

        return S3MediaStore.from_settings(choice, settings)
    return LocalMediaStore()

"""``PipedriveStandin``: the emulator assembled from its parts, with lifecycle, clock and routes."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Self

from starlette.applications import Starlette
from starlette.routing import Route

from sandbox.pipedrive.api import ApiHandler, ApiMixin
from sandbox.pipedrive.channels import ChannelsMixin
from sandbox.pipedrive.contract import ADMIN, CALLBACK_TIMEOUT_SECONDS, MESSAGING
from sandbox.pipedrive.crm import CrmMixin
from sandbox.pipedrive.manifest_caller import Callback, ManifestCallerMixin, _Job
from sandbox.pipedrive.oauth import OAuthMixin, _Code, _Token, _User
from sandbox.pipedrive.recording import RecordedRequest, RecordingMixin, _Fault
from sandbox.server import Served, ServerThread

if TYPE_CHECKING:
    from collections.abc import Callable


class PipedriveStandin(
    ManifestCallerMixin, ChannelsMixin, ApiMixin, OAuthMixin, RecordingMixin, CrmMixin, Served
):
    """The stand-in server. Use as a context manager, or call ``start()`` and ``stop()``."""

    def __init__(
        self,
        *,
        client_id: str = "test-client-id",
        client_secret: str = "test-client-secret",
        api_token: str | None = None,
        redirect_uri: str | None = None,
        company_id: int = 1001,
        user_id: int = 2001,
        company_domain: str = "acme",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.api_token = api_token
        self.redirect_uri = redirect_uri  # the registered callback URL; None accepts any
        self.company_id = company_id  # identity of GET /oauth/authorize and the api_token
        self.user_id = user_id
        # Knobs; set them before the requests they should affect.
        self.api_domain: str | None = None  # None: base_url
        self.access_token_ttl = 3599
        self.rotate_refresh_tokens = True
        self.daily_budget = 30_000
        self.daily_budget_headers = True
        self.retry_after_on_429 = False
        self.webhook_limit = 40
        self.require_receive_attachments = True

        self._clock = clock
        self._offset = 0.0
        self._lock = threading.Lock()
        self._users: dict[int, _User] = {}
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Token] = {}
        self._refresh: dict[str, _Token] = {}
        self._issued: list[str] = []  # every code and token ever handed out
        self._api_tokens: dict[str, tuple[int, int]] = {}
        self._requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._stalls: list[list[Any]] = []  # [path_prefix, seconds, remaining]
        self._refresh_calls = 0
        self._burst_limit = 80
        self._burst_window = 2.0
        self._windows: dict[str, deque[float]] = {}  # token → recent request times
        self._reset_until: dict[str, float] = {}
        self._inside_reset_window = 0
        self._daily_spent: dict[int, tuple[int, int]] = {}  # company → (day number, tokens spent)
        self._webhooks: dict[int, dict[str, Any]] = {}
        self._next_webhook_id = 1
        self._channels: dict[str, dict[str, Any]] = {}  # by provider_channel_id
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}  # by (channel, message id)
        # Manifest callbacks. _changed (on the same lock) wakes wait_for_callbacks/wait_for_idle.
        self._manifest: dict[str, Any] | None = None
        self._seen: dict[str, set[str]] = {}  # provider_channel_id → conversation ids known
        self._callbacks: list[Callback] = []
        self._pending = 0  # callback jobs queued or running
        self._changed = threading.Condition(self._lock)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None

        self._crm_init()
        self._add_user(company_id, user_id, is_admin=True, company_domain=company_domain)
        if api_token is not None:
            self._api_tokens[api_token] = (company_id, user_id)

        self.app = Starlette(routes=self._routes())

    def start(self) -> Self:
        """Serve on a free port of 127.0.0.1 in a background thread; returns when it accepts.

        Also starts the worker thread that makes the manifest callbacks.
        """
        if self._server is not None:
            raise RuntimeError("already started")
        try:
            server = ServerThread(self.app, name="pipedrive-standin").start()
        except RuntimeError as exc:
            raise RuntimeError("Pipedrive stand-in did not start") from exc
        self._server, self._port = server, server.port
        jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        stopping = threading.Event()
        worker = threading.Thread(
            target=self._work, args=(jobs, stopping), name="pipedrive-callbacks", daemon=True
        )
        with self._lock:
            self._jobs, self._stopping, self._worker = jobs, stopping, worker
        worker.start()
        return self

    def stop(self) -> None:
        """Stop the callbacks (queued ones are dropped; one in flight may take up to its
        10 s timeout) and the server, and wait for both threads. Safe to call twice."""
        with self._lock:
            worker, self._worker = self._worker, None
            self._stopping.set()
            self._jobs.put(None)
        if worker is not None:
            worker.join(timeout=CALLBACK_TIMEOUT_SECONDS + 5)
        if self._server is not None:
            self._server.stop()
        self._server = None

    @property
    def api_v1_url(self) -> str:
        return f"{self.base_url}/api/v1"

    def now(self) -> float:
        """The stand-in's clock: the injected clock plus everything ``advance()`` added."""
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward (code and token expiry, burst windows, the daily reset)."""
        with self._lock:
            self._offset += seconds

    # ================================================================== internals

    def _routes(self) -> list[Route]:
        # (method, path, handler, token cost, OAuth scope needed). Costs: doc §3.5 (webhooks;
        # users/me is a "get single entity") and messaging doc §2.0 (channels).
        channel = "/v1/channels/{channel_id}"
        conversation = channel + "/conversations/{conversation_id}"
        api: list[tuple[str, str, ApiHandler, int, str | None]] = [
            ("GET", "/v1/users/me", self._users_me, 2, None),
            ("GET", "/v1/webhooks", self._list_webhooks, 10, ADMIN),
            ("POST", "/v1/webhooks", self._add_webhook, 10, ADMIN),
            ("DELETE", "/v1/webhooks/{webhook_id}", self._delete_webhook, 6, ADMIN),
            ("POST", "/v1/channels", self._add_channel, 10, MESSAGING),
            ("POST", "/v1/channels/messages/receive", self._receive_message, 10, MESSAGING),
            ("DELETE", channel, self._delete_channel, 6, MESSAGING),
            ("DELETE", conversation, self._delete_conversation, 6, MESSAGING),
            *self._crm_routes(),  # persons, deals, notes: sandbox/pipedrive/crm.py
        ]
        routes = [
            Route("/oauth/authorize", self._endpoint(self._authorize), methods=["GET"]),
            Route("/oauth/token", self._endpoint(self._token), methods=["POST"]),
            Route("/oauth/revoke", self._endpoint(self._revoke), methods=["POST"]),
        ]
        for prefix in ("/api", ""):
            for method, path, handler, cost, scope in api:
                endpoint = self._endpoint(self._api(handler, cost, scope))
                routes.append(Route(prefix + path, endpoint, methods=[method]))
            unknown = self._endpoint(self._api(self._unknown_path, 0, None))
            any_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
            routes.append(Route(prefix + "/v1/{rest:path}", unknown, methods=any_method))
            routes.append(Route(prefix + "/v2/{rest:path}", unknown, methods=any_method))
        return routes

"""The calls Pipedrive makes to the app's manifest endpoints (getConversations, postMessage...),
made from a worker thread and checked against the contract."""

from __future__ import annotations

import copy
import enum
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias
from urllib.parse import urlencode

import httpx2

from sandbox.pipedrive.contract import (
    CALLBACK_CONVERSATIONS_LIMIT,
    CALLBACK_MESSAGES_LIMIT,
    CALLBACK_PAGE_LIMIT,
    CALLBACK_TIMEOUT_SECONDS,
    MANIFEST_ENDPOINTS,
    _manifest_definition_problems,
    _manifest_url,
    _multipart,
    _response_body,
    response_problems,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


@dataclass(slots=True)
class Callback:
    """One call the stand-in made to a manifest endpoint of the app, and what it made of it."""

    endpoint: str  # the manifest key, e.g. "getConversations"
    method: str
    url: str  # as sent, with the query
    params: dict[str, str]  # the query
    status: int | None  # None: no HTTP answer (refused, timed out)
    body: Any  # the parsed JSON; the text when it was not JSON; None without an answer
    problems: list[str]  # [] when the answer is what Pipedrive expects
    time: float  # stand-in clock when the answer arrived


@dataclass(frozen=True, slots=True)
class _Job:
    endpoint: str  # "getConversations" or "getConversationById"
    provider_channel_id: str
    conversation_id: str | None = None


class _Own(enum.Enum):
    """The default of ``auth`` arguments: the stand-in's own client_id:client_secret."""

    CREDENTIALS = enum.auto()


OWN_CREDENTIALS: Final = _Own.CREDENTIALS


Auth: TypeAlias = "tuple[str, str] | Literal[_Own.CREDENTIALS] | None"


class ManifestCallerMixin:
    """The manifest calls of ``PipedriveStandin``, made from a worker thread."""

    def set_manifest(self, manifest: Mapping[str, Any] | None) -> None:
        """Use the app's manifest (what ``pdbridge manifest`` prints) from now on; None: no
        callbacks. Raises ValueError for a manifest Developer Hub would refuse (§3.1)."""
        if manifest is not None:
            problems = _manifest_definition_problems(manifest)
            if problems:
                raise ValueError("invalid manifest: " + "; ".join(problems))
        with self._lock:
            self._manifest = copy.deepcopy(dict(manifest)) if manifest is not None else None

    @property
    def manifest(self) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._manifest)

    @property
    def callbacks(self) -> list[Callback]:
        """The manifest calls made so far, in the order their answers arrived."""
        with self._lock:
            return list(self._callbacks)

    def clear_callbacks(self) -> None:
        with self._lock:
            self._callbacks.clear()

    def wait_for_callbacks(self, n: int, timeout: float = 10.0) -> list[Callback]:
        """Block until at least ``n`` callbacks completed; they are returned (all of them).

        Raises AssertionError, listing those there are, when ``timeout`` seconds pass first.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._callbacks) >= n, timeout):
                raise AssertionError(
                    f"expected at least {n} manifest callbacks within {timeout} s, "
                    f"got {len(self._callbacks)}: {self._callbacks!r}"
                )
            return list(self._callbacks)

    def wait_for_idle(self, timeout: float = 10.0) -> list[Callback]:
        """Block until no callback is queued or running; returns all callbacks.

        The calls are queued before the triggering request is answered, so after this returns
        a request that would have caused one has caused it. AssertionError on timeout.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: self._pending == 0, timeout):
                raise AssertionError(
                    f"manifest callbacks still busy after {timeout} s ({self._pending} jobs); "
                    f"done: {self._callbacks!r}"
                )
            return list(self._callbacks)

    def seen_conversations(self, provider_channel_id: str) -> set[str]:
        """The conversation ids the stand-in treats as known for the channel (no fetch on
        ``receive``): those of ``receive`` calls and of valid getConversations pages."""
        with self._lock:
            return set(self._seen.get(provider_channel_id, ()))

    def call_manifest(
        self,
        endpoint: str,
        *,
        method: str | None = None,
        params: Mapping[str, Any] | None = None,
        auth: Auth = OWN_CREDENTIALS,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        **path_vars: str,
    ) -> httpx2.Response:
        """Call a manifest endpoint of the app now, as Pipedrive would, and return the answer.

        ``path_vars`` fill the URL's ``:variables`` (providerChannelId, sourceConversationId,
        sourceMessageId, senderId; percent-encoded). ``method``: None for the documented one.
        ``auth``: HTTP Basic credentials, the stand-in's own by default, None for none.
        The answer is neither recorded nor checked: see ``response_problems``.
        """
        with self._lock:
            manifest = self._manifest
        if manifest is None:
            raise RuntimeError("no manifest: call set_manifest() first")
        if endpoint not in MANIFEST_ENDPOINTS:
            raise ValueError(f"unknown manifest endpoint {endpoint!r}")
        url = _manifest_url(manifest, endpoint, path_vars)
        credentials = (self.client_id, self.client_secret) if auth is OWN_CREDENTIALS else auth
        with httpx2.Client(timeout=CALLBACK_TIMEOUT_SECONDS, trust_env=False) as client:
            return client.request(
                method or MANIFEST_ENDPOINTS[endpoint][0],
                url,
                params=params,
                auth=credentials,
                headers=headers,
                content=content,
            )

    def post_message(
        self,
        provider_channel_id: str,
        *,
        conversation_id: str,
        sender_id: str,
        recipient_ids: Sequence[str],
        message: str,
        files: Sequence[tuple[str, bytes, str]] = (),
        recipient_field: str = "recipientIds[]",
        file_field: str = "files",
        auth: Auth = OWN_CREDENTIALS,
    ) -> httpx2.Response:
        """An agent's reply from the Pipedrive inbox: ``postMessage`` as multipart/form-data
        (§3.6). Parts in order: ``message``, ``senderId``, ``conversationId``, one
        ``recipient_field`` per recipient, then one ``file_field`` part per (filename, content,
        content-type) in ``files``. Returns the answer, unchecked."""
        fields = [
            ("message", message),
            ("senderId", sender_id),
            ("conversationId", conversation_id),
        ]
        fields += [(recipient_field, recipient) for recipient in recipient_ids]
        parts = [(file_field, name, data, content_type) for name, data, content_type in files]
        body, content_type = _multipart(fields, parts)
        return self.call_manifest(
            "postMessage",
            auth=auth,
            headers={"content-type": content_type},
            content=body,
            providerChannelId=provider_channel_id,
        )

    def _enqueue_locked(self, job: _Job) -> None:
        """Queue a callback (the caller holds the lock); nothing without manifest or worker."""
        if self._manifest is None or self._worker is None:
            return
        self._pending += 1
        self._jobs.put(job)

    def _work(self, jobs: queue.SimpleQueue[_Job | None], stopping: threading.Event) -> None:
        with httpx2.Client(timeout=CALLBACK_TIMEOUT_SECONDS, trust_env=False) as client:
            while (job := jobs.get()) is not None:
                try:
                    if not stopping.is_set():
                        self._run_job(client, job)
                except Exception as exc:  # noqa: BLE001 - a stand-in bug must show, not hang waits
                    problem = f"$: the stand-in failed: {type(exc).__name__}: {exc}"
                    self._add_callback(
                        Callback(job.endpoint, "", "", {}, None, None, [problem], self.now())
                    )
                finally:
                    with self._changed:
                        self._pending -= 1
                        self._changed.notify_all()

    def _run_job(self, client: httpx2.Client, job: _Job) -> None:
        channel = job.provider_channel_id
        if job.endpoint == "getConversationById":
            assert job.conversation_id is not None
            params = {"messages_limit": str(CALLBACK_MESSAGES_LIMIT)}
            path_vars = {"providerChannelId": channel, "sourceConversationId": job.conversation_id}
            callback = self._call(client, job.endpoint, params, path_vars)
            if callback is not None:
                self._add_callback(callback)
            return
        cursors: set[str] = set()
        after: str | None = None
        for _ in range(CALLBACK_PAGE_LIMIT):
            params = {
                "conversations_limit": str(CALLBACK_CONVERSATIONS_LIMIT),
                "messages_limit": str(CALLBACK_MESSAGES_LIMIT),
            }
            if after is not None:
                params["after"] = after
            callback = self._call(
                client, "getConversations", params, {"providerChannelId": channel}
            )
            if callback is None:
                return
            after = None
            if not callback.problems:  # a page with problems is refused: paging ends there
                body = callback.body
                with self._lock:
                    self._seen.setdefault(channel, set()).update(c["id"] for c in body["data"])
                cursor = (body.get("additional_data") or {}).get("after")
                if cursor and cursor in cursors:
                    callback.problems.append(
                        f"$.additional_data.after: {cursor!r} was given before; paging stopped"
                    )
                elif cursor:
                    cursors.add(cursor)
                    after = cursor
            self._add_callback(callback)
            if after is None:
                return

    def _call(
        self,
        client: httpx2.Client,
        endpoint: str,
        params: dict[str, str],
        path_vars: dict[str, str],
    ) -> Callback | None:
        """Call the endpoint and check the answer; None when the manifest is gone."""
        with self._lock:
            manifest = self._manifest
        if manifest is None:
            return None
        url = _manifest_url(manifest, endpoint, path_vars)
        method = MANIFEST_ENDPOINTS[endpoint][0]
        auth = (self.client_id, self.client_secret)
        try:
            response = client.request(method, url, params=params, auth=auth)
        except httpx2.HTTPError as exc:
            problem = f"$: no answer: {type(exc).__name__}: {exc}"
            sent = f"{url}?{urlencode(params)}"
            return Callback(endpoint, method, sent, params, None, None, [problem], self.now())
        body, _ = _response_body(response)
        problems = response_problems(endpoint, response, path_vars=path_vars)
        return Callback(
            endpoint,
            method,
            str(response.request.url),
            params,
            response.status_code,
            body,
            problems,
            self.now(),
        )

    def _add_callback(self, callback: Callback) -> None:
        with self._changed:
            self._callbacks.append(callback)
            self._changed.notify_all()

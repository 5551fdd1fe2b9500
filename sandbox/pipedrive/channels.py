"""The Channels API of the emulator: channels, receive (schema-checked), conversation and channel
deletion, and what it has received."""

from __future__ import annotations

import copy
import uuid
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from sandbox.pipedrive.api import _Caller
from sandbox.pipedrive.contract import (
    CHANNELS_ERROR_INFO,
    CREATE_CHANNEL_INVALID_TEXT,
    CREATE_CHANNEL_REQUEST_SCHEMA,
    RECEIVE_INVALID_TEXT,
    _pd_time,
    _receive_schema,
    _schema_problem,
)
from sandbox.pipedrive.manifest_caller import _Job
from sandbox.pipedrive.recording import RecordedRequest

if TYPE_CHECKING:
    from collections.abc import Mapping


def _channels_error(status: int, code: str, message: str) -> Response:
    """The Channels API error envelope (messaging doc §2.0)."""
    body = {
        "success": False,
        "error": message,
        "error_info": CHANNELS_ERROR_INFO,
        "additional_data": {"code": code},
    }
    return JSONResponse(body, status)


class ChannelsMixin:
    """The Channels API of the emulator for ``PipedriveStandin``."""

    @property
    def channels(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._channels.values()]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Messages received through ``receive``, in first-seen order, latest version of each."""
        with self._lock:
            return [copy.deepcopy(m) for m in self._messages.values()]

    def received(
        self, provider_channel_id: str, conversation_id: str | None = None
    ) -> list[dict[str, Any]]:
        """``messages`` of one channel (and conversation): the latest version of each message
        ``receive`` stored, in order of first arrival. Every single call is in ``requests``."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for (channel, _), m in self._messages.items()
                if channel == provider_channel_id
                and (conversation_id is None or m["conversation_id"] == conversation_id)
            ]

    def _add_channel(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        problem = _schema_problem(CREATE_CHANNEL_REQUEST_SCHEMA, rec.json)
        if problem is not None:
            rec.note = problem
            return _channels_error(400, "INVALID_BODY", CREATE_CHANNEL_INVALID_TEXT)
        if not self._users[caller.user_id].is_admin:
            rec.note = "only admins can register channels"
            return _channels_error(403, "ADMIN_ONLY", "Only admins can register channels")
        body: dict[str, Any] = rec.json
        provider_channel_id = body["provider_channel_id"]
        # A second registration of the same provider_channel_id is undocumented (messaging doc
        # §2.1); we update the channel and keep its Pipedrive id, like an upsert.
        existing = self._channels.get(provider_channel_id)
        channel = {
            "id": existing["id"] if existing else str(uuid.uuid4()),
            "name": body["name"],
            "avatar_url": body.get("avatar_url"),
            "provider_channel_id": provider_channel_id,
            "marketplace_client_id": self.client_id,
            "pd_company_id": caller.company_id,
            "pd_user_id": caller.user_id,
            "created_at": existing["created_at"] if existing else _pd_time(self.now()),
            "provider_type": body.get("provider_type", "other"),
            "template_support": body.get("template_support", False),
        }
        self._channels[provider_channel_id] = channel
        # "Right after registration, Pipedrive calls your getConversations" (messaging doc §2.1).
        self._seen.setdefault(provider_channel_id, set())
        self._enqueue_locked(_Job("getConversations", provider_channel_id))
        return JSONResponse({"success": True, "data": dict(channel)})

    def _own_channel(self, caller: _Caller, provider_channel_id: str) -> dict[str, Any] | None:
        channel = self._channels.get(provider_channel_id)
        if channel is None or channel["pd_company_id"] != caller.company_id:
            return None
        return channel

    def _delete_channel(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        provider_channel_id = str(params["channel_id"])
        # 404 for an unknown channel is not documented for this endpoint; it is what the
        # troubleshooting page says happens when Pipedrive's internal UUID is sent instead.
        if self._own_channel(caller, provider_channel_id) is None:
            rec.note = "unknown provider_channel_id"
            return _channels_error(404, "NOT_FOUND", "Channel not found.")
        del self._channels[provider_channel_id]
        for key in [k for k in self._messages if k[0] == provider_channel_id]:
            del self._messages[key]
        self._seen.pop(provider_channel_id, None)
        return JSONResponse({"success": True})

    def _delete_conversation(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        channel = self._own_channel(caller, str(params["channel_id"]))
        if channel is None:
            rec.note = "unknown provider_channel_id"
            return _channels_error(404, "NOT_FOUND", "Channel not found.")
        if channel["pd_user_id"] != caller.user_id:
            rec.note = "only the installation owner may delete conversations"
            return _channels_error(
                403, "FORBIDDEN_USER_REQUEST", "Only the app owner can delete conversations"
            )
        # An unknown conversation is not an error: nothing is left to delete.
        conversation = (channel["provider_channel_id"], str(params["conversation_id"]))
        for key, message in list(self._messages.items()):
            if (key[0], message["conversation_id"]) == conversation:
                del self._messages[key]
        self._seen.get(conversation[0], set()).discard(conversation[1])
        return JSONResponse({"success": True})

    def _receive_message(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        schema = _receive_schema(self.require_receive_attachments)
        problem = _schema_problem(schema, rec.json)
        if problem is not None:
            rec.note = problem
            return _channels_error(400, "INVALID_RECEIVE_MESSAGE_PAYLOAD", RECEIVE_INVALID_TEXT)
        body: dict[str, Any] = rec.json
        # Unknown channel → 404 is UNCONFIRMED (messaging doc §2.2); it is the documented cause
        # of 404s in general (§1), so a test that forgot to register the channel fails loudly.
        if self._own_channel(caller, body["channel_id"]) is None:
            rec.note = "unknown channel_id"
            return _channels_error(404, "NOT_FOUND", "Channel not found.")
        message = copy.deepcopy(body)
        self._messages[(body["channel_id"], body["id"])] = message  # upsert by message id
        # A conversation_id new to Pipedrive makes it call getConversationById (§2.2, §4.3).
        seen = self._seen.setdefault(body["channel_id"], set())
        if body["conversation_id"] not in seen:
            seen.add(body["conversation_id"])
            job = _Job("getConversationById", body["channel_id"], body["conversation_id"])
            self._enqueue_locked(job)
        return JSONResponse({"success": True, "data": copy.deepcopy(message)})

"""The Channels API calls (messaging contract §2): register, delete, delete a conversation,
and `receive`, which creates a message or updates its status (an upsert keyed by our id)."""

from __future__ import annotations

from typing import Any

from service.models import Channel
from service.pipedrive.client import PipedriveClient
from service.pipedrive.errors import Forbidden, InvalidPayload, NotFound
from service.store.installations import Installation


class ChannelRegistrationError(Exception):
    """Pipedrive refused the channel; `code` is its machine code (INVALID_BODY, ADMIN_ONLY)."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self.code = code


async def register(
    client: PipedriveClient,
    inst: Installation,
    channel: Channel,
    *,
    provider_type: str,
    template_support: bool,
) -> dict[str, Any]:
    """`POST /channels`; returns Pipedrive's channel (its `id` is Pipedrive-internal)."""
    body = {
        "name": channel.name,
        "provider_channel_id": channel.provider_channel_id,
        "provider_type": provider_type,
        "template_support": template_support,
    }
    try:
        data: dict[str, Any] = await client.post(inst, "/channels", body)
    except Forbidden as error:
        message = (
            "only Pipedrive admins can register channels: install the app as an admin user"
            if error.code == "ADMIN_ONLY"
            else str(error)
        )
        raise ChannelRegistrationError(message, error.code) from error
    except InvalidPayload as error:
        raise ChannelRegistrationError(
            f"Pipedrive refused the channel: {error}", error.code
        ) from error
    return data


async def delete(client: PipedriveClient, inst: Installation, channel: Channel) -> bool:
    """`DELETE /channels/{provider_channel_id}`; False when Pipedrive no longer had it."""
    try:
        await client.delete(inst, f"/channels/{channel.provider_channel_id}")
    except NotFound:
        return False
    return True


async def delete_conversation(
    client: PipedriveClient, owner: Installation, channel: Channel, conversation_id: str
) -> bool:
    """Delete a conversation with the owner's token; False when Pipedrive did not know it.
    Raises Forbidden (`FORBIDDEN_USER_REQUEST`) when the token is not the owner's."""
    try:
        await client.delete(
            owner, f"/channels/{channel.provider_channel_id}/conversations/{conversation_id}"
        )
    except NotFound:
        return False
    return True


async def receive(client: PipedriveClient, inst: Installation, payload: dict[str, Any]) -> Any:
    """`POST /channels/messages/receive` with a body valid against ChannelsReceiveMessageRequest."""
    return await client.post(inst, "/channels/messages/receive", payload)

"""The Messaging App Extension manifest (messaging contract §3.1) for our public URL."""

from __future__ import annotations

from typing import Any

MANIFEST_VERSION = "v202101"
#: Where the manifest endpoints live; `handlers/manifest.py` serves exactly these paths.
PREFIX = "/pipedrive/channels"


def manifest(base_url: str) -> dict[str, Any]:
    channel = f"{base_url}{PREFIX}/:providerChannelId"
    return {
        "version": MANIFEST_VERSION,
        "endpoints": {
            "getConversations": f"{channel}/conversations",
            "getConversationById": f"{channel}/conversations/:sourceConversationId",
            "getMessageById": (
                f"{channel}/conversations/:sourceConversationId/messages/:sourceMessageId"
            ),
            "getSenderById": f"{channel}/senders/:senderId",
            "getTemplates": f"{channel}/templates",
            "postMessage": f"{channel}/messages",
            "deleteChannelById": channel,
        },
    }

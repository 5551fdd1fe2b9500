"""Notes sink: which Pipedrive person (and deal) a conversation's notes go to.

A conversation keeps its person once found (a `person_links` row of kind `conversation`, which a
person merge in Pipedrive re-points). The first time, the customer is looked up:

- WhatsApp and Twilio by phone, through the v2 persons search with `exact_match`: the E.164 form
  first, then the digits alone (Pipedrive keeps phones as typed);
- Telegram by the handle we stored for that Telegram user (`person_links` kind `telegram`), then
  by its `t.me` username in the persons' custom fields.

A match is cached in Redis for NOTES_MATCH_TTL_SECONDS, since the search has its own, tight,
rate limit. Several matches: the first (Pipedrive's best score) is taken and the log names the
others. None: the person is created (display name, and the phone when there is one) unless the
channel forbids it, in which case the lines wait and the log says why.
"""

from __future__ import annotations

import re
from typing import Any

from service import redis_keys
from service.context import Services
from service.logging import get_logger
from service.models import Channel, Conversation
from service.pipedrive.errors import NotFound
from service.store import person_links
from service.store.installations import Installation

log = get_logger(__name__)

CONVERSATION_REF = person_links.CONVERSATION


def conversation_ref(conversation: Conversation) -> str:
    """The `ref_id` of a conversation's person link (`person_links.link_conversation`)."""
    return f"{conversation.channel_id}:{conversation.external_id}"


TELEGRAM_REF = "telegram"


def _end_user_name(conversation: Conversation) -> str:
    for person in conversation.participants:
        if person.role == "end_user" and person.name.strip():
            return person.name.strip()
    return conversation.address


def _end_user_id(conversation: Conversation) -> str | None:
    for person in conversation.participants:
        if person.role == "end_user":
            return person.external_id
    return None


def phone_of(channel: Channel, conversation: Conversation) -> str | None:
    """The customer's phone in E.164, for the providers whose address is one."""
    if channel.provider not in ("whatsapp", "twilio"):
        return None
    digits = re.sub(r"\D", "", conversation.address.removeprefix("whatsapp:"))
    return f"+{digits}" if 6 <= len(digits) <= 15 else None


def search_terms(channel: Channel, conversation: Conversation) -> list[tuple[str, str]]:
    """(fields, term) pairs to try, in order."""
    phone = phone_of(channel, conversation)
    if phone is not None:
        return [("phone", phone), ("phone", phone[1:])]
    if channel.provider == "telegram" and conversation.link.startswith("https://t.me/"):
        return [("custom_fields", "@" + conversation.link.removeprefix("https://t.me/"))]
    return []


class PersonMatcher:
    """Finds, creates and remembers a conversation's person for one installation."""

    def __init__(self, svc: Services, inst: Installation, channel: Channel) -> None:
        self.svc = svc
        self.inst = inst
        self.channel = channel
        self.company_id = inst.company_id

    def _cache_key(self, kind: str, value: str) -> str:
        return f"{redis_keys.PERSON_MATCH}{self.company_id}:{kind}:{value}"

    async def person_for(self, conversation: Conversation) -> int | None:
        """The conversation's person, found or created once; None when none may be created."""
        db = self.svc.db
        linked = await person_links.person_for(
            db,
            company_id=self.company_id,
            ref_kind=CONVERSATION_REF,
            ref_id=conversation_ref(conversation),
        )
        if linked is not None:
            return linked
        person_id = await self._match(conversation)
        if person_id is None:
            person_id = await self._create(conversation)
        if person_id is None:
            return None
        await person_links.link_conversation(
            db,
            company_id=self.company_id,
            person_id=person_id,
            channel_id=conversation.channel_id,
            conversation_id=conversation.external_id,
        )
        end_user = _end_user_id(conversation)
        if self.channel.provider == "telegram" and end_user is not None:
            await person_links.link(
                db,
                company_id=self.company_id,
                person_id=person_id,
                ref_kind=TELEGRAM_REF,
                ref_id=end_user,
            )
        return person_id

    async def _match(self, conversation: Conversation) -> int | None:
        redis = self.svc.queue.redis
        cache_key = self._cache_key(self.channel.provider, conversation.address)
        cached = await redis.get(cache_key)
        if cached is not None:
            return int(cached)
        end_user = _end_user_id(conversation)
        if self.channel.provider == "telegram" and end_user is not None:
            handle = await person_links.person_for(
                self.svc.db, company_id=self.company_id, ref_kind=TELEGRAM_REF, ref_id=end_user
            )
            if handle is not None:
                return handle
        for fields, term in search_terms(self.channel, conversation):
            found = await self._search(fields, term)
            if found:
                if len(found) > 1:
                    log.warning(
                        "notes.person_ambiguous",
                        channel=self.channel.provider_channel_id,
                        conversation=conversation.external_id,
                        matches=[p["id"] for p in found],
                        chosen=found[0]["id"],
                        action="notes go to the best match; merge the duplicates in Pipedrive",
                    )
                person_id = int(found[0]["id"])
                ttl = self.svc.settings.notes_match_ttl_seconds
                if ttl > 0:
                    await redis.set(cache_key, str(person_id), px=int(ttl * 1000))
                return person_id
        return None

    async def _search(self, fields: str, term: str) -> list[dict[str, Any]]:
        data = await self.svc.pipedrive.get(
            self.inst,
            "/v2/persons/search",
            term=term,
            fields=fields,
            exact_match="true",
            limit=10,
        )
        items = (data or {}).get("items") or []
        return [i["item"] for i in items if isinstance(i, dict) and isinstance(i.get("item"), dict)]

    async def _create(self, conversation: Conversation) -> int | None:
        allowed = self.channel.create_persons
        if allowed is None:
            allowed = self.svc.settings.notes_create_persons
        if not allowed:
            log.warning(
                "notes.person_unmatched",
                channel=self.channel.provider_channel_id,
                conversation=conversation.external_id,
                action="lines are kept; link a person or allow person creation for the channel",
            )
            return None
        body: dict[str, Any] = {"name": _end_user_name(conversation)}
        phone = phone_of(self.channel, conversation)
        if phone is not None:
            body["phones"] = [{"value": phone, "primary": True, "label": "mobile"}]
        person = await self.svc.pipedrive.post(self.inst, "/v2/persons", body)
        person_id = int(person["id"])
        log.info(
            "notes.person_created",
            channel=self.channel.provider_channel_id,
            conversation=conversation.external_id,
            person_id=person_id,
        )
        return person_id

    async def forget(self, conversation: Conversation, person_id: int) -> None:
        """The person is gone in Pipedrive: drop every link and cached match to it."""
        await person_links.unlink_person(
            self.svc.db, company_id=self.company_id, person_id=person_id
        )
        await self.svc.queue.redis.delete(
            self._cache_key(self.channel.provider, conversation.address)
        )

    async def exists(self, person_id: int) -> bool:
        try:
            await self.svc.pipedrive.get(self.inst, f"/v2/persons/{person_id}")
        except NotFound:
            return False
        return True

    async def deal_for(self, person_id: int, conversation: Conversation) -> int | None:
        """The open deal the notes also attach to, by NOTES_DEAL_POLICY (never, single, newest)."""
        policy = self.svc.settings.notes_deal_policy
        if policy == "never":
            return None
        deals = (
            await self.svc.pipedrive.get(
                self.inst, "/v2/deals", person_id=person_id, status="open", limit=100
            )
            or []
        )
        if not deals:
            return None
        if len(deals) == 1:
            return int(deals[0]["id"])
        if policy == "newest":
            newest = max(deals, key=lambda d: (str(d.get("add_time") or ""), int(d["id"])))
            return int(newest["id"])
        log.info(
            "notes.deal_ambiguous",
            conversation=conversation.external_id,
            person_id=person_id,
            open_deals=[d["id"] for d in deals],
            action="notes attach to the person only",
        )
        return None

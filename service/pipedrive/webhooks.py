"""Pipedrive webhook bodies, v1 and v2, turned into one typed event.

Pipedrive still delivers two payload versions (a webhook created without `version` became v2 in
2025, older ones stay v1), and their fields drift in type: v2 sends ids as strings and v1 as
numbers, a v2 `user` event carries an epoch integer where every other entity carries an ISO
string, and v1 puts a user at `current[0]`. The HTTP handler and the workers should see none of
that, so this module is the one place that knows both shapes: `parse_event` checks what an event
cannot do without (a malformed body is answered 400 with the reason) and accepts the drift the
docs describe; everything else reads `PipedriveEvent`.

Delivery is at least once: Pipedrive retries (v1 `retry`, v2 `meta.attempt`), and each user of a
company who installs the app owns a sibling webhook, so one change arrives once per installer with
a different `webhook_id`. `PipedriveEvent.dedupe_key` names the change, not the delivery.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn

__all__ = ["PipedriveEvent", "WebhookPayloadError", "parse_event"]


class WebhookPayloadError(ValueError):
    """The body is not a Pipedrive webhook we can act on; the message says why (fit for a 400)."""


#: v1 action words in v2's vocabulary. A v1 `merged` is the change of the surviving object (its
#: merged-away sibling gets its own `deleted`), which is exactly how v2 reports a merge.
_V1_ACTIONS: Final = {
    "added": "create",
    "updated": "change",
    "deleted": "delete",
    "merged": "change",
}
_V2_ACTIONS: Final = {"create": "create", "change": "change", "delete": "delete"}

#: Entity names go into keys and logs; Pipedrive's are identifiers ("deal", "activityType").
_ENTITY_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_DIGITS_RE: Final = re.compile(r"[0-9]{1,19}")
#: Ids and epoch counts must fit a signed 64-bit column (and msgpack).
_MAX_WHOLE: Final = 2**63 - 1
_MAX_ID_LENGTH: Final = 100
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _fail(reason: str) -> NoReturn:
    raise WebhookPayloadError(reason)


def _show(value: Any) -> str:
    """A short, safe rendering of an offending value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole_number(value: Any, field: str) -> int:
    """A non-negative integer sent as a JSON number or as a string of digits (ids drift)."""
    if value is None:
        _fail(f"{field} is missing")
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS_RE.fullmatch(value):
        number = int(value)
    if number is not None and 0 <= number <= _MAX_WHOLE:
        return number
    _fail(f"{field} must be a non-negative whole number, got {_show(value)}")


def _id_text(value: Any, field: str) -> str:
    """An object id as text: numbers for most objects, UUID strings for leads."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_WHOLE:
        return str(value)
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_ID_LENGTH:
        return value
    _fail(f"{field} must be a number or a non-empty string, got {_show(value)}")


def _optional_id_text(value: Any, field: str) -> str | None:
    return None if value is None else _id_text(value, field)


def _optional_text(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    _fail(f"{field} must be a string, got {_show(value)}")


def _object(value: Any, field: str) -> dict[str, Any] | None:
    """An entity state: an object, or null. v1 user events wrap it in a one-item array."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, list):
        if not value:
            return None
        if isinstance(value[0], dict):
            first: dict[str, Any] = value[0]
            return first
    _fail(f"{field} must be an object or null, got {_show(value)}")


def _entity(value: Any, field: str) -> str:
    if value is None:
        _fail(f"{field} is missing")
    if isinstance(value, str) and _ENTITY_RE.fullmatch(value):
        return value
    _fail(f"{field} must be an entity name such as 'deal', got {_show(value)}")


def _from_epoch(value: Any, field: str, *, scale: int | None) -> datetime:
    """An epoch count (number or digit string) in units of 1/`scale` s; None guesses the unit."""
    count = _whole_number(value, field)
    if scale is None:
        # v2 user events send seconds; tolerate milli/micro too: 10, 13 and 16 digits today.
        scale = 1 if count < 10**11 else 1_000 if count < 10**14 else 1_000_000
    try:
        return _EPOCH + timedelta(microseconds=count * (1_000_000 // scale))
    except OverflowError:
        _fail(f"{field} is out of range: {_show(value)}")


def _from_iso(value: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{field} is not an ISO-8601 timestamp: {_show(value)}")
    # Pipedrive writes "Z"; a stamp without an offset is read as UTC, the zone of its API.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _v2_timestamp(value: Any) -> datetime:
    field = "meta.timestamp"
    if value is None:
        _fail(f"{field} is missing")
    if isinstance(value, str) and not _DIGITS_RE.fullmatch(value):
        return _from_iso(value, field)
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return _from_epoch(value, field, scale=None)
    _fail(f"{field} must be an ISO-8601 string or an epoch integer, got {_show(value)}")


def _v1_timestamp(meta: dict[str, Any]) -> datetime:
    """The most precise of `timestamp_micro` (2018 on), `timestamp_milli` (2017), `timestamp`."""
    for key, scale in (
        ("timestamp_micro", 1_000_000),
        ("timestamp_milli", 1_000),
        ("timestamp", 1),
    ):
        if meta.get(key) is not None:
            return _from_epoch(meta[key], f"meta.{key}", scale=scale)
    _fail("meta.timestamp is missing")


def _attempt(value: Any, field: str, *, first: int) -> int:
    """The 1-based delivery attempt from a counter whose first delivery is `first`."""
    if value is None:
        return 1
    count = _whole_number(value, field)
    if count < first:
        _fail(f"{field} must be at least {first}, got {_show(value)}")
    return count - first + 1


def _action(value: Any, words: dict[str, str], field: str) -> str:
    if value is None:
        _fail(f"{field} is missing")
    if isinstance(value, str) and value in words:
        return words[value]
    _fail(f"{field} must be one of {', '.join(sorted(words))}, got {_show(value)}")


@dataclass(frozen=True, slots=True)
class PipedriveEvent:
    """One Pipedrive webhook delivery, whichever version sent it, in v2's words.

    `data` is the state after the event (None on delete) and `previous` what Pipedrive sent as the
    state before: v2 gives only the changed fields on a change. One v1 quirk stays visible: on a
    v1 merge, `previous` is the merged-away object (id `merged_from_id`), not the survivor's
    earlier state.
    """

    version: int
    action: str
    entity: str
    entity_id: str
    company_id: int
    user_id: int
    timestamp: datetime
    event_id: str | None
    attempt: int
    webhook_id: str | None
    data: dict[str, Any] | None
    previous: dict[str, Any] | None
    merged_to_id: str | None
    merged_from_id: str | None
    host: str | None

    @property
    def dedupe_key(self) -> str:
        """The same for every delivery of one change: retries and sibling webhooks alike.

        It names the change by company, entity, id, action, merge role and the event time at the
        precision sent (µs for v1, ms for 2017 v1 and for v2, whole seconds for v2 user events).
        Left out on purpose: `attempt` and `webhook_id` (they vary per delivery) and the v2 event
        id: Pipedrive does not say that sibling webhooks share `meta.id`, and for user events it
        is just the user id, so keying on it could split one change into several keys while adding
        nothing the timestamp does not. The price: two changes of one object with the same action
        inside one tick of that precision count as one.
        """
        merge = []
        if self.merged_from_id is not None:
            merge = ["merge", "from", self.merged_from_id]
        elif self.merged_to_id is not None:
            merge = ["merge", "to", self.merged_to_id]
        parts = [
            self.company_id,
            self.entity,
            self.entity_id,
            self.action,
            *merge,
            self.timestamp.astimezone(UTC).isoformat(timespec="microseconds"),
        ]
        canonical = json.dumps(parts, separators=(",", ":"), ensure_ascii=True)
        return "pd:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def as_job_payload(self) -> dict[str, Any]:
        """Plain JSON/msgpack types only; `from_job_payload` restores an equal event."""
        return {
            "version": self.version,
            "action": self.action,
            "entity": self.entity,
            "entity_id": self.entity_id,
            "company_id": self.company_id,
            "user_id": self.user_id,
            "timestamp": self.timestamp.isoformat(),
            "event_id": self.event_id,
            "attempt": self.attempt,
            "webhook_id": self.webhook_id,
            "data": self.data,
            "previous": self.previous,
            "merged_to_id": self.merged_to_id,
            "merged_from_id": self.merged_from_id,
            "host": self.host,
        }

    @classmethod
    def from_job_payload(cls, payload: dict[str, Any]) -> PipedriveEvent:
        """The inverse of `as_job_payload`; anything it did not write raises WebhookPayloadError."""
        try:
            timestamp = datetime.fromisoformat(payload["timestamp"])
            event = cls(
                version=payload["version"],
                action=payload["action"],
                entity=payload["entity"],
                entity_id=payload["entity_id"],
                company_id=payload["company_id"],
                user_id=payload["user_id"],
                timestamp=timestamp,
                event_id=payload["event_id"],
                attempt=payload["attempt"],
                webhook_id=payload["webhook_id"],
                data=payload["data"],
                previous=payload["previous"],
                merged_to_id=payload["merged_to_id"],
                merged_from_id=payload["merged_from_id"],
                host=payload["host"],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise WebhookPayloadError(f"not a PipedriveEvent job payload: {error!r}") from error
        if timestamp.tzinfo is None or event.version not in (1, 2):
            _fail("not a PipedriveEvent job payload: naive timestamp or unknown version")
        return event


def _load(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        return body

    def refuse_constant(name: str) -> NoReturn:
        raise ValueError(f"{name} is not JSON")

    try:
        loaded = json.loads(body, parse_constant=refuse_constant)
    except RecursionError:
        _fail("body is not JSON: nested too deeply")
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        _fail(f"body is not JSON: {error}")
    if not isinstance(loaded, dict):
        _fail(f"body must be a JSON object, got {type(loaded).__name__}")
    return loaded


def _version(body: dict[str, Any], meta: dict[str, Any]) -> int:
    """v2 says so in `meta.version`; v1 carries `v: 1`. Without either, the field names decide."""
    declared = meta.get("version")
    if declared is not None:
        if str(declared).split(".")[0] in ("1", "2"):
            return int(str(declared).split(".")[0])
        _fail(f"meta.version must be '1.0' or '2.0', got {_show(declared)}")
    if meta.get("v") == 1 or body.get("v") == 1:
        return 1
    if "entity" in meta:
        return 2
    if "object" in meta:
        return 1
    _fail("meta.entity (v2) or meta.object (v1) is missing")


def _parse_v2(body: dict[str, Any], meta: dict[str, Any]) -> PipedriveEvent:
    action = _action(meta.get("action"), _V2_ACTIONS, "meta.action")
    entity = _entity(meta.get("entity"), "meta.entity")
    data = _object(body.get("data"), "data")
    previous = _object(body.get("previous"), "previous")
    entity_id = meta.get("entity_id")
    if entity_id is None:
        entity_id = (data or previous or {}).get("id")
        if entity_id is None:
            _fail("meta.entity_id is missing")
    return PipedriveEvent(
        version=2,
        action=action,
        entity=entity,
        entity_id=_id_text(entity_id, "meta.entity_id"),
        company_id=_whole_number(meta.get("company_id"), "meta.company_id"),
        user_id=_whole_number(meta.get("user_id"), "meta.user_id"),
        timestamp=_v2_timestamp(meta.get("timestamp")),
        event_id=_optional_id_text(meta.get("id"), "meta.id"),
        attempt=_attempt(meta.get("attempt"), "meta.attempt", first=1),
        webhook_id=_optional_id_text(meta.get("webhook_id"), "meta.webhook_id"),
        data=data,
        previous=previous,
        merged_to_id=_optional_id_text(meta.get("merged_to_id"), "meta.merged_to_id"),
        merged_from_id=_optional_id_text(meta.get("merged_from_id"), "meta.merged_from_id"),
        host=_optional_text(meta.get("host"), "meta.host"),
    )


def _parse_v1(body: dict[str, Any], meta: dict[str, Any]) -> PipedriveEvent:
    word = meta.get("action")
    action = _action(word, _V1_ACTIONS, "meta.action")
    entity = _entity(meta.get("object"), "meta.object")
    data = _object(body.get("current"), "current")
    previous = _object(body.get("previous"), "previous")
    entity_id = meta.get("id")
    if entity_id is None:
        entity_id = (data or previous or {}).get("id")
        if entity_id is None:
            _fail("meta.id is missing")
    entity_id_text = _id_text(entity_id, "meta.id")
    merged_from_id = None
    if word == "merged":
        # `current` is the survivor and names the merged-away object in `merge_what_id`;
        # `previous` is that merged-away object (not the survivor's earlier state).
        merged_from = (data or {}).get("merge_what_id")
        if merged_from is None and previous is not None and previous.get("id") is not None:
            merged_from = previous["id"]
        merged_from_id = _optional_id_text(merged_from, "current.merge_what_id")
        if merged_from_id == entity_id_text:
            merged_from_id = None
    return PipedriveEvent(
        version=1,
        action=action,
        entity=entity,
        entity_id=entity_id_text,
        company_id=_whole_number(meta.get("company_id"), "meta.company_id"),
        user_id=_whole_number(meta.get("user_id"), "meta.user_id"),
        timestamp=_v1_timestamp(meta),
        event_id=None,
        attempt=_attempt(body.get("retry"), "retry", first=0),
        webhook_id=_optional_id_text(meta.get("webhook_id"), "meta.webhook_id"),
        data=data,
        previous=previous,
        merged_to_id=None,
        merged_from_id=merged_from_id,
        host=_optional_text(meta.get("host"), "meta.host"),
    )


def parse_event(body: bytes | str | dict[str, Any]) -> PipedriveEvent:
    """Read a webhook body of either version; raise WebhookPayloadError naming what is wrong."""
    payload = _load(body)
    meta = payload.get("meta")
    if meta is None:
        _fail("meta is missing")
    if not isinstance(meta, dict):
        _fail(f"meta must be an object, got {type(meta).__name__}")
    if _version(payload, meta) == 2:
        return _parse_v2(payload, meta)
    return _parse_v1(payload, meta)

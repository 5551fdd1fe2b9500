"""service.pipedrive.webhooks against the published Pipedrive webhook bodies (v1 and v2).

The fixtures live outside the repository (../shared/fixtures/pipedrive, see SOURCES.md there);
without them this module is skipped rather than failed.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest

from service.pipedrive.webhooks import PipedriveEvent, WebhookPayloadError, parse_event

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "pipedrive"
if not FIXTURES.is_dir():
    pytest.skip(f"Pipedrive fixtures not found at {FIXTURES}", allow_module_level=True)

FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))
LEAD_ID = "b1810230-6c0d-11ed-9826-a53d0eb706a5"


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return loaded


def event(name: str) -> PipedriveEvent:
    return parse_event((FIXTURES / name).read_bytes())


def v2_body(**meta: Any) -> dict[str, Any]:
    """The docs' person change with some meta keys replaced (None removes the key)."""
    body = load("v2-docs-person-change.json")
    for key, value in meta.items():
        if value is None:
            body["meta"].pop(key, None)
        else:
            body["meta"][key] = value
    return body


def v1_body(**top: Any) -> dict[str, Any]:
    """The activity update captured by pipedrive-dotnet with some top-level keys replaced."""
    body = load("v1-pipedrive-dotnet-activity-updated.json")
    body.update(top)
    return body


def with_meta(body: dict[str, Any], **meta: Any) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    for key, value in meta.items():
        if value is None:
            changed["meta"].pop(key, None)
        else:
            changed["meta"][key] = value
    return changed


# --- every fixture ------------------------------------------------------------------------------


def test_fixture_folder_holds_both_versions() -> None:
    """The shared folder has the 21 published bodies, v1 and v2 alike."""
    names = [path.name for path in FIXTURE_FILES]
    assert len(names) == 21
    assert any(name.startswith("v1-") for name in names)
    assert any(name.startswith("v2-") for name in names)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[path.name for path in FIXTURE_FILES])
def test_every_fixture_parses(path: Path) -> None:
    """Each published body becomes an event in v2's vocabulary with an aware UTC timestamp."""
    parsed = parse_event(path.read_bytes())
    assert parsed.version == int(path.name[1])
    assert parsed.action in {"create", "change", "delete"}
    assert parsed.entity in path.name.lower()
    assert parsed.entity_id
    assert parsed.company_id > 0
    assert parsed.user_id > 0
    assert parsed.timestamp.tzinfo is UTC
    assert parsed.attempt >= 1
    assert parsed.dedupe_key.startswith("pd:")
    if parsed.action == "delete":
        assert parsed.data is None
        assert parsed.previous is not None
    else:
        assert parsed.data is not None


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[path.name for path in FIXTURE_FILES])
def test_bytes_str_and_dict_bodies_give_the_same_event(path: Path) -> None:
    """The body may be handed over raw, decoded or already loaded, with the same result."""
    raw = path.read_bytes()
    from_bytes = parse_event(raw)
    assert parse_event(raw.decode("utf-8")) == from_bytes
    assert parse_event(json.loads(raw)) == from_bytes


# --- spot checks --------------------------------------------------------------------------------


def test_v2_user_change_has_integer_timestamp_and_string_ids() -> None:
    """A v2 user event's epoch-integer timestamp and string ids become a datetime and ints."""
    parsed = event("v2-docs-user-change.json")
    assert parsed.version == 2
    assert parsed.action == "change"
    assert parsed.entity == "user"
    assert parsed.entity_id == "12415231"
    assert parsed.company_id == 8087566
    assert parsed.user_id == 12415231
    assert parsed.timestamp == datetime(2022, 11, 24, 15, 42, 22, tzinfo=UTC)
    assert parsed.event_id == "12415231"  # for user events meta.id is the user id
    assert parsed.webhook_id == "4710827"
    assert parsed.attempt == 1
    assert parsed.host == "pd-us.pipedrive.com"
    assert parsed.data is not None
    assert parsed.data["id"] == "12415231"
    assert parsed.previous == {"lang": "en-GB", "modified": "2022-11-24 13:14:07"}


def test_v2_user_deactivation_is_a_change() -> None:
    """Pipedrive's "delete user" example arrives, and stays, a change of active_flag."""
    parsed = event("v2-docs-user-deactivated.json")
    assert parsed.action == "change"
    assert parsed.previous == {"active_flag": True}
    assert parsed.data is not None
    assert parsed.data["active_flag"] is False


def test_v2_lead_change_keeps_the_uuid_entity_id() -> None:
    """A lead's id is a UUID string and is kept as such, with the ISO timestamp's milliseconds."""
    parsed = event("v2-docs-lead-change.json")
    assert parsed.entity == "lead"
    assert parsed.entity_id == LEAD_ID
    assert parsed.event_id == "e235ba60-6c0d-11ed-a825-71d0cf99387b"
    assert parsed.timestamp == datetime(2022, 11, 24, 15, 37, 20, 391000, tzinfo=UTC)
    assert parsed.data is not None
    assert parsed.data["id"] == LEAD_ID
    assert parsed.previous is not None
    assert parsed.previous["is_archived"] is True


def test_v2_delete_has_no_data_and_the_last_state_as_previous() -> None:
    """A v2 delete carries data null and the full last state in previous."""
    parsed = event("v2-docs-deal-delete.json")
    assert parsed.action == "delete"
    assert parsed.entity_id == "8"
    assert parsed.data is None
    assert parsed.previous is not None
    assert parsed.previous["title"] == "Sample Org deal"


def test_v1_merged_organization_names_the_merged_away_id() -> None:
    """A v1 merged.organization is a change of the survivor with merge_what_id as merged_from_id."""
    parsed = event("v1-django-pipedrive-organization-merged.json")
    assert parsed.version == 1
    assert parsed.action == "change"
    assert parsed.entity == "organization"
    assert parsed.entity_id == "996"
    assert parsed.merged_from_id == "995"
    assert parsed.merged_to_id is None
    assert parsed.event_id is None
    assert parsed.webhook_id is None  # the 2017 capture predates meta.webhook_id
    assert parsed.timestamp == datetime(2017, 4, 20, 2, 14, 23, 572000, tzinfo=UTC)
    assert parsed.previous is not None
    assert parsed.previous["id"] == 995  # v1 puts the merged-away object here


def test_v1_merge_without_merge_what_id_falls_back_to_previous_id() -> None:
    """When merge_what_id is absent, the merged-away object's id comes from previous.id."""
    body = load("v1-django-pipedrive-organization-merged.json")
    del body["current"]["merge_what_id"]
    assert parse_event(body).merged_from_id == "995"


def test_v1_deleted_organization_has_no_data() -> None:
    """A v1 deleted.* has current null: data is None and previous is the last state."""
    parsed = event("v1-django-pipedrive-organization-deleted.json")
    assert parsed.action == "delete"
    assert parsed.entity_id == "997"
    assert parsed.data is None
    assert parsed.previous is not None
    assert parsed.previous["name"] == "TEST_ORGANIZATION"
    assert parsed.merged_from_id is None


def test_v1_activity_with_wildcard_permitted_users_parses() -> None:
    """A v1 activity update with permitted_user_ids ["*"] keeps its microsecond timestamp."""
    body = load("v1-pipedrive-dotnet-activity-updated.json")
    assert body["meta"]["permitted_user_ids"] == ["*"]
    parsed = parse_event(body)
    assert parsed.action == "change"
    assert parsed.entity == "activity"
    assert parsed.entity_id == "12933"
    assert parsed.company_id == 1820179
    assert parsed.user_id == 4011602
    assert parsed.webhook_id == "13308"
    assert parsed.timestamp == datetime(2018, 7, 11, 15, 59, 19, 997600, tzinfo=UTC)
    assert parsed.attempt == 1
    assert parsed.data is not None
    assert parsed.data["note"] == "Lorem ipsum"
    assert parsed.previous is not None
    assert parsed.previous["note"] == "Lorem ipsum dolor sit amet"


def test_v1_retry_counter_becomes_a_one_based_attempt() -> None:
    """The captured v1 deliveries with retry 1 and retry 3 are attempts 2 and 4."""
    assert event("v1-pipedrive-dotnet-deal-added.json").attempt == 2
    assert event("v1-pipedrive-dotnet-deal-updated.json").attempt == 4


def test_v1_added_note_uses_the_millisecond_timestamp() -> None:
    """A 2017 v1 body without timestamp_micro is read at timestamp_milli precision."""
    parsed = event("v1-django-pipedrive-note-added.json")
    assert parsed.action == "create"
    assert parsed.previous is None
    assert parsed.timestamp == datetime(2017, 4, 20, 11, 28, 1, 417000, tzinfo=UTC)


def test_v1_user_event_takes_the_first_array_item() -> None:
    """For v1 user events current and previous are arrays; the object is their first item."""
    body = v1_body(
        current=[{"id": 42, "name": "New"}],
        previous=[{"id": 42, "name": "Old"}],
        event="updated.user",
    )
    body["meta"].update(object="user", id=42)
    parsed = parse_event(body)
    assert parsed.entity == "user"
    assert parsed.data == {"id": 42, "name": "New"}
    assert parsed.previous == {"id": 42, "name": "Old"}


def test_missing_object_ids_fall_back_to_the_object() -> None:
    """Without meta.entity_id (v2) or meta.id (v1) the entity id is the object's own id."""
    assert parse_event(v2_body(entity_id=None)).entity_id == "8"
    body = v1_body()
    del body["meta"]["id"]
    assert parse_event(body).entity_id == "12933"


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2022-11-24T15:18:35.616Z", datetime(2022, 11, 24, 15, 18, 35, 616000, tzinfo=UTC)),
        ("2022-11-24T17:18:35.616+02:00", datetime(2022, 11, 24, 15, 18, 35, 616000, tzinfo=UTC)),
        ("2022-11-24T15:18:35", datetime(2022, 11, 24, 15, 18, 35, tzinfo=UTC)),
        (1669304542, datetime(2022, 11, 24, 15, 42, 22, tzinfo=UTC)),
        ("1669304542", datetime(2022, 11, 24, 15, 42, 22, tzinfo=UTC)),
        (1669304542123, datetime(2022, 11, 24, 15, 42, 22, 123000, tzinfo=UTC)),
    ],
)
def test_v2_timestamp_forms(timestamp: Any, expected: datetime) -> None:
    """v2 timestamps may be ISO strings (any offset) or epoch counts, as numbers or digits."""
    assert parse_event(v2_body(timestamp=timestamp)).timestamp == expected


# --- dedupe key ---------------------------------------------------------------------------------


def test_v2_retry_keeps_the_dedupe_key() -> None:
    """Attempt 1 and attempt 3 of one v2 delivery share a dedupe key."""
    first = parse_event(v2_body(attempt=1))
    third = parse_event(v2_body(attempt=3))
    assert third.attempt == 3
    assert first.dedupe_key == third.dedupe_key


def test_v1_retry_keeps_the_dedupe_key() -> None:
    """Retry 0 and retry 2 of one v1 delivery share a dedupe key."""
    first = parse_event(v1_body(retry=0))
    third = parse_event(v1_body(retry=2))
    assert third.attempt == 3
    assert first.dedupe_key == third.dedupe_key


@pytest.mark.parametrize(
    "name",
    ["v2-docs-person-change.json", "v2-docs-user-change.json", "v2-docs-lead-change.json"],
)
def test_sibling_v2_webhooks_share_the_dedupe_key(name: str) -> None:
    """The same change sent by another installer's webhook (other ids, same change) dedupes."""
    body = load(name)
    sibling = with_meta(
        body,
        webhook_id="9999999",
        webhook_owner_id="1234",
        id="00000000-0000-4000-8000-000000000000",
        correlation_id="11111111-1111-4111-8111-111111111111",
    )
    assert parse_event(sibling).webhook_id == "9999999"
    assert parse_event(sibling).dedupe_key == parse_event(body).dedupe_key


def test_sibling_v1_webhooks_share_the_dedupe_key() -> None:
    """The same v1 change delivered through another webhook id dedupes."""
    body = v1_body()
    assert parse_event(with_meta(body, webhook_id=555)).dedupe_key == parse_event(body).dedupe_key


@pytest.mark.parametrize(
    "change",
    [
        {"timestamp": "2022-11-24T15:18:35.617Z"},
        {"action": "create"},
        {"entity_id": "9"},
        {"entity": "organization"},
        {"company_id": "8087567"},
        {"merged_from_id": "9"},
    ],
    ids=["timestamp", "action", "entity_id", "entity", "company_id", "merge"],
)
def test_a_different_change_gets_a_different_key(change: dict[str, Any]) -> None:
    """Changing what happened (time, action, object, company, merge role) changes the key."""
    assert parse_event(v2_body(**change)).dedupe_key != parse_event(v2_body()).dedupe_key


def test_v1_different_timestamp_or_action_changes_the_key() -> None:
    """A v1 body one microsecond later, or with another action, is another change."""
    body = v1_body()
    key = parse_event(body).dedupe_key
    later = with_meta(body, timestamp_micro=body["meta"]["timestamp_micro"] + 1)
    assert parse_event(later).dedupe_key != key
    assert parse_event(with_meta(body, action="added")).dedupe_key != key


def test_user_events_with_the_same_meta_id_are_told_apart_by_time() -> None:
    """Two changes of one user share meta.id (the user id) yet get different keys."""
    body = load("v2-docs-user-change.json")
    later = with_meta(body, timestamp=body["meta"]["timestamp"] + 1)
    assert parse_event(later).event_id == parse_event(body).event_id
    assert parse_event(later).dedupe_key != parse_event(body).dedupe_key


def test_dedupe_key_is_compact() -> None:
    """The key is "pd:" and a sha256 hex digest, whatever the ids look like."""
    key = event("v2-docs-lead-change.json").dedupe_key
    assert key.startswith("pd:")
    assert len(key) == 3 + 64
    int(key[3:], 16)


# --- merges -------------------------------------------------------------------------------------


def merge_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    """Person 9 merged into person 8: v2's delete + change pair (the docs show no example)."""
    survivor = load("v2-docs-person-change.json")
    survivor["meta"]["merged_from_id"] = "9"
    removed = load("v2-docs-person-change.json")
    removed["meta"].update(
        action="delete",
        entity_id="9",
        merged_to_id=8,
        id="2b5e1a4e-0000-4000-8000-000000000009",
    )
    removed["previous"] = {**removed["data"], "id": 9, "name": "Duplicate"}
    removed["data"] = None
    return removed, survivor


def test_v2_merge_pair_parses() -> None:
    """A v2 merge (delete with merged_to_id, change with merged_from_id) keeps both ids as text."""
    removed_body, survivor_body = merge_pair()
    removed = parse_event(removed_body)
    survivor = parse_event(survivor_body)
    assert (removed.action, removed.entity_id, removed.merged_to_id) == ("delete", "9", "8")
    assert removed.merged_from_id is None
    assert removed.data is None
    assert (survivor.action, survivor.entity_id, survivor.merged_from_id) == ("change", "8", "9")
    assert survivor.merged_to_id is None
    assert removed.dedupe_key != survivor.dedupe_key


# --- malformed bodies ---------------------------------------------------------------------------


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


MALFORMED: list[tuple[str, Any, str]] = [
    ("not-json", b"<html>502</html>", "body is not JSON"),
    ("not-utf8", b'{"meta": "\xff"}', "body is not JSON"),
    ("nan", '{"meta": NaN}', "body is not JSON"),
    ("too-deep", _deep(100_000), "body is not JSON"),
    ("array", "[1, 2]", "body must be a JSON object"),
    ("string", '"hello"', "body must be a JSON object"),
    ("no-meta", "{}", "meta is missing"),
    ("meta-list", {"meta": []}, "meta must be an object"),
    ("no-version-marks", {"meta": {"action": "change"}}, "meta.entity (v2) or meta.object (v1)"),
    ("bad-version", v2_body(version="3.0"), "meta.version"),
    ("no-company", v2_body(company_id=None), "meta.company_id is missing"),
    ("company-word", v2_body(company_id="acme"), "meta.company_id must be"),
    ("company-negative", v2_body(company_id=-5), "meta.company_id must be"),
    ("company-float", v2_body(company_id=1.5), "meta.company_id must be"),
    ("company-bool", v2_body(company_id=True), "meta.company_id must be"),
    ("company-huge", v2_body(company_id=2**64), "meta.company_id must be"),
    ("no-user", v2_body(user_id=None), "meta.user_id is missing"),
    ("user-word", v2_body(user_id="someone"), "meta.user_id must be"),
    ("no-action", v2_body(action=None), "meta.action is missing"),
    ("v1-word-in-v2", v2_body(action="updated"), "meta.action must be one of"),
    ("unknown-action", v2_body(action="archive"), "meta.action must be one of"),
    ("v2-word-in-v1", with_meta(v1_body(), action="change"), "meta.action must be one of"),
    ("no-entity", v2_body(entity=None), "meta.entity is missing"),
    ("entity-number", v2_body(entity=7), "meta.entity must be"),
    ("entity-junk", v2_body(entity="deal; drop"), "meta.entity must be"),
    ("no-object", with_meta(v1_body(), object=None), "meta.object is missing"),
    ("entity-id-object", v2_body(entity_id={"id": 8}), "meta.entity_id must be"),
    ("entity-id-blank", v2_body(entity_id=" "), "meta.entity_id must be"),
    ("no-timestamp", v2_body(timestamp=None), "meta.timestamp is missing"),
    ("timestamp-word", v2_body(timestamp="yesterday"), "meta.timestamp is not an ISO-8601"),
    ("timestamp-float", v2_body(timestamp=1669304542.5), "meta.timestamp must be an ISO-8601"),
    (
        "v1-no-timestamp",
        with_meta(v1_body(), timestamp=None, timestamp_micro=None),
        "meta.timestamp is missing",
    ),
    ("v1-micro-word", with_meta(v1_body(), timestamp_micro="soon"), "meta.timestamp_micro"),
    ("v1-micro-huge", with_meta(v1_body(), timestamp_micro=10**18), "meta.timestamp_micro is out"),
    ("attempt-zero", v2_body(attempt=0), "meta.attempt must be at least 1"),
    ("retry-negative", v1_body(retry=-1), "retry must be"),
    ("data-string", {**v2_body(), "data": "x"}, "data must be an object or null"),
    ("current-number", v1_body(current=5), "current must be an object or null"),
    ("webhook-id-list", v2_body(webhook_id=[1]), "meta.webhook_id must be"),
    ("host-number", v2_body(host=5), "meta.host must be a string"),
]


@pytest.mark.parametrize(
    ("body", "reason"),
    [(body, reason) for _, body, reason in MALFORMED],
    ids=[name for name, _, _ in MALFORMED],
)
def test_malformed_bodies_are_refused_with_a_reason(body: Any, reason: str) -> None:
    """Each malformed body raises WebhookPayloadError whose message names the faulty field."""
    with pytest.raises(WebhookPayloadError) as caught:
        parse_event(body)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_entity_id_is_missing_when_nothing_names_the_object() -> None:
    """A v2 delete without meta.entity_id and without any object id cannot be keyed."""
    body = v2_body(entity_id=None)
    body["data"] = None
    body["previous"] = None
    with pytest.raises(WebhookPayloadError, match=r"meta\.entity_id is missing"):
        parse_event(body)


# --- job payload --------------------------------------------------------------------------------


def all_events() -> list[PipedriveEvent]:
    removed, survivor = merge_pair()
    return [parse_event(path.read_bytes()) for path in FIXTURE_FILES] + [
        parse_event(removed),
        parse_event(survivor),
    ]


def test_job_payload_round_trip_gives_an_equal_event() -> None:
    """as_job_payload then from_job_payload restores every event exactly."""
    for original in all_events():
        payload = original.as_job_payload()
        assert isinstance(payload["timestamp"], str)
        restored = PipedriveEvent.from_job_payload(payload)
        assert restored == original
        assert restored.timestamp.tzinfo is not None
        assert restored.dedupe_key == original.dedupe_key


def test_job_payload_survives_msgpack() -> None:
    """The job payload is plain data: a msgpack round trip restores an equal event."""
    for original in all_events():
        packed = msgpack.packb(original.as_job_payload())
        restored = PipedriveEvent.from_job_payload(msgpack.unpackb(packed))
        assert restored == original


def test_from_job_payload_refuses_foreign_dicts() -> None:
    """A dict that as_job_payload did not write raises WebhookPayloadError, not KeyError."""
    with pytest.raises(WebhookPayloadError, match="not a PipedriveEvent job payload"):
        PipedriveEvent.from_job_payload({"version": 2})
    payload = event("v2-docs-deal-create.json").as_job_payload()
    payload["timestamp"] = "2022-11-24T13:18:56"
    with pytest.raises(WebhookPayloadError, match="naive timestamp"):
        PipedriveEvent.from_job_payload(payload)

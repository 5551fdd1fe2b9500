"""The CRM part of the Pipedrive stand-in: persons, deals, notes and the note webhook.

Mixed into ``PipedriveStandin`` (sandbox/pipedrive/standin.py), whose lock, clock, request log,
authentication, rate limits and fault injection every route here goes through. Written from
``shared/docs/pipedrive-crm-notes.md``:

- ``GET /api/v2/persons/search`` (``term``, ``fields``, ``exact_match``, ``limit``): 400 for a
  missing or too short term or an unknown field; exact matches compare the whole value,
  case-insensitively, as stored (phones are kept as typed; how Pipedrive matches digits across
  formats is unconfirmed, so nothing clever happens here). Answer ``{items: [{result_score,
  item}]}`` with ``additional_data.next_cursor``.
- ``POST /api/v2/persons`` (``name`` required; ``phones`` as ``[{value, primary, label}]``) and
  ``GET /api/v2/persons/{id}`` (404 once deleted).
- ``GET /api/v2/deals?person_id=&status=`` (status one of open, won, lost, deleted).
- ``POST /api/v1/notes`` (``content`` required and non-empty, at least one of ``deal_id``,
  ``person_id``, ``org_id``, ``lead_id``, ``project_id``; a person or deal that does not exist is
  400), ``PUT /api/v1/notes/{id}`` (404 for an unknown or deleted note), ``GET /api/v1/notes/{id}``
  and ``GET /api/v1/notes?person_id=&sort=&limit=``.
- Deleting a person (``delete_person``) deletes its notes, as the UI does.

Knobs and records: ``retire_channels_api()`` makes every ``/v1/channels*`` call answer 410 with a
"deprecated and removed" body; ``lose_note_answers`` stores the next POSTed notes but answers 502
(the answer lost after Pipedrive committed); ``calls()`` counts API calls per endpoint;
``add_user_note`` plays an agent writing a note in the UI; ``note_webhook`` and
``deliver_note_webhooks`` play the v2 ``create.note`` webhook to the URL the app registered.
"""

from __future__ import annotations

import copy
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from sandbox.pipedrive.api import ApiHandler, _Caller
    from sandbox.pipedrive.recording import RecordedRequest

SEARCH_FIELDS = frozenset({"name", "email", "phone", "notes", "custom_fields"})
DEAL_STATUSES = frozenset({"open", "won", "lost", "deleted"})
NOTE_LINKS = ("deal_id", "person_id", "org_id", "lead_id", "project_id")
GONE_BODY = {
    "success": False,
    "error": "The Channels API has been deprecated and removed on 2026-02-01",
    "error_info": "Please check the reference docs in https://developers.pipedrive.com/changelog",
    "additional_data": {"code": "GONE"},
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"success": False, "error": message, "data": None, "additional_data": None}, status
    )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _whole(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


class CrmMixin:
    """Persons, deals and notes for ``PipedriveStandin`` (see the module docstring)."""

    # Provided by PipedriveStandin.
    _lock: Any
    _requests: list[RecordedRequest]
    _webhooks: dict[int, dict[str, Any]]
    company_id: int
    user_id: int

    def now(self) -> float:
        raise NotImplementedError

    def fail_next(self, path_prefix: str, status: int, body: Any = None, count: int = 1) -> None:
        raise NotImplementedError

    def _crm_init(self) -> None:
        self.lose_note_answers = 0
        self._persons: dict[int, dict[str, Any]] = {}
        self._deals: dict[int, dict[str, Any]] = {}
        self._notes: dict[int, dict[str, Any]] = {}
        self._next_crm_id = {"person": 1, "deal": 1, "note": 1}

    def _crm_routes(self) -> list[tuple[str, str, ApiHandler, int, str | None]]:
        # Costs: v2 search about half of v1's 40, writes 10, list reads 20, single reads 2.
        return [
            ("GET", "/v2/persons/search", self._search_persons, 20, None),
            ("POST", "/v2/persons", self._create_person, 10, None),
            ("GET", "/v2/persons/{person_id}", self._get_person, 2, None),
            ("GET", "/v2/deals", self._list_deals, 20, None),
            ("POST", "/v1/notes", self._create_note, 10, None),
            ("GET", "/v1/notes", self._list_notes, 20, None),
            ("GET", "/v1/notes/{note_id}", self._get_note, 2, None),
            ("PUT", "/v1/notes/{note_id}", self._update_note, 10, None),
        ]

    # ------------------------------------------------------------------ test helpers

    def _new_id(self, kind: str) -> int:
        value = self._next_crm_id[kind]
        self._next_crm_id[kind] = value + 1
        return value

    def add_person(
        self,
        name: str,
        *,
        phones: tuple[str, ...] = (),
        custom_fields: Mapping[str, Any] | None = None,
        company_id: int | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(
                self._store_person(
                    name,
                    [
                        {"value": p, "primary": i == 0, "label": "mobile"}
                        for i, p in enumerate(phones)
                    ],
                    dict(custom_fields or {}),
                    company_id or self.company_id,
                )
            )

    def _store_person(
        self,
        name: str,
        phones: list[dict[str, Any]],
        custom_fields: dict[str, Any],
        company_id: int,
    ) -> dict[str, Any]:
        person = {
            "id": self._new_id("person"),
            "name": name,
            "phones": phones,
            "emails": [],
            "custom_fields": custom_fields,
            "company_id": company_id,
            "add_time": _iso(self.now()),
            "update_time": _iso(self.now()),
            "is_deleted": False,
        }
        self._persons[person["id"]] = person
        return person

    def delete_person(self, person_id: int) -> None:
        """Delete a person, and its notes with it."""
        with self._lock:
            self._persons[person_id]["is_deleted"] = True
            for note in self._notes.values():
                if note["person_id"] == person_id:
                    note["active_flag"] = False

    def add_deal(self, person_id: int, title: str, *, status: str = "open") -> dict[str, Any]:
        with self._lock:
            deal = {
                "id": self._new_id("deal"),
                "title": title,
                "person_id": person_id,
                "status": status,
                "add_time": _iso(self.now() + len(self._deals)),
                "update_time": _iso(self.now()),
            }
            self._deals[deal["id"]] = deal
            return copy.deepcopy(deal)

    @property
    def persons(self) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(p) for p in self._persons.values() if not p["is_deleted"]]

    @property
    def notes(self) -> list[dict[str, Any]]:
        """Notes not deleted, in creation order."""
        with self._lock:
            return [copy.deepcopy(n) for n in self._notes.values() if n["active_flag"]]

    def notes_of(self, person_id: int) -> list[dict[str, Any]]:
        return [n for n in self.notes if n["person_id"] == person_id]

    def add_user_note(
        self,
        content: str,
        *,
        person_id: int | None = None,
        deal_id: int | None = None,
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """An agent writes a note in Pipedrive's UI (no API call of the app)."""
        with self._lock:
            return copy.deepcopy(
                self._store_note(content, person_id, deal_id, user_id or self.user_id)
            )

    def _store_note(
        self, content: str, person_id: int | None, deal_id: int | None, user_id: int
    ) -> dict[str, Any]:
        note = {
            "id": self._new_id("note"),
            "content": content,
            "person_id": person_id,
            "deal_id": deal_id,
            "org_id": None,
            "lead_id": None,
            "user_id": user_id,
            "add_time": _iso(self.now()),
            "update_time": _iso(self.now()),
            "active_flag": True,
            "pinned_to_person_flag": False,
            "pinned_to_deal_flag": False,
        }
        self._notes[note["id"]] = note
        return note

    def retire_channels_api(self) -> None:
        """From now on every ``/v1/channels*`` call answers 410 "deprecated and removed"."""
        self.fail_next("/v1/channels", 410, GONE_BODY, count=10**9)

    def calls(self) -> Counter[str]:
        """API calls per endpoint (``"PUT /v1/notes/{id}"``), whatever they were answered."""
        counted: Counter[str] = Counter()
        with self._lock:
            for rec in self._requests:
                if not rec.api_path.startswith(("/v1/", "/v2/")):
                    continue
                parts = ["{id}" if p.isdigit() else p for p in rec.api_path.split("/")]
                counted[f"{rec.method} {'/'.join(parts)}"] += 1
        return counted

    def note_webhook(
        self,
        note_id: int,
        *,
        company_id: int | None = None,
        attempt: int = 1,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """The v2 ``create.note`` delivery for a stored note."""
        with self._lock:
            note = copy.deepcopy(self._notes[note_id])
            hooks = [w for w in self._webhooks.values() if w["event_object"] == "note"]
        return {
            "meta": {
                "action": "create",
                "entity": "note",
                "entity_id": str(note_id),
                "company_id": str(company_id or self.company_id),
                "user_id": str(note["user_id"]),
                "id": event_id or str(uuid.uuid4()),
                "timestamp": note["add_time"],
                "version": "2.0",
                "attempt": attempt,
                "webhook_id": str(hooks[0]["id"]) if hooks else "0",
                "host": "acme.pipedrive.com",
                "type": "general",
                "permitted_user_ids": [str(note["user_id"])],
            },
            "data": note,
            "previous": None,
        }

    def deliver_note_webhooks(
        self, base_url: str, note_id: int, *, times: int = 1, company_id: int | None = None
    ) -> list[int]:
        """POST the note's ``create`` event ``times`` times (Pipedrive's retries: same event,
        growing ``attempt``) to every registered note webhook, with its Basic pair, at
        ``base_url`` + the subscription URL's path. Returns the answers' status codes."""
        with self._lock:
            hooks = [
                dict(w)
                for w in self._webhooks.values()
                if (w["event_object"], w["event_action"]) == ("note", "create")
            ]
        if not hooks:
            raise AssertionError("the app registered no create.note webhook")
        event_id = str(uuid.uuid4())
        statuses = []
        with httpx2.Client(timeout=10.0, trust_env=False) as client:
            for hook in hooks:
                path = urlsplit(hook["subscription_url"]).path
                for attempt in range(1, times + 1):
                    body = self.note_webhook(
                        note_id, company_id=company_id, attempt=attempt, event_id=event_id
                    )
                    response = client.post(
                        base_url.rstrip("/") + path,
                        json=body,
                        auth=(hook["http_auth_user"], hook["http_auth_password"]),
                    )
                    statuses.append(response.status_code)
        return statuses

    # ------------------------------------------------------------------ routes

    def _live_person(self, person_id: Any, caller: _Caller) -> dict[str, Any] | None:
        person = self._persons.get(_whole(person_id) or -1)
        if person is None or person["is_deleted"] or person["company_id"] != caller.company_id:
            return None
        return person

    def _person_v2(self, person: dict[str, Any]) -> dict[str, Any]:
        shown = copy.deepcopy(person)
        shown.pop("company_id")
        return shown

    def _search_persons(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        term = rec.query.get("term", "")
        exact = rec.query.get("exact_match", "false").lower() == "true"
        fields = [f for f in rec.query.get("fields", ",".join(SEARCH_FIELDS)).split(",") if f]
        if len(term) < (1 if exact else 2):
            rec.note = "term too short"
            return _error(400, "term must be at least 2 characters (1 with exact_match)")
        if not set(fields) <= SEARCH_FIELDS:
            rec.note = f"unknown search fields {fields}"
            return _error(400, f"fields must be among {sorted(SEARCH_FIELDS)}")

        def values(person: dict[str, Any]) -> list[str]:
            found: list[str] = []
            if "name" in fields:
                found.append(person["name"])
            if "phone" in fields:
                found.extend(p["value"] for p in person["phones"])
            if "custom_fields" in fields:
                found.extend(str(v) for v in person["custom_fields"].values())
            return found

        wanted = term.lower()
        items = []
        for person in self._persons.values():
            if person["is_deleted"] or person["company_id"] != caller.company_id:
                continue
            candidates = [v.lower() for v in values(person)]
            hit = wanted in candidates if exact else any(wanted in v for v in candidates)
            if hit:
                items.append({"result_score": 1.0, "item": self._person_v2(person)})
        limit = _whole(rec.query.get("limit")) or 100
        return JSONResponse(
            {
                "success": True,
                "data": {"items": items[:limit]},
                "additional_data": {"next_cursor": None},
            }
        )

    def _create_person(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        body = rec.json
        if not isinstance(body, dict) or not str(body.get("name") or "").strip():
            rec.note = "person without a name"
            return _error(400, "name is required")
        phones = body.get("phones") or []
        if not isinstance(phones, list) or not all(
            isinstance(p, dict) and isinstance(p.get("value"), str) for p in phones
        ):
            rec.note = "phones must be [{value, primary, label}]"
            return _error(400, "phones must be a list of {value, primary, label}")
        person = self._store_person(body["name"], phones, {}, caller.company_id)
        return JSONResponse({"success": True, "data": self._person_v2(person)}, 201)

    def _get_person(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        person = self._live_person(params["person_id"], caller)
        if person is None:
            rec.note = "unknown or deleted person"
            return _error(404, "Person not found")
        return JSONResponse({"success": True, "data": self._person_v2(person)})

    def _list_deals(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        status = rec.query.get("status")
        if status is not None and status not in DEAL_STATUSES:
            rec.note = f"unknown deal status {status}"
            return _error(400, f"status must be one of {sorted(DEAL_STATUSES)}")
        person_id = _whole(rec.query.get("person_id"))
        deals = [
            copy.deepcopy(d)
            for d in self._deals.values()
            if (person_id is None or d["person_id"] == person_id)
            and (status is None or d["status"] == status)
        ]
        return JSONResponse(
            {"success": True, "data": deals, "additional_data": {"next_cursor": None}}
        )

    def _note_problem(self, body: Any, caller: _Caller, *, creating: bool) -> str | None:
        if not isinstance(body, dict):
            return "body must be a JSON object"
        content = body.get("content")
        if (creating or "content" in body) and (not isinstance(content, str) or not content):
            return "content is required"
        if creating and not any(body.get(k) is not None for k in NOTE_LINKS):
            return "a note must be linked to a deal, person, organization, lead or project"
        if (
            body.get("person_id") is not None
            and self._live_person(body["person_id"], caller) is None
        ):
            return "Person not found"
        if body.get("deal_id") is not None and (_whole(body["deal_id"]) or -1) not in self._deals:
            return "Deal not found"
        return None

    def _create_note(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        problem = self._note_problem(rec.json, caller, creating=True)
        if problem is not None:
            rec.note = problem
            return _error(400, problem)
        body: dict[str, Any] = rec.json
        note = self._store_note(
            body["content"],
            _whole(body.get("person_id")),
            _whole(body.get("deal_id")),
            caller.user_id,
        )
        if self.lose_note_answers > 0:
            self.lose_note_answers -= 1
            rec.note = "note stored, answer lost"
            return _error(502, "Bad gateway")
        return JSONResponse({"success": True, "data": copy.deepcopy(note)})

    def _own_note(self, note_id: Any) -> dict[str, Any] | None:
        note = self._notes.get(_whole(note_id) or -1)
        return note if note is not None and note["active_flag"] else None

    def _update_note(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        note = self._own_note(params["note_id"])
        if note is None:
            rec.note = "unknown or deleted note"
            return _error(404, "Note not found")
        problem = self._note_problem(rec.json, caller, creating=False)
        if problem is not None:
            rec.note = problem
            return _error(400, problem)
        body: dict[str, Any] = rec.json
        for key in ("content", "person_id", "deal_id"):
            if key in body:
                note[key] = body[key]
        note["update_time"] = _iso(self.now())
        return JSONResponse({"success": True, "data": copy.deepcopy(note)})

    def _get_note(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        note = self._own_note(params["note_id"])
        if note is None:
            return _error(404, "Note not found")
        return JSONResponse({"success": True, "data": copy.deepcopy(note)})

    def _list_notes(
        self, rec: RecordedRequest, params: Mapping[str, Any], caller: _Caller
    ) -> Response:
        person_id = _whole(rec.query.get("person_id"))
        found = [
            copy.deepcopy(n)
            for n in self._notes.values()
            if n["active_flag"] and (person_id is None or n["person_id"] == person_id)
        ]
        if "desc" in rec.query.get("sort", "").lower():
            found.reverse()
        limit = _whole(rec.query.get("limit")) or 100
        return JSONResponse({"success": True, "data": found[:limit]})

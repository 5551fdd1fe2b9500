"""The CRM part of the Pipedrive stand-in refuses what Pipedrive refuses."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from sandbox.pipedrive import PipedriveStandin

TOKEN = "crm-standin-token"


@pytest.fixture
def pd() -> Iterator[httpx2.Client]:
    with (
        PipedriveStandin(api_token=TOKEN) as server,
        httpx2.Client(
            base_url=f"{server.base_url}/api", headers={"x-api-token": TOKEN}, trust_env=False
        ) as client,
    ):
        client.standin = server  # type: ignore[attr-defined]
        yield client


def test_person_search_checks_its_term_and_fields(pd: httpx2.Client) -> None:
    """A too-short term or an unknown field is a 400; exact_match compares whole values."""
    pd.standin.add_person("Jane", phones=("+15551230000",))  # type: ignore[attr-defined]
    search = "/v2/persons/search"
    assert pd.get(search, params={"term": "x"}).status_code == 400
    assert pd.get(search, params={"term": "+1555", "fields": "phone,shoe"}).status_code == 400
    exact = {"term": "+1555", "fields": "phone", "exact_match": "true"}
    assert pd.get(search, params=exact).json()["data"]["items"] == []
    exact["term"] = "+15551230000"
    [hit] = pd.get(search, params=exact).json()["data"]["items"]
    assert hit["item"]["name"] == "Jane"


def test_notes_need_content_and_a_live_link(pd: httpx2.Client) -> None:
    """A note without content, without a link, or on a deleted person is refused; a PUT on a
    note that is gone is a 404."""
    person = pd.standin.add_person("Jane")  # type: ignore[attr-defined]
    assert pd.post("/v1/notes", json={"person_id": person["id"]}).status_code == 400
    assert pd.post("/v1/notes", json={"content": "hi"}).status_code == 400
    created = pd.post("/v1/notes", json={"content": "hi", "person_id": person["id"]})
    assert created.status_code == 200
    note_id = created.json()["data"]["id"]
    assert pd.put(f"/v1/notes/{note_id}", json={"content": "hello"}).status_code == 200
    pd.standin.delete_person(person["id"])  # type: ignore[attr-defined]
    assert pd.put(f"/v1/notes/{note_id}", json={"content": "again"}).status_code == 404
    refused = pd.post("/v1/notes", json={"content": "hi", "person_id": person["id"]})
    assert refused.status_code == 400
    assert pd.get(f"/v2/persons/{person['id']}").status_code == 404
    calls = pd.standin.calls()  # type: ignore[attr-defined]
    assert calls["POST /v1/notes"] == 4
    assert calls["PUT /v1/notes/{id}"] == 2


def test_a_retired_channels_api_answers_410(pd: httpx2.Client) -> None:
    """After `retire_channels_api()` every /v1/channels call is a 410 saying it was removed."""
    pd.standin.retire_channels_api()  # type: ignore[attr-defined]
    response = pd.post("/v1/channels/messages/receive", json={})
    assert response.status_code == 410
    assert "deprecated" in response.json()["error"]

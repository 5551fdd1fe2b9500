"""Self-test of the Graph API stand-in: it must enforce the contract rules it claims to."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

from tests.standins.whatsapp import GraphStandin, sign_body

if TYPE_CHECKING:
    from collections.abc import Iterator

TOKEN = "EAAG-test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def graph() -> Iterator[GraphStandin]:
    with GraphStandin() as standin:
        yield standin


@pytest.fixture
def client(graph: GraphStandin) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=graph.graph_url, headers=AUTH) as c:
        yield c


def error_code(response: httpx2.Response) -> int:
    body: dict[str, Any] = response.json()
    assert set(body["error"]) >= {"message", "type", "code", "fbtrace_id"}
    return int(body["error"]["code"])


def text_message(to: str = "16505551234", body: str = "hi") -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": body},
    }


def test_token_is_required_everywhere(graph: GraphStandin) -> None:
    with httpx2.Client(base_url=graph.graph_url) as c:
        missing = c.post(f"/{graph.phone_number_id}/messages", json=text_message())
        wrong = c.get(f"/{graph.phone_number_id}", headers={"Authorization": "Bearer nope"})
        by_query = c.get(f"/{graph.phone_number_id}", params={"access_token": TOKEN})

    assert (missing.status_code, error_code(missing)) == (401, 190)
    assert (wrong.status_code, error_code(wrong)) == (401, 190)
    assert by_query.status_code == 200
    assert graph.sent == []


def test_phone_number_fields(graph: GraphStandin, client: httpx2.Client) -> None:
    answer = client.get(f"/{graph.phone_number_id}", params={"fields": "verified_name"}).json()
    assert answer == {"verified_name": "Pdbridge Test Shop", "id": graph.phone_number_id}
    unknown = client.get("/4242")
    assert (unknown.status_code, error_code(unknown)) == (400, 100)
    assert unknown.json()["error"]["error_subcode"] == 33
    other = client.get("/4242/whatever")
    assert (other.status_code, error_code(other)) == (400, 2500)


def test_send_text_answers_a_wamid(graph: GraphStandin, client: httpx2.Client) -> None:
    response = client.post(f"/{graph.phone_number_id}/messages", json=text_message("+1 650 555"))

    assert response.status_code == 200
    body = response.json()
    assert body["contacts"] == [{"input": "+1 650 555", "wa_id": "1650555"}]
    assert body["messages"][0]["id"] == graph.wamids[0]
    assert body["messages"][0]["id"].startswith("wamid.")
    assert graph.sent == [text_message("+1 650 555")]


@pytest.mark.parametrize(
    "change",
    [
        {"messaging_product": "sms"},
        {"to": ""},
        {"type": "sticker"},
        {"text": None},
        {"text": {"body": "   "}},
        {"text": {"body": "x" * 4097}},
        {"recipient_type": "broadcast"},
    ],
)
def test_invalid_sends_are_400_code_100(
    graph: GraphStandin, client: httpx2.Client, change: dict[str, Any]
) -> None:
    body = {**text_message(), **change}
    response = client.post(f"/{graph.phone_number_id}/messages", json=body)
    assert (response.status_code, error_code(response)) == (400, 100)
    assert graph.sent == []


def test_upload_lookup_and_download(graph: GraphStandin, client: httpx2.Client) -> None:
    upload = client.post(
        f"/{graph.phone_number_id}/media",
        data={"messaging_product": "whatsapp", "type": "application/pdf"},
        files={"file": ("quote.pdf", b"%PDF-1.7", "application/pdf")},
    )
    media_id = upload.json()["id"]
    info = client.get(f"/{media_id}").json()
    download = client.get(info["url"])
    without_token = httpx2.get(info["url"])

    assert graph.uploads[0].file_name == "quote.pdf"
    assert info["mime_type"] == "application/pdf"
    assert info["file_size"] == "8"
    assert info["sha256"] == hashlib.sha256(b"%PDF-1.7").hexdigest()
    assert download.content == b"%PDF-1.7"
    assert without_token.status_code == 401

    sent = client.post(
        f"/{graph.phone_number_id}/messages",
        json={**text_message(), "type": "document", "document": {"id": media_id, "caption": "c"}},
    )
    bad = client.post(
        f"/{graph.phone_number_id}/messages",
        json={**text_message(), "type": "audio", "audio": {"id": media_id, "caption": "c"}},
    )
    unknown = client.post(
        f"/{graph.phone_number_id}/messages",
        json={**text_message(), "type": "image", "image": {"id": "1"}},
    )
    assert sent.status_code == 200
    assert (bad.status_code, unknown.status_code) == (400, 400)


def test_upload_needs_its_fields(graph: GraphStandin, client: httpx2.Client) -> None:
    no_product = client.post(
        f"/{graph.phone_number_id}/media",
        data={"type": "image/jpeg"},
        files={"file": ("a.jpg", b"x", "image/jpeg")},
    )
    no_file = client.post(
        f"/{graph.phone_number_id}/media", data={"messaging_product": "whatsapp", "type": "x/y"}
    )
    assert (no_product.status_code, no_file.status_code) == (400, 400)
    assert graph.uploads == []


def test_templates_filter_and_page(graph: GraphStandin, client: httpx2.Client) -> None:
    path = f"/{graph.waba_id}/message_templates"
    everything = client.get(path).json()["data"]
    approved = client.get(path, params={"status": "APPROVED"}).json()["data"]
    first = client.get(path, params={"limit": 2}).json()
    second = client.get(first["paging"]["next"]).json()

    assert len(everything) == 4
    assert {t["status"] for t in everything} == {"APPROVED", "REJECTED"}
    assert len(approved) == 3
    assert [t["id"] for t in first["data"] + second["data"]] == [t["id"] for t in everything]
    assert "next" not in second["paging"]


def test_template_sends_are_checked(graph: GraphStandin, client: httpx2.Client) -> None:
    def send(name: str, params: list[str]) -> httpx2.Response:
        template: dict[str, Any] = {"name": name, "language": {"code": "en_US"}}
        template["components"] = [
            {"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}
        ]
        body = {**text_message(), "type": "template", "template": template}
        return client.post(f"/{graph.phone_number_id}/messages", json=body)

    assert send("hello_world", []).status_code == 200
    assert error_code(send("spring_sale", ["x"])) == 132001  # rejected
    assert error_code(send("order_update", ["only one"])) == 132000


def test_fail_next_and_headers(graph: GraphStandin, client: httpx2.Client) -> None:
    graph.fail_next(
        "/messages", 400, code=130429, message="Rate limit hit", headers={"Retry-After": "2"}
    )
    path = f"/{graph.phone_number_id}/messages"
    failed = client.post(path, json=text_message())
    then = client.post(path, json=text_message())

    assert (failed.status_code, error_code(failed)) == (400, 130429)
    assert failed.headers["retry-after"] == "2"
    assert then.status_code == 200
    assert [r.status for r in graph.requests] == [400, 200]


def test_builders_and_signature(graph: GraphStandin) -> None:
    body = graph.encode(
        graph.batch(
            graph.text_webhook(wamid="wamid.A", wa_id="1", text="Grüße"),
            graph.status_webhook(wamid="wamid.B", recipient_id="1", status="sent"),
        )
    )
    parsed = json.loads(body)

    assert b"Gr\\u00fc\\u00dfe" in body  # Meta escapes non-ASCII
    assert graph.webhook_headers(body)["X-Hub-Signature-256"] == sign_body(graph.app_secret, body)
    [entry] = parsed["entry"]
    assert entry["id"] == graph.waba_id
    assert [c["field"] for c in entry["changes"]] == ["messages", "messages"]
    value = entry["changes"][0]["value"]
    assert value["metadata"]["phone_number_id"] == graph.phone_number_id
    assert value["contacts"] == [{"profile": {"name": "Jane Doe"}, "wa_id": "1"}]
    assert entry["changes"][1]["value"]["statuses"][0]["pricing"]["category"] == "service"

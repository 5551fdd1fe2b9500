"""The operator console in a real browser, on a real `pdbridge run`: a message Pipedrive refused
shows as a dead letter, the operator replays it, and it is delivered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from service.embedded_redis import EmbeddedRedis
from tests.browser.conftest import Camera
from tests.conftest import ADMIN_TOKEN
from tests.faults.processes import running_service, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHAT = 5550042
#: Generous: the worker is a real process on a shared 2-core machine.
WAIT_MS = 30_000


def test_replay_a_dead_letter_from_the_console(tmp_path: Path, page: Page, camera: Camera) -> None:
    """Log in, see the dead letter from an injected Pipedrive 400, replay it, see it delivered."""
    redis = EmbeddedRedis(tmp_path / "redis")
    redis.start()
    try:
        with running_service(tmp_path, "run", redis.url) as service:
            service.pd.fail_next(
                "/v1/channels/messages/receive",
                400,
                {
                    "success": False,
                    "error": "bad payload",
                    "additional_data": {"code": "INVALID_RECEIVE_MESSAGE_PAYLOAD"},
                },
            )
            assert service.customer_says(CHAT, "Where is my order?", message_id=1) == 200
            wait_until(
                lambda: any(
                    r.api_path == "/v1/channels/messages/receive" and r.status == 400
                    for r in service.pd.requests
                ),
                "Pipedrive refused the message",
            )

            page.goto(f"{service.url}/admin/ui/dead-letters")
            expect(page.get_by_label("Admin token")).to_be_visible()
            camera.shoot(page, "login")
            page.get_by_label("Admin token").fill("not-the-token")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("alert")).to_contain_text("not the admin token")
            camera.shoot(page, "wrong-token")
            page.get_by_label("Admin token").fill(ADMIN_TOKEN)
            page.get_by_role("button", name="Log in").click()
            expect(page).to_have_url(re.compile("/admin/ui/dead-letters$"))  # back where it began

            # the dead letter appears once the worker has given up on it (bounded: reload)
            letters = page.locator("#dead-letters tbody tr")
            for _ in range(WAIT_MS // 250):
                if page.get_by_role("button", name="Replay").count():
                    break
                page.wait_for_timeout(250)
                page.reload()
            expect(letters).to_have_count(1)
            expect(letters.first).to_contain_text("retry_delivery")
            camera.shoot(page, "dead-letter", readme="console.png")

            # the fault was one-shot: Pipedrive now accepts; replay from the console
            page.get_by_role("button", name="Replay").click()
            expect(page.get_by_role("status")).to_contain_text("is back on the queue")
            expect(letters).to_contain_text(["Nothing is waiting"])
            camera.shoot(page, "replayed")
            wait_until(
                lambda: service.inbound_at_pipedrive() == ["Where is my order?"],
                "the replayed message reached Pipedrive",
            )

            page.get_by_role("link", name="Conversations").click()
            page.get_by_label("Search by customer").fill("jane")
            page.get_by_role("button", name="Search").click()
            page.get_by_role("link", name="Jane Doe").click()
            expect(page.locator("#messages")).to_contain_text("Where is my order?")
            expect(page.locator("#messages .pushed")).to_have_text("sent")  # Pipedrive has it
            camera.shoot(page, "delivered")

            page.get_by_role("link", name="Overview").click()
            expect(page.locator("#job-outcomes")).to_contain_text("retry_delivery")
            camera.shoot(page, "overview")

            # on a phone: the page fits the screen's width (wide tables scroll inside their box)
            page.set_viewport_size({"width": 390, "height": 844})
            for name in ("Channels", "Dead letters", "Installations"):
                page.locator("nav").get_by_role("link", name=name).click()
                fits = "document.documentElement.scrollWidth <= window.innerWidth"
                assert page.evaluate(fits), name
            camera.shoot(page, "phone")
    finally:
        redis.stop()

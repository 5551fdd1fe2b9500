"""The newcomer's first minute, in a real browser: `pdbridge sandbox` prints the inbox URL; a
message typed on the customer's chat page shows in the inbox, and the agent's reply shows on the
chat page, delivered, while the inbox marks it sent to the provider."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import Camera
from tests.sandbox.test_sandbox_command import Sandbox, sandbox  # noqa: F401 -- the fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Long enough for a loaded CI machine; each wait ends as soon as the page shows the text.
WAIT_MS = 60_000


def test_a_message_and_its_reply_travel_through_the_browser(
    sandbox: Sandbox,  # noqa: F811 -- the fixture imported above
    page: Page,
    camera: Camera,
) -> None:
    page.goto(sandbox.chat)
    page.fill("textarea[name=text]", "Hello from the browser")
    page.click("form.reply button[type=submit]")
    page.wait_for_selector('#messages li:has-text("Hello from the browser")', timeout=WAIT_MS)
    camera.shoot(page, "customer-writes")

    page.goto(sandbox.inbox)
    conversation = page.wait_for_selector(
        '#sidebar a[href*="conversation="]:has-text("Hello from the browser")', timeout=WAIT_MS
    )
    assert conversation is not None
    conversation.click()
    page.wait_for_selector('#messages li:has-text("Hello from the browser")', timeout=WAIT_MS)
    camera.shoot(page, "inbox-receives")

    page.fill("textarea[name=message]", "Hi, the agent here")
    page.click("form.reply button[type=submit]")
    page.wait_for_selector(
        '#messages li[data-status="sent"]:has-text("Hi, the agent here")', timeout=WAIT_MS
    )
    camera.shoot(page, "agent-replies", readme="inbox.png")

    page.goto(sandbox.chat)
    page.wait_for_selector(
        '#messages li[data-status="delivered"]:has-text("Hi, the agent here")', timeout=WAIT_MS
    )
    camera.shoot(page, "customer-sees-the-reply")

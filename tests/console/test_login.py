"""Console login: every page and form needs a session, the cookie is guarded, a wrong token or a
missing CSRF token changes nothing, and failed logins are rate-limited per client."""

from __future__ import annotations

import pytest

from sandbox.pipedrive import PipedriveStandin
from service import redis_keys
from service.store import dead_letters
from tests.console.conftest import UI, Browser, browser_on
from tests.pipedrive.bridge import Bridge, running_bridge

pytestmark = pytest.mark.anyio

PAGES = [
    UI,
    f"{UI}/installations",
    f"{UI}/channels",
    f"{UI}/dead-letters",
    f"{UI}/conversations",
    f"{UI}/conversations?q=jane",
    f"{UI}/conversations/1",
]


async def _letter(bridge: Bridge) -> int:
    return await dead_letters.record(
        bridge.services.db,
        kind="retry_delivery",
        job_id="job-1",
        payload={"dedupe_key": "k"},
        error="PipedriveError: 400 bad payload",
        tries=1,
        company_id=1001,
    )


async def _sessions(bridge: Bridge) -> list[bytes]:
    keys = await bridge.services.queue.redis.keys(redis_keys.CONSOLE_SESSION + "*")
    return list(keys)


async def test_every_page_and_form_needs_a_login(bridge: Bridge, browser: Browser) -> None:
    """Without a session each page answers 401 with the login form, and a replay does nothing."""
    letter = await _letter(bridge)
    for path in PAGES:
        answer = await browser.http.get(path)
        assert answer.status_code == 401, path
        assert 'name="token"' in answer.text
        assert "Log in" in answer.text
    refused = await browser.http.post(f"{UI}/dead-letters/{letter}/replay", data={"csrf": "x"})
    assert refused.status_code == 401
    assert (await browser.http.post(f"{UI}/logout")).status_code == 401
    found = await dead_letters.get(bridge.services.db, letter)
    assert found is not None
    assert found.replayed_at is None
    assert await bridge.services.queue.depth() == 0


async def test_a_wrong_token_is_refused_without_a_session(bridge: Bridge, browser: Browser) -> None:
    """A wrong token gets the form back with 401, no cookie and no session."""
    answer = await browser.login("not-the-admin-token")
    assert answer.status_code == 401
    assert "not the admin token" in answer.text
    assert 'name="token"' in answer.text
    assert "set-cookie" not in answer.headers
    assert await _sessions(bridge) == []
    assert (await browser.http.get(UI)).status_code == 401


async def test_login_sets_a_signed_httponly_samesite_secure_cookie(browser: Browser) -> None:
    """The right token sets a guarded, expiring cookie (Secure: the public URL is https) and
    opens every page; the pages keep out of frames and caches."""
    answer = await browser.login()
    assert answer.status_code == 303
    assert answer.headers["location"] == UI
    cookie = answer.headers["set-cookie"].lower()
    for flag in ("httponly", "samesite=strict", "secure", "path=/admin/ui", "max-age=28800"):
        assert flag in cookie, flag
    for path in PAGES[:-1]:
        page = await browser.http.get(path)
        assert page.status_code == 200, path
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert '<meta name="viewport"' in page.text


async def test_cookie_is_not_secure_on_a_plain_http_service(
    stack: tuple[str, str], pd: PipedriveStandin
) -> None:
    """On http (a laptop, the sandbox) the cookie must not be Secure, or no browser sends it."""
    async with (
        running_bridge(stack, pd, public_base_url="http://localhost:8000") as bridge,
        browser_on(bridge) as http,
    ):
        answer = await Browser(http).login()
    assert answer.status_code == 303
    assert "secure" not in answer.headers["set-cookie"].lower()


async def test_a_forged_or_foreign_cookie_is_no_session(bridge: Bridge, browser: Browser) -> None:
    """A cookie must be a session we signed: garbage and other signed values of ours (a media
    link's signature, same key) are refused."""
    other = bridge.services.crypto.sign("media:some-file", 600)
    for value in ("garbage", other, other.replace(".", "x", 1)):
        browser.http.cookies.set("pdbridge_console", value, path=UI)
        assert (await browser.http.get(UI)).status_code == 401


async def test_replay_without_the_csrf_token_is_refused(bridge: Bridge, browser: Browser) -> None:
    """A logged-in browser's replay without the form's CSRF token (or with another) is 403 and
    queues nothing; with it, the letter is queued."""
    letter = await _letter(bridge)
    await browser.login()
    for csrf in ("", "forged-token"):
        answer = await browser.post(f"{UI}/dead-letters/{letter}/replay", csrf=csrf)
        assert answer.status_code == 403
    found = await dead_letters.get(bridge.services.db, letter)
    assert found is not None
    assert found.replayed_at is None
    assert await bridge.services.queue.depth() == 0
    done = await browser.post(f"{UI}/dead-letters/{letter}/replay")
    assert done.status_code == 303
    assert await bridge.services.queue.depth() == 1


async def test_logout_ends_the_session_everywhere(bridge: Bridge, browser: Browser) -> None:
    """After logout the old cookie opens nothing, even if a copy of it was kept."""
    await browser.login()
    kept = browser.http.cookies.get("pdbridge_console")
    assert kept
    answer = await browser.post(f"{UI}/logout")
    assert answer.status_code == 303
    assert answer.headers["location"] == f"{UI}/login"
    assert await _sessions(bridge) == []
    browser.http.cookies.set("pdbridge_console", kept, path=UI)
    assert (await browser.http.get(UI)).status_code == 401


async def test_failed_logins_are_rate_limited_per_client(bridge: Bridge, browser: Browser) -> None:
    """After five failures in a minute even the right token waits (429), and no session opens."""
    for _ in range(5):
        assert (await browser.login("guess")).status_code == 401
    answer = await browser.login()
    assert answer.status_code == 429
    assert "set-cookie" not in answer.headers
    assert await _sessions(bridge) == []


async def test_login_goes_back_only_to_a_console_page(browser: Browser) -> None:
    """`next` may name a console page, never another site."""
    for wanted, landing in (
        (f"{UI}/channels", f"{UI}/channels"),
        ("//evil.example/admin/ui", UI),
        ("https://evil.example/", UI),
        ("/admin/ui\\@evil.example", UI),
    ):
        answer = await browser.http.post(
            f"{UI}/login", data={"token": "admin-token-for-tests", "next": wanted}
        )
        assert answer.headers["location"] == landing


async def test_the_console_is_absent_without_an_admin_token(
    stack: tuple[str, str], pd: PipedriveStandin
) -> None:
    """With no ADMIN_TOKEN the console does not exist: 404, like the admin API."""
    async with running_bridge(stack, pd, admin_token=None) as bridge, browser_on(bridge) as http:
        for path in (UI, f"{UI}/login", f"{UI}/dead-letters"):
            assert (await http.get(path)).status_code == 404, path
        answer = await http.post(f"{UI}/login", data={"token": "anything"})
        assert answer.status_code == 404

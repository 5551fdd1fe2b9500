"""A real Chromium for the browser tests: Debian's `chromium` driven by Playwright.

Playwright's own browser download cannot reach the internet here, so the fixture points it at
the system binary (`CHROMIUM` overrides the path) and skips cleanly when there is none. Each
test's screenshots go to tests/artifacts/screenshots/ (git-ignored); with
`PDBRIDGE_README_SCREENSHOTS=1` (what `make screenshots` sets) the README's images are written
too.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "screenshots"
README_IMAGES = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Camera:
    """Saves numbered screenshots of one test's steps, and the README's images when asked."""

    folder: Path
    step: int = 0

    def shoot(self, page: Page, name: str, *, readme: str | None = None) -> Path:
        self.step += 1
        target = self.folder / f"{self.step:02d}-{name}.png"
        page.screenshot(path=str(target), full_page=True)
        if readme and os.environ.get("PDBRIDGE_README_SCREENSHOTS") == "1":
            README_IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target, README_IMAGES / readme)
        return target


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """A headless Chromium; skips when the machine has none. Per test, not per session:
    Playwright's sync API runs an event loop in this thread while it is open, and the async
    tests that follow need the thread to themselves."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) in a laptop-sized window."""
    context = chromium.new_context(viewport={"width": 1100, "height": 760})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def camera(request: pytest.FixtureRequest) -> Camera:
    folder = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return Camera(folder)

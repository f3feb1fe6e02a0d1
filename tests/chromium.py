"""A page in Debian's headless Chromium for the tests of the server's pages (skipped where it or
playwright is missing)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator

import pytest

from test_page import CHROMIUM, CHROMIUM_ARGS


@contextlib.contextmanager
def headless_page(on_dialog: Callable | None = None) -> Iterator:
    """A fresh page in a fresh profile; `on_dialog` answers its prompts."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (./setup.sh --dev)")
    with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            if on_dialog is not None:
                page.on("dialog", on_dialog)
            yield page
        finally:
            browser.close()


def create_on_avatar_page(page, base_url: str, upload: str, avatar_id: str, size: int = 128) -> int:
    """Make a portrait avatar from `upload` on web/avatar.html as a user does, wait for its
    preview, check the progress bar is full, and return the preview's width."""
    page.goto(base_url + "/avatar.html")
    page.set_input_files("#video_file", upload)
    page.fill("#avatar_id", avatar_id)
    page.select_option("#model", "portrait")
    page.fill("#size", str(size))
    page.click("#create")
    page.wait_for_function("document.querySelector('#preview').naturalWidth > 0", timeout=120_000)
    assert page.locator("#bar").get_attribute("value") == "100"
    return page.evaluate("document.querySelector('#preview').naturalWidth")

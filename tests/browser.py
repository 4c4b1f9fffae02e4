"""A real headless Chromium for the tests, driven by Playwright's Python package.

Playwright's own browser download needs the network, so the system's Chromium is used
(Debian: ``apt-get install chromium``; ``.ci/run`` installs it). ``MEDSHOT_CHROMIUM`` names another
executable. :func:`chromium_or_skip` skips a test, with the reason, where either is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable to drive: ``$MEDSHOT_CHROMIUM``, else the first candidate on ``PATH``."""
    named = os.environ.get("MEDSHOT_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_or_skip() -> str:
    """The Chromium executable, or skip the test saying what is missing."""
    pytest.importorskip("playwright.sync_api", reason="the browser tests need Playwright (pip install playwright)")
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium, or set MEDSHOT_CHROMIUM)")
    # Ubuntu's "chromium" is a stub asking for a snap, which cannot run here: only a browser that
    # answers --version is used
    try:
        done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"{exe} does not run: {err}")
    if done.returncode != 0 or "chrom" not in done.stdout.lower():
        pytest.skip(f"{exe} is not a working Chromium: {(done.stdout + done.stderr).strip()[:200]}")
    return exe


@dataclass
class PageCheck:
    """What a page did in the browser: its errors, and each image's (alt, complete, natural width)."""

    errors: list[str] = field(default_factory=list)
    images: list[tuple[str, bool, int]] = field(default_factory=list)


def check_page(path: Path, executable: str, screenshot: Path | None = None, width: int = 1200,
               full_page: bool = True, scale: float = 1.0) -> PageCheck:
    """Open ``path`` (file:// URL) in headless Chromium and collect console errors, page errors and images.

    Parameters
    ----------
    path : Path
        An HTML file.
    executable : str
        Chromium to launch (:func:`chromium_or_skip`).
    screenshot : Path, optional
        Where to save a PNG screenshot of the page.
    width : int
        Viewport width in CSS pixels.
    full_page : bool
        Whether the screenshot covers the whole page or the first screen.
    scale : float
        Device scale factor (below 1 makes a smaller screenshot).
    """
    from playwright.sync_api import sync_playwright

    result = PageCheck()
    with sync_playwright() as pw:
        # root in a container has no user namespaces for Chromium's sandbox
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=scale)
            page.on("console", lambda m: result.errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: result.errors.append(f"page error: {e}"))
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            # data: images decode asynchronously; wait for each to settle (loaded or failed)
            page.evaluate("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
            result.images = [tuple(x) for x in page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")]
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=full_page)
        finally:
            browser.close()
    return result

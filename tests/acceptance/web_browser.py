"""Helpers of the web page's browser tests (and ``bench/web.py``): Debian's headless Chromium
through its chromedriver, with the browser's console and network logged, and where its
screenshots go."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless, as root, on a machine without a network: no sandbox, no GPU, and none of
# Chromium's own connections (they are refused here and would slow every page).
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
T = TypeVar("T")


def need_browser() -> None:
    """Skip (fail in CI) when Chromium, its driver or selenium is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        reason = (
            f"{', '.join(missing)} not found (Debian: apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI installs the browser the browser tests need: {reason}")
        pytest.skip(reason)


@contextlib.contextmanager
def chromium(size: tuple[int, int] = (1280, 900)) -> Iterator[Any]:
    """Headless Chromium, a fresh profile, its viewport ``size``; its console (``browser``)
    and network (``performance``) logs kept for :func:`requests_made`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="gradq-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(str(CHROMEDRIVER)))
    try:
        viewport(driver, size)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def viewport(driver: Any, size: tuple[int, int]) -> None:
    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def sent_requests(driver: Any, origin: str) -> list[dict[str, Any]]:
    """Every request (``url``, ``method``, ``headers``) sent since the last call (the
    performance log) by a page of ``origin`` (the browser's own pages, e.g. its new tab, ask
    for ``chrome://`` files)."""
    import json

    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            params = message["params"]
            if str(params.get("documentURL", "")).startswith(origin):
                sent.append(params["request"])
    return sent


def requests_made(driver: Any, origin: str) -> list[str]:
    """The URL of every request sent since the last call by a page of ``origin``."""
    return [str(r["url"]) for r in sent_requests(driver, origin)]


def wait_for(what: Callable[[], T | None], *, timeout: float = 60.0, step: float = 0.2,
             about: str = "") -> T:  # fmt: skip
    """The first truthy value of ``what()``, polled every ``step`` s; fails after
    ``timeout`` s with ``about`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = what()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"not within {timeout:.0f} s: {about} (last: {last!r})")


def screenshot_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$GRADQ_SCREENSHOT_DIR`` when set, else a temporary folder; printed."""
    named = os.environ.get("GRADQ_SCREENSHOT_DIR")
    folder = Path(named) if named else tmp_path_factory.mktemp("web-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots of the web page: {folder}")
    return folder

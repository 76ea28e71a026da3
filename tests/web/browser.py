"""A real headless Chromium for the dashboard tests, driven by Selenium through Debian's chromedriver.

No browser is downloaded: `make test` installs Debian's `chromium` and `chromium-driver` when missing.
Without them the browser tests skip with one line, except under CI=true where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SHIPIT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SHIPIT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed"
    return None


def require_browser() -> None:
    reason = unavailable()
    if reason is None:
        return
    if _under_ci():
        pytest.fail(f"browser tests need Chromium under CI=true: {reason}", pytrace=False)
    pytest.skip(f"no browser: {reason}")


@pytest.fixture
def browser() -> Iterator[object]:
    """A headless Chromium window of 1280x900 (the width the dashboard is designed for)."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()

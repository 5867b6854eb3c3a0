"""Open a running triage page (`fairl triage CONFIG --serve`) in headless Chromium, decide two
findings (one by the `a` key, one by a click on "relabel clean"), and take a screenshot:

    python scripts/triage_screenshot.py http://127.0.0.1:7860/ triage.png

A developer's check, not a test or a dependency: it needs Playwright (`pip install playwright`)
and Debian's `chromium` package (Playwright's own browser download needs the internet)."""

import sys

from playwright.sync_api import sync_playwright

url, shot = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = b.new_page(viewport={"width": 1500, "height": 950})
    page.goto(url)
    page.wait_for_selector("#btn-accept", timeout=60_000)
    page.wait_for_timeout(2000)
    first = page.locator("h3").first.inner_text()
    page.keyboard.press("a")  # accept, by the keyboard shortcut
    page.wait_for_timeout(1500)
    second = page.locator("h3").first.inner_text()
    page.click("#btn-relabel-clean")  # relabel, by a click
    page.wait_for_timeout(1500)
    third = page.locator("h3").first.inner_text()
    page.screenshot(path=shot, full_page=True)
    print("shown:", first, "->", second, "->", third)
    b.close()

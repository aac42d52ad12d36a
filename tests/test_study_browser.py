"""report.html of `lookalike study` in a real headless Chromium (Debian's, through Playwright), opened from disk as a
person would: the banner, Table 1 and the plots must be there and rendered, with no request leaving the file."""

from __future__ import annotations

import re

import pytest

from .test_browser import WAIT_MS, browser  # noqa: F401 (the module's Chromium fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_study_report_as_a_person_sees_it(tiny_study, browser, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1366, "height": 900})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((tiny_study.out / "report.html").as_uri())

    # the banner, at the top and visible: random weights, generated data, synthetic rows
    banner = page.locator("#not-real")
    expect(banner).to_be_visible(timeout=WAIT_MS)
    expect(banner).to_contain_text("NOT A REAL RESULT")
    expect(banner).to_contain_text("RANDOM weights")
    assert banner.bounding_box()["y"] < 300

    # the answers to (i) and (ii), from the measured numbers
    expect(page.locator("#question-i")).to_be_visible()
    expect(page.locator("#answers")).to_contain_text("the tuner picked")
    expect(page.locator("#answers")).to_contain_text(re.compile(r"brute: search [\d.]+ → [\d.]+ ms/query single"))

    # Table 1: a row per measured quantity, one column per model (and the provenance tag)
    expect(page.locator("#timing-table thead th")).to_have_count(3)
    assert page.locator("#timing-table tbody tr").count() >= 10
    expect(page.locator("#timing-table")).to_contain_text("brute ms/query, single")

    # the plots: decoded and drawn at a readable size
    plots = page.eval_on_selector_all(
        "img.plot", "imgs => imgs.map(i => [i.id, i.complete, i.naturalWidth, i.getBoundingClientRect().width])"
    )
    assert [p[0] for p in plots] == ["tradeoff-resnet18", "latency-vs-size"]
    for name, complete, natural, shown in plots:
        assert complete and natural >= 600 and shown >= 500, (name, complete, natural, shown)

    expect(page.locator("#provenance")).to_contain_text("Versions:")
    shot = tmp_path / "study-report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    assert errors == []
    assert all(url.startswith(("file://", "data:")) for url in requests), requests  # it works offline
    page.close()
